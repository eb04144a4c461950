//! SQL of the analytics exports: the per-(dataset, format) watermark, the intent log of parts,
//! the record of written files, and the row scans that feed the file writers as Arrow batches.
//!
//! # Why a part can never be missed or written twice
//!
//! 1. *Plan*: read the watermark `W` and the highest safely visible `seq` `H`, split `W+1..=H`
//!    into parts of at most `max_rows` rows, and in one transaction insert them as `planned`
//!    and move the watermark from `W` to `H` with a compare-and-swap. A concurrent run that read
//!    the same `W` loses the swap and plans nothing, so ranges never overlap.
//! 2. *Write*: the files of a planned part are a pure function of its rows, so writing them
//!    again after a crash produces the same keys and the same bytes.
//! 3. *Complete*: one transaction records the part's files and marks it `complete`; only
//!    complete parts reach `_manifest.json`. Every run first finishes planned parts.
//!
//! # Safely visible
//!
//! On SQLite writers are serialized, so every `seq` up to `MAX(seq)` is committed. On
//! PostgreSQL a sequence hands out numbers before their transactions commit, so a row with a
//! lower `seq` can become visible after a higher one. Taking `SHARE` on the table waits for
//! every inserting transaction to finish (an `INSERT` holds `ROW EXCLUSIVE` from before it draws
//! its `seq` until it commits); `MAX(seq)` read under that lock has no hole below it. The lock
//! is held for that one read only.
//!
//! `jobs` and `uploads` rows change after insertion (status, scan verdict), so their watermark
//! also stops before the first row not yet final (a queued or running job, an upload pending its
//! scan): an exported row never changes afterwards, and a re-run writes the same bytes.

use cognomega_core::etl::{self, sql, Dataset, ExportFormat, ManifestPart, PartPlanner};
use cognomega_core::sql::{Executor as _, Row, SqlError, Value};
use cognomega_pipelines::export::rows::{self, BatchError, Cells, Days, Dialect};
use futures::TryStreamExt;
use sqlx::Row as _;
use tokio::sync::mpsc;

use crate::{Database, StoreError};

/// Failures of the export SQL.
#[derive(Debug, thiserror::Error)]
pub enum ExportStoreError {
    /// The database failed.
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
    /// A statement run through the SQL executor port failed.
    #[error(transparent)]
    Sql(#[from] SqlError),
    /// A transaction could not begin or commit.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// `--since` was given for a dataset that already has a watermark.
    #[error(
        "{dataset} ({format}) is already exported through seq {watermark}; a starting \
         watermark only applies to a dataset with no exports yet. Run without it to continue \
         from {watermark}"
    )]
    AlreadyStarted {
        /// The dataset.
        dataset: Dataset,
        /// The format.
        format: ExportFormat,
        /// Its current watermark.
        watermark: i64,
    },
    /// A row did not fit its column (a NULL in a NOT NULL column, say).
    #[error(transparent)]
    Arrow(#[from] BatchError),
    /// The SQLite scan failed.
    #[error("scanning SQLite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// The SQLite scan thread panicked or was cancelled.
    #[error("the SQLite scan thread failed: {0}")]
    ScanThread(String),
    /// The consumer of the scanned batches stopped.
    #[error("the export writer stopped before the scan finished")]
    WriterGone,
}

pub use cognomega_core::etl::Part;
pub use cognomega_pipelines::export::rows::{arrow_schema, DayBatch};

/// A written file of a part, to record when the part completes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WrittenFile {
    /// Its object key.
    pub key: String,
    /// Its event date.
    pub dt: String,
    /// Rows.
    pub rows: i64,
    /// Bytes.
    pub bytes: i64,
    /// Hex SHA-256.
    pub sha256: String,
}

/// What planning did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// These parts are now planned (none when nothing new is visible).
    Planned(Vec<Part>),
    /// Another run moved the watermark first; it owns the new range.
    Raced,
}

pub use cognomega_core::metrics::ExportTotals;

