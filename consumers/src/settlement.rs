//! `settlement` → one append-only ledger entry per message (unique on the settlement id), the
//! derived balance updated in the same transaction, then the in-process cache invalidated.

use cognomega_core::billing::SettlementMessage;
use cognomega_core::queue::{HandlerError, MessageBatch};
use cognomega_stores::kv::BalanceCache;
use cognomega_stores::Database;
use cognomega_workflows::settle::settle;

use crate::typed::{Decoded, TypedHandler, Unreadable};

pub use cognomega_core::queue::catalog::settlement::{queue, settings, QUEUE};

/// The settlement consumer.
#[derive(Debug, Clone)]
pub struct SettlementWriter {
    db: Database,
    guest_floor: i64,
    cache: Option<BalanceCache>,
}

impl SettlementWriter {
    /// A writer; `cache` is invalidated for every changed tenant after each commit.
    #[must_use]
    pub fn new(db: Database, guest_floor: i64, cache: Option<BalanceCache>) -> Self {
        Self {
            db,
            guest_floor,
            cache,
        }
    }
}

#[async_trait::async_trait]
impl TypedHandler for SettlementWriter {
    type Message = SettlementMessage;
    const WHAT: &'static str = "settlement";
    const UNREADABLE: Unreadable = Unreadable::DeadLetter;

    async fn handle(
        &self,
        _batch: &mut MessageBatch,
        messages: Vec<Decoded<SettlementMessage>>,
    ) -> Result<(), HandlerError> {
        let entries: Vec<SettlementMessage> = messages.into_iter().map(|m| m.body).collect();
        let mut tx = self
            .db
            .begin_in_consumer()
            .await
            .map_err(HandlerError::retryable)?;
        let now = crate::jobs::now_ms();
        let settled = settle(&mut tx, &entries, self.guest_floor, now)
            .await
            .map_err(HandlerError::retryable)?;
        tx.commit().await.map_err(HandlerError::retryable)?;
        if let Some(cache) = &self.cache {
            // Invalidate rather than write: concurrent batches commit in one order and could
            // reach this line in another.
            for tenant in settled.balances.keys() {
                cache.invalidate(tenant);
            }
        }
        Ok(())
    }
}
