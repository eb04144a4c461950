//! The queue side of the edge: the queue table, producing (`send_json`) and the consumers.
//!
//! Every message travels in a small envelope, `{"request_id", "body"}` (the body as JSON text,
//! or the bytes an operator injected), so the request id reaches the consumer's logs as it does
//! natively.
//! Consumers follow the native idempotent-consumer contract: the effect and its key commit
//! together (a unique key on the effect row), and a message is acked only after its effect
//! committed. Cloudflare Queues cannot join a PostgreSQL transaction, so what a consumer
//! produces is staged in the outbox in its transaction and relayed after the commit.

use cognomega_core::billing::{PriceTable, SettlementMessage, UsageBatchMessage};
use cognomega_core::queue::catalog;
use cognomega_core::sql::Transaction as _;
use cognomega_workflows::settle::{record_usage, settle, Settled, UsageItem};
use serde::{Deserialize, Serialize};

use crate::sql::PgTx;
use worker::{
    Env, MessageBatch, MessageBuilder, MessageExt, QueueContentType, QueueRetryOptionsBuilder,
};

/// One queue of the platform on the edge: its catalog name (the HTTP contract uses it), its
/// producer binding, its Cloudflare queue name, and the catalog's consumer settings the
/// wrangler configs must match (checked by `tests/edge_config.rs`).
#[derive(Debug, Clone)]
pub struct EdgeQueue {
    pub native: String,
    pub binding: String,
    pub cloudflare: String,
    pub max_retries: u32,
    pub retry_delay_secs: u32,
}

/// The deployment's queues: `cognomega_core::queue::catalog::all` for every registered job
/// type, named as Cloudflare names them.
pub fn queues() -> &'static [EdgeQueue] {
    static QUEUES: std::sync::OnceLock<Vec<EdgeQueue>> = std::sync::OnceLock::new();
    QUEUES.get_or_init(|| {
        catalog::all(&crate::voice::job_type_names())
            .into_iter()
            .map(|(name, settings)| EdgeQueue {
                binding: catalog::cloudflare::binding(name.as_str()),
                cloudflare: catalog::cloudflare::queue_name(name.as_str()),
                max_retries: settings.max_retries,
                retry_delay_secs: u32::try_from(settings.retry_delay.as_secs()).unwrap_or(u32::MAX),
                native: name.as_str().to_owned(),
            })
            .collect()
    })
}

pub fn by_native(name: &str) -> Option<&'static EdgeQueue> {
    queues().iter().find(|q| q.native == name)
}

fn by_cloudflare(name: &str) -> Option<(&'static EdgeQueue, bool)> {
    queues().iter().find_map(|q| {
        if q.cloudflare == name {
            Some((q, false))
        } else if name.strip_suffix("-dlq") == Some(q.cloudflare.as_str()) {
            Some((q, true))
        } else {
            None
        }
    })
}

/// What travels on a queue. The body is JSON *text*: a JS structured clone of nested JSON
/// values does not come back field for field on every path, a string always does.
#[derive(Debug, Serialize, Deserialize)]
pub struct Envelope {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// The message body: JSON text, or bytes an operator injected
    /// (`POST /admin/queues/{queue}/messages`) as UTF-8 (lossy).
    pub body: String,
}

impl Envelope {
    /// The body as the queue's message type; `Err` with the reason for anything else.
    fn decode<T: serde::de::DeserializeOwned>(&self) -> Result<T, String> {
        serde_json::from_str(&self.body).map_err(|e| e.to_string())
    }

    /// The body as text, for the dead-letter record.
    fn preview(&self) -> String {
        self.body.clone()
    }
}

fn envelope<T: Serialize>(body: &T, request_id: &str) -> worker::Result<Envelope> {
    Ok(Envelope {
        request_id: (!request_id.is_empty()).then(|| request_id.to_owned()),
        body: serde_json::to_string(body)?,
    })
}

/// Sends one message (JSON) to the queue behind `binding`, after `delay_secs`.
pub async fn send_json<T: Serialize>(
    env: &Env,
    binding: &str,
    body: &T,
    request_id: &str,
    delay_secs: u32,
) -> worker::Result<()> {
    let env_msg = envelope(body, request_id)?;
    let mut builder = MessageBuilder::new(env_msg).content_type(QueueContentType::Json);
    if delay_secs > 0 {
        builder = builder.delay_seconds(delay_secs);
    }
    env.queue(binding)?.send(builder.build()).await
}

/// Injects raw bytes as a message (the operator's `POST /admin/queues/{queue}/messages`).
pub async fn send_raw(
    env: &Env,
    binding: &str,
    raw: String,
    request_id: &str,
) -> worker::Result<()> {
    let e = Envelope {
        request_id: (!request_id.is_empty()).then(|| request_id.to_owned()),
        body: raw,
    };
    env.queue(binding)?
        .send(
            MessageBuilder::new(e)
                .content_type(QueueContentType::Json)
                .build(),
        )
        .await
}

