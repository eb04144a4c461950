//! The queue engine on SQLite (embedded default).
//!
//! All writes go through the single writer connection, so claims never race each other inside
//! one process; across processes SQLite's write lock serializes them. Where this differs from
//! the PostgreSQL adapter the query says why.

use std::collections::BTreeMap;
use std::time::Duration;

use cognomega_core::queue::{
    Claim, DeadMessage, DrainHistogram, LeaseToken, MessageId, OutgoingMessage, PruneReport,
    QueueDriver, QueueError, QueueName, QueueSettings, QueueStats, ReceivedMessage, SendReceipt,
    SettleReport, Settlement,
};
use cognomega_core::time::{duration_ms, UnixMillis};
use sqlx::{Acquire as _, QueryBuilder, Row, Sqlite, SqliteConnection};
use tokio::sync::oneshot;

use super::{
    dead_message, inserted_ids, map_err, now_ms, wait_woken, DeadRow, DEFAULT_DEDUP_WINDOW_MS,
    IDLE_POLL_CAP,
};
use crate::database::{SqliteDb, RELAXED_BEGIN};

/// Rows per multi-row INSERT: a fixed size keeps the prepared-statement cache warm, and stays
/// far below SQLite's 32,766 bound parameters.
const INSERT_CHUNK: usize = 500;

/// The SQLite queue driver.
#[derive(Debug, Clone)]
pub struct SqliteQueue {
    db: SqliteDb,
}

impl SqliteQueue {
    /// A driver over an open SQLite database.
    #[must_use]
    pub fn new(db: SqliteDb) -> Self {
        Self { db }
    }
}

/// Group commit for plain sends. With `synchronous = FULL` every commit is an fsync and the one
/// writer connection serializes them, so concurrent producers (every `POST /usage`) would each
/// pay a whole commit. A sender queues its batch; the first one to find no commit in progress
/// spawns one, which takes the writer, drains everything queued by then into one transaction (a
/// savepoint per sender, so one sender's failure stays its own) and answers every sender only
/// after the commit is durable. The commit runs in its own task, so a sender that goes away (a
/// client hanging up) cannot strand the others. A sender that finds nobody committing and
/// nobody queued commits its own batch in its own task (nobody else's answer depends on it) and
/// hands whatever queued meanwhile to a committer task when it is done or dropped.
#[derive(Default)]
pub struct SendGroup {
    state: std::sync::Mutex<GroupState>,
}

impl std::fmt::Debug for SendGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let state = self.lock();
        f.debug_struct("SendGroup")
            .field("pending", &state.pending.len())
            .field("committing", &state.committing)
            .finish()
    }
}

#[derive(Default)]
struct GroupState {
    pending: Vec<PendingSend>,
    committing: bool,
}

struct PendingSend {
    queue: QueueName,
    messages: Vec<OutgoingMessage>,
    reply: oneshot::Sender<Result<Vec<SendReceipt>, QueueError>>,
}

impl SendGroup {
    fn lock(&self) -> std::sync::MutexGuard<'_, GroupState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Resets `committing` if the commit task ends abnormally, so the next sender starts another.
struct CommitGuard {
    db: SqliteDb,
    /// Cleared when the loop ends normally: by then another sender may already have started
    /// the next committer, whose queue this guard must not touch.
    armed: bool,
}

impl Drop for CommitGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut state = self.db.sends.lock();
        if state.committing {
            state.committing = false;
            // Senders still queued get an error rather than waiting forever.
            state.pending.clear();
        }
    }
}

/// Held by a sender committing alone in its own task: when it is done (or dropped half-way,
/// its client gone), senders that queued meanwhile get a committer task, so none is stranded
/// behind a request that went away.
struct Handover {
    db: SqliteDb,
}

impl Drop for Handover {
    fn drop(&mut self) {
        let mut state = self.db.sends.lock();
        if state.pending.is_empty() {
            state.committing = false;
            return;
        }
        match tokio::runtime::Handle::try_current() {
            // `committing` stays set: the committer owns it now.
            Ok(runtime) => drop(runtime.spawn(commit_sends(self.db.clone()))),
            Err(_) => {
                // No runtime left to commit on (shutting down): the queued senders get an
                // error rather than waiting forever.
                state.committing = false;
                state.pending.clear();
            }
        }
    }
}

/// One sender's messages committed on the writer, durably, as [`commit_group`] would for a
/// group of one.
async fn commit_alone(
    db: &SqliteDb,
    queue: &QueueName,
    messages: Vec<OutgoingMessage>,
) -> Result<Vec<SendReceipt>, QueueError> {
    let mut conn = db.write.acquire().await.map_err(map_err)?;
    commit_one(&mut conn, queue, messages).await
}

