//! The transactional outbox: a write and the messages it produces commit together, on a
//! broker that cannot join the database's transaction.
//!
//! Natively the queue lives in the database, so a write path sends its messages inside its
//! transaction and they commit with its rows. Cloudflare Queues cannot join a PostgreSQL
//! transaction, so on the edge a write path [`stage`]s its messages as `outbox` rows in its
//! transaction, and after the commit they are [`relay`]ed: right after the write (the request's
//! `waitUntil`), and every minute by the relay Cron Trigger, which sends whatever a failed or
//! interrupted send left. A row is marked sent only after the broker accepted it; a relay that
//! dies in between leaves its claim to expire and the row is sent again — every message type
//! carries its own id (a job id, an upload key, a ledger entry id), so its consumer makes a
//! duplicate harmless.
//!
//! The statements are written once (`$n` placeholders, epoch milliseconds) and run on SQLite
//! and PostgreSQL natively (where the conformance tests run them) and on the edge.

use crate::sql::{Executor, SqlError, Value};

/// How long a relay's claim on rows lasts: another relay leaves them alone meanwhile.
pub const CLAIM_MS: i64 = 30_000;
/// Rows claimed per round.
pub const ROUND: i64 = 500;
/// Rounds per relay: a relay sends at most `ROUND * ROUNDS` messages, the next one the rest.
pub const ROUNDS: usize = 20;
/// How long a sent row is kept (for `GET /admin/outbox` and incident forensics).
pub const KEEP_SENT_MS: i64 = 24 * 3600 * 1000;

/// Stages one message: `$1` batch (the write that produced it), `$2` queue, `$3` body (JSON
/// text), `$4` request id, `$5` now.
pub const STAGE: &str = "INSERT INTO outbox (batch, queue, body, request_id, created_at)
     VALUES ($1, $2, $3, $4, $5)";
/// Claims unsent rows under the token `$1` until `$3`: rows whose claim expired before `$2`,
/// only batch `$4` unless null, at most `$5`. The outer conditions repeat the inner ones so a
/// concurrent relay that claimed a row first wins it (PostgreSQL re-checks them on the row it
/// waited for). Returns `id, queue, body, request_id`.
pub const CLAIM: &str = "UPDATE outbox SET claim = $1, claimed_until = $3, attempts = attempts + 1
     WHERE id IN (SELECT id FROM outbox
                  WHERE sent_at IS NULL AND (claimed_until IS NULL OR claimed_until < $2)
                    AND ($4 IS NULL OR batch = $4)
                  ORDER BY id LIMIT $5)
       AND sent_at IS NULL AND (claimed_until IS NULL OR claimed_until < $2)
     RETURNING id, queue, body, request_id";
/// Marks claim `$1`'s rows of queue `$2` sent at `$3`.
pub const SENT: &str = "UPDATE outbox SET sent_at = $3, claimed_until = NULL, last_error = NULL
     WHERE claim = $1 AND queue = $2 AND sent_at IS NULL";
/// Gives claim `$1`'s rows of queue `$2` back after a failed send, with the error `$3`.
pub const FAILED: &str = "UPDATE outbox SET claimed_until = NULL, last_error = $3
     WHERE claim = $1 AND queue = $2 AND sent_at IS NULL";
/// Unsent rows: how many, and the oldest one's `created_at` (null when none).
pub const PENDING: &str = "SELECT COUNT(*), MIN(created_at) FROM outbox WHERE sent_at IS NULL";
/// Retention: rows sent before `$1`.
pub const PRUNE: &str = "DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1";

/// One message on its way to the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// The body: the queue's message type as JSON text.
    pub body: String,
    /// The request that produced it, for the consumer's logs.
    pub request_id: Option<String>,
}

/// The broker side of the relay: sends messages to a queue, all or nothing.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait Sender {
    /// Sends `messages` (oldest first) to `queue` (its catalog name); `Err` with the reason when
    /// the broker did not take them.
    async fn send(&self, queue: &str, messages: &[Outgoing]) -> Result<(), String>;
}

