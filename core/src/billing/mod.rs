//! Usage metering, pricing and the credit ledger's messages.
//!
//! Money is integer credits, never floats. Usage events are validated here entirely before
//! anything is enqueued; the usage-writer prices them with a [`PriceTable`]; every ledger entry
//! travels as a [`SettlementMessage`] whose `id` makes its application idempotent.

mod pricing;
mod settlement;
mod usage;

pub use pricing::{BillingConfig, Price, PriceTable};
pub use settlement::{SettlementKind, SettlementMessage, UsageBatchMessage};
pub use usage::{
    parse_usage_request, UsageError, UsageEvent, UsageKey, UsageKind, MAX_EVENTS, MAX_META_BYTES,
    MAX_QUANTITY,
};
