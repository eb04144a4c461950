//! The queue side of the edge: producing (`send_json`, `send_all`) and the consumers.
//!
//! Every message travels in a small envelope, `{"request_id", "body"}` (the body as JSON text,
//! or the bytes an operator injected), so the request id reaches the consumer's logs as it does
//! natively.
//! Consumers follow the native idempotent-consumer contract: the effect and its key commit
//! together (a unique key on the effect row), and a message is acked only after its effect
//! committed. Cloudflare Queues cannot join a PostgreSQL transaction, so where a consumer both
//! writes and produces it produces *first* with a deterministic id and writes after: a crash in
//! between redelivers the message, which re-sends the same ids, and the next consumer dedups.

use std::collections::BTreeMap;

use cognomega_core::billing::{
    PriceTable, SettlementKind, SettlementMessage, UsageBatchMessage, UsageEvent,
};
use cognomega_core::queue::catalog;
use serde::{Deserialize, Serialize};
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
        let registry = cognomega_pipelines::registry();
        let types = registry.names();
        catalog::all(&types)
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

/// Sends many messages, in `send_batch` calls of at most 100 messages (the Queues limit).
pub async fn send_all<T: Serialize>(
    env: &Env,
    binding: &str,
    bodies: &[T],
    request_id: &str,
) -> worker::Result<()> {
    let queue = env.queue(binding)?;
    for chunk in bodies.chunks(100) {
        let messages = chunk
            .iter()
            .map(|b| {
                envelope(b, request_id).map(|e| {
                    MessageBuilder::new(e)
                        .content_type(QueueContentType::Json)
                        .build()
                })
            })
            .collect::<worker::Result<Vec<_>>>()?;
        queue.send_batch(messages).await?;
    }
    Ok(())
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

#[derive(Serialize)]
struct UsageRow {
    idempotency_key: String,
    kind: &'static str,
    quantity: i64,
    credits: i64,
    occurred_at_ms: i64,
    meta: Option<String>,
    request_id: Option<String>,
}

/// usage-writer: records each event once (`UNIQUE (tenant_id, idempotency_key)`), then sends
/// one settlement per event with the id `usage-<seq>`; redeliveries re-send the same ids.
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
    let mut settlements = Vec::new();
    for (_, b, request_id) in &batches {
        let rows: Vec<UsageRow> = b
            .events
            .iter()
            .map(|e: &UsageEvent| UsageRow {
                idempotency_key: e.idempotency_key.as_str().to_owned(),
                kind: e.kind.as_str(),
                quantity: i64::try_from(e.quantity).unwrap_or(i64::MAX),
                credits: prices.charge(e.kind, e.quantity),
                occurred_at_ms: e
                    .occurred_at
                    .map_or(b.received_at_ms, |t| t.timestamp_millis()),
                meta: e
                    .meta
                    .as_ref()
                    .map(|m| serde_json::Value::Object(m.clone()).to_string()),
                request_id: request_id.clone(),
            })
            .collect();
        let json = serde_json::to_string(&rows).map_err(|e| e.to_string())?;
        // The events and the tenant's per-day token counter (`usage_day_tokens`, read by the
        // native `/api/si/ask` budget) in one statement: only newly inserted events count, so
        // a duplicate key adds nothing, as natively.
        db.execute(
            "WITH ins AS (
                 INSERT INTO usage_events (tenant_id, idempotency_key, kind, quantity, credits, occurred_at, received_at, meta, request_id)
                 SELECT $1, x.idempotency_key, x.kind, x.quantity, x.credits,
                        to_timestamp(x.occurred_at_ms / 1000.0), to_timestamp($3::bigint / 1000.0), x.meta, x.request_id
                 FROM jsonb_to_recordset($2::text::jsonb) AS x(idempotency_key text, kind text, quantity bigint,
                      credits bigint, occurred_at_ms bigint, meta text, request_id text)
                 ORDER BY x.idempotency_key
                 ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
                 RETURNING kind, quantity, occurred_at)
             INSERT INTO usage_day_tokens (tenant_id, day_start, tokens)
             SELECT $1, (floor(extract(epoch FROM occurred_at) / 86400) * 86400)::bigint AS day,
                    LEAST(SUM(quantity), 9223372036854775807)::bigint
             FROM ins WHERE kind IN ('tokens_in', 'tokens_out') AND quantity > 0
             GROUP BY day ORDER BY day
             ON CONFLICT (tenant_id, day_start) DO UPDATE SET tokens =
                 CASE WHEN usage_day_tokens.tokens > 9223372036854775807 - excluded.tokens
                 THEN 9223372036854775807 ELSE usage_day_tokens.tokens + excluded.tokens END",
            &[&b.tenant_id, &json, &b.received_at_ms],
        )
        .await
        .map_err(|e| format!("usage insert: {e}"))?;
        let keys: Vec<&str> = rows.iter().map(|r| r.idempotency_key.as_str()).collect();
        let stored = db
            .query(
                "SELECT seq, idempotency_key, credits FROM usage_events
                 WHERE tenant_id = $1 AND idempotency_key = ANY($2)",
                &[&b.tenant_id, &keys],
            )
            .await
            .map_err(|e| format!("usage read-back: {e}"))?;
        for r in stored {
            let credits: i64 = r.get(2);
            if credits == 0 {
                continue;
            }
            settlements.push(SettlementMessage {
                id: format!("usage-{}", r.get::<_, i64>(0)),
                tenant_id: b.tenant_id.clone(),
                delta: -credits,
                kind: SettlementKind::Usage,
                reference: Some(r.get(1)),
            });
        }
    }
    send_all(env, "SETTLEMENT", &settlements, "")
        .await
        .map_err(|e| format!("settlement send: {e}"))?;
    for (m, _, _) in &batches {
        m.ack();
    }
    Ok(())
}