/// One sender's messages, committed durably on `conn`: as one autocommit statement when the
/// send [`is_one_statement`], else in a transaction (rolled back, if the send fails, on drop).
async fn commit_one(
    conn: &mut SqliteConnection,
    queue: &QueueName,
    messages: Vec<OutgoingMessage>,
) -> Result<Vec<SendReceipt>, QueueError> {
    if is_one_statement(&messages) {
        return insert_lone(conn, queue, messages).await;
    }
    let mut tx = sqlx::Connection::begin_with(&mut *conn, DURABLE_BEGIN)
        .await
        .map_err(map_err)?;
    let receipts = send_batch(&mut tx, queue, messages, now_ms()).await?;
    tx.commit().await.map_err(map_err)?;
    Ok(receipts)
}

/// Commits queued sends, group after group, until none are left.
async fn commit_sends(db: SqliteDb) {
    let mut guard = CommitGuard {
        db: db.clone(),
        armed: true,
    };
    loop {
        // Waiting for the writer is what lets a group form.
        let conn = db.write.acquire().await;
        let group = {
            let mut state = db.sends.lock();
            if state.pending.is_empty() {
                state.committing = false;
                guard.armed = false;
                break;
            }
            std::mem::take(&mut state.pending)
        };
        let mut replies = Vec::with_capacity(group.len());
        let outcome = match conn {
            Ok(mut conn) => commit_group(&mut conn, group, &mut replies).await,
            Err(e) => {
                replies.extend(
                    group
                        .into_iter()
                        .map(|p| (p.queue, p.reply, Ok(Vec::new()))),
                );
                Err(map_err(e))
            }
        };
        for (queue, reply, result) in replies {
            let result = match (&outcome, result) {
                (Err(e), _) => Err(e.clone()),
                (Ok(()), r) => r,
            };
            if result.is_ok() {
                db.wakers.wake(queue.as_str());
            }
            let _ = reply.send(result);
        }
    }
    drop(guard);
}

type Reply = (
    QueueName,
    oneshot::Sender<Result<Vec<SendReceipt>, QueueError>>,
    Result<Vec<SendReceipt>, QueueError>,
);

/// Begins a producer's transaction that commits with an fsync.
const DURABLE_BEGIN: &str = "PRAGMA synchronous = FULL; BEGIN";

/// Put before a producer's lone autocommit statement: it commits with an fsync.
const DURABLE_PREFIX: &str = "PRAGMA synchronous = FULL; ";

/// One transaction for the whole group; `replies` gets each sender's own result, which stands
/// only if the returned commit succeeds.
async fn commit_group(
    conn: &mut SqliteConnection,
    group: Vec<PendingSend>,
    replies: &mut Vec<Reply>,
) -> Result<(), QueueError> {
    if group.len() == 1 {
        // A lone sender needs no savepoint: its own transaction (or statement) is the group's.
        if let Some(p) = group.into_iter().next() {
            let result = commit_one(conn, &p.queue, p.messages).await;
            replies.push((p.queue, p.reply, result));
        }
        return Ok(());
    }
    let mut group = group.into_iter();
    // Producers answer clients once this commits: it must reach the disk. (The pool also
    // resets it after any holder that relaxed it; said here so the promise is visible where it
    // is made.) One round trip to the connection's thread for both statements.
    let mut tx = match sqlx::Connection::begin_with(&mut *conn, DURABLE_BEGIN).await {
        Ok(tx) => tx,
        Err(e) => {
            replies.extend(group.map(|p| (p.queue, p.reply, Ok(Vec::new()))));
            return Err(map_err(e));
        }
    };
    let now = now_ms();
    while let Some(p) = group.next() {
        let result = match tx.begin().await {
            Ok(mut sp) => match send_batch(&mut sp, &p.queue, p.messages, now).await {
                Ok(receipts) => sp.commit().await.map(|()| receipts).map_err(map_err),
                Err(e) => {
                    // Rolling back the savepoint undoes this sender's rows only.
                    let _ = sp.rollback().await;
                    Err(e)
                }
            },
            Err(e) => {
                replies.push((p.queue, p.reply, Ok(Vec::new())));
                replies.extend(group.map(|p| (p.queue, p.reply, Ok(Vec::new()))));
                return Err(map_err(e));
            }
        };
        replies.push((p.queue, p.reply, result));
    }
    tx.commit().await.map_err(map_err)
}

