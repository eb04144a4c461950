//! Aggregates `/metrics` reads from the database at scrape time, so every process reports the
//! same totals whichever worker wrote the rows.

use crate::{Database, StoreError};

/// Money and scan totals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BusinessTotals {
    /// Credits charged for usage: the negated sum of the ledger's `usage` entries.
    pub credits_charged: i64,
    /// Credits granted to new tenants.
    pub credits_granted: i64,
    /// Uploads per scan result, `pending` left out: (`clean` | `infected` | `error` |
    /// `skipped`, count).
    pub uploads_scanned: Vec<(&'static str, i64)>,
}

/// The scan results as `/metrics` names them, from the `uploads.scan` values.
pub const SCAN_RESULTS: [(&str, &str); 4] = [
    ("clean", "clean"),
    ("infected", "infected"),
    ("error", "scan_failed"),
    ("skipped", "skipped"),
];

/// Reads the totals. The ledger is the source of truth for money (the settlement consumer
/// appends to it exactly once per charge), so the figure is right across processes and
/// restarts; an in-process counter would count only this process's settlements.
pub async fn business_totals(db: &Database) -> Result<BusinessTotals, StoreError> {
    const LEDGER: &str = "SELECT CAST(COALESCE(SUM(CASE WHEN kind = 'usage' THEN -delta ELSE 0 END), 0) AS BIGINT), \
         CAST(COALESCE(SUM(CASE WHEN kind = 'grant' THEN delta ELSE 0 END), 0) AS BIGINT) \
         FROM ledger_entries";
    const SCANS: &str = "SELECT scan, COUNT(*) FROM uploads GROUP BY scan";
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
    let uploads_scanned = SCAN_RESULTS
        .iter()
        .map(|(label, value)| {
            let n = scans
                .iter()
                .find(|(scan, _)| scan == value)
                .map_or(0, |(_, n)| *n);
            (*label, n)
        })
        .collect();
    Ok(BusinessTotals {
        credits_charged: charged,
        credits_granted: granted,
        uploads_scanned,
    })
}
