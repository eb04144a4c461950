//! ETL export writers: Arrow batches in, the bytes of one export file out (Parquet with
//! zstd-compressed pages, or NDJSON in one zstd frame).
//!
//! Output is a pure function of the batches written: no clock, no random ids, no host names in
//! the files (Parquet's `created_by` names the writer library and its version, nothing else), so
//! re-exporting a part produces the same bytes and the same SHA-256.

use std::collections::BTreeMap;
use std::io::Write;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_array::{Array, RecordBatch};
use arrow_schema::{DataType, SchemaRef};
use cognomega_core::etl::{dt_of_days, ExportFormat, CATEGORICAL};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use parquet::schema::types::ColumnPath;
use sha2::{Digest, Sha256};

pub mod rows;

/// zstd level of Parquet pages and NDJSON files: fast to write, ~as small as gzip-9.
pub const ZSTD_LEVEL: i32 = 3;

/// Rows per Parquet row group (a part holds at most a few of them).
pub const ROW_GROUP_ROWS: usize = 256 * 1024;

/// Writing an export file failed.
#[derive(Debug, thiserror::Error)]
pub enum ExportWriteError {
    /// The Parquet encoder refused.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// zstd or the in-memory sink failed.
    #[error("ndjson: {0}")]
    Io(#[from] std::io::Error),
    /// A column type the NDJSON writer does not know (a bug: the schemas come from core).
    #[error("unsupported column type {0}")]
    Unsupported(DataType),
}

/// A finished export file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FinishedFile {
    /// Its event date, `YYYY-MM-DD`.
    pub dt: String,
    /// Its bytes.
    pub bytes: Vec<u8>,
    /// Rows in it.
    pub rows: u64,
    /// Lower-case hex SHA-256 of `bytes`.
    pub sha256: String,
}

/// The files of one part, one per event date, built in memory (a part is capped in rows).
#[derive(Debug)]
pub struct PartFiles {
    format: ExportFormat,
    schema: SchemaRef,
    files: BTreeMap<i64, FileWriter>,
}

impl PartFiles {
    /// No files yet.
    #[must_use]
    pub fn new(format: ExportFormat, schema: SchemaRef) -> Self {
        Self {
            format,
            schema,
            files: BTreeMap::new(),
        }
    }

    /// Appends `batch` to the file of `day` (days since the epoch).
    pub fn write(&mut self, day: i64, batch: &RecordBatch) -> Result<(), ExportWriteError> {
        let file = match self.files.entry(day) {
            std::collections::btree_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::btree_map::Entry::Vacant(e) => {
                e.insert(FileWriter::new(self.format, self.schema.clone())?)
            }
        };
        file.write(batch)
    }

    /// Every file, by date.
    pub fn finish(self) -> Result<Vec<FinishedFile>, ExportWriteError> {
        self.files
            .into_iter()
            .map(|(day, w)| w.finish(dt_of_days(day)))
            .collect()
    }
}

/// One export file being written.
pub struct FileWriter {
    inner: Inner,
    rows: u64,
}

enum Inner {
    Parquet(Box<ArrowWriter<Vec<u8>>>),
    Ndjson(zstd::stream::Encoder<'static, Vec<u8>>),
}

impl std::fmt::Debug for FileWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let format = match self.inner {
            Inner::Parquet(_) => "parquet",
            Inner::Ndjson(_) => "ndjson",
        };
        f.debug_struct("FileWriter")
            .field("format", &format)
            .field("rows", &self.rows)
            .finish()
    }
}

impl FileWriter {
    /// An empty file of `format` with columns `schema`.
    pub fn new(format: ExportFormat, schema: SchemaRef) -> Result<Self, ExportWriteError> {
        let inner = match format {
            ExportFormat::Parquet => {
                // Dictionaries only for columns with few distinct values: a dictionary of
                // unique keys is built, found useless and thrown away, and costs memory per
                // open file (a part has one open file per event date).
                let mut props = WriterProperties::builder()
                    .set_compression(Compression::ZSTD(ZstdLevel::try_new(ZSTD_LEVEL)?))
                    .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
                    .set_dictionary_enabled(false);
                for field in schema.fields() {
                    if CATEGORICAL.contains(&field.name().as_str()) {
                        props = props.set_column_dictionary_enabled(
                            ColumnPath::from(field.name().as_str()),
                            true,
                        );
                    }
                }
                let props = props.build();
                Inner::Parquet(Box::new(ArrowWriter::try_new(
                    Vec::new(),
                    schema,
                    Some(props),
                )?))
            }
            ExportFormat::Ndjson => {
                Inner::Ndjson(zstd::stream::Encoder::new(Vec::new(), ZSTD_LEVEL)?)
            }
        };
        Ok(Self { inner, rows: 0 })
    }