/// Routes a batch to its consumer by queue name.
pub async fn dispatch(batch: MessageBatch<serde_json::Value>, env: &Env) {
    let name = batch.queue();
    let Some((queue, dead)) = by_cloudflare(&name) else {
        worker::console_error!("no consumer for queue {name}; retrying the batch");
        batch.retry_all();
        return;
    };
    let messages = match batch.messages() {
        Ok(m) => m,
        Err(e) => {
            worker::console_error!("{name}: unreadable batch ({e}); retrying it");
            batch.retry_all();
            return;
        }
    };
    let db = match crate::db::connect(env).await {
        Ok(db) => db,
        Err(e) => {
            worker::console_error!("{name}: database unreachable ({e}); retrying the batch");
            retry_all(&batch, queue);
            return;
        }
    };
    let result = if dead {
        dead_letters(&db, env, queue, &messages).await
    } else {
        match queue.native.as_str() {
            "usage" => usage_writer(&db, env, queue, &messages).await,
            "settlement" => settlement(&db, env, queue, &messages).await,
            jobs if jobs.starts_with("jobs.") => {
                crate::jobs::run_batch(&db, env, queue, &messages).await
            }
            "av-scan" => crate::files::scan_batch(&db, env, queue, &messages).await,
            "etl" => crate::etl::run_batch(&db, env, queue, &messages).await,
            other => Err(format!("no consumer for {other}")),
        }
    };
    if let Err(e) = result {
        worker::console_error!("{name}: {e}; retrying the batch");
        retry_all(&batch, queue);
    }
}

fn retry_options(queue: &EdgeQueue) -> worker::QueueRetryOptions {
    QueueRetryOptionsBuilder::new()
        .with_delay_seconds(queue.retry_delay_secs)
        .build()
}

fn retry_all(batch: &MessageBatch<serde_json::Value>, queue: &EdgeQueue) {
    batch.retry_all_with_options(&retry_options(queue));
}

/// Retries one message with the queue's delay; after `max_retries` Cloudflare moves it to the
/// queue's dead-letter queue.
pub fn retry(msg: &worker::Message<serde_json::Value>, queue: &EdgeQueue) {
    msg.retry_with_options(&retry_options(queue));
}

/// Splits a batch into decoded bodies and messages that cannot be read. Unreadable ones are
/// retried (a producer of a newer version may be mid-deploy) and dead-lettered after
/// `max_retries`, as natively.
pub fn decode_all<'a, T: serde::de::DeserializeOwned>(
    queue: &EdgeQueue,
    messages: &'a [worker::Message<serde_json::Value>],
) -> Vec<(&'a worker::Message<serde_json::Value>, T, Option<String>)> {
    let mut out = Vec::with_capacity(messages.len());
    for m in messages {
        let decoded = serde_json::from_value::<Envelope>(m.body().clone())
            .map_err(|e| e.to_string())
            .and_then(|e| e.decode::<T>().map(|b| (b, e.request_id)));
        match decoded {
            Ok((body, request_id)) => out.push((m, body, request_id)),
            Err(e) => {
                worker::console_warn!(
                    "{}: message {} is not readable ({e}); retried, then dead-lettered",
                    queue.native,
                    m.id()
                );
                retry(m, queue);
            }
        }
    }
    out
}

/// usage-writer: the shared workflow (`cognomega_workflows::settle::record_usage`) in one
/// transaction whose settlement messages are staged in the outbox and relayed after the
/// commit; a redelivery finds its events' keys and stages nothing.
async fn usage_writer(
    db: &tokio_postgres::Client,
    env: &Env,
    queue: &EdgeQueue,
    messages: &[worker::Message<serde_json::Value>],
) -> Result<(), String> {
    let prices: PriceTable = crate::config::billing(env)?.prices;
    let batches = decode_all::<UsageBatchMessage>(queue, messages);
    if batches.is_empty() {
        return Ok(());
    }
    let items: Vec<UsageItem> = batches
        .iter()
        .map(|(_, b, request_id)| UsageItem {
            tenant: &b.tenant_id,
            events: &b.events,
            received_at_ms: b.received_at_ms,
            request_id: request_id.as_deref(),
        })
        .collect();
    let mut tx = Box::new(PgTx::begin(db).await.map_err(|e| e.to_string())?);
    let batch = tx.batch.clone();
    if let Err(e) = record_usage(&mut *tx, &items, &prices).await {
        let _ = tx.rollback().await;
        return Err(format!("usage: {e}"));
    }
    tx.commit()
        .await
        .map_err(|e| format!("usage commit: {e}"))?;
    for (m, _, _) in &batches {
        m.ack();
    }
    if let Err(e) = crate::outbox::relay_on(db, env, Some(&batch)).await {
        worker::console_warn!("usage: settlement relay: {e}; the relay cron sends them");
    }
    Ok(())
}

/// Writes settled balances through to KV (after their commit), verified
/// ([`crate::billing::cache_verified`]).
pub async fn cache_balances(env: &Env, db: &tokio_postgres::Client, settled: &Settled) {
    let balances = settled.balances.iter().map(|(tenant, (balance, as_of))| {
        let cached = crate::billing::CachedBalance {
            balance: *balance,
            as_of_ms: Some(*as_of),
        };
        (tenant.clone(), cached)
    });
    crate::billing::cache_verified(env, db, balances.collect()).await;
}

