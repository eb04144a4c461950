//! Usage metering, pricing and the credit ledger's messages.
//!
//! Money is integer credits, never floats. Usage events are validated here entirely before
//! anything is enqueued; the usage-writer prices them with a [`PriceTable`]; every ledger entry
//! travels as a [`SettlementMessage`] whose `id` makes its application idempotent.

mod pricing;
mod settlement;
pub mod sql;
mod usage;

pub use pricing::{BillingConfig, Price, PriceTable};
pub use settlement::{SettlementKind, SettlementMessage, UsageBatchMessage};
pub use usage::{
    parse_usage_request, UsageError, UsageEvent, UsageKey, UsageKind, MAX_EVENTS, MAX_META_BYTES,
    MAX_QUANTITY,
};

/// The largest credit adjustment either way (10^12 credits): far above any real grant or
/// correction, and far enough below `i64::MAX` that balances and ledger sums never overflow
/// (an overflowing SQLite sum turns into a float that no consumer can read back).
pub const MAX_ADJUSTMENT: i64 = 1_000_000_000_000;

/// Checks an admin adjustment's `delta`: non-zero and within [`MAX_ADJUSTMENT`] either way;
/// `Err` is the 400 message (code `invalid_delta`).
pub fn check_adjustment_delta(delta: i64) -> Result<(), String> {
    if delta == 0 || delta.unsigned_abs() > MAX_ADJUSTMENT.unsigned_abs() {
        return Err(format!(
            "delta must be a non-zero integer number of credits within ±{MAX_ADJUSTMENT}"
        ));
    }
    Ok(())
}
