//! The edge's side of the transactional outbox (`cognomega_core::outbox`): Cloudflare Queues
//! cannot join a PostgreSQL transaction, so a write path [`stage`]s its messages in its
//! transaction and they are relayed after the commit — by the drain every write request leaves
//! behind (`waitUntil`, [`drain_after`]) and by the relay Cron Trigger every minute
//! ([`RELAY_CRON`]), which sends whatever is still unsent.

use cognomega_core::outbox::{self, Outgoing, Relayed, Sender};
use worker::{
    Context, Env, Headers, MessageBuilder, Method, QueueContentType, Request, RequestInit,
};

use crate::consumers::Envelope;

/// The relay Cron Trigger: every minute.
pub const RELAY_CRON: &str = "* * * * *";

/// The test-only fault setting (`COGNOMEGA_TEST_FAULTS`, never set in a production config):
/// with `drain` in it, the drain after a write request whose request id starts with
/// [`FAULT_DRAIN_PREFIX`] fails before it sends, as a send failing right after its commit would.
const FAULTS: &str = "COGNOMEGA_TEST_FAULTS";
/// Request ids whose drain fails under the `drain` fault.
pub const FAULT_DRAIN_PREFIX: &str = "fault-drain-";

/// Cloudflare Queues as the outbox's broker: a catalog queue name to its producer binding.
struct Queues<'a> {
    env: &'a Env,
}

#[async_trait::async_trait(?Send)]
impl Sender for Queues<'_> {
    async fn send(&self, queue: &str, messages: &[Outgoing]) -> Result<(), String> {
        let edge = crate::consumers::by_native(queue)
            .ok_or_else(|| format!("no queue {queue} on this deployment"))?;
        let producer = self
            .env
            .queue(&edge.binding)
            .map_err(|e| format!("{queue}: {e}"))?;
        // At most 100 messages per send_batch (the Queues limit).
        for chunk in messages.chunks(100) {
            let batch = chunk
                .iter()
                .map(|m| {
                    MessageBuilder::new(Envelope {
                        request_id: m.request_id.clone(),
                        body: m.body.clone(),
                    })
                    .content_type(QueueContentType::Json)
                    .build()
                })
                .collect::<Vec<_>>();
            producer
                .send_batch(batch)
                .await
                .map_err(|e| format!("{queue}: {e}"))?;
        }
        Ok(())
    }
}

/// A new write's batch id: its staged messages are relayed together right after its commit.
pub fn batch_id() -> String {
    uuid::Uuid::new_v4().to_string()
}

fn now_ms() -> i64 {
    worker::Date::now().as_millis() as i64
}

/// Stages the JSON text `text` for the catalog queue `queue`, in the transaction open on `db`.
pub async fn stage_text(
    db: &tokio_postgres::Client,
    batch: &str,
    queue: &str,
    text: String,
    request_id: &str,
) -> Result<(), String> {
    let request_id = (!request_id.is_empty()).then_some(request_id);
    outbox::stage(
        &mut crate::sql::Pg(db),
        batch,
        queue,
        text,
        request_id,
        now_ms(),
    )
    .await
    .map_err(|e| format!("outbox: {e}"))
}