/// settlement: the shared workflow (`cognomega_workflows::settle::settle`) in one
/// transaction, then the new balances written through to KV.
async fn settlement(
    db: &tokio_postgres::Client,
    env: &Env,
    queue: &EdgeQueue,
    messages: &[worker::Message<serde_json::Value>],
) -> Result<(), String> {
    let decoded = decode_all::<SettlementMessage>(queue, messages);
    if decoded.is_empty() {
        return Ok(());
    }
    let entries: Vec<SettlementMessage> = decoded.iter().map(|(_, s, _)| s.clone()).collect();
    let floor = crate::config::billing(env)?.guest_floor;
    let now = worker::Date::now().as_millis() as i64;
    let mut tx = Box::new(PgTx::begin(db).await.map_err(|e| e.to_string())?);
    let settled = match settle(&mut *tx, &entries, floor, now).await {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.rollback().await;
            return Err(format!("settlement: {e}"));
        }
    };
    tx.commit()
        .await
        .map_err(|e| format!("settlement commit: {e}"))?;
    for (m, _, _) in &decoded {
        m.ack();
    }
    cache_balances(env, db, &settled).await;
    Ok(())
}

/// The dead-letter queues: every message that ran out of retries is recorded where the native
/// queue keeps its dead letters (`queue_messages`, queue `<name>.dlq`), so
/// `GET /admin/queues/{queue}/dlq` and the native tools list them. A dead job message also
/// marks its job `dead`.
async fn dead_letters(
    db: &tokio_postgres::Client,
    _env: &Env,
    queue: &EdgeQueue,
    messages: &[worker::Message<serde_json::Value>],
) -> Result<(), String> {
    let dlq = format!("{}.dlq", queue.native);
    let attempts = i32::try_from(queue.max_retries + 1).unwrap_or(i32::MAX);
    let error = format!(
        "delivery failed {attempts} times (max_retries {}); dead-lettered by Cloudflare Queues",
        queue.max_retries
    );
    for m in messages {
        let envelope = serde_json::from_value::<Envelope>(m.body().clone()).ok();
        let (body, request_id) = match &envelope {
            Some(e) => (e.preview(), e.request_id.clone()),
            None => (m.body().to_string(), None),
        };
        db.execute(
            "INSERT INTO queue_messages (queue, state, attempts, body, content_type, request_id,
                 idempotency_key, original_queue, failed_attempts, last_error, dead_at)
             VALUES ($1, 0, $2, $3, 'application/json', $4, $5, $6, $2, $7, now())",
            &[
                &dlq,
                &attempts,
                &body.as_bytes(),
                &request_id,
                &format!("cf:{}", m.id()),
                &queue.native,
                &error,
            ],
        )
        .await
        .map_err(|e| format!("dead letter: {e}"))?;
        if queue.native == "av-scan" {
            if let Some(scan) = envelope
                .as_ref()
                .and_then(|e| e.decode::<crate::files::ScanMessage>().ok())
            {
                // Never served unscanned: the upload says why.
                db.execute(
                    "UPDATE uploads SET scan = 'scan_failed', scan_error = $2, scanned_at = now()
                     WHERE key = $1 AND scan = 'pending'",
                    &[&scan.key, &error],
                )
                .await
                .map_err(|e| format!("scan failed: {e}"))?;
            }
        }
        if queue.native.starts_with("jobs.") {
            if let Some(job) = envelope
                .as_ref()
                .and_then(|e| e.decode::<crate::jobs::JobMessage>().ok())
            {
                let now = worker::Date::now().as_millis() as i64;
                cognomega_core::jobs::bury(&mut crate::sql::Pg(db), &job.job_id, &error, now)
                    .await
                    .map_err(|e| format!("dead job: {e}"))?;
            }
        }
        m.ack();
    }
    Ok(())
}

/// The Cron Trigger of the periodic export: the native `etl-export` schedule (every 15 minutes),
/// which sends one `etl` message for every dataset as Parquet.
pub const ETL_CRON: &str = "*/15 * * * *";

/// Cron Triggers. [`ETL_CRON`]: the periodic export. [`crate::outbox::RELAY_CRON`] (every
/// minute): the outbox relay — messages staged by a write whose own drain did not send them (a
/// failed send, an invocation that ended first) are sent now; their ids make a duplicate
/// harmless.
pub async fn scheduled(cron: &str, env: &Env) -> Result<(), String> {
    if cron == ETL_CRON {
        crate::etl::schedule(env).await?;
        worker::console_log!("cron {cron}: export queued");
        return Ok(());
    }
    if cron == crate::outbox::RELAY_CRON {
        let report = crate::outbox::relay_via_admin(env).await?;
        worker::console_log!("cron {cron}: {report}");
        return Ok(());
    }
    Err(format!(
        "no schedule runs on {cron:?}; the crons are {:?} and {ETL_CRON:?}",
        crate::outbox::RELAY_CRON
    ))
}