    /// Appends the rows of `batch`.
    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), ExportWriteError> {
        match &mut self.inner {
            Inner::Parquet(w) => w.write(batch)?,
            Inner::Ndjson(w) => write_ndjson(w, batch)?,
        }
        self.rows += batch.num_rows() as u64;
        Ok(())
    }

    /// The finished file, named by its event date `dt`.
    pub fn finish(self, dt: String) -> Result<FinishedFile, ExportWriteError> {
        let bytes = match self.inner {
            Inner::Parquet(w) => w.into_inner()?,
            Inner::Ndjson(w) => w.finish()?,
        };
        let sha256 = hex(&Sha256::digest(&bytes));
        Ok(FinishedFile {
            dt,
            bytes,
            rows: self.rows,
            sha256,
        })
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// One JSON object per row, keys in column order; timestamps as RFC 3339 UTC with
/// microseconds, nulls as `null`.
fn write_ndjson<W: Write>(out: &mut W, batch: &RecordBatch) -> Result<(), ExportWriteError> {
    let schema = batch.schema();
    let names: Vec<String> = schema
        .fields()
        .iter()
        .map(|f| serde_json::to_string(f.name()).unwrap_or_default())
        .collect();
    let mut line = Vec::with_capacity(512);
    for row in 0..batch.num_rows() {
        line.clear();
        line.push(b'{');
        for (i, column) in batch.columns().iter().enumerate() {
            if i > 0 {
                line.push(b',');
            }
            line.extend_from_slice(names[i].as_bytes());
            line.push(b':');
            write_value(&mut line, column.as_ref(), row)?;
        }
        line.extend_from_slice(b"}\n");
        out.write_all(&line)?;
    }
    Ok(())
}

fn write_value(line: &mut Vec<u8>, column: &dyn Array, row: usize) -> Result<(), ExportWriteError> {
    if column.is_null(row) {
        line.extend_from_slice(b"null");
        return Ok(());
    }
    match column.data_type() {
        DataType::Int64 => {
            let v = column.as_primitive::<Int64Type>().value(row);
            write!(line, "{v}")?;
        }
        DataType::Float64 => {
            let v = column.as_primitive::<Float64Type>().value(row);
            serde_json::to_writer(&mut *line, &v).map_err(std::io::Error::other)?;
        }
        DataType::Boolean => {
            let v = column.as_boolean().value(row);
            line.extend_from_slice(if v { b"true" } else { b"false" });
        }
        DataType::Utf8 => {
            let v = column.as_string::<i32>().value(row);
            serde_json::to_writer(&mut *line, v).map_err(std::io::Error::other)?;
        }
        DataType::Timestamp(_, _) => {
            let v = column.as_primitive::<TimestampMicrosecondType>().value(row);
            write!(line, "\"{}\"", rfc3339_micros(v))?;
        }
        other => return Err(ExportWriteError::Unsupported(other.clone())),
    }
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ`.
#[must_use]
pub fn rfc3339_micros(micros: i64) -> String {
    const DAY: i64 = 86_400_000_000;
    let day = micros.div_euclid(DAY);
    let of_day = micros.rem_euclid(DAY);
    let secs = of_day / 1_000_000;
    format!(
        "{}T{:02}:{:02}:{:02}.{:06}Z",
        dt_of_days(day),
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        of_day % 1_000_000
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow_array::builder::{Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
    use arrow_schema::{Field, Schema, TimeUnit};

    use super::*;

    fn batch() -> RecordBatch {
        let schema = Arc::new(Schema::new(vec![
            Field::new("seq", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new(
                "at",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
        ]));
        let mut seq = Int64Builder::new();
        let mut name = StringBuilder::new();
        let mut at = TimestampMicrosecondBuilder::new().with_timezone("UTC");
        for i in 0..1000 {
            seq.append_value(i);
            name.append_option((i % 3 != 0).then(|| format!("n\"{i}")));
            at.append_value(1_700_000_000_000_000 + i * 1_000_001);
        }
        RecordBatch::try_new(
            schema,
            vec![
                Arc::new(seq.finish()),
                Arc::new(name.finish()),
                Arc::new(at.finish()),
            ],
        )
        .expect("valid batch")
    }

    fn write(format: ExportFormat) -> FinishedFile {
        let b = batch();
        let mut files = PartFiles::new(format, b.schema());
        files.write(19_675, &b).expect("write");
        files.write(19_675, &b).expect("write");
        let mut out = files.finish().expect("finish");
        assert_eq!(out.len(), 1);
        out.remove(0)
    }

    #[test]
    fn files_are_deterministic() {
        for format in ExportFormat::ALL {
            let a = write(format);
            let b = write(format);
            assert_eq!(a, b, "{format}");
            assert_eq!(a.rows, 2000);
            assert_eq!(a.dt, "2023-11-14");
            assert_eq!(a.sha256.len(), 64);
        }
    }

    #[test]
    fn ndjson_lines() {
        let f = write(ExportFormat::Ndjson);
        let text = zstd::decode_all(&f.bytes[..]).expect("zstd");
        let text = String::from_utf8(text).expect("utf-8");
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2000);
        assert_eq!(
            lines[0],
            r#"{"seq":0,"name":null,"at":"2023-11-14T22:13:20.000000Z"}"#
        );
        let v: serde_json::Value = serde_json::from_str(lines[1]).expect("json");
        assert_eq!(v["name"], "n\"1");
        assert_eq!(v["at"], "2023-11-14T22:13:21.000001Z");
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339_micros(0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339_micros(-1), "1969-12-31T23:59:59.999999Z");
    }
}