fn ids_json(ids: impl IntoIterator<Item = MessageId>) -> String {
    let ids: Vec<i64> = ids.into_iter().map(|id| id.0).collect();
    serde_json::to_string(&ids).unwrap_or_else(|_| "[]".into())
}

/// Sends inside an open write transaction (used by the driver and by [`super::Tx`]).
pub(crate) async fn send_batch(
    conn: &mut SqliteConnection,
    queue: &QueueName,
    messages: Vec<OutgoingMessage>,
    now: UnixMillis,
) -> Result<Vec<SendReceipt>, QueueError> {
    let mut receipts: Vec<Option<SendReceipt>> = vec![None; messages.len()];
    let mut plain: Vec<(usize, OutgoingMessage)> = Vec::with_capacity(messages.len());
    for (i, msg) in messages.into_iter().enumerate() {
        if msg.options.idempotency_key.is_some() {
            // Keyed sends go one by one, in order, so a key repeated inside one batch dedups
            // against the first occurrence.
            flush_plain(conn, queue, &mut plain, &mut receipts, now).await?;
            receipts[i] = Some(send_keyed(conn, queue, msg, now).await?);
        } else {
            plain.push((i, msg));
        }
    }
    flush_plain(conn, queue, &mut plain, &mut receipts, now).await?;
    receipts
        .into_iter()
        .map(|r| r.ok_or_else(|| QueueError::Backend("a message got no id".into())))
        .collect()
}

async fn flush_plain(
    conn: &mut SqliteConnection,
    queue: &QueueName,
    plain: &mut Vec<(usize, OutgoingMessage)>,
    receipts: &mut [Option<SendReceipt>],
    now: UnixMillis,
) -> Result<(), QueueError> {
    for chunk in plain.chunks(INSERT_CHUNK) {
        let ids = insert_plain(conn, "", queue, chunk, now).await?;
        for ((i, _), id) in chunk.iter().zip(ids) {
            receipts[*i] = Some(SendReceipt {
                id: MessageId(id),
                duplicate: false,
            });
        }
    }
    plain.clear();
    Ok(())
}

/// One multi-row INSERT of `chunk` (after `prefix`, statements run in the same trip to the
/// connection's thread); the new ids in insertion order.
async fn insert_plain(
    conn: &mut SqliteConnection,
    prefix: &str,
    queue: &QueueName,
    chunk: &[(usize, OutgoingMessage)],
    now: UnixMillis,
) -> Result<Vec<i64>, QueueError> {
    let mut qb: QueryBuilder<Sqlite> = QueryBuilder::new(prefix);
    qb.push(
        "INSERT INTO queue_messages (queue, body, content_type, request_id, enqueued_at, visible_at) ",
    );
    qb.push_values(chunk, |mut row, (_, msg)| {
        row.push_bind(queue.as_str())
            .push_bind(msg.body.as_slice())
            .push_bind(msg.options.content_type.as_deref())
            .push_bind(msg.options.request_id.as_deref())
            .push_bind(now.0)
            .push_bind(now.plus(msg.options.delay).0);
    });
    qb.push(" RETURNING id");
    let ids: Vec<i64> = qb
        .build_query_scalar()
        .fetch_all(&mut *conn)
        .await
        .map_err(map_err)?;
    // AUTOINCREMENT ids follow insertion order.
    inserted_ids(ids, chunk.len())
}

/// Whether a send is a single INSERT (no keyed message, one chunk), which SQLite commits on its
/// own: no BEGIN and COMMIT around it.
fn is_one_statement(messages: &[OutgoingMessage]) -> bool {
    !messages.is_empty()
        && messages.len() <= INSERT_CHUNK
        && messages.iter().all(|m| m.options.idempotency_key.is_none())
}

/// A send that [`is_one_statement`], committed on its own.
async fn insert_lone(
    conn: &mut SqliteConnection,
    queue: &QueueName,
    messages: Vec<OutgoingMessage>,
) -> Result<Vec<SendReceipt>, QueueError> {
    let plain: Vec<(usize, OutgoingMessage)> = messages.into_iter().enumerate().collect();
    let ids = insert_plain(conn, DURABLE_PREFIX, queue, &plain, now_ms()).await?;
    Ok(ids
        .into_iter()
        .map(|id| SendReceipt {
            id: MessageId(id),
            duplicate: false,
        })
        .collect())
}

