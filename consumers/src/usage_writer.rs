//! `usage` → `usage_events` rows, then one `settlement` message per newly inserted event, all in
//! one transaction. A redelivered message finds its events' keys and changes nothing.

use std::time::Duration;

use cognomega_core::billing::{PriceTable, UsageBatchMessage};
use cognomega_core::queue::{
    BatchHandler, HandlerError, MessageBatch, MessageId, QueueName, QueueSettings,
};
use cognomega_stores::{billing, Database};

/// The queue name.
pub const QUEUE: &str = "usage";

/// The queue.
#[must_use]
pub fn queue() -> QueueName {
    QueueName::parse(QUEUE).unwrap_or_else(|_| unreachable!("valid queue name"))
}

/// Settings: batches of accepted requests (each up to 1,000 events), patient retries.
#[must_use]
pub fn settings() -> QueueSettings {
    QueueSettings {
        max_batch_size: 5,
        max_concurrency: 4,
        // An idle queue gathers 20 ms of arrivals into one claim: one writer transaction per
        // burst instead of one per producer commit, which kept the producers (an answered
        // ask, a POST /usage) waiting for the single SQLite writer.
        max_batch_timeout: Duration::from_millis(20),
        max_retries: 10,
        dead_letter_queue: Some(
            QueueName::parse("usage.dlq").unwrap_or_else(|_| unreachable!("valid")),
        ),
        ..QueueSettings::default()
    }
}

/// The usage-writer.
#[derive(Debug, Clone)]
pub struct UsageWriter {
    db: Database,
    prices: PriceTable,
}

impl UsageWriter {
    /// A writer pricing with `prices`.
    #[must_use]
    pub fn new(db: Database, prices: PriceTable) -> Self {
        Self { db, prices }
    }
}

#[async_trait::async_trait]
impl BatchHandler for UsageWriter {
    async fn handle(&self, batch: &mut MessageBatch) -> Result<(), HandlerError> {
        let mut parsed: Vec<(UsageBatchMessage, Option<String>)> = Vec::new();
        let mut garbage: Vec<(MessageId, String)> = Vec::new();
        for msg in batch.messages() {
            match msg.json::<UsageBatchMessage>() {
                Ok(body) => parsed.push((body, msg.request_id.clone())),
                Err(e) => garbage.push((msg.id, format!("not a usage message: {e}"))),
            }
        }
        for (id, why) in garbage {
            batch.fail(id, why);
        }
        let items: Vec<billing::UsageInsert<'_>> = parsed
            .iter()
            .map(|(body, request_id)| billing::UsageInsert {
                tenant_id: &body.tenant_id,
                events: body
                    .events
                    .iter()
                    .map(|e| (e.clone(), self.prices.charge(e.kind, e.quantity)))
                    .collect(),
                received_at_ms: body.received_at_ms,
                request_id: request_id.as_deref(),
            })
            .collect();
        let mut tx = self
            .db
            .begin_in_consumer()
            .await
            .map_err(HandlerError::retryable)?;
        billing::record_usage(&mut tx, &items, &crate::settlement::queue())
            .await
            .map_err(HandlerError::retryable)?;
        tx.commit().await.map_err(HandlerError::retryable)?;
        Ok(())
    }
}
