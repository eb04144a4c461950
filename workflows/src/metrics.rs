//! The `/metrics` figures every shape reads from the database at scrape time (so every process
//! and Worker reports the same totals whichever wrote the rows): the lifecycle sweeps, the
//! exports, money and scans, rendered by the shared Prometheus renderer of
//! `cognomega_core::metrics`. The hosts add what only they see (queue depths, consumer and
//! request counters).

use cognomega_core::metrics::{
    self as m, BusinessTotals, ExportTotals, LifecycleTotals, EXPORT_TOTALS_SQL, LEDGER_TOTALS_SQL,
    LIFECYCLE_LAST_SQL, LIFECYCLE_SUMS_SQL, UPLOAD_SCANS_SQL,
};
use cognomega_core::sql::{Executor, SqlError};

/// The lifecycle sweeps' checkpoints: the last report and what every sweep saved.
pub async fn lifecycle(db: &mut dyn Executor) -> Result<LifecycleTotals, SqlError> {
    let last = db.query_opt(LIFECYCLE_LAST_SQL, &[]).await?;
    let sums = one(db, LIFECYCLE_SUMS_SQL).await?;
    let (last_report, last_finished_ms) = match last {
        Some(r) => (Some(r.text(0)?), Some(r.int(1)?)),
        None => (None, None),
    };
    Ok(LifecycleTotals {
        last_report,
        last_finished_ms,
        bytes_saved: sums.int(0)?,
        objects_expired: sums.int(1)?,
    })
}

/// Files, rows and bytes exported so far, per dataset and format.
pub async fn exports(db: &mut dyn Executor) -> Result<Vec<ExportTotals>, SqlError> {
    (db.query(EXPORT_TOTALS_SQL, &[]).await?)
        .iter()
        .map(|r| {
            Ok(ExportTotals {
                dataset: r.text(0)?,
                format: r.text(1)?,
                files: r.int(2)?,
                rows: r.int(3)?,
                bytes: r.int(4)?,
            })
        })
        .collect()
}

/// Money and scans. The ledger is the source of truth for money (settlement appends to it
/// exactly once per charge), so the figure is right across processes and restarts.
pub async fn business(db: &mut dyn Executor) -> Result<BusinessTotals, SqlError> {
    let ledger = one(db, LEDGER_TOTALS_SQL).await?;
    let scans = (db.query(UPLOAD_SCANS_SQL, &[]).await?)
        .iter()
        .map(|r| Ok((r.text(0)?, r.int(1)?)))
        .collect::<Result<Vec<_>, SqlError>>()?;
    Ok(BusinessTotals::from_rows(
        ledger.int(0)?,
        ledger.int(1)?,
        &scans,
    ))
}

/// The database's part of `/metrics`, rendered: lifecycle, exports, money and scans.
pub async fn render(db: &mut dyn Executor) -> Result<String, SqlError> {
    let lifecycle = lifecycle(db).await?;
    let census = cognomega_r2_lifecycle::sweep::census_of(lifecycle.last_report.as_deref());
    let mut text = m::render_lifecycle(&lifecycle, &census);
    text.push_str(&m::render_exports(&exports(db).await?));
    text.push_str(&m::render_business(&business(db).await?));
    Ok(text)
}

async fn one(db: &mut dyn Executor, sql: &str) -> Result<cognomega_core::sql::Row, SqlError> {
    (db.query_opt(sql, &[]).await?).ok_or_else(|| SqlError::new(format!("no row from {sql}")))
}