async fn send_keyed(
    conn: &mut SqliteConnection,
    queue: &QueueName,
    msg: OutgoingMessage,
    now: UnixMillis,
) -> Result<SendReceipt, QueueError> {
    let key = msg
        .options
        .idempotency_key
        .as_ref()
        .map(|k| k.as_str().to_owned())
        .unwrap_or_default();
    let existing: Option<i64> = sqlx::query_scalar(
        "SELECT message_id FROM queue_dedup WHERE queue = ?1 AND key = ?2 AND expires_at > ?3",
    )
    .bind(queue.as_str())
    .bind(&key)
    .bind(now.0)
    .fetch_optional(&mut *conn)
    .await
    .map_err(map_err)?;
    if let Some(id) = existing {
        return Ok(SendReceipt {
            id: MessageId(id),
            duplicate: true,
        });
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO queue_messages (queue, body, content_type, request_id, idempotency_key, enqueued_at, visible_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) RETURNING id",
    )
    .bind(queue.as_str())
    .bind(msg.body.as_slice())
    .bind(msg.options.content_type.as_deref())
    .bind(msg.options.request_id.as_deref())
    .bind(&key)
    .bind(now.0)
    .bind(now.plus(msg.options.delay).0)
    .fetch_one(&mut *conn)
    .await
    .map_err(map_err)?;
    sqlx::query(
        "INSERT INTO queue_dedup (queue, key, message_id, expires_at)
         VALUES (?1, ?2, ?3, ?4 + COALESCE(
             (SELECT json_extract(settings, '$.dedup_window') FROM queue_settings WHERE queue = ?1), ?5))
         ON CONFLICT (queue, key) DO UPDATE
             SET message_id = excluded.message_id, expires_at = excluded.expires_at",
    )
    .bind(queue.as_str())
    .bind(&key)
    .bind(id)
    .bind(now.0)
    .bind(DEFAULT_DEDUP_WINDOW_MS)
    .execute(&mut *conn)
    .await
    .map_err(map_err)?;
    Ok(SendReceipt {
        id: MessageId(id),
        duplicate: false,
    })
}

/// Applies settlements inside an open write transaction; returns the report and the queues
/// that gained visible messages (to wake after commit).
async fn settle_in(
    conn: &mut SqliteConnection,
    queue: &QueueName,
    settings: &QueueSettings,
    items: &[Settlement],
    now: UnixMillis,
) -> Result<(SettleReport, Vec<QueueName>), QueueError> {
    let mut report = SettleReport::default();
    let mut wake = Vec::new();
    let mut acks: BTreeMap<LeaseToken, Vec<MessageId>> = BTreeMap::new();
    for item in items {
        match item {
            Settlement::Ack { id, token } => acks.entry(*token).or_default().push(*id),
            Settlement::Retry {
                id,
                token,
                delay,
                error,
            } => {
                let done = sqlx::query(
                    "UPDATE queue_messages SET state = 0, visible_at = ?1, lease_token = NULL, last_error = ?2
                     WHERE id = ?3 AND lease_token = ?4 AND state = 1",
                )
                .bind(now.plus(*delay).0)
                .bind(error.as_deref())
                .bind(id.0)
                .bind(token.0)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?
                .rows_affected();
                if done == 1 {
                    report.retried += 1;
                    if delay.is_zero() && !wake.contains(queue) {
                        wake.push(queue.clone());
                    }
                } else {
                    report.refused.push(*id);
                }
            }
            Settlement::DeadLetter { id, token, error } => {
                let done = match &settings.dead_letter_queue {
                    Some(dlq) => {
                        let n = sqlx::query(
                            "UPDATE queue_messages
                             SET queue = ?1, original_queue = queue, failed_attempts = attempts, attempts = 0,
                                 state = 0, visible_at = ?2, lease_token = NULL, dead_at = ?2, last_error = ?3
                             WHERE id = ?4 AND lease_token = ?5 AND state = 1",
                        )
                        .bind(dlq.as_str())
                        .bind(now.0)
                        .bind(error)
                        .bind(id.0)
                        .bind(token.0)
                        .execute(&mut *conn)
                        .await
                        .map_err(map_err)?
                        .rows_affected();
                        if n == 1 {
                            report.dead_lettered += 1;
                            if !wake.contains(dlq) {
                                wake.push(dlq.clone());
                            }
                        }
                        n
                    }
                    None => {
                        let n = sqlx::query("DELETE FROM queue_messages WHERE id = ?1 AND lease_token = ?2 AND state = 1")
                            .bind(id.0)
                            .bind(token.0)
                            .execute(&mut *conn)
                            .await
                            .map_err(map_err)?
                            .rows_affected();
                        if n == 1 {
                            report.dropped += 1;
                            tracing::warn!(queue = %queue, message_id = %id, error = %error,
                                "message dropped after its last retry: the queue has no dead_letter_queue");
                        }
                        n
                    }
                };
                if done != 1 {
                    report.refused.push(*id);
                }
            }
            Settlement::Release { id, token } => {
                let done = sqlx::query(
                    "UPDATE queue_messages SET state = 0, visible_at = ?1, lease_token = NULL,
                         attempts = MAX(attempts - 1, 0)
                     WHERE id = ?2 AND lease_token = ?3 AND state = 1",
                )
                .bind(now.0)
                .bind(id.0)
                .bind(token.0)
                .execute(&mut *conn)
                .await
                .map_err(map_err)?
                .rows_affected();
                if done == 1 {
                    report.released += 1;
                    if !wake.contains(queue) {
                        wake.push(queue.clone());
                    }
                } else {
                    report.refused.push(*id);
                }
            }
        }
    }
    let mut hist = DrainHistogram::empty();
    for (token, ids) in acks {
        let sql = if settings.retain_acked.is_zero() {
            "DELETE FROM queue_messages
             WHERE lease_token = ?1 AND state = 1 AND id IN (SELECT value FROM json_each(?2))
             RETURNING id, enqueued_at"
        } else {
            "UPDATE queue_messages SET state = 2, acked_at = ?3, lease_token = NULL
             WHERE lease_token = ?1 AND state = 1 AND id IN (SELECT value FROM json_each(?2))
             RETURNING id, enqueued_at"
        };
        let rows = sqlx::query(sql)
            .bind(token.0)
            .bind(ids_json(ids.iter().copied()))
            .bind(now.0)
            .fetch_all(&mut *conn)
            .await
            .map_err(map_err)?;
        let mut applied = std::collections::HashSet::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = row.try_get(0).map_err(map_err)?;
            let enqueued: i64 = row.try_get(1).map_err(map_err)?;
            applied.insert(id);
            let ms = now.0.saturating_sub(enqueued).max(0);
            hist.add(
                DrainHistogram::bucket_of(ms),
                1,
                u64::try_from(ms).unwrap_or(0),
            );
        }
        report.acked += rows.len() as u64;
        report
            .refused
            .extend(ids.into_iter().filter(|id| !applied.contains(&id.0)));
    }
    record_histogram(conn, queue, &hist).await?;
    Ok((report, wake))
}

