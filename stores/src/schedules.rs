//! Schedule state: the leader lease (one row with a TTL) and the ticks already enqueued.
//!
//! Correctness does not rest on the lease: a tick is enqueued in the same transaction that
//! inserts its `(schedule, tick_at)` row, so two processes that both believe they lead (a
//! paused leader waking after its lease expired, clocks apart) still enqueue each tick once.
//! The lease only keeps the work (and the log lines) on one process, and lets a standby take
//! over within one TTL when the leader dies.
//!
//! Times are Unix milliseconds from the caller's clock in both dialects.

use std::collections::BTreeMap;

use cognomega_core::queue::{IdempotencyKey, MessageId, OutgoingMessage, QueueError, QueueName};
use cognomega_core::sql::{Executor as _, SqlError};
use cognomega_core::time::UnixMillis;

use crate::{Database, StoreError};

/// The current lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leader {
    /// Who holds it (`host:pid:uuid`).
    pub holder: String,
    /// Incremented every time the lease changes hands.
    pub term: i64,
    /// When it lapses unless renewed.
    pub expires_at: UnixMillis,
}

/// The last tick of a schedule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastTick {
    /// The tick's scheduled time.
    pub tick_at: UnixMillis,
    /// When it was enqueued.
    pub enqueued_at: UnixMillis,
    /// The message it produced.
    pub message_id: Option<MessageId>,
    /// The process that enqueued it.
    pub enqueued_by: String,
}

/// Takes or renews the lease for `$1` until `$2`, `$3` being now: the conflict branch applies
/// only while the lease is `$1`'s or has lapsed; otherwise the statement changes nothing and
/// returns no row. Returns `holder, term, expires_at`.
const ACQUIRE_LEASE: &str =
    "INSERT INTO schedule_leader (id, holder, term, expires_at) VALUES (1, $1, 1, $2)
     ON CONFLICT (id) DO UPDATE SET
         term = CASE WHEN schedule_leader.holder = excluded.holder
                     THEN schedule_leader.term ELSE schedule_leader.term + 1 END,
         holder = excluded.holder,
         expires_at = excluded.expires_at
     WHERE schedule_leader.holder = excluded.holder OR schedule_leader.expires_at <= $3
     RETURNING holder, term, expires_at";

/// Takes or renews the lease for `holder` until `now + ttl_ms`. Returns the lease when
/// `holder` leads afterwards, `None` when someone else holds an unexpired lease.
pub async fn acquire_lease(
    db: &Database,
    holder: &str,
    now: UnixMillis,
    ttl_ms: i64,
) -> Result<Option<Leader>, StoreError> {
    let expires = now.0.saturating_add(ttl_ms);
    let row = db
        .clone()
        .query_opt(
            ACQUIRE_LEASE,
            &[holder.into(), expires.into(), now.0.into()],
        )
        .await?;
    Ok(row.as_ref().map(leader_from).transpose()?)
}

/// A lease row: `holder, term, expires_at`.
fn leader_from(r: &cognomega_core::sql::Row) -> Result<Leader, SqlError> {
    Ok(Leader {
        holder: r.text(0)?,
        term: r.int(1)?,
        expires_at: UnixMillis(r.int(2)?),
    })
}

/// Expires the lease if `$1` holds it.
const RELEASE_LEASE: &str = "UPDATE schedule_leader SET expires_at = 0 WHERE holder = $1";

/// Gives the lease up (on shutdown) so a standby takes over at once instead of after the TTL.
pub async fn release_lease(db: &Database, holder: &str) -> Result<(), StoreError> {
    db.clone().execute(RELEASE_LEASE, &[holder.into()]).await?;
    Ok(())
}

/// The lease row: holder, term and expiry (ms).
const LEADER: &str = "SELECT holder, term, expires_at FROM schedule_leader WHERE id = 1";

/// The lease as stored (possibly expired).
pub async fn leader(db: &Database) -> Result<Option<Leader>, StoreError> {
    let row =
        cognomega_core::sql::Executor::query_opt(&mut crate::sql::Reader(db), LEADER, &[]).await?;
    Ok(row.as_ref().map(leader_from).transpose()?)
}

