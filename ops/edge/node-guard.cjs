// Loaded into `wrangler dev` (NODE_OPTIONS=--require) by ops/edge.sh for local runs only.
//
// The local simulation of Hyperdrive in wrangler dev relays the Workers' database sockets
// through Node. When a Worker's socket is reset (an isolate torn down mid-query, a request
// cancelled by its client), the relay's socket emits `read ECONNRESET` with no error
// listener, and Node ends the whole process: every Worker of the local stack goes down with
// one connection. On Cloudflare, Hyperdrive is not this relay. The guard keeps the local
// stack up for that one error, and prints every occurrence so nothing is hidden; any other
// uncaught error still ends the process as before.
'use strict';

process.on('uncaughtException', (err, origin) => {
  if (err && err.code === 'ECONNRESET' && err.syscall === 'read') {
    console.error(`[edge-guard] a relayed socket was reset (${err.message}); the local stack stays up`);
    return;
  }
  console.error(err);
  console.error(`[edge-guard] uncaught ${origin}: exiting`);
  process.exit(7);
});
