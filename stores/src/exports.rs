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
use cognomega_pipelines::export::rows::{self, BatchError, Cells, Days, Dialect};
use futures::TryStreamExt;
use sqlx::Row;
use tokio::sync::mpsc;

use crate::Database;

/// Failures of the export SQL.
#[derive(Debug, thiserror::Error)]
pub enum ExportStoreError {
    /// The database failed.
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
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
    const SQL: &str = sql::WATERMARK;
    Ok(match db {
        Database::Sqlite(s) => {
            sqlx::query_scalar(SQL)
                .bind(dataset.name())
                .bind(format.name())
                .fetch_optional(&s.write)
                .await?
        }
        Database::Postgres(p) => {
            sqlx::query_scalar(SQL)
                .bind(dataset.name())
                .bind(format.name())
                .fetch_optional(&p.pool)
                .await?
        }
    })
}

/// Planned parts not yet complete, oldest first.
pub async fn planned_parts(
    db: &Database,
    dataset: Dataset,
    format: ExportFormat,
) -> Result<Vec<Part>, ExportStoreError> {
    const SQL: &str = sql::PLANNED_PARTS;
    let rows: Vec<(i64, i64)> = match db {
        Database::Sqlite(s) => {
            sqlx::query_as(SQL)
                .bind(dataset.name())
                .bind(format.name())
                .fetch_all(&s.write)
                .await?
        }
        Database::Postgres(p) => {
            sqlx::query_as(SQL)
                .bind(dataset.name())
                .bind(format.name())
                .fetch_all(&p.pool)
                .await?
        }
    };
    Ok(rows
        .into_iter()
        .map(|(from, to)| Part {
            dataset,
            format,
            from,
            to,
        })
        .collect())
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
        planner.found(scalar_read(db, &nth_sql, after, offset).await?);
    }
    let parts = planner.into_parts();
    if parts.is_empty() {
        return Ok(Plan::Planned(parts));
    }
    let swapped = match db {
        Database::Sqlite(s) => {
            let mut tx = s.write.begin().await?;
            let ok = swap_sqlite(&mut tx, dataset, format, current, high).await?;
            if ok {
                for p in &parts {
                    sqlx::query(INSERT_PART)
                        .bind(dataset.name())
                        .bind(format.name())
                        .bind(p.from)
                        .bind(p.to)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }
            ok
        }
        Database::Postgres(pg) => {
            let mut tx = pg.pool.begin().await?;
            let ok = swap_pg(&mut tx, dataset, format, current, high).await?;
            if ok {
                for p in &parts {
                    sqlx::query(INSERT_PART)
                        .bind(dataset.name())
                        .bind(format.name())
                        .bind(p.from)
                        .bind(p.to)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
            }
            ok
        }
    };
    Ok(if swapped {
        Plan::Planned(parts)
    } else {
        Plan::Raced
    })
}

const INSERT_PART: &str = sql::INSERT_PART;
const INSERT_WATERMARK: &str = sql::INSERT_WATERMARK;
const SWAP_WATERMARK: &str = sql::SWAP_WATERMARK;

async fn swap_sqlite(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
    dataset: Dataset,
    format: ExportFormat,
    current: Option<i64>,
    high: i64,
) -> Result<bool, sqlx::Error> {
    let done = match current {
        None => sqlx::query(INSERT_WATERMARK)
            .bind(dataset.name())
            .bind(format.name())
            .bind(high)
            .execute(&mut **tx)
            .await?
            .rows_affected(),
        Some(old) => sqlx::query(SWAP_WATERMARK)
            .bind(dataset.name())
            .bind(format.name())
            .bind(high)
            .bind(old)
            .execute(&mut **tx)
            .await?
            .rows_affected(),
    };
    Ok(done == 1)
}

async fn swap_pg(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    dataset: Dataset,
    format: ExportFormat,
    current: Option<i64>,
    high: i64,
) -> Result<bool, sqlx::Error> {
    let done = match current {
        None => sqlx::query(INSERT_WATERMARK)
            .bind(dataset.name())
            .bind(format.name())
            .bind(high)
            .execute(&mut **tx)
            .await?
            .rows_affected(),
        Some(old) => sqlx::query(SWAP_WATERMARK)
            .bind(dataset.name())
            .bind(format.name())
            .bind(high)
            .bind(old)
            .execute(&mut **tx)
            .await?
            .rows_affected(),
    };
    Ok(done == 1)
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
    let first: Option<i64> = match db {
        Database::Sqlite(s) => sqlx::query_scalar(unsettled).fetch_one(&s.read).await?,
        Database::Postgres(p) => sqlx::query_scalar(unsettled).fetch_one(&p.pool).await?,
    };
    Ok(etl::visible_high(max, first))
}

async fn scalar_read(db: &Database, sql: &str, a: i64, b: i64) -> Result<Option<i64>, sqlx::Error> {
    match db {
        Database::Sqlite(s) => {
            sqlx::query_scalar(sql)
                .bind(a)
                .bind(b)
                .fetch_optional(&s.read)
                .await
        }
        Database::Postgres(p) => {
            sqlx::query_scalar(sql)
                .bind(a)
                .bind(b)
                .fetch_optional(&p.pool)
                .await
        }
    }
}

/// Records the files of `part` and marks it complete, in one transaction. Completing a part
/// twice (two runs finishing the same planned part) keeps the first record.
pub async fn complete(
    db: &Database,
    part: &Part,
    files: &[WrittenFile],
) -> Result<(), ExportStoreError> {
    const INSERT: &str = sql::INSERT_FILE;
    const DONE: &str = sql::COMPLETE_PART;
    macro_rules! run {
        ($tx:expr) => {{
            for f in files {
                sqlx::query(INSERT)
                    .bind(&f.key)
                    .bind(part.dataset.name())
                    .bind(part.format.name())
                    .bind(part.from)
                    .bind(part.to)
                    .bind(&f.dt)
                    .bind(f.rows)
                    .bind(f.bytes)
                    .bind(&f.sha256)
                    .execute(&mut *$tx)
                    .await?;
            }
            sqlx::query(DONE)
                .bind(part.dataset.name())
                .bind(part.format.name())
                .bind(part.from)
                .execute(&mut *$tx)
                .await?;
        }};
    }
    match db {
        Database::Sqlite(s) => {
            let mut tx = s.write.begin().await?;
            run!(tx);
            tx.commit().await?;
        }
        Database::Postgres(p) => {
            let mut tx = p.pool.begin().await?;
            run!(tx);
            tx.commit().await?;
        }
    }
    Ok(())
}

type FileRow = (String, String, String, i64, i64, i64, i64, String);

fn manifest_part((key, format, dt, from, to, rows, bytes, sha256): FileRow) -> ManifestPart {
    ManifestPart {
        key,
        // Only this module writes the column, from `ExportFormat::name`.
        format: format.parse().unwrap_or_default(),
        dt,
        from,
        to,
        rows,
        bytes,
        sha256,
    }
}

/// Every recorded file of `dataset` (files are recorded only when their part completes), by
/// format, watermark and date: the content of its `_manifest.json`.
pub async fn files(db: &Database, dataset: Dataset) -> Result<Vec<ManifestPart>, ExportStoreError> {
    let sql = sql::FILES;
    let rows: Vec<FileRow> = match db {
        Database::Sqlite(s) => {
            sqlx::query_as(sql)
                .bind(dataset.name())
                .fetch_all(&s.read)
                .await?
        }
        Database::Postgres(p) => {
            sqlx::query_as(sql)
                .bind(dataset.name())
                .fetch_all(&p.pool)
                .await?
        }
    };
    Ok(rows.into_iter().map(manifest_part).collect())
}

/// The recorded file under `key`, if any.
pub async fn file(db: &Database, key: &str) -> Result<Option<ManifestPart>, ExportStoreError> {
    let sql = sql::FILE;
    let row: Option<FileRow> = match db {
        Database::Sqlite(s) => {
            sqlx::query_as(sql)
                .bind(key)
                .fetch_optional(&s.read)
                .await?
        }
        Database::Postgres(p) => {
            sqlx::query_as(sql)
                .bind(key)
                .fetch_optional(&p.pool)
                .await?
        }
    };
    Ok(row.map(manifest_part))
}

/// Files, rows and bytes exported so far, per dataset and format.
pub async fn totals(db: &Database) -> Result<Vec<ExportTotals>, ExportStoreError> {
    const SQL: &str = cognomega_core::metrics::EXPORT_TOTALS_SQL;
    let rows: Vec<(String, String, i64, i64, i64)> = match db {
        Database::Sqlite(s) => sqlx::query_as(SQL).fetch_all(&s.read).await?,
        Database::Postgres(p) => sqlx::query_as(SQL).fetch_all(&p.pool).await?,
    };
    Ok(rows
        .into_iter()
        .map(|(dataset, format, files, rows, bytes)| ExportTotals {
            dataset,
            format,
            files,
            rows,
            bytes,
        })
        .collect())
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
