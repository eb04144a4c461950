//! Which consumers a process runs. Every queue's handler is registered here, so `serve` and
//! `worker` consume exactly the same set.

use std::sync::Arc;

use cognomega_consumers::{probe, Runtime, RuntimeOptions};
use cognomega_stores::Database;

/// A runtime with every queue's consumer registered.
pub fn runtime(db: &Database, options: RuntimeOptions) -> anyhow::Result<Runtime> {
    let mut rt = Runtime::new(db.queue(), options);
    rt.register(
        probe::queue(),
        probe::settings(),
        Arc::new(probe::ProbeHandler::new(db.clone())),
    )?;
    Ok(rt)
}
