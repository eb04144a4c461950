//! The queue engine on SQLite and PostgreSQL, plus transactional enqueue ([`Tx`]).

mod postgres;
mod sqlite;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cognomega_core::queue::{OutgoingMessage, QueueError, QueueName, SendReceipt};
use cognomega_core::time::UnixMillis;
use tokio::sync::Notify;

pub use postgres::PgQueue;
pub(crate) use postgres::PgShared;
pub use sqlite::{SendGroup, SqliteQueue};

/// Default dedup window when a queue was never declared (24 h, as in `QueueSettings`).
pub(crate) const DEFAULT_DEDUP_WINDOW_MS: i64 = 24 * 3600 * 1000;

/// How long an idle consumer sleeps between polls when no wake-up hint arrives.
pub(crate) const IDLE_POLL_CAP: Duration = Duration::from_secs(1);

/// Wall-clock now, in epoch milliseconds.
pub(crate) fn now_ms() -> UnixMillis {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    UnixMillis(i64::try_from(ms).unwrap_or(i64::MAX))
}

/// Translates a driver error: connection-level problems are `Unavailable` (retry later),
/// everything else is a backend error.
/// New message ids from a bulk INSERT's `RETURNING id`, in insertion order (RETURNING's own
/// order is unspecified; both engines hand ids out in row order), checked to be one per row.
pub(crate) fn inserted_ids(mut ids: Vec<i64>, rows: usize) -> Result<Vec<i64>, QueueError> {
    ids.sort_unstable();
    if ids.len() != rows {
        return Err(QueueError::Backend(format!(
            "inserted {} of {rows} messages",
            ids.len()
        )));
    }
    Ok(ids)
}

pub(crate) fn map_err(err: sqlx::Error) -> QueueError {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Tls(_) => QueueError::Unavailable(err.to_string()),
        sqlx::Error::Database(db) if is_transient(db.code().as_deref()) => {
            QueueError::Unavailable(db.to_string())
        }
        other => QueueError::Backend(other.to_string()),
    }
}

/// SQLSTATE / SQLite codes worth retrying: serialization failures, deadlocks, busy/locked,
/// admin shutdown, too many connections.
fn is_transient(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("40001" | "40P01" | "57P01" | "53300" | "5" | "6" | "517" | "261")
    )
}

/// In-process wake-up hints per queue (the SQLite shape's substitute for LISTEN/NOTIFY, and
/// the fan-out point for PostgreSQL notifications inside one process).
#[derive(Debug, Default)]
pub struct Wakers {
    map: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Wakers {
    pub(crate) fn get(&self, queue: &str) -> Arc<Notify> {
        let mut map = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(queue.to_owned()).or_default().clone()
    }

    /// Wakes every waiter of `queue`, and leaves one permit so a consumer that was between an
    /// empty claim and its wait does not sleep through the message.
    pub(crate) fn wake(&self, queue: &str) {
        let notify = self.get(queue);
        notify.notify_waiters();
        notify.notify_one();
    }

    /// Wakes every queue seen so far: after a lost wake-up channel nobody knows what was missed.
    pub(crate) fn wake_all(&self) {
        let all: Vec<Arc<Notify>> = self
            .map
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .values()
            .cloned()
            .collect();
        for notify in all {
            notify.notify_waiters();
            notify.notify_one();
        }
    }
}

/// Sleeps until `queue` is woken, `until` passes, or `max_wait` elapses.
pub(crate) async fn wait_woken(wakers: &Wakers, queue: &QueueName, max_wait: Duration) {
    let notify = wakers.get(queue.as_str());
    let _ = tokio::time::timeout(max_wait, notify.notified()).await;
}

/// A transaction in which a producer's own writes and its queue sends commit together, or not
/// at all (transactional outbox).
#[derive(Debug)]
pub enum Tx {
    /// SQLite: the single writer connection, plus the queues to wake on commit.
    Sqlite {
        /// The open transaction; run business SQL on `&mut *tx`.
        tx: sqlx::Transaction<'static, sqlx::Sqlite>,
        /// Queues sent to, woken after commit.
        wake: Vec<QueueName>,
        /// Where to wake them.
        wakers: Arc<Wakers>,
    },
    /// PostgreSQL: the transaction, plus the queues to NOTIFY about after commit (see
    /// [`postgres::PgQueue::wake_after_commit`]).
    Postgres {
        /// The open transaction; run business SQL on `&mut *tx`.
        tx: sqlx::Transaction<'static, sqlx::Postgres>,
        /// Queues sent to, woken after commit.
        wake: Vec<QueueName>,
        /// The driver that wakes them.
        queues: postgres::PgQueue,
    },
}

impl Tx {
    /// Sends one message to `queue` per row of `select` (columns `body`: JSON text,
    /// `request_id`: text or NULL; parameters `$1..` = `args`) inside this transaction, in one
    /// `INSERT … SELECT`: the rows never leave the database. Returns how many were sent.
    pub async fn send_rows(
        &mut self,
        queue: &QueueName,
        select: &str,
        args: &[cognomega_core::sql::Value],
    ) -> Result<u64, QueueError> {
        let q = args.len() + 1;
        let mut all = args.to_vec();
        all.push(queue.as_str().into());
        let sent = match self {
            Self::Sqlite { tx, .. } => {
                all.push(now_ms().0.into());
                let insert = format!(
                    "INSERT INTO queue_messages (queue, body, content_type, request_id, enqueued_at, visible_at)
                     SELECT ${q}, CAST(s.body AS BLOB), 'application/json', s.request_id, ${t}, ${t}
                     FROM ({select}) AS s",
                    t = q + 1
                );
                crate::sql::sqlite_execute(&mut **tx, &insert, &all).await
            }
            Self::Postgres { tx, .. } => {
                let insert = format!(
                    "INSERT INTO queue_messages (queue, body, content_type, request_id, visible_at)
                     SELECT ${q}, convert_to(s.body, 'UTF8'), 'application/json', s.request_id, now()
                     FROM ({select}) AS s"
                );
                crate::sql::postgres_execute(&mut **tx, &insert, &all).await
            }
        }
        .map_err(|e| QueueError::Backend(e.to_string()))?;
        if sent > 0 {
            let wake = match self {
                Self::Sqlite { wake, .. } | Self::Postgres { wake, .. } => wake,
            };
            if !wake.contains(queue) {
                wake.push(queue.clone());
            }
        }
        Ok(sent)
    }

