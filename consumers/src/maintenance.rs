//! The `maintenance` queue: housekeeping tasks a schedule enqueues (retention pruning, sealing
//! the ledger's hash chain). Each task is idempotent: pruning twice deletes nothing the first
//! run left, sealing twice seals nothing new.

use cognomega_core::queue::catalog::named;
use cognomega_core::queue::{HandlerError, MessageBatch, QueueName, QueueSettings};

use crate::typed::{Decoded, TypedHandler, Unreadable};
use cognomega_stores::Database;
use serde::{Deserialize, Serialize};

/// The queue name.
pub const QUEUE: &str = "maintenance";

/// A maintenance task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "task", rename_all = "snake_case")]
pub enum Task {
    /// Delete what retention allows: acked and dead messages past retention, expired
    /// idempotency keys (what `cognomega prune` does).
    Prune,
    /// Seal every ledger entry not yet in the hash chain (what `cognomega audit` does first).
    SealLedger,
}

/// The queue.
#[must_use]
pub fn queue() -> QueueName {
    named(QUEUE)
}

/// Settings: one task at a time, a few retries.
#[must_use]
pub fn settings() -> QueueSettings {
    QueueSettings {
        max_batch_size: 1,
        max_concurrency: 1,
        max_retries: 5,
        dead_letter_queue: Some(named("maintenance.dlq")),
        ..QueueSettings::default()
    }
}

/// The handler.
#[derive(Debug, Clone)]
pub struct Maintenance {
    db: Database,
}

impl Maintenance {
    /// A handler over `db`.
    #[must_use]
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[async_trait::async_trait]
impl TypedHandler for Maintenance {
    type Message = Task;
    const WHAT: &'static str = "maintenance";
    const UNREADABLE: Unreadable = Unreadable::DeadLetter;

    async fn handle(
        &self,
        _batch: &mut MessageBatch,
        tasks: Vec<Decoded<Task>>,
    ) -> Result<(), HandlerError> {
        for task in tasks {
            match task.body {
                Task::Prune => {
                    let report = self
                        .db
                        .queue()
                        .prune()
                        .await
                        .map_err(HandlerError::retryable)?;
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
                    let counters = cognomega_stores::limits::prune_counters(&self.db, now)
                        .await
                        .map_err(HandlerError::retryable)?;
                    let ask_keys =
                        cognomega_stores::ask_replays::prune(&self.db, now.saturating_mul(1000))
                            .await
                            .map_err(HandlerError::retryable)?;
                    let voice_sessions =
                        cognomega_stores::voice_sessions::prune(&self.db, now.saturating_mul(1000))
                            .await
                            .map_err(HandlerError::retryable)?;
                    tracing::info!(
                        acked = report.acked,
                        dead = report.dead,
                        dedup_keys = report.dedup_keys,
                        counters,
                        ask_keys,
                        voice_sessions,
                        "retention pruning done"
                    );
                }
                Task::SealLedger => {
                    let report = cognomega_stores::ledger_chain::seal(&self.db, &|_| {})
                        .await
                        .map_err(HandlerError::retryable)?;
                    tracing::info!(
                        sealed = report.sealed,
                        head_pos = report.head.as_ref().map_or(0, |h| h.pos),
                        "ledger sealed"
                    );
                }
            }
        }
        Ok(())
    }
}