/// Stages `body` for `queue` in the caller's transaction, as part of the write `batch`.
pub async fn stage<E: Executor + ?Sized>(
    db: &mut E,
    batch: &str,
    queue: &str,
    body: String,
    request_id: Option<&str>,
    now_ms: i64,
) -> Result<(), SqlError> {
    db.execute(
        STAGE,
        &[
            batch.into(),
            queue.into(),
            Value::Text(body),
            request_id.into(),
            now_ms.into(),
        ],
    )
    .await
    .map(drop)
}

/// Stages one message for `queue` per row of `select` (columns `body`, `request_id`; its
/// parameters `args`) in the caller's transaction, as part of the write `batch`, in one
/// `INSERT … SELECT`. Returns how many were staged.
pub async fn stage_rows<E: Executor + ?Sized>(
    db: &mut E,
    batch: &str,
    queue: &str,
    select: &str,
    args: &[Value],
    now_ms: i64,
) -> Result<u64, SqlError> {
    let n = args.len();
    let insert = format!(
        "INSERT INTO outbox (batch, queue, body, request_id, created_at)
         SELECT ${b}, ${q}, s.body, s.request_id, ${t} FROM ({select}) AS s",
        b = n + 1,
        q = n + 2,
        t = n + 3
    );
    let mut all = args.to_vec();
    all.extend([batch.into(), queue.into(), now_ms.into()]);
    db.execute(&insert, &all).await
}

/// What one relay did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Relayed {
    /// Messages the broker took.
    pub sent: usize,
    /// Messages it refused; they stay unsent for the next relay.
    pub failed: usize,
}

/// Sends unsent rows (only those of `batch`, when given) and marks them sent. `claim` is a
/// token unique to this relay (a UUID); `now_ms` the time. Statements run one by one on `db`
/// (a pool or a connection, not a transaction: a row must be marked sent as soon as it was).
pub async fn relay<E: Executor + ?Sized, S: Sender + ?Sized>(
    db: &mut E,
    sender: &S,
    batch: Option<&str>,
    claim: &str,
    now_ms: i64,
) -> Result<Relayed, SqlError> {
    let mut done = Relayed::default();
    for _ in 0..ROUNDS {
        let rows = db
            .query(
                CLAIM,
                &[
                    claim.into(),
                    now_ms.into(),
                    (now_ms + CLAIM_MS).into(),
                    batch.into(),
                    ROUND.into(),
                ],
            )
            .await?;
        let claimed = rows.len();
        let mut messages = Vec::with_capacity(claimed);
        for row in rows {
            messages.push((
                row.int(0)?,
                row.text(1)?,
                Outgoing {
                    body: row.text(2)?,
                    request_id: row.opt_text(3)?,
                },
            ));
        }
        messages.sort_by_key(|(id, _, _)| *id);
        // Queues in the order of their oldest message; each queue's messages oldest first.
        let mut queues: Vec<(String, Vec<Outgoing>)> = Vec::new();
        for (_, queue, message) in messages {
            match queues.iter_mut().find(|(q, _)| *q == queue) {
                Some((_, list)) => list.push(message),
                None => queues.push((queue, vec![message])),
            }
        }
        for (queue, list) in queues {
            match sender.send(&queue, &list).await {
                Ok(()) => {
                    db.execute(SENT, &[claim.into(), queue.into(), now_ms.into()])
                        .await?;
                    done.sent += list.len();
                }
                Err(why) => {
                    db.execute(FAILED, &[claim.into(), queue.into(), why.into()])
                        .await?;
                    done.failed += list.len();
                }
            }
        }
        if i64::try_from(claimed).unwrap_or(i64::MAX) < ROUND {
            break;
        }
    }
    Ok(done)
}

/// Unsent rows: how many, and when the oldest was staged (epoch ms).
pub async fn pending<E: Executor + ?Sized>(db: &mut E) -> Result<(i64, Option<i64>), SqlError> {
    let row = db.query_opt(PENDING, &[]).await?.unwrap_or_default();
    Ok((row.opt_int(0)?.unwrap_or(0), row.opt_int(1)?))
}

/// Deletes rows sent more than [`KEEP_SENT_MS`] before `now_ms`; how many.
pub async fn prune<E: Executor + ?Sized>(db: &mut E, now_ms: i64) -> Result<u64, SqlError> {
    db.execute(PRUNE, &[(now_ms - KEEP_SENT_MS).into()]).await
}
