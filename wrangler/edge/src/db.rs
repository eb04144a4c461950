//! PostgreSQL through Hyperdrive (binding `DB`): the same schema as `migrations/postgres`, so
//! the native tools (`cognomega audit`, `cognomega cleanup`, the admin routes) work on an edge
//! deployment's database too.
//!
//! A connection lives for one invocation (a request, a batch, a cron tick): Workers do not let
//! a socket outlive the request that opened it. It must also be *closed* before the invocation
//! ends — a socket the runtime tears down mid-flight is reset, which the Hyperdrive side sees as
//! an error — so every connection is a [`Db`] whose drop starts a graceful close (Terminate,
//! then shutdown), and the entry points await [`closed`] before they return.

use std::cell::RefCell;
use std::ops::Deref;

use futures::channel::oneshot;
use futures::future::{FutureExt, Shared};
use tokio_postgres::Client;
use worker::postgres_tls::PassthroughTls;
use worker::{Env, SecureTransport, Socket};

thread_local! {
    /// Connections that were dropped and are closing. An isolate runs many invocations at
    /// once and this list is the isolate's, so an invocation waits for every close in flight
    /// (its own among them) and an entry leaves only once it has closed: no invocation can
    /// take another's close away and let that one end with its socket still open.
    static CLOSING: RefCell<Vec<Shared<oneshot::Receiver<()>>>> = const { RefCell::new(Vec::new()) };
}

/// A connection; dropping it closes it gracefully (see [`closed`]).
pub struct Db {
    client: Option<Client>,
    done: Option<oneshot::Receiver<()>>,
}

impl Deref for Db {
    type Target = Client;
    fn deref(&self) -> &Client {
        // Set in `connect`, taken only in `drop`.
        self.client
            .as_ref()
            .unwrap_or_else(|| unreachable!("a live Db has its client"))
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        // Dropping the client lets the connection task send Terminate and shut the socket.
        drop(self.client.take());
        if let Some(done) = self.done.take() {
            CLOSING.with(|c| c.borrow_mut().push(done.shared()));
        }
    }
}

/// Waits until every connection dropped so far has closed (at most 2 s), then forgets the
/// closed ones.
pub async fn closed() {
    let pending: Vec<_> = CLOSING.with(|c| c.borrow().clone());
    if pending.is_empty() {
        return;
    }
    let all = futures::future::join_all(pending);
    let timeout = worker::Delay::from(std::time::Duration::from_secs(2));
    futures::pin_mut!(all);
    futures::pin_mut!(timeout);
    let _ = futures::future::select(all, timeout).await;
    CLOSING.with(|c| c.borrow_mut().retain(|done| done.peek().is_none()));
}

/// One connection for this invocation. Hyperdrive pools the connections to the origin, so
/// opening one per invocation is the intended pattern. A failed connect is tried once more
/// (nothing has run on it yet, so that is always safe).
pub async fn connect(env: &Env) -> worker::Result<Db> {
    match connect_once(env).await {
        Ok(db) => Ok(db),
        Err(first) => {
            worker::console_warn!("{first}; connecting again");
            worker::Delay::from(std::time::Duration::from_millis(50)).await;
            connect_once(env).await
        }
    }
}

async fn connect_once(env: &Env) -> worker::Result<Db> {
    let hyperdrive = env.hyperdrive("DB")?;
    let config = hyperdrive
        .connection_string()
        .parse::<tokio_postgres::Config>()
        .map_err(|e| worker::Error::RustError(format!("Hyperdrive connection string: {e}")))?;
    let socket = Socket::builder()
        .secure_transport(SecureTransport::StartTls)
        .connect(hyperdrive.host(), hyperdrive.port())?;
    let (client, connection) = config
        .connect_raw(socket, PassthroughTls)
        .await
        .map_err(|e| worker::Error::RustError(format!("PostgreSQL via Hyperdrive: {e}")))?;
    let (tx, rx) = oneshot::channel();
    wasm_bindgen_futures::spawn_local(async move {
        if let Err(e) = connection.await {
            worker::console_error!("PostgreSQL connection: {e}");
        }
        let _ = tx.send(());
    });
    Ok(Db {
        client: Some(client),
        done: Some(rx),
    })
}