/// The dataset's watermark for `format`: the last `seq` planned into a part, if any run
/// started yet.
pub async fn watermark(
    db: &Database,
    dataset: Dataset,
    format: ExportFormat,
) -> Result<Option<i64>, ExportStoreError> {
    // On the SQLite writer: the plan's compare-and-swap starts from what it reads.
    let row = db
        .clone()
        .query_opt(
            sql::WATERMARK,
            &[dataset.name().into(), format.name().into()],
        )
        .await?;
    Ok(row.map(|r| r.int(0)).transpose()?)
}

/// Planned parts not yet complete, oldest first.
pub async fn planned_parts(
    db: &Database,
    dataset: Dataset,
    format: ExportFormat,
) -> Result<Vec<Part>, ExportStoreError> {
    let rows = db
        .clone()
        .query(
            sql::PLANNED_PARTS,
            &[dataset.name().into(), format.name().into()],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            Ok(Part {
                dataset,
                format,
                from: r.int(0)?,
                to: r.int(1)?,
            })
        })
        .collect::<Result<_, SqlError>>()?)
}

/// Plans the parts after the watermark (see the module docs). `since` is the starting
/// watermark of a dataset that has none yet (default 0: everything); for a dataset that already
/// has one it is an error.
pub async fn plan(
    db: &Database,
    dataset: Dataset,
    format: ExportFormat,
    since: Option<i64>,
    max_rows: u64,
) -> Result<Plan, ExportStoreError> {
    let current = watermark(db, dataset, format).await?;
    let start = etl::plan_start(current, since).map_err(|a| ExportStoreError::AlreadyStarted {
        dataset,
        format,
        watermark: a.watermark,
    })?;
    let high = visible_high(db, dataset).await?;
    let mut planner = PartPlanner::new(dataset, format, start, high, max_rows);
    let nth_sql = sql::nth_seq(dataset);
    while let Some((after, offset)) = planner.next_lookup() {
        planner.found(scalar_read(db, &nth_sql, &[after.into(), offset.into()]).await?);
    }
    let parts = planner.into_parts();
    if parts.is_empty() {
        return Ok(Plan::Planned(parts));
    }
    let (d, f) = (dataset.name(), format.name());
    // The watermark moves from `current` to `high`, or a concurrent run moved it first.
    let mut tx = db.begin().await?;
    let swapped = match current {
        None => {
            tx.execute(sql::INSERT_WATERMARK, &[d.into(), f.into(), high.into()])
                .await?
        }
        Some(old) => {
            let args = [d.into(), f.into(), high.into(), old.into()];
            tx.execute(sql::SWAP_WATERMARK, &args).await?
        }
    } == 1;
    if !swapped {
        // Dropped: rolled back.
        return Ok(Plan::Raced);
    }
    for p in &parts {
        let args = [d.into(), f.into(), p.from.into(), p.to.into()];
        tx.execute(sql::INSERT_PART, &args).await?;
    }
    tx.commit().await.map_err(StoreError::from)?;
    Ok(Plan::Planned(parts))
}

/// The highest `seq` below which every row is committed and final (see the module docs).
async fn visible_high(db: &Database, dataset: Dataset) -> Result<i64, ExportStoreError> {
    let max_sql = sql::max_seq(dataset);
    let max: i64 = match db {
        Database::Sqlite(s) => sqlx::query_scalar(&max_sql).fetch_one(&s.read).await?,
        Database::Postgres(p) => {
            let mut tx = p.pool.begin().await?;
            sqlx::query(&sql::lock_share(dataset))
                .execute(&mut *tx)
                .await?;
            let max = sqlx::query_scalar(&max_sql).fetch_one(&mut *tx).await?;
            tx.commit().await?;
            max
        }
    };
    let Some(unsettled) = sql::first_unsettled(dataset) else {
        return Ok(max);
    };
    let first = scalar_read(db, unsettled, &[]).await?;
    Ok(etl::visible_high(max, first))
}

/// The integer the one-column read `sql` returns (null, or no row: `None`).
async fn scalar_read(
    db: &Database,
    sql: &str,
    args: &[Value],
) -> Result<Option<i64>, ExportStoreError> {
    let row = crate::sql::Reader(db).query_opt(sql, args).await?;
    Ok(row.map(|r| r.opt_int(0)).transpose()?.flatten())
}