async fn record_histogram(
    conn: &mut SqliteConnection,
    queue: &QueueName,
    hist: &DrainHistogram,
) -> Result<(), QueueError> {
    if hist.count() == 0 {
        return Ok(());
    }
    // The sum is attributed to the first non-empty bucket row; readers only use the total.
    let mut sum = i64::try_from(hist.sum_ms).unwrap_or(i64::MAX);
    for (bucket, &count) in hist.counts.iter().enumerate().filter(|(_, c)| **c > 0) {
        sqlx::query(
            "INSERT INTO queue_drain_histogram (queue, bucket, count, sum_ms) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (queue, bucket) DO UPDATE
                 SET count = count + excluded.count, sum_ms = sum_ms + excluded.sum_ms",
        )
        .bind(queue.as_str())
        .bind(i64::try_from(bucket).unwrap_or(0))
        .bind(i64::try_from(count).unwrap_or(i64::MAX))
        .bind(sum)
        .execute(&mut *conn)
        .await
        .map_err(map_err)?;
        sum = 0;
    }
    Ok(())
}

#[async_trait::async_trait]
impl QueueDriver for SqliteQueue {
    async fn declare(&self, queue: &QueueName, settings: &QueueSettings) -> Result<(), QueueError> {
        settings
            .validate(queue)
            .map_err(|e| QueueError::Invalid(e.to_string()))?;
        let json =
            serde_json::to_string(settings).map_err(|e| QueueError::Invalid(e.to_string()))?;
        sqlx::query(
            "INSERT INTO queue_settings (queue, settings, updated_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (queue) DO UPDATE SET settings = excluded.settings, updated_at = excluded.updated_at",
        )
        .bind(queue.as_str())
        .bind(json)
        .bind(now_ms().0)
        .execute(&self.db.write)
        .await
        .map_err(map_err)?;
        Ok(())
    }

    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<SendReceipt>, QueueError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let (reply, receipts) = oneshot::channel();
        let lead = {
            let mut state = self.db.sends.lock();
            if !state.committing && state.pending.is_empty() {
                state.committing = true;
                Err(messages)
            } else {
                state.pending.push(PendingSend {
                    queue: queue.clone(),
                    messages,
                    reply,
                });
                Ok(!std::mem::replace(&mut state.committing, true))
            }
        };
        let lead = match lead {
            Ok(lead) => lead,
            Err(messages) => {
                // Nobody else is sending: commit in this task, saving the hand-off to a committer
                // task and back (two thread wake-ups on the path of every lone request).
                let handover = Handover {
                    db: self.db.clone(),
                };
                let sent = commit_alone(&self.db, queue, messages).await;
                drop(handover);
                if sent.is_ok() {
                    self.db.wakers.wake(queue.as_str());
                }
                return sent;
            }
        };
        if lead {
            tokio::spawn(commit_sends(self.db.clone()));
        }
        receipts
            .await
            .map_err(|_| QueueError::Backend("the group commit went away".into()))?
    }

    async fn claim(
        &self,
        queue: &QueueName,
        settings: &QueueSettings,
        max: usize,
    ) -> Result<Claim, QueueError> {
        let now = now_ms();
        let lease_until = now.plus(settings.lease);
        // Consumer-side: lost in a machine crash, it is redone (see `Database::begin_in_consumer`).
        let mut tx = self
            .db
            .begin_relaxed(RELAXED_BEGIN)
            .await
            .map_err(map_err)?;
        // No sequences in SQLite: the token is the counter's next value, taken in the same write
        // transaction. The counter is bumped only when something was claimed, so an idle poll
        // writes nothing and costs no fsync.
        let rows = sqlx::query(
            "UPDATE queue_messages
             SET state = 1, attempts = attempts + 1, visible_at = ?1,
                 lease_token = (SELECT value + 1 FROM queue_counters WHERE name = 'lease_token')
             WHERE id IN (
                 SELECT id FROM queue_messages
                 WHERE queue = ?2 AND state < 2 AND visible_at <= ?3
                 ORDER BY visible_at, id
                 LIMIT ?4)
             RETURNING id, body, content_type, request_id, attempts, enqueued_at, lease_token",
        )
        .bind(lease_until.0)
        .bind(queue.as_str())
        .bind(now.0)
        .bind(i64::try_from(max).unwrap_or(i64::MAX))
        .fetch_all(&mut *tx)
        .await
        .map_err(map_err)?;
        if rows.is_empty() {
            tx.rollback().await.map_err(map_err)?;
            return Ok(Claim {
                token: LeaseToken(0),
                lease_until,
                messages: Vec::new(),
                dead: Vec::new(),
            });
        }
        sqlx::query("UPDATE queue_counters SET value = value + 1 WHERE name = 'lease_token'")
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
        let mut token = LeaseToken(0);
        let mut messages = Vec::with_capacity(rows.len());
        for row in rows {
            token = LeaseToken(row.try_get("lease_token").map_err(map_err)?);
            messages.push(ReceivedMessage {
                id: MessageId(row.try_get("id").map_err(map_err)?),
                body: row.try_get("body").map_err(map_err)?,
                content_type: row.try_get("content_type").map_err(map_err)?,
                request_id: row.try_get("request_id").map_err(map_err)?,
                attempts: u32::try_from(row.try_get::<i64, _>("attempts").map_err(map_err)?)
                    .unwrap_or(u32::MAX),
                enqueued_at: UnixMillis(row.try_get("enqueued_at").map_err(map_err)?),
            });
        }
        messages.sort_unstable_by_key(|m| m.id);
        let (messages, dead, exhausted) = split_exhausted(messages, settings, token);
        let mut wake = Vec::new();
        if !exhausted.is_empty() {
            // The UPDATE above counted a delivery that is not being made: take it back, so the
            // dead message shows the deliveries it really got.
            sqlx::query(
                "UPDATE queue_messages SET attempts = attempts - 1
                 WHERE id IN (SELECT value FROM json_each(?1))",
            )
            .bind(ids_json(exhausted.iter().map(Settlement::id)))
            .execute(&mut *tx)
            .await
            .map_err(map_err)?;
            let (_, w) = settle_in(&mut tx, queue, settings, &exhausted, now).await?;
            wake = w;
        }
        tx.commit().await.map_err(map_err)?;
        for q in &wake {
            self.db.wakers.wake(q.as_str());
        }
        Ok(Claim {
            token,
            lease_until,
            messages,
            dead,
        })
    }

    async fn extend_lease(
        &self,
        token: LeaseToken,
        ids: &[MessageId],
        lease: Duration,
    ) -> Result<u64, QueueError> {
        let res = sqlx::query(
            "UPDATE queue_messages SET visible_at = ?1
             WHERE lease_token = ?2 AND state = 1 AND id IN (SELECT value FROM json_each(?3))",
        )
        .bind(now_ms().plus(lease).0)
        .bind(token.0)
        .bind(ids_json(ids.iter().copied()))
        .execute(&self.db.write)
        .await
        .map_err(map_err)?;
        Ok(res.rows_affected())
    }

    async fn settle(
        &self,
        queue: &QueueName,
        settings: &QueueSettings,
        items: &[Settlement],
    ) -> Result<SettleReport, QueueError> {
        if items.is_empty() {
            return Ok(SettleReport::default());
        }
        // Consumer-side: lost in a machine crash, it is redone (see `Database::begin_in_consumer`).
        let mut tx = self
            .db
            .begin_relaxed(RELAXED_BEGIN)
            .await
            .map_err(map_err)?;
        let (report, wake) = settle_in(&mut tx, queue, settings, items, now_ms()).await?;
        tx.commit().await.map_err(map_err)?;
        for q in &wake {
            self.db.wakers.wake(q.as_str());
        }
        Ok(report)
    }

    async fn wait_for_work(&self, queue: &QueueName, max_wait: Duration) {
        let next: Option<i64> = sqlx::query_scalar(
            "SELECT MIN(visible_at) FROM queue_messages WHERE queue = ?1 AND state < 2",
        )
        .bind(queue.as_str())
        .fetch_one(&self.db.read)
        .await
        .unwrap_or(None);
        let now = now_ms();
        let wait = match next {
            Some(at) if at <= now.0 => return,
            Some(at) => UnixMillis(at).since(now).min(max_wait),
            None => max_wait,
        };
        wait_woken(&self.db.wakers, queue, wait.min(IDLE_POLL_CAP)).await;
    }

    async fn queues(&self) -> Result<Vec<QueueName>, QueueError> {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT queue FROM queue_settings UNION SELECT DISTINCT queue FROM queue_messages ORDER BY 1",
        )
        .fetch_all(&self.db.read)
        .await
        .map_err(map_err)?;
        Ok(names
            .iter()
            .filter_map(|n| QueueName::parse(n).ok())
            .collect())
    }

    async fn stats(&self, queue: &QueueName) -> Result<QueueStats, QueueError> {
        let now = now_ms();
        let row = sqlx::query(
            "SELECT
                 COALESCE(SUM(state < 2 AND visible_at <= ?2), 0) AS depth,
                 COALESCE(SUM(state = 1 AND visible_at > ?2), 0) AS in_flight,
                 COALESCE(SUM(state = 0 AND visible_at > ?2), 0) AS delayed,
                 COALESCE(SUM(state = 2), 0) AS acked,
                 MIN(CASE WHEN state < 2 THEN enqueued_at END) AS oldest,
                 (SELECT COUNT(*) FROM queue_messages d
                   WHERE d.state < 2 AND d.queue = (
                     SELECT json_extract(settings, '$.dead_letter_queue') FROM queue_settings WHERE queue = ?1)
                 ) AS dlq_depth
             FROM queue_messages WHERE queue = ?1",
        )
        .bind(queue.as_str())
        .bind(now.0)
        .fetch_one(&self.db.read)
        .await
        .map_err(map_err)?;
        let count = |name: &str| -> Result<u64, QueueError> {
            Ok(u64::try_from(row.try_get::<i64, _>(name).map_err(map_err)?).unwrap_or(0))
        };
        let oldest: Option<i64> = row.try_get("oldest").map_err(map_err)?;
        let drain = read_histogram(
            sqlx::query_as::<_, (i64, i64, i64)>(
                "SELECT bucket, count, sum_ms FROM queue_drain_histogram WHERE queue = ?1",
            )
            .bind(queue.as_str())
            .fetch_all(&self.db.read)
            .await
            .map_err(map_err)?,
        );
        Ok(QueueStats {
            queue: queue.clone(),
            depth: count("depth")?,
            in_flight: count("in_flight")?,
            delayed: count("delayed")?,
            dlq_depth: count("dlq_depth")?,
            oldest_age_ms: oldest.map_or(0, |t| now.0.saturating_sub(t).max(0)),
            acked_retained: count("acked")?,
            drain,
        })
    }

    async fn dead_letters(
        &self,
        dlq: &QueueName,
        limit: usize,
    ) -> Result<Vec<DeadMessage>, QueueError> {
        let rows: Vec<DeadRow> = sqlx::query_as(
            "SELECT id, original_queue, COALESCE(failed_attempts, attempts) AS attempts, last_error,
                    enqueued_at, dead_at, body
             FROM queue_messages WHERE queue = ?1 AND state < 2 ORDER BY id LIMIT ?2",
        )
        .bind(dlq.as_str())
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .fetch_all(&self.db.read)
        .await
        .map_err(map_err)?;
        Ok(rows.into_iter().map(dead_message).collect())
    }

    async fn replay(&self, dlq: &QueueName, ids: Option<&[MessageId]>) -> Result<u64, QueueError> {
        let now = now_ms();
        let filter = ids.map(|ids| ids_json(ids.iter().copied()));
        let moved: Vec<String> = sqlx::query_scalar(
            "UPDATE queue_messages
             SET queue = original_queue, original_queue = NULL, failed_attempts = NULL, dead_at = NULL,
                 attempts = 0, state = 0, visible_at = ?2, lease_token = NULL
             WHERE queue = ?1 AND original_queue IS NOT NULL AND (state = 0 OR visible_at <= ?2)
               AND (?3 IS NULL OR id IN (SELECT value FROM json_each(?3)))
             RETURNING queue",
        )
        .bind(dlq.as_str())
        .bind(now.0)
        .bind(filter)
        .fetch_all(&self.db.write)
        .await
        .map_err(map_err)?;
        let mut woken: Vec<&String> = Vec::new();
        for q in &moved {
            if !woken.contains(&q) {
                self.db.wakers.wake(q);
                woken.push(q);
            }
        }
        Ok(moved.len() as u64)
    }

    async fn prune(&self) -> Result<PruneReport, QueueError> {
        let now = now_ms();
        let declared: Vec<(String, String)> =
            sqlx::query_as("SELECT queue, settings FROM queue_settings")
                .fetch_all(&self.db.read)
                .await
                .map_err(map_err)?;
        let mut report = PruneReport::default();
        for (queue, json) in declared {
            let Ok(settings) = serde_json::from_str::<QueueSettings>(&json) else {
                continue;
            };
            report.acked += sqlx::query(
                "DELETE FROM queue_messages WHERE queue = ?1 AND state = 2 AND acked_at < ?2",
            )
            .bind(&queue)
            .bind(now.0 - duration_ms(settings.retain_acked))
            .execute(&self.db.write)
            .await
            .map_err(map_err)?
            .rows_affected();
            report.dead += sqlx::query(
                "DELETE FROM queue_messages WHERE original_queue = ?1 AND dead_at IS NOT NULL AND dead_at < ?2",
            )
            .bind(&queue)
            .bind(now.0 - duration_ms(settings.dead_retention))
            .execute(&self.db.write)
            .await
            .map_err(map_err)?
            .rows_affected();
        }
        report.dedup_keys = sqlx::query("DELETE FROM queue_dedup WHERE expires_at <= ?1")
            .bind(now.0)
            .execute(&self.db.write)
            .await
            .map_err(map_err)?
            .rows_affected();
        Ok(report)
    }
}

