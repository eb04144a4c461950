//! The `probe` queue: an idempotent no-frills consumer for checking a worker fleet end to end
//! (`cognomega probe`) and for crash tests.
//!
//! Each message carries a key; the handler records the key in `queue_probe_effects` in one
//! transaction per batch (a redelivered key only bumps its `deliveries` count), then acks. So
//! after any number of crashes every key exists exactly once.

use std::time::Duration;

use cognomega_core::queue::catalog::named;
use cognomega_core::queue::{HandlerError, MessageBatch, QueueName, QueueSettings};

use crate::typed::{Decoded, TypedHandler, Unreadable};
use cognomega_stores::Database;
use serde::{Deserialize, Serialize};

/// The queue name.
pub const QUEUE: &str = "probe";

/// A probe message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Probe {
    /// The effect's key.
    pub key: String,
    /// Simulated work per batch before the effect commits, in milliseconds (at most 10 s).
    #[serde(default)]
    pub work_ms: u64,
}

/// The probe queue's name.
#[must_use]
pub fn queue() -> QueueName {
    named(QUEUE)
}

/// Settings for the probe queue: short leases so a crashed worker's batch comes back quickly,
/// and many retries so crashes alone never dead-letter a probe.
#[must_use]
pub fn settings() -> QueueSettings {
    QueueSettings {
        max_batch_size: 50,
        max_concurrency: 4,
        lease: Duration::from_secs(3),
        max_retries: 50,
        retry_delay: Duration::from_millis(100),
        ..QueueSettings::default()
    }
}

/// The handler.
#[derive(Debug, Clone)]
pub struct ProbeHandler {
    db: Database,
}

impl ProbeHandler {
    /// A handler writing effects into `db`.
    #[must_use]
    pub fn new(db: Database) -> Self {
        Self { db }
    }
}

#[async_trait::async_trait]
impl TypedHandler for ProbeHandler {
    type Message = Probe;
    const WHAT: &'static str = "probe";
    const UNREADABLE: Unreadable = Unreadable::DeadLetter;

    async fn handle(
        &self,
        _batch: &mut MessageBatch,
        probes: Vec<Decoded<Probe>>,
    ) -> Result<(), HandlerError> {
        let probes: Vec<Probe> = probes.into_iter().map(|p| p.body).collect();
        let work = probes
            .iter()
            .map(|p| p.work_ms)
            .max()
            .unwrap_or(0)
            .min(10_000);
        if work > 0 {
            tokio::time::sleep(Duration::from_millis(work)).await;
        }
        let mut tx = self
            .db
            .begin_in_consumer()
            .await
            .map_err(HandlerError::retryable)?;
        for p in &probes {
            let res = match &mut tx {
                cognomega_stores::Tx::Sqlite { tx, .. } => sqlx::query(
                    "INSERT INTO queue_probe_effects (key, first_at) VALUES (?1, ?2)
                     ON CONFLICT (key) DO UPDATE SET deliveries = deliveries + 1",
                )
                .bind(&p.key)
                .bind(now_ms())
                .execute(&mut **tx)
                .await
                .map(|_| ()),
                cognomega_stores::Tx::Postgres { tx, .. } => sqlx::query(
                    "INSERT INTO queue_probe_effects (key) VALUES ($1)
                     ON CONFLICT (key) DO UPDATE SET deliveries = queue_probe_effects.deliveries + 1",
                )
                .bind(&p.key)
                .execute(&mut **tx)
                .await
                .map(|_| ()),
            };
            res.map_err(HandlerError::retryable)?;
        }
        tx.commit().await.map_err(HandlerError::retryable)?;
        Ok(())
    }
}

fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
