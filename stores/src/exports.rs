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

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use cognomega_core::etl::{Column, ColumnType, Dataset, ExportFormat, ManifestPart};
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
    #[error("building an Arrow batch of {dataset}: {source}")]
    Arrow {
        /// The dataset.
        dataset: Dataset,
        /// Why.
        source: ArrowError,
    },
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

/// The rows of one dataset with `seq` in `from..=to`, exported as one format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    /// The dataset.
    pub dataset: Dataset,
    /// The format.
    pub format: ExportFormat,
    /// First seq.
    pub from: i64,
    /// Last seq, inclusive.
    pub to: i64,
}

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

/// Files and rows exported so far, per dataset and format (for `/metrics`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportTotals {
    /// Dataset name.
    pub dataset: String,
    /// Format name.
    pub format: String,
    /// Files written.
    pub files: i64,
    /// Rows in them.
    pub rows: i64,
    /// Bytes in them.
    pub bytes: i64,
}

/// The rows of one event date (days since the epoch) from a scan, in `seq` order.
#[derive(Debug, Clone)]
pub struct DayBatch {
    /// Days since 1970-01-01 (UTC) of the rows' partition column.
    pub day: i64,
    /// The rows.
    pub batch: RecordBatch,
}

/// The dataset's watermark for `format`: the last `seq` planned into a part, if any run
/// started yet.
pub async fn watermark(
    db: &Database,
    dataset: Dataset,
    format: ExportFormat,
) -> Result<Option<i64>, ExportStoreError> {
    const SQL: &str = "SELECT watermark FROM export_watermarks WHERE dataset = $1 AND format = $2";
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
    const SQL: &str = "SELECT from_seq, to_seq FROM export_parts \
         WHERE dataset = $1 AND format = $2 AND state = 'planned' ORDER BY from_seq";
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
    let start = match (current, since) {
        (Some(watermark), Some(_)) => {
            return Err(ExportStoreError::AlreadyStarted {
                dataset,
                format,
                watermark,
            })
        }
        (Some(w), None) => w,
        (None, s) => s.unwrap_or(0),
    };
    let high = visible_high(db, dataset).await?;
    let mut parts = Vec::new();
    let mut from = start;
    let offset = i64::try_from(max_rows.max(1) - 1).unwrap_or(i64::MAX);
    while from < high {
        let nth: Option<i64> = scalar_read(
            db,
            &format!(
                "SELECT seq FROM {} WHERE seq > $1 ORDER BY seq LIMIT 1 OFFSET $2",
                dataset.name()
            ),
            from,
            offset,
        )
        .await?;
        let to = nth.map_or(high, |n| n.min(high));
        parts.push(Part {
            dataset,
            format,
            from: from + 1,
            to,
        });
        from = to;
    }
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

const INSERT_PART: &str = "INSERT INTO export_parts (dataset, format, from_seq, to_seq, state) \
     VALUES ($1, $2, $3, $4, 'planned')";
/// The first run of a dataset creates its watermark row; a concurrent first run conflicts.
const INSERT_WATERMARK: &str = "INSERT INTO export_watermarks (dataset, format, watermark) \
     VALUES ($1, $2, $3) ON CONFLICT (dataset, format) DO NOTHING";
const SWAP_WATERMARK: &str = "UPDATE export_watermarks SET watermark = $3 \
     WHERE dataset = $1 AND format = $2 AND watermark = $4";

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
    let table = dataset.name();
    let max_sql = format!("SELECT COALESCE(MAX(seq), 0) FROM {table}");
    let max: i64 = match db {
        Database::Sqlite(s) => sqlx::query_scalar(&max_sql).fetch_one(&s.read).await?,
        Database::Postgres(p) => {
            let mut tx = p.pool.begin().await?;
            sqlx::query(&format!("LOCK TABLE {table} IN SHARE MODE"))
                .execute(&mut *tx)
                .await?;
            let max = sqlx::query_scalar(&max_sql).fetch_one(&mut *tx).await?;
            tx.commit().await?;
            max
        }
    };
    let unsettled = match dataset {
        Dataset::Jobs => "SELECT MIN(seq) FROM jobs WHERE status IN ('queued', 'running')",
        Dataset::Uploads => "SELECT MIN(seq) FROM uploads WHERE scan = 'pending'",
        Dataset::UsageEvents | Dataset::LedgerEntries => return Ok(max),
    };
    let first: Option<i64> = match db {
        Database::Sqlite(s) => sqlx::query_scalar(unsettled).fetch_one(&s.read).await?,
        Database::Postgres(p) => sqlx::query_scalar(unsettled).fetch_one(&p.pool).await?,
    };
    Ok(first.map_or(max, |f| max.min(f - 1)))
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
    const INSERT: &str = "INSERT INTO export_files \
         (object_key, dataset, format, from_seq, to_seq, dt, rows, bytes, sha256) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (object_key) DO NOTHING";
    const DONE: &str = "UPDATE export_parts SET state = 'complete' \
         WHERE dataset = $1 AND format = $2 AND from_seq = $3";
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

const FILE_COLUMNS: &str = "object_key, format, dt, from_seq, to_seq, rows, bytes, sha256";

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
    let sql = format!(
        "SELECT {FILE_COLUMNS} FROM export_files WHERE dataset = $1 \
         ORDER BY format, from_seq, dt"
    );
    let rows: Vec<FileRow> = match db {
        Database::Sqlite(s) => {
            sqlx::query_as(&sql)
                .bind(dataset.name())
                .fetch_all(&s.read)
                .await?
        }
        Database::Postgres(p) => {
            sqlx::query_as(&sql)
                .bind(dataset.name())
                .fetch_all(&p.pool)
                .await?
        }
    };
    Ok(rows.into_iter().map(manifest_part).collect())
}

