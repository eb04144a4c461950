//! SQL of the money path's native tools and reads: tenants, the ask standing, today's tokens,
//! balances from the ledger, adjustments. The consumers' writes (usage recorded, entries
//! settled) are the shared workflows' (`cognomega_workflows::settle`). Functions that write take
//! a [`Tx`] so callers commit effects together with the messages they produce.
//!
//! SQLite stores times as epoch milliseconds; PostgreSQL as `timestamptz`, converted at the
//! boundary (`to_timestamp(ms / 1000.0)`, `extract(epoch …) * 1000`).

use std::collections::BTreeMap;

use cognomega_core::billing::{sql, UsageKind};
use cognomega_core::sql::{Dialects, Executor as _};

use crate::queue::now_ms;
use crate::{Database, StoreError, Tx};

pub use cognomega_core::billing::sql::{Adjustment, KindTotal};

/// Creates a tenant and its first user.
pub async fn create_tenant(
    tx: &mut Tx,
    tenant_id: &str,
    user_id: &str,
    tier: &str,
    email: Option<&str>,
) -> Result<(), StoreError> {
    let now = now_ms().0;
    Ok(sql::create_tenant(tx, tenant_id, user_id, tier, email, now).await?)
}

/// Whether the tenant `$1` is flagged; no row when it does not exist.
use cognomega_core::billing::sql::TENANT_STATUS;

/// Whether a tenant exists, and if so whether it is flagged (out of credits).
pub async fn tenant_status(db: &Database, tenant_id: &str) -> Result<Option<bool>, StoreError> {
    let row = cognomega_core::sql::Executor::query_opt(
        &mut crate::sql::Reader(db),
        TENANT_STATUS,
        &[tenant_id.into()],
    )
    .await?;
    Ok(row.map(|r| r.bool(0)).transpose()?)
}

/// What `POST /api/si/ask` checks before calling a provider, read in one round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AskStanding {
    /// Flagged (out of credits).
    pub flagged: bool,
    /// The `balances` row, when the tenant has one.
    pub balance: Option<i64>,
    /// `tokens_in` + `tokens_out` recorded today (UTC), as [`tokens_on_day`] reads it.
    pub tokens_today: u64,
}

/// The tenant's flag, stored balance and tokens recorded in the UTC day holding `unix_secs`,
/// in one statement; `None` when the tenant does not exist.
pub async fn ask_standing(
    db: &Database,
    tenant_id: &str,
    unix_secs: i64,
) -> Result<Option<AskStanding>, StoreError> {
    let day = day_start(unix_secs);
    let row = cognomega_core::sql::Executor::query_opt(
        &mut crate::sql::Reader(db),
        sql::ASK_STANDING,
        &[tenant_id.into(), day.into()],
    )
    .await?
    .map(|r| -> Result<_, cognomega_core::sql::SqlError> {
        Ok((r.bool(0)?, r.opt_int(1)?, r.opt_int(2)?))
    })
    .transpose()?;
    Ok(row.map(|(flagged, balance, tokens)| AskStanding {
        flagged,
        balance,
        tokens_today: tokens.map_or(0, |t| u64::try_from(t).unwrap_or(0)),
    }))
}

/// Milliseconds in a UTC day (unix time has no leap seconds).
const DAY_MS: i64 = 86_400_000;

/// The start (unix seconds) of the UTC day holding `unix_secs`.
fn day_start(unix_secs: i64) -> i64 {
    unix_secs - unix_secs.rem_euclid(DAY_MS / 1000)
}

/// The tokens recorded for tenant `$1` on the UTC day starting at `$2`.
const TOKENS_ON_DAY: &str =
    "SELECT tokens FROM usage_day_tokens WHERE tenant_id = $1 AND day_start = $2";