/// Records the files of `part` and marks it complete, in one transaction. Completing a part
/// twice (two runs finishing the same planned part) keeps the first record.
pub async fn complete(
    db: &Database,
    part: &Part,
    files: &[WrittenFile],
) -> Result<(), ExportStoreError> {
    let (d, f) = (part.dataset.name(), part.format.name());
    let mut tx = db.begin().await?;
    for file in files {
        let args = [
            file.key.as_str().into(),
            d.into(),
            f.into(),
            part.from.into(),
            part.to.into(),
            file.dt.as_str().into(),
            file.rows.into(),
            file.bytes.into(),
            file.sha256.as_str().into(),
        ];
        tx.execute(sql::INSERT_FILE, &args).await?;
    }
    tx.execute(sql::COMPLETE_PART, &[d.into(), f.into(), part.from.into()])
        .await?;
    tx.commit().await.map_err(StoreError::from)?;
    Ok(())
}

/// A row of [`sql::FILES`] or [`sql::FILE`].
fn manifest_part(r: &Row) -> Result<ManifestPart, SqlError> {
    Ok(ManifestPart {
        key: r.text(0)?,
        // Only this module writes the column, from `ExportFormat::name`.
        format: r.text(1)?.parse().unwrap_or_default(),
        dt: r.text(2)?,
        from: r.int(3)?,
        to: r.int(4)?,
        rows: r.int(5)?,
        bytes: r.int(6)?,
        sha256: r.text(7)?,
    })
}

/// Every recorded file of `dataset` (files are recorded only when their part completes), by
/// format, watermark and date: the content of its `_manifest.json`.
pub async fn files(db: &Database, dataset: Dataset) -> Result<Vec<ManifestPart>, ExportStoreError> {
    let rows = crate::sql::Reader(db)
        .query(sql::FILES, &[dataset.name().into()])
        .await?;
    Ok(rows.iter().map(manifest_part).collect::<Result<_, _>>()?)
}

/// The recorded file under `key`, if any.
pub async fn file(db: &Database, key: &str) -> Result<Option<ManifestPart>, ExportStoreError> {
    let row = crate::sql::Reader(db)
        .query_opt(sql::FILE, &[key.into()])
        .await?;
    Ok(row.as_ref().map(manifest_part).transpose()?)
}

/// Files, rows and bytes exported so far, per dataset and format.
pub async fn totals(db: &Database) -> Result<Vec<ExportTotals>, ExportStoreError> {
    let rows = crate::sql::Reader(db)
        .query(cognomega_core::metrics::EXPORT_TOTALS_SQL, &[])
        .await?;
    Ok(rows
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
        .collect::<Result<_, SqlError>>()?)
}

/// Page cache of the SQLite scan's own connection: the scan reads the table once, in `seq`
/// order, so pages are never read twice and a large cache would only hold memory.
const SQLITE_SCAN_CACHE_KIB: i64 = 2048;

/// Streams the rows of `part` (in `seq` order) as Arrow batches of at most `batch_rows` rows,
/// one event date per batch, into `out`. Memory: one open batch per event date met. Returns
/// the rows scanned.
///
/// On SQLite the scan runs on a blocking thread over its own read-only connection to the same
/// file, reading each value where SQLite keeps it (no copy per value, no rows handed between
/// threads); a part's rows are committed before it is planned, so any connection sees them.
pub async fn scan(
    db: &Database,
    part: &Part,
    batch_rows: usize,
    out: &mpsc::Sender<DayBatch>,
) -> Result<u64, ExportStoreError> {
    let batch_rows = batch_rows.max(1);
    match db {
        Database::Sqlite(s) => {
            let path = s.read.connect_options().get_filename().to_path_buf();
            let (part, out) = (*part, out.clone());
            tokio::task::spawn_blocking(move || scan_sqlite(&path, &part, batch_rows, &out))
                .await
                .map_err(|e| ExportStoreError::ScanThread(e.to_string()))?
        }
        Database::Postgres(p) => {
            let mut days = Days::new(part.dataset, batch_rows);
            let sql = rows::scan_sql(part.dataset, Dialect::Postgres);
            let mut rows = sqlx::query(&sql)
                .bind(part.from)
                .bind(part.to)
                .fetch(&p.pool);
            while let Some(row) = rows.try_next().await? {
                if let Some(full) = days.push(&PgCells(&row))? {
                    out.send(full)
                        .await
                        .map_err(|_| ExportStoreError::WriterGone)?;
                }
            }
            let scanned = days.scanned();
            for rest in days.finish()? {
                out.send(rest)
                    .await
                    .map_err(|_| ExportStoreError::WriterGone)?;
            }
            Ok(scanned)
        }
    }
}

