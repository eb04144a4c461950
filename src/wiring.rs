//! Which consumers a process runs. Every queue's handler is registered here, so `serve` and
//! `worker` consume exactly the same set.

use std::sync::Arc;

use cognomega_consumers::settlement::SettlementWriter;
use cognomega_consumers::usage_writer::UsageWriter;
use cognomega_consumers::{probe, settlement, usage_writer, Runtime, RuntimeOptions};
use cognomega_core::billing::BillingConfig;
use cognomega_stores::kv::BalanceCache;
use cognomega_stores::Database;

/// A runtime with every queue's consumer registered. `cache` is the balance cache of an
/// in-process API, invalidated as settlements land.
pub fn runtime(
    db: &Database,
    options: RuntimeOptions,
    billing: &BillingConfig,
    cache: Option<BalanceCache>,
) -> anyhow::Result<Runtime> {
    let mut rt = Runtime::new(db.queue(), options);
    rt.register(
        probe::queue(),
        probe::settings(),
        Arc::new(probe::ProbeHandler::new(db.clone())),
    )?;
    rt.register(
        usage_writer::queue(),
        usage_writer::settings(),
        Arc::new(UsageWriter::new(db.clone(), billing.prices.clone())),
    )?;
    rt.register(
        settlement::queue(),
        settlement::settings(),
        Arc::new(SettlementWriter::new(
            db.clone(),
            billing.guest_floor,
            cache,
        )),
    )?;
    Ok(rt)
}