/// The `tokens_in` + `tokens_out` quantity recorded for the tenant's events that occurred in
/// the UTC day holding `unix_secs`: one row read (`usage_day_tokens`, kept by
/// `cognomega_workflows::settle::record_usage`), not a sum over the day's events. Like any read of recorded usage it
/// trails what is still queued.
pub async fn tokens_on_day(
    db: &Database,
    tenant_id: &str,
    unix_secs: i64,
) -> Result<u64, StoreError> {
    let day = day_start(unix_secs);
    let tokens = cognomega_core::sql::Executor::query_opt(
        &mut crate::sql::Reader(db),
        TOKENS_ON_DAY,
        &[tenant_id.into(), day.into()],
    )
    .await?
    .map(|r| r.int(0))
    .transpose()?;
    Ok(tokens.map_or(0, |t| u64::try_from(t).unwrap_or(0)))
}

const STORED_BALANCE: &str = "SELECT balance FROM balances WHERE tenant_id = $1";

/// The derived balance, if the tenant has one.
pub async fn stored_balance(db: &Database, tenant_id: &str) -> Result<Option<i64>, StoreError> {
    let row = cognomega_core::sql::Executor::query_opt(
        &mut crate::sql::Reader(db),
        STORED_BALANCE,
        &[tenant_id.into()],
    )
    .await?;
    Ok(row.map(|r| r.int(0)).transpose()?)
}

/// Tenant `$1`'s balance summed from the ledger.
const LEDGER_BALANCE: &str =
    "SELECT CAST(COALESCE(SUM(delta), 0) AS BIGINT) FROM ledger_entries WHERE tenant_id = $1";

/// The balance summed from the ledger itself (the source of truth).
pub async fn ledger_balance(db: &Database, tenant_id: &str) -> Result<i64, StoreError> {
    let row = crate::sql::Reader(db)
        .query_opt(LEDGER_BALANCE, &[tenant_id.into()])
        .await?
        .ok_or(StoreError::Sqlx(sqlx::Error::RowNotFound))?;
    Ok(row.int(0)?)
}

/// Usage per kind with `from_ms <= occurred_at < to_ms`.
pub async fn usage_totals(
    db: &Database,
    tenant_id: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<BTreeMap<UsageKind, KindTotal>, StoreError> {
    let mut read = crate::sql::Reader(db);
    Ok(sql::usage_totals(&mut read, tenant_id, from_ms, to_ms).await?)
}

/// Recomputes every balance from the ledger, writing only those that differ (SQLite: at `$1`).
const REBUILD_BALANCES: Dialects = Dialects {
    sqlite: "INSERT INTO balances (tenant_id, balance, updated_at)
             SELECT tenant_id, SUM(delta), $1 FROM ledger_entries GROUP BY tenant_id
             ON CONFLICT (tenant_id) DO UPDATE SET balance = excluded.balance, updated_at = excluded.updated_at
             WHERE balances.balance <> excluded.balance",
    postgres: sql::PG_REBUILD_BALANCES,
};

/// Recomputes every derived balance from the ledger. Returns (tenants, balances changed).
pub async fn rebuild_balances(db: &Database) -> Result<(u64, u64), StoreError> {
    let mut tx = db.begin().await?;
    let (rebuild, args) = REBUILD_BALANCES.stamped(tx.dialect(), Vec::new(), now_ms().0);
    // PostgreSQL's statement also returns the corrected rows: one per row changed.
    let changed = tx.execute(rebuild, &args).await?;
    let tenants = tx
        .query_opt(sql::LEDGER_TENANTS, &[])
        .await?
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(0);
    tx.commit().await?;
    Ok((u64::try_from(tenants).unwrap_or(0), changed))
}

/// Records an adjustment under an idempotency key; a repeated key returns the first one
/// (`created == false`).
pub async fn create_adjustment(
    tx: &mut Tx,
    idempotency_key: &str,
    tenant_id: &str,
    delta: i64,
    reason: &str,
) -> Result<(String, bool), StoreError> {
    let id = uuid::Uuid::now_v7().to_string();
    let new = sql::NewAdjustment {
        id: &id,
        idempotency_key,
        tenant_id,
        delta,
        reason,
    };
    Ok(sql::create_adjustment(tx, &new, now_ms().0).await?)
}

/// One adjustment by id.
pub async fn get_adjustment(db: &Database, id: &str) -> Result<Option<Adjustment>, StoreError> {
    Ok(sql::get_adjustment(&mut crate::sql::Reader(db), id).await?)
}
