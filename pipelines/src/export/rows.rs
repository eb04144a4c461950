//! Rows in, Arrow batches out: the typed schema of each dataset, the `SELECT` of a part's rows,
//! and the per-date batching of scanned rows, shared by every host (the native stores read
//! rows through sqlx and rusqlite, the edge through tokio-postgres; each wraps its row type in
//! [`Cells`]).

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow_array::builder::{
    BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder,
};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use cognomega_core::etl::{Column, ColumnType, Dataset};

/// Rows per Arrow batch streamed from the database into the file writers.
pub const BATCH_ROWS: usize = 16 * 1024;

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

/// The SQL dialect of a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// SQLite: timestamps are stored as epoch milliseconds.
    Sqlite,
    /// PostgreSQL: `timestamptz`, sent as microseconds by the binary protocol.
    Postgres,
}

/// The SELECT of a part's rows (`$1` = first seq, `$2` = last seq), in `seq` order; every
/// column converted to the type it is decoded as.
#[must_use]
pub fn scan_sql(dataset: Dataset, dialect: Dialect) -> String {
    let postgres = dialect == Dialect::Postgres;
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

/// One scanned row, read by column index as the type of its Arrow column. Each host wraps its
/// row type in this.
pub trait Cells {
    /// The host's read error; a batch that does not fit its schema becomes one too.
    type Error: From<BatchError>;
    /// A 64-bit integer.
    fn int(&self, i: usize) -> Result<Option<i64>, Self::Error>;
    /// Microseconds since the epoch, UTC.
    fn micros(&self, i: usize) -> Result<Option<i64>, Self::Error>;
    /// A 64-bit float.
    fn float(&self, i: usize) -> Result<Option<f64>, Self::Error>;
    /// A boolean.
    fn boolean(&self, i: usize) -> Result<Option<bool>, Self::Error>;
    /// Text.
    fn text(&self, i: usize) -> Result<Option<&str>, Self::Error>;
}

/// Scanned rows did not fit their dataset's schema (a NULL in a NOT NULL column, say).
#[derive(Debug, thiserror::Error)]
#[error("building an Arrow batch of {dataset}: {source}")]
pub struct BatchError {
    /// The dataset.
    pub dataset: Dataset,
    /// Why.
    pub source: ArrowError,
}

/// The rows of one event date (days since the epoch) from a scan, in `seq` order.
#[derive(Debug, Clone)]
pub struct DayBatch {
    /// Days since 1970-01-01 (UTC) of the rows' partition column.
    pub day: i64,
    /// The rows.
    pub batch: RecordBatch,
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

/// Open batches of a scan, one per event date. Memory: one open batch per date met.
pub struct Days {
    dataset: Dataset,
    schema: SchemaRef,
    partition: usize,
    batch_rows: usize,
    open: BTreeMap<i64, Builders>,
    scanned: u64,
}

impl std::fmt::Debug for Days {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Days")
            .field("dataset", &self.dataset)
            .field("open", &self.open.len())
            .field("scanned", &self.scanned)
            .finish()
    }
}

impl Days {
    /// Batches of at most `batch_rows` rows of `dataset`.
    #[must_use]
    pub fn new(dataset: Dataset, batch_rows: usize) -> Self {
        Self {
            dataset,
            schema: arrow_schema(dataset),
            partition: dataset.partition_column(),
            batch_rows: batch_rows.max(1),
            open: BTreeMap::new(),
            scanned: 0,
        }
    }

    /// Rows pushed so far.
    #[must_use]
    pub fn scanned(&self) -> u64 {
        self.scanned
    }

    /// Adds a row; returns its date's batch when that is full.
    pub fn push<C: Cells>(&mut self, row: &C) -> Result<Option<DayBatch>, C::Error> {
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

    fn batch(&self, day: i64, builders: Builders) -> Result<DayBatch, BatchError> {
        let batch =
            RecordBatch::try_new(self.schema.clone(), builders.finish()).map_err(|source| {
                BatchError {
                    dataset: self.dataset,
                    source,
                }
            })?;
        Ok(DayBatch { day, batch })
    }

    /// The remaining batches, by date.
    pub fn finish(mut self) -> Result<Vec<DayBatch>, BatchError> {
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

    fn push<C: Cells>(&mut self, row: &C) -> Result<(), C::Error> {
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
        let sqlite = scan_sql(Dataset::UsageEvents, Dialect::Sqlite);
        assert!(sqlite.contains("\"occurred_at\" * 1000"), "{sqlite}");
        let pg = scan_sql(Dataset::Jobs, Dialect::Postgres);
        assert!(pg.contains("\"attempts\"::bigint"), "{pg}");
        assert!(pg.contains("\"progress\"::float8"), "{pg}");
        assert!(pg.contains(", \"finished_at\" FROM"), "{pg}");
    }

    /// A row of `ledger_entries` as plain values.
    struct Row(i64, &'static str, i64, Option<i64>);

    impl Cells for Row {
        type Error = BatchError;
        fn int(&self, i: usize) -> Result<Option<i64>, BatchError> {
            Ok(Some(if i == 0 { self.0 } else { self.2 }))
        }
        fn micros(&self, _: usize) -> Result<Option<i64>, BatchError> {
            Ok(self.3)
        }
        fn float(&self, _: usize) -> Result<Option<f64>, BatchError> {
            Ok(None)
        }
        fn boolean(&self, _: usize) -> Result<Option<bool>, BatchError> {
            Ok(None)
        }
        fn text(&self, i: usize) -> Result<Option<&str>, BatchError> {
            Ok((i != 5).then_some(self.1))
        }
    }

    #[test]
    fn rows_are_batched_per_date() {
        let day = MICROS_PER_DAY;
        let mut days = Days::new(Dataset::LedgerEntries, 2);
        assert!(days
            .push(&Row(1, "a", 5, Some(day)))
            .expect("row")
            .is_none());
        assert!(days
            .push(&Row(2, "b", 5, Some(3 * day)))
            .expect("row")
            .is_none());
        let full = days.push(&Row(3, "c", 5, Some(day + 1))).expect("row");
        let full = full.expect("day 1 is full");
        assert_eq!((full.day, full.batch.num_rows()), (1, 2));
        assert_eq!(days.scanned(), 3);
        let rest = days.finish().expect("rest");
        assert_eq!(rest.len(), 1);
        assert_eq!((rest[0].day, rest[0].batch.num_rows()), (3, 1));
        // A NULL in a NOT NULL column is refused with the dataset named.
        let mut days = Days::new(Dataset::LedgerEntries, 1);
        let err = days
            .push(&Row(1, "a", 5, None))
            .expect_err("NULL created_at");
        assert!(err.to_string().contains("ledger_entries"), "{err}");
    }
}
