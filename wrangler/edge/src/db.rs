//! PostgreSQL through Hyperdrive (binding `DB`): the same schema as `migrations/postgres`, so
//! the native tools (`cognomega audit`, `cognomega cleanup`, the admin routes) work on an edge
//! deployment's database too.
//!
//! A connection lives for one invocation (a request, a batch, a cron tick): Workers do not let
//! a socket outlive the request that opened it. It must also be *closed* before the invocation
//! ends — a socket the runtime tears down mid-flight is reset, which the Hyperdrive side sees as
//! an error — so every connection is a [`Db`] whose drop starts a graceful close (Terminate,
//! then shutdown), and each entry point runs its work in [`scoped`], which waits for those
//! closes before it returns.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::ops::Deref;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures::channel::oneshot;
use tokio_postgres::Client;
use worker::postgres_tls::PassthroughTls;
use worker::{Env, SecureTransport, Socket};

thread_local! {
    /// The invocation being polled (see [`scoped`]); 0 outside any.
    static SCOPE: Cell<u64> = const { Cell::new(0) };
    static NEXT_SCOPE: Cell<u64> = const { Cell::new(1) };
    /// Connections that were dropped and are closing, by the invocation that dropped them.
    static CLOSING: RefCell<Vec<(u64, oneshot::Receiver<()>)>> = const { RefCell::new(Vec::new()) };
}

/// A connection; dropping it closes it gracefully (see [`scoped`]).
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
            let scope = SCOPE.with(Cell::get);
            CLOSING.with(|c| c.borrow_mut().push((scope, done)));
        }
    }
}

/// A future that marks its polls as one invocation's.
struct Scoped<F> {
    id: u64,
    inner: Pin<Box<F>>,
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let previous = SCOPE.with(|s| s.replace(self.id));
        let out = self.inner.as_mut().poll(cx);
        SCOPE.with(|s| s.set(previous));
        out
    }
}

/// Runs one invocation's work (a request, a batch, a cron tick, a `waitUntil` future), then
/// waits until every connection it dropped has closed (at most 2 s).
///
/// An isolate runs many invocations at once, and the Workers runtime refuses I/O on an object
/// from inside another request's handler. So an invocation waits for its own connections
/// only: waiting for another's would resume this one from that one's wake-up, and this one's
/// response would then be read on behalf of the other request.
pub async fn scoped<F: Future>(work: F) -> F::Output {
    let id = NEXT_SCOPE.with(|n| {
        let id = n.get();
        n.set(id.wrapping_add(1).max(1));
        id
    });
    let out = Scoped {
        id,
        inner: Box::pin(work),
    }
    .await;
    let mine: Vec<_> = CLOSING.with(|c| {
        let mut all = c.borrow_mut();
        let (mine, rest) = std::mem::take(&mut *all)
            .into_iter()
            .partition(|(scope, _)| *scope == id);
        *all = rest;
        mine
    });
    if !mine.is_empty() {
        let all = futures::future::join_all(mine.into_iter().map(|(_, done)| done));
        let timeout = worker::Delay::from(std::time::Duration::from_secs(2));
        futures::pin_mut!(all);
        futures::pin_mut!(timeout);
        let _ = futures::future::select(all, timeout).await;
    }
    out
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
