//! `usage` → `usage_events` rows, then one `settlement` message per newly inserted event, all in
//! one transaction. A redelivered message finds its events' keys and changes nothing.

use cognomega_core::billing::{PriceTable, UsageBatchMessage};
use cognomega_core::queue::{HandlerError, MessageBatch};

use crate::typed::{Decoded, TypedHandler, Unreadable};
use cognomega_stores::{billing, Database};

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
        let items: Vec<billing::UsageInsert<'_>> = parsed
            .iter()
            .map(
                |Decoded {
                     body, request_id, ..
                 }| billing::UsageInsert {
                    tenant_id: &body.tenant_id,
                    events: body
                        .events
                        .iter()
                        .map(|e| (e.clone(), self.prices.charge(e.kind, e.quantity)))
                        .collect(),
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
        billing::record_usage(&mut tx, &items, &crate::settlement::queue())
            .await
            .map_err(HandlerError::retryable)?;
        tx.commit().await.map_err(HandlerError::retryable)?;
        Ok(())
    }
}
