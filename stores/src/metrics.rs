//! Aggregates `/metrics` reads from the database at scrape time, so every process reports the
//! same totals whichever worker wrote the rows.

use cognomega_core::sql::{Executor as _, SqlError};

use crate::{Database, StoreError};

pub use cognomega_core::metrics::BusinessTotals;
use cognomega_core::metrics::{LEDGER_TOTALS_SQL as LEDGER, UPLOAD_SCANS_SQL as SCANS};

/// Reads the totals. The ledger is the source of truth for money (the settlement consumer
/// appends to it exactly once per charge), so the figure is right across processes and
/// restarts; an in-process counter would count only this process's settlements.
pub async fn business_totals(db: &Database) -> Result<BusinessTotals, StoreError> {
    let mut read = crate::sql::Reader(db);
    let ledger = read
        .query_opt(LEDGER, &[])
        .await?
        .ok_or(StoreError::Sqlx(sqlx::Error::RowNotFound))?;
    let (charged, granted) = (ledger.int(0)?, ledger.int(1)?);
    let scans = read
        .query(SCANS, &[])
        .await?
        .iter()
        .map(|r| Ok((r.text(0)?, r.int(1)?)))
        .collect::<Result<Vec<_>, SqlError>>()?;
    Ok(BusinessTotals::from_rows(charged, granted, &scans))
}