    /// Sends messages inside this transaction.
    pub async fn send_batch(
        &mut self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<SendReceipt>, QueueError> {
        match self {
            Self::Sqlite { tx, wake, .. } => {
                let receipts = sqlite::send_batch(tx, queue, messages, now_ms()).await?;
                if !wake.contains(queue) {
                    wake.push(queue.clone());
                }
                Ok(receipts)
            }
            Self::Postgres { tx, wake, .. } => {
                let wakes = postgres::wakes_consumers(&messages);
                let receipts = postgres::send_batch(tx, queue, messages).await?;
                if wakes && !wake.contains(queue) {
                    wake.push(queue.clone());
                }
                Ok(receipts)
            }
        }
    }

    /// Sends one message inside this transaction.
    pub async fn send(
        &mut self,
        queue: &QueueName,
        message: OutgoingMessage,
    ) -> Result<SendReceipt, QueueError> {
        let mut receipts = self.send_batch(queue, vec![message]).await?;
        receipts
            .pop()
            .ok_or_else(|| QueueError::Backend("send returned no receipt".into()))
    }

    /// Commits business writes and messages together, then wakes consumers.
    pub async fn commit(self) -> Result<(), QueueError> {
        match self {
            Self::Sqlite { tx, wake, wakers } => {
                tx.commit().await.map_err(map_err)?;
                for queue in &wake {
                    wakers.wake(queue.as_str());
                }
            }
            Self::Postgres { tx, wake, queues } => {
                tx.commit().await.map_err(map_err)?;
                for queue in &wake {
                    queues.wake_after_commit(queue);
                }
            }
        }
        Ok(())
    }

    /// Rolls back: neither the business writes nor the messages exist afterwards.
    pub async fn rollback(self) -> Result<(), QueueError> {
        match self {
            Self::Sqlite { tx, .. } => tx.rollback().await.map_err(map_err),
            Self::Postgres { tx, .. } => tx.rollback().await.map_err(map_err),
        }
    }
}

/// A dead-letter row as both drivers select it: id, original queue, attempts, last error,
/// enqueued at (ms), dead at (ms), body (or its first bytes).
pub(crate) type DeadRow = (
    i64,
    Option<String>,
    i64,
    Option<String>,
    i64,
    Option<i64>,
    Vec<u8>,
);

/// A dead-letter row as the contract shows it (the body as a short lossy UTF-8 preview).
pub(crate) fn dead_message(row: DeadRow) -> cognomega_core::queue::DeadMessage {
    let (id, original, attempts, error, enqueued_at, dead_at, body) = row;
    cognomega_core::queue::admin::dead_message(
        id,
        original.as_deref(),
        attempts,
        error,
        enqueued_at,
        dead_at,
        &body,
    )
}

/// The dead-letter queue `queue` was declared with, if any.
pub async fn declared_dead_letter_queue(
    db: &crate::Database,
    queue: &QueueName,
) -> Result<Option<QueueName>, crate::StoreError> {
    Ok(declared_settings(db)
        .await?
        .into_iter()
        .find(|(name, _)| name == queue.as_str())
        .and_then(|(_, settings)| {
            settings
                .get("dead_letter_queue")
                .and_then(serde_json::Value::as_str)
                .and_then(|q| QueueName::parse(q).ok())
        }))
}

/// Every declared queue with its settings as stored (JSON), by name.
pub async fn declared_settings(
    db: &crate::Database,
) -> Result<Vec<(String, serde_json::Value)>, crate::StoreError> {
    const SQL: &str = "SELECT queue, settings FROM queue_settings ORDER BY queue";
    let rows: Vec<(String, String)> = match db {
        crate::Database::Sqlite(s) => sqlx::query_as(SQL).fetch_all(&s.read).await?,
        crate::Database::Postgres(pg) => {
            sqlx::query_as("SELECT queue, settings::text FROM queue_settings ORDER BY queue")
                .fetch_all(&pg.pool)
                .await?
        }
    };
    Ok(rows
        .into_iter()
        .map(|(q, s)| {
            let settings = serde_json::from_str(&s).unwrap_or(serde_json::Value::String(s));
            (q, settings)
        })
        .collect())
}
