//! The analytics exports' native side: the row scans that feed the file writers as Arrow
//! batches (sqlx on PostgreSQL, rusqlite on a blocking thread for SQLite). The export itself (plan, write, complete, manifest) is the shared workflow
//! `cognomega_workflows::export`.

use cognomega_pipelines::export::rows::{self, BatchError, Cells, Days, Dialect};
use futures::TryStreamExt;
use sqlx::Row as _;
use tokio::sync::mpsc;

use crate::Database;

/// Failures of the export row scan.
#[derive(Debug, thiserror::Error)]
pub enum ExportStoreError {
    /// The database failed.
    #[error(transparent)]
    Sqlx(#[from] sqlx::Error),
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