/// Sends messages at once, outside any transaction (all to one catalog queue).
pub async fn send_now(
    env: &Env,
    messages: &[cognomega_core::sql::Outbound<'_>],
) -> Result<(), String> {
    let Some(first) = messages.first() else {
        return Ok(());
    };
    let outgoing: Vec<Outgoing> = messages
        .iter()
        .map(|m| Outgoing {
            body: m.body.clone(),
            request_id: m.request_id.map(str::to_owned),
        })
        .collect();
    Queues { env }.send(first.queue, &outgoing).await
}

/// Sends every unsent message (only `batch`'s, when given) on a connection of its own.
pub async fn relay(env: &Env, batch: Option<&str>) -> Result<Relayed, String> {
    let db = crate::db::connect(env).await.map_err(|e| e.to_string())?;
    relay_on(&db, env, batch).await
}

/// Sends every unsent message (only `batch`'s, when given) on `db` (no open transaction).
pub async fn relay_on(
    db: &tokio_postgres::Client,
    env: &Env,
    batch: Option<&str>,
) -> Result<Relayed, String> {
    let claim = uuid::Uuid::new_v4().to_string();
    outbox::relay(
        &mut crate::sql::Pg(db),
        &Queues { env },
        batch,
        &claim,
        now_ms(),
    )
    .await
    .map_err(|e| format!("outbox relay: {e}"))
}

/// The cron relay: settles the voice sessions whose heart stopped, sends what is unsent, then
/// prunes rows sent more than a day ago.
pub async fn relay_all(env: &Env) -> Result<String, String> {
    let db = crate::db::connect(env).await.map_err(|e| e.to_string())?;
    // Voice sessions whose Object died settle first: their usage is staged here, then sent.
    let sessions = match crate::voice::settle_stale(env, &db).await {
        Ok(n) => n.to_string(),
        // Never in the way of the relay: the next tick tries again.
        Err(e) => format!("none ({e})"),
    };
    let done = relay_on(&db, env, None).await?;
    let mut pg = crate::sql::Pg(&db);
    let pruned = outbox::prune(&mut pg, now_ms())
        .await
        .map_err(|e| e.to_string())?;
    let (pending, _) = outbox::pending(&mut pg).await.map_err(|e| e.to_string())?;
    Ok(format!(
        "relayed {} (failed {}), {pending} unsent, pruned {pruned}, {sessions} stale voice sessions settled",
        done.sent, done.failed
    ))
}

/// After a write request: relay whatever is unsent once the response is on its way (the
/// request's own messages first in line, as the oldest rows are its or older).
pub fn drain_after(ctx: &Context, env: &Env, request_id: &str) {
    let faulted = crate::config::var(env, FAULTS)
        .is_some_and(|f| f.split(',').any(|f| f.trim() == "drain"))
        && request_id.starts_with(FAULT_DRAIN_PREFIX);
    let env = env.clone();
    let request_id = request_id.to_owned();
    ctx.wait_until(crate::db::scoped(async move {
        if faulted {
            worker::console_warn!(
                "request {request_id}: drain failed ({FAULTS}=drain); the relay sends its messages"
            );
            return;
        }
        match relay(&env, None).await {
            Ok(done) if done.failed > 0 => worker::console_warn!(
                "request {request_id}: {} messages not sent; the relay retries them",
                done.failed
            ),
            Ok(_) => {}
            Err(e) => worker::console_warn!("request {request_id}: {e}; the relay retries"),
        }
    }));
}

/// The relay Cron Trigger fires on the gateway, which has no producer for every queue: it asks
/// the admin Worker (which has them all) to relay, as an operator's `POST /admin/outbox/relay`.
pub async fn relay_via_admin(env: &Env) -> Result<String, String> {
    let headers = Headers::new();
    let request_id = format!("cron-relay-{}", uuid::Uuid::new_v4());
    let set = |k: &str, v: &str| headers.set(k, v).map_err(|e| e.to_string());
    set(crate::http::REQUEST_ID, &request_id)?;
    set(crate::http::ADMIN, "1")?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post).with_headers(headers.clone());
    let req = Request::new_with_init("https://cognomega-admin/admin/outbox/relay", &init)
        .map_err(|e| e.to_string())?;
    let mut resp = env
        .service("ADMIN")
        .map_err(|e| e.to_string())?
        .fetch_request(req)
        .await
        .map_err(|e| e.to_string())?;
    let body = resp.text().await.map_err(|e| e.to_string())?;
    if resp.status_code() == 200 {
        Ok(body)
    } else {
        Err(format!("relay: {} {body}", resp.status_code()))
    }
}
