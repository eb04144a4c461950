//! PostgreSQL through Hyperdrive (binding `DB`): the same schema as `migrations/postgres`, so
//! the native tools (`cognomega audit`, `cognomega cleanup`, the admin routes) work on an edge
//! deployment's database too.

use tokio_postgres::Client;
use worker::postgres_tls::PassthroughTls;
use worker::{Env, SecureTransport, Socket};

/// One connection for this request or batch. Hyperdrive pools the connections to the origin,
/// so opening one per invocation is the intended pattern.
pub async fn connect(env: &Env) -> worker::Result<Client> {
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
    wasm_bindgen_futures::spawn_local(async move {
        if let Err(e) = connection.await {
            worker::console_error!("PostgreSQL connection: {e}");
        }
    });
    Ok(client)
}