/// The latest enqueued tick of every schedule that has one: `schedule, tick_at, enqueued_at,
/// message_id, enqueued_by`.
const LAST_TICKS: &str = "SELECT t.schedule, t.tick_at, t.enqueued_at, t.message_id, t.enqueued_by
     FROM schedule_ticks t
     JOIN (SELECT schedule, MAX(tick_at) AS tick_at FROM schedule_ticks GROUP BY schedule) m
       ON m.schedule = t.schedule AND m.tick_at = t.tick_at";

/// The latest enqueued tick of every schedule that has one.
pub async fn last_ticks(db: &Database) -> Result<BTreeMap<String, LastTick>, StoreError> {
    let rows = crate::sql::Reader(db).query(LAST_TICKS, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| -> Result<_, SqlError> {
            Ok((
                r.text(0)?,
                LastTick {
                    tick_at: UnixMillis(r.int(1)?),
                    enqueued_at: UnixMillis(r.int(2)?),
                    message_id: r.opt_int(3)?.map(MessageId),
                    enqueued_by: r.text(4)?,
                },
            ))
        })
        .collect::<Result<_, _>>()?)
}

/// Records tick `$2` of schedule `$1`, enqueued at `$3` by `$4`, unless already recorded.
const INSERT_TICK: &str = "INSERT INTO schedule_ticks (schedule, tick_at, enqueued_at, enqueued_by) VALUES ($1, $2, $3, $4)
             ON CONFLICT (schedule, tick_at) DO NOTHING";

/// Records message `$3` as the one tick `$2` of schedule `$1` produced.
const TICK_MESSAGE: &str =
    "UPDATE schedule_ticks SET message_id = $3 WHERE schedule = $1 AND tick_at = $2";

/// Enqueues one tick: records `(schedule, tick)` and sends `body` to `queue` (idempotency key
/// `key`) in one transaction. Returns the message id, or `None` when the tick was already
/// enqueued (by this or another process).
#[allow(clippy::too_many_arguments)]
pub async fn enqueue_tick(
    db: &Database,
    schedule: &str,
    tick: UnixMillis,
    queue: &QueueName,
    body: &serde_json::Value,
    key: &str,
    holder: &str,
    now: UnixMillis,
) -> Result<Option<MessageId>, StoreError> {
    let mut tx = db.begin().await?;
    let inserted = cognomega_core::sql::Executor::execute(
        &mut tx,
        INSERT_TICK,
        &[schedule.into(), tick.0.into(), now.0.into(), holder.into()],
    )
    .await?;
    if inserted == 0 {
        tx.rollback().await?;
        return Ok(None);
    }
    let invalid = |what: &str, e: &dyn std::fmt::Display| {
        StoreError::Queue(QueueError::Invalid(format!(
            "schedule {schedule}: {what}: {e}"
        )))
    };
    let key = IdempotencyKey::parse(key).map_err(|e| invalid("key", &e))?;
    let msg = OutgoingMessage::json(body)
        .map_err(|e| invalid("body", &e))?
        .idempotency_key(key);
    let receipts = tx.send_batch(queue, vec![msg]).await?;
    let id = receipts.first().map(|r| r.id);
    if let Some(id) = id {
        cognomega_core::sql::Executor::execute(
            &mut tx,
            TICK_MESSAGE,
            &[schedule.into(), tick.0.into(), id.0.into()],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(id)
}

/// Every tick of schedule `$1`, oldest first.
const TICKS: &str = "SELECT tick_at, enqueued_at, message_id, enqueued_by FROM schedule_ticks
                 WHERE schedule = $1 ORDER BY tick_at";

/// Every tick of `schedule`, oldest first (for tests and audits).
pub async fn ticks(db: &Database, schedule: &str) -> Result<Vec<LastTick>, StoreError> {
    let rows = cognomega_core::sql::Executor::query(
        &mut crate::sql::Reader(db),
        TICKS,
        &[schedule.into()],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| -> Result<_, SqlError> {
            Ok(LastTick {
                tick_at: UnixMillis(r.int(0)?),
                enqueued_at: UnixMillis(r.int(1)?),
                message_id: r.opt_int(2)?.map(MessageId),
                enqueued_by: r.text(3)?,
            })
        })
        .collect::<Result<_, _>>()?)
}
