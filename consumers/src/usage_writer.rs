//! `usage` → `usage_events` rows, then one `settlement` message per newly inserted event, all in
//! one transaction. A redelivered message finds its events' keys and changes nothing.

use cognomega_core::billing::{PriceTable, UsageBatchMessage};
use cognomega_core::queue::{HandlerError, MessageBatch};

use crate::typed::{Decoded, TypedHandler, Unreadable};
use cognomega_stores::Database;
use cognomega_workflows::settle::{record_usage, UsageItem};

pub use cognomega_core::queue::catalog::usage::{queue, settings, QUEUE};

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
impl TypedHandler for UsageWriter {
    type Message = UsageBatchMessage;
    const WHAT: &'static str = "usage";
    const UNREADABLE: Unreadable = Unreadable::DeadLetter;

    async fn handle(
        &self,
        _batch: &mut MessageBatch,
        parsed: Vec<Decoded<UsageBatchMessage>>,
    ) -> Result<(), HandlerError> {
        let items: Vec<UsageItem<'_>> = parsed
            .iter()
            .map(
                |Decoded {
                     body, request_id, ..
                 }| UsageItem {
                    tenant: &body.tenant_id,
                    events: &body.events,
                    received_at_ms: body.received_at_ms,
                    request_id: request_id.as_deref(),
                },
            )
            .collect();
        let mut tx = self
            .db
            .begin_in_consumer()
            .await
            .map_err(HandlerError::retryable)?;
        record_usage(&mut tx, &items, &self.prices)
            .await
            .map_err(HandlerError::retryable)?;
        tx.commit().await.map_err(HandlerError::retryable)?;
        Ok(())
    }
}