/// The recorded file under `key`, if any.
pub async fn file(db: &Database, key: &str) -> Result<Option<ManifestPart>, ExportStoreError> {
    let sql = format!("SELECT {FILE_COLUMNS} FROM export_files WHERE object_key = $1");
    let row: Option<FileRow> = match db {
        Database::Sqlite(s) => {
            sqlx::query_as(&sql)
                .bind(key)
                .fetch_optional(&s.read)
                .await?
        }
        Database::Postgres(p) => {
            sqlx::query_as(&sql)
                .bind(key)
                .fetch_optional(&p.pool)
                .await?
        }
    };
    Ok(row.map(manifest_part))
}

/// Files, rows and bytes exported so far, per dataset and format.
pub async fn totals(db: &Database) -> Result<Vec<ExportTotals>, ExportStoreError> {
    const SQL: &str = "SELECT dataset, format, COUNT(*), \
         CAST(COALESCE(SUM(rows), 0) AS BIGINT), CAST(COALESCE(SUM(bytes), 0) AS BIGINT) \
         FROM export_files GROUP BY dataset, format ORDER BY dataset, format";
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

/// The Arrow schema of a dataset's files.
#[must_use]
pub fn arrow_schema(dataset: Dataset) -> SchemaRef {
    let fields: Vec<Field> = dataset
        .columns()
        .iter()
        .map(|c| Field::new(c.name, arrow_type(c.ty), c.nullable))
        .collect();
    Arc::new(Schema::new(fields))
}

fn arrow_type(ty: ColumnType) -> DataType {
    match ty {
        ColumnType::Int64 => DataType::Int64,
        ColumnType::Float64 => DataType::Float64,
        ColumnType::Bool => DataType::Boolean,
        ColumnType::Utf8 => DataType::Utf8,
        ColumnType::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
    }
}

/// The SELECT of a part's rows; every column converted to the type it is decoded as.
fn scan_sql(dataset: Dataset, postgres: bool) -> String {
    let columns: Vec<String> = dataset
        .columns()
        .iter()
        .map(|c| {
            let name = format!("\"{}\"", c.name);
            match (c.ty, postgres) {
                // SQLite keeps epoch milliseconds.
                (ColumnType::Timestamp, false) => format!("{name} * 1000"),
                // PostgreSQL sends a timestamptz as its microseconds (binary protocol): decoded
                // as is, with no server-side arithmetic (`extract` works in `numeric`).
                (ColumnType::Timestamp, true) => name,
                (ColumnType::Int64, true) => format!("{name}::bigint"),
                (ColumnType::Float64, true) => format!("{name}::float8"),
                _ => name,
            }
        })
        .collect();
    format!(
        "SELECT {} FROM {} WHERE seq BETWEEN $1 AND $2 ORDER BY seq",
        columns.join(", "),
        dataset.name()
    )
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
            let sql = scan_sql(part.dataset, true);
            let mut rows = sqlx::query(&sql)
                .bind(part.from)
                .bind(part.to)
                .fetch(&p.pool);
            while let Some(row) = rows.try_next().await? {
                if let Some(full) = days.push(&row)? {
                    out.send(full)
                        .await
                        .map_err(|_| ExportStoreError::WriterGone)?;
                }
            }
            let scanned = days.scanned;
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
    let mut stmt = conn.prepare(&scan_sql(part.dataset, false))?;
    let mut rows = stmt.query([part.from, part.to])?;
    while let Some(row) = rows.next()? {
        if let Some(full) = days.push(row)? {
            out.blocking_send(full)
                .map_err(|_| ExportStoreError::WriterGone)?;
        }
    }
    let scanned = days.scanned;
    for rest in days.finish()? {
        out.blocking_send(rest)
            .map_err(|_| ExportStoreError::WriterGone)?;
    }
    Ok(scanned)
}

/// One scanned row, read by column index as the type of its Arrow column.
trait Cells {
    fn int(&self, i: usize) -> Result<Option<i64>, ExportStoreError>;
    /// Microseconds since the epoch, UTC.
    fn micros(&self, i: usize) -> Result<Option<i64>, ExportStoreError>;
    fn float(&self, i: usize) -> Result<Option<f64>, ExportStoreError>;
    fn boolean(&self, i: usize) -> Result<Option<bool>, ExportStoreError>;
    fn text(&self, i: usize) -> Result<Option<&str>, ExportStoreError>;
}

impl Cells for sqlx::postgres::PgRow {
    fn int(&self, i: usize) -> Result<Option<i64>, ExportStoreError> {
        Ok(self.try_get(i)?)
    }
    fn micros(&self, i: usize) -> Result<Option<i64>, ExportStoreError> {
        let at: Option<chrono::DateTime<chrono::Utc>> = self.try_get(i)?;
        Ok(at.map(|t| t.timestamp_micros()))
    }
    fn float(&self, i: usize) -> Result<Option<f64>, ExportStoreError> {
        Ok(self.try_get(i)?)
    }
    fn boolean(&self, i: usize) -> Result<Option<bool>, ExportStoreError> {
        Ok(self.try_get(i)?)
    }
    fn text(&self, i: usize) -> Result<Option<&str>, ExportStoreError> {
        Ok(self.try_get(i)?)
    }
}

impl Cells for rusqlite::Row<'_> {
    fn int(&self, i: usize) -> Result<Option<i64>, ExportStoreError> {
        Ok(self.get(i)?)
    }
    fn micros(&self, i: usize) -> Result<Option<i64>, ExportStoreError> {
        // Milliseconds in the table, scaled by the SELECT.
        self.int(i)
    }
    fn float(&self, i: usize) -> Result<Option<f64>, ExportStoreError> {
        // A REAL column may hold an integer-valued number as an integer.
        Ok(self.get(i)?)
    }
    fn boolean(&self, i: usize) -> Result<Option<bool>, ExportStoreError> {
        Ok(self.get(i)?)
    }
    fn text(&self, i: usize) -> Result<Option<&str>, ExportStoreError> {
        match self.get_ref(i)? {
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

/// Open batches, one per event date.
struct Days {
    dataset: Dataset,
    schema: SchemaRef,
    partition: usize,
    batch_rows: usize,
    open: BTreeMap<i64, Builders>,
    scanned: u64,
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

impl Days {
    fn new(dataset: Dataset, batch_rows: usize) -> Self {
        Self {
            dataset,
            schema: arrow_schema(dataset),
            partition: dataset.partition_column(),
            batch_rows,
            open: BTreeMap::new(),
            scanned: 0,
        }
    }

    /// Adds a row; returns its date's batch when that is full.
    fn push(&mut self, row: &impl Cells) -> Result<Option<DayBatch>, ExportStoreError> {
        // A NULL event time (impossible: NOT NULL) would fail the batch's schema check below.
        let at = row.micros(self.partition)?;
        let day = at.unwrap_or(0).div_euclid(MICROS_PER_DAY);
        let columns = self.dataset.columns();
        let builders = self
            .open
            .entry(day)
            .or_insert_with(|| Builders::new(columns, self.batch_rows.min(1024)));
        builders.push(row)?;
        self.scanned += 1;
        if builders.rows < self.batch_rows {
            return Ok(None);
        }
        let full = self
            .open
            .remove(&day)
            .unwrap_or_else(|| unreachable!("just used"));
        Ok(Some(self.batch(day, full)?))
    }

    fn batch(&self, day: i64, builders: Builders) -> Result<DayBatch, ExportStoreError> {
        let batch =
            RecordBatch::try_new(self.schema.clone(), builders.finish()).map_err(|source| {
                ExportStoreError::Arrow {
                    dataset: self.dataset,
                    source,
                }
            })?;
        Ok(DayBatch { day, batch })
    }

    /// The remaining batches, by date.
    fn finish(mut self) -> Result<Vec<DayBatch>, ExportStoreError> {
        let open = std::mem::take(&mut self.open);
        open.into_iter()
            .map(|(day, builders)| self.batch(day, builders))
            .collect()
    }
}

enum Builder {
    Int64(Int64Builder),
    Float64(Float64Builder),
    Bool(BooleanBuilder),
    Utf8(StringBuilder),
    Timestamp(TimestampMicrosecondBuilder),
}

struct Builders {
    columns: Vec<Builder>,
    rows: usize,
}

impl Builders {
    fn new(columns: &[Column], capacity: usize) -> Self {
        let columns = columns
            .iter()
            .map(|c| match c.ty {
                ColumnType::Int64 => Builder::Int64(Int64Builder::with_capacity(capacity)),
                ColumnType::Float64 => Builder::Float64(Float64Builder::with_capacity(capacity)),
                ColumnType::Bool => Builder::Bool(BooleanBuilder::with_capacity(capacity)),
                ColumnType::Utf8 => {
                    Builder::Utf8(StringBuilder::with_capacity(capacity, 32 * capacity))
                }
                ColumnType::Timestamp => Builder::Timestamp(
                    TimestampMicrosecondBuilder::with_capacity(capacity).with_timezone("UTC"),
                ),
            })
            .collect();
        Self { columns, rows: 0 }
    }

    fn push(&mut self, row: &impl Cells) -> Result<(), ExportStoreError> {
        for (i, b) in self.columns.iter_mut().enumerate() {
            match b {
                Builder::Int64(b) => b.append_option(row.int(i)?),
                Builder::Timestamp(b) => b.append_option(row.micros(i)?),
                Builder::Float64(b) => b.append_option(row.float(i)?),
                Builder::Bool(b) => b.append_option(row.boolean(i)?),
                Builder::Utf8(b) => b.append_option(row.text(i)?),
            }
        }
        self.rows += 1;
        Ok(())
    }

    fn finish(self) -> Vec<ArrayRef> {
        self.columns
            .into_iter()
            .map(|b| -> ArrayRef {
                match b {
                    Builder::Int64(mut b) => Arc::new(b.finish()),
                    Builder::Float64(mut b) => Arc::new(b.finish()),
                    Builder::Bool(mut b) => Arc::new(b.finish()),
                    Builder::Utf8(mut b) => Arc::new(b.finish()),
                    Builder::Timestamp(mut b) => Arc::new(b.finish()),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scan_sql_converts_per_backend() {
        let sqlite = scan_sql(Dataset::UsageEvents, false);
        assert!(sqlite.contains("\"occurred_at\" * 1000"), "{sqlite}");
        let pg = scan_sql(Dataset::Jobs, true);
        assert!(pg.contains("\"attempts\"::bigint"), "{pg}");
        assert!(pg.contains("\"progress\"::float8"), "{pg}");
        assert!(pg.contains(", \"finished_at\" FROM"), "{pg}");
    }
}