/// The SQLite scan, on the calling (blocking) thread.
fn scan_sqlite(
    path: &std::path::Path,
    part: &Part,
    batch_rows: usize,
    out: &mpsc::Sender<DayBatch>,
) -> Result<u64, ExportStoreError> {
    use rusqlite::OpenFlags;
    let conn = rusqlite::Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(30))?;
    conn.pragma_update(None, "cache_size", -SQLITE_SCAN_CACHE_KIB)?;
    let mut days = Days::new(part.dataset, batch_rows);
    let mut stmt = conn.prepare(&rows::scan_sql(part.dataset, Dialect::Sqlite))?;
    let mut rows = stmt.query([part.from, part.to])?;
    while let Some(row) = rows.next()? {
        if let Some(full) = days.push(&SqliteCells(row))? {
            out.blocking_send(full)
                .map_err(|_| ExportStoreError::WriterGone)?;
        }
    }
    let scanned = days.scanned();
    for rest in days.finish()? {
        out.blocking_send(rest)
            .map_err(|_| ExportStoreError::WriterGone)?;
    }
    Ok(scanned)
}

/// A PostgreSQL row as the export's [`Cells`].
struct PgCells<'a>(&'a sqlx::postgres::PgRow);

impl Cells for PgCells<'_> {
    type Error = ExportStoreError;
    fn int(&self, i: usize) -> Result<Option<i64>, ExportStoreError> {
        Ok(self.0.try_get(i)?)
    }
    fn micros(&self, i: usize) -> Result<Option<i64>, ExportStoreError> {
        let at: Option<chrono::DateTime<chrono::Utc>> = self.0.try_get(i)?;
        Ok(at.map(|t| t.timestamp_micros()))
    }
    fn float(&self, i: usize) -> Result<Option<f64>, ExportStoreError> {
        Ok(self.0.try_get(i)?)
    }
    fn boolean(&self, i: usize) -> Result<Option<bool>, ExportStoreError> {
        Ok(self.0.try_get(i)?)
    }
    fn text(&self, i: usize) -> Result<Option<&str>, ExportStoreError> {
        Ok(self.0.try_get(i)?)
    }
}

/// A SQLite row (read where SQLite keeps it) as the export's [`Cells`].
struct SqliteCells<'a, 'r>(&'a rusqlite::Row<'r>);

impl Cells for SqliteCells<'_, '_> {
    type Error = ExportStoreError;
    fn int(&self, i: usize) -> Result<Option<i64>, ExportStoreError> {
        Ok(self.0.get(i)?)
    }
    fn micros(&self, i: usize) -> Result<Option<i64>, ExportStoreError> {
        // Milliseconds in the table, scaled by the SELECT.
        self.int(i)
    }
    fn float(&self, i: usize) -> Result<Option<f64>, ExportStoreError> {
        // A REAL column may hold an integer-valued number as an integer.
        Ok(self.0.get(i)?)
    }
    fn boolean(&self, i: usize) -> Result<Option<bool>, ExportStoreError> {
        Ok(self.0.get(i)?)
    }
    fn text(&self, i: usize) -> Result<Option<&str>, ExportStoreError> {
        match self.0.get_ref(i)? {
            rusqlite::types::ValueRef::Null => Ok(None),
            rusqlite::types::ValueRef::Text(bytes) => std::str::from_utf8(bytes)
                .map(Some)
                .map_err(|e| rusqlite::Error::Utf8Error(e).into()),
            other => {
                Err(rusqlite::Error::InvalidColumnType(i, String::new(), other.data_type()).into())
            }
        }
    }
}