#[derive(Serialize)]
struct LedgerRow<'a> {
    id: &'a str,
    tenant_id: &'a str,
    delta: i64,
    kind: &'static str,
    reference: Option<&'a str>,
}

/// Settles entries inside the caller's transaction: appends each once (`ledger_entries.id` is
/// unique), adds the new entries' deltas to the balances and (un)flags guests below the floor,
/// marks applied adjustments. Returns the changed balances `(tenant, balance, as_of_ms)` for
/// the caller to write through to KV after its commit. The settlement consumer settles its
/// batches this way, and `POST /auth/guest` a new guest's starting grant, in the transaction
/// that creates the tenant.
pub async fn settle_in(
    db: &tokio_postgres::Client,
    entries: &[&SettlementMessage],
    floor: i64,
) -> Result<Vec<(String, i64, i64)>, tokio_postgres::Error> {
    let rows: Vec<LedgerRow> = entries
        .iter()
        .map(|s| LedgerRow {
            id: &s.id,
            tenant_id: &s.tenant_id,
            delta: s.delta,
            kind: s.kind.as_str(),
            reference: s.reference.as_deref(),
        })
        .collect();
    let json = serde_json::to_string(&rows).unwrap_or_else(|_| "[]".into());
    let inserted = db
        .query(
            "INSERT INTO ledger_entries (id, tenant_id, delta, kind, ref)
             SELECT x.id, x.tenant_id, x.delta, x.kind, x.reference
             FROM jsonb_to_recordset($1::text::jsonb) AS x(id text, tenant_id text, delta bigint, kind text, reference text)
             ORDER BY x.id
             ON CONFLICT (id) DO NOTHING RETURNING tenant_id, delta, kind, ref",
            &[&json],
        )
        .await?;
    let mut deltas: BTreeMap<String, i64> = BTreeMap::new();
    let mut adjustments: Vec<String> = Vec::new();
    for r in &inserted {
        let tenant: String = r.get(0);
        let delta: i64 = r.get(1);
        let e = deltas.entry(tenant).or_insert(0);
        *e = e.saturating_add(delta);
        if r.get::<_, String>(2) == SettlementKind::Adjustment.as_str() {
            if let Some(id) = r.get::<_, Option<String>>(3) {
                adjustments.push(id);
            }
        }
    }
    let deltas_json = serde_json::to_string(&deltas).unwrap_or_else(|_| "{}".into());
    let balances = if deltas.is_empty() {
        Vec::new()
    } else {
        let rows = db
            .query(
                cognomega_core::billing::sql::PG_ADD_BALANCES,
                &[&deltas_json],
            )
            .await?;
        db.execute(
            cognomega_core::billing::sql::PG_FLAG_GUESTS,
            &[&deltas_json, &floor],
        )
        .await?;
        rows.into_iter()
            .map(|r| {
                (
                    r.get::<_, String>(0),
                    r.get::<_, i64>(1),
                    r.get::<_, i64>(2),
                )
            })
            .collect()
    };
    if !adjustments.is_empty() {
        db.execute(
            "UPDATE credit_adjustments SET status = 'applied', applied_at = now() WHERE id = ANY($1)",
            &[&adjustments],
        )
        .await?;
    }
    Ok(balances)
}

/// Writes settled balances through to KV (after their commit).
pub async fn cache_balances(env: &Env, balances: Vec<(String, i64, i64)>) {
    for (tenant, balance, as_of) in balances {
        crate::billing::put(
            env,
            &tenant,
            &crate::billing::CachedBalance {
                balance,
                as_of_ms: Some(as_of),
            },
        )
        .await;
    }
}

/// settlement: settles the batch in one transaction (`settle_in`), then writes the new
/// balances through to KV.
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
    let entries: Vec<&SettlementMessage> = decoded.iter().map(|(_, s, _)| s).collect();
    let floor = crate::config::billing(env)?.guest_floor;
    db.batch_execute("BEGIN").await.map_err(|e| e.to_string())?;
    let balances = match settle_in(db, &entries, floor).await {
        Ok(b) => b,
        Err(e) => {
            let _ = db.batch_execute("ROLLBACK").await;
            return Err(format!("settlement: {e}"));
        }
    };
    db.batch_execute("COMMIT")
        .await
        .map_err(|e| format!("settlement commit: {e}"))?;
    for (m, _, _) in &decoded {
        m.ack();
    }
    cache_balances(env, balances).await;
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