/// Splits off messages that came back through an expired lease after their last allowed
/// delivery: they are dead-lettered instead of delivered again.
pub(crate) fn split_exhausted(
    messages: Vec<ReceivedMessage>,
    settings: &QueueSettings,
    token: LeaseToken,
) -> (Vec<ReceivedMessage>, Vec<ReceivedMessage>, Vec<Settlement>) {
    let max = settings.max_deliveries();
    let (deliver, mut exhausted): (Vec<_>, Vec<_>) =
        messages.into_iter().partition(|m| m.attempts <= max);
    let settlements = exhausted
        .iter_mut()
        .map(|m| {
            // As last delivered: this claim's count is taken back with the dead-lettering.
            m.attempts = m.attempts.saturating_sub(1);
            Settlement::DeadLetter {
                id: m.id,
                token,
                error: format!("lease expired on each of {max} deliveries without an ack"),
            }
        })
        .collect();
    (deliver, exhausted, settlements)
}

pub(crate) fn read_histogram(rows: Vec<(i64, i64, i64)>) -> DrainHistogram {
    let mut hist = DrainHistogram::empty();
    for (bucket, count, sum) in rows {
        hist.add(
            usize::try_from(bucket).unwrap_or(0),
            u64::try_from(count).unwrap_or(0),
            u64::try_from(sum).unwrap_or(0),
        );
    }
    hist
}
