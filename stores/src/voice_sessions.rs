//! Retention of the voice service's session rows (`core::voice::session`).

use cognomega_core::sql::Executor as _;
use cognomega_core::voice::session;

use crate::{Database, StoreError};

/// Deletes sessions closed (and billed) more than two days before `now_ms`; returns how many
/// went. Open sessions stay, whatever their age: the sweep settles them first.
pub async fn prune(db: &Database, now_ms: i64) -> Result<u64, StoreError> {
    let cutoff = now_ms.saturating_sub(session::RETENTION_MS);
    Ok(db.clone().execute(session::PRUNE, &[cutoff.into()]).await?)
}
