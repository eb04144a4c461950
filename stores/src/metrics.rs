//! Aggregates `/metrics` reads from the database at scrape time, so every process reports the
//! same totals whichever worker wrote the rows.

use crate::{Database, StoreError};

pub use cognomega_core::metrics::BusinessTotals;
use cognomega_core::metrics::{LEDGER_TOTALS_SQL as LEDGER, UPLOAD_SCANS_SQL as SCANS};

/// Reads the totals. The ledger is the source of truth for money (the settlement consumer
/// appends to it exactly once per charge), so the figure is right across processes and
/// restarts; an in-process counter would count only this process's settlements.
pub async fn business_totals(db: &Database) -> Result<BusinessTotals, StoreError> {
    let ((charged, granted), scans): ((i64, i64), Vec<(String, i64)>) = match db {
        Database::Sqlite(s) => (
            sqlx::query_as(LEDGER).fetch_one(&s.read).await?,
            sqlx::query_as(SCANS).fetch_all(&s.read).await?,
        ),
        Database::Postgres(p) => (
            sqlx::query_as(LEDGER).fetch_one(&p.pool).await?,
            sqlx::query_as(SCANS).fetch_all(&p.pool).await?,
        ),
    };
    Ok(BusinessTotals::from_rows(charged, granted, &scans))
}
