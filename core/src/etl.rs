//! Analytics exports (the `etl` queue): which datasets exist, their typed columns, the export
//! formats, the queue message a scheduler sends, and where the files and manifests live.
//!
//! Each dataset is exported incrementally by a *watermark* on its insertion order (the table's
//! `seq` column), never by event time, so an event inserted late with an old timestamp still
//! lands in the next export. A *part* covers the rows whose `seq` lies in `from..=to`; it is
//! split into one file per event date, Hive-style:
//!
//! ```text
//! exports/{dataset}/dt=YYYY-MM-DD/part-{from:020}-{to:020}.parquet      (or .ndjson.zst)
//! exports/{dataset}/_manifest.json
//! ```
//!
//! `from`/`to` are zero-padded to 20 digits so the names sort in watermark order.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// The queue the exports run on.
pub const QUEUE: &str = "etl";

/// Rows per part at most: a part's file is built in memory, so this bounds memory.
pub const DEFAULT_MAX_ROWS_PER_PART: u64 = 1_000_000;

/// An exported table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dataset {
    /// `usage_events`, partitioned by `occurred_at`.
    UsageEvents,
    /// `ledger_entries`, partitioned by `created_at`.
    LedgerEntries,
    /// `jobs` in a final state, partitioned by `created_at`.
    Jobs,
    /// `uploads` with a scan verdict, partitioned by `created_at`.
    Uploads,
}

/// A file format of an export.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ExportFormat {
    /// Apache Parquet, zstd-compressed pages.
    #[default]
    Parquet,
    /// Newline-delimited JSON in one zstd frame.
    Ndjson,
}

/// A name that is not a dataset or a format.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtlParseError {
    /// Unknown dataset.
    #[error("unknown dataset {0:?}: use one of usage_events, ledger_entries, jobs, uploads")]
    Dataset(String),
    /// Unknown format.
    #[error("unknown format {0:?}: use parquet or ndjson")]
    Format(String),
}

impl Dataset {
    /// Every dataset, in export order.
    pub const ALL: [Dataset; 4] = [
        Dataset::UsageEvents,
        Dataset::LedgerEntries,
        Dataset::Jobs,
        Dataset::Uploads,
    ];

    /// The table (and dataset) name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Dataset::UsageEvents => "usage_events",
            Dataset::LedgerEntries => "ledger_entries",
            Dataset::Jobs => "jobs",
            Dataset::Uploads => "uploads",
        }
    }

    /// The typed columns, in file order. The first is always `seq`, the watermark.
    #[must_use]
    pub fn columns(self) -> &'static [Column] {
        match self {
            Dataset::UsageEvents => USAGE_EVENTS,
            Dataset::LedgerEntries => LEDGER_ENTRIES,
            Dataset::Jobs => JOBS,
            Dataset::Uploads => UPLOADS,
        }
    }

    /// Index in [`Dataset::columns`] of the event time that names the `dt=` partition.
    #[must_use]
    pub fn partition_column(self) -> usize {
        let name = match self {
            Dataset::UsageEvents => "occurred_at",
            _ => "created_at",
        };
        self.columns()
            .iter()
            .position(|c| c.name == name)
            .unwrap_or_else(|| unreachable!("every dataset has its partition column"))
    }

    /// `exports/{dataset}/_manifest.json`.
    #[must_use]
    pub fn manifest_key(self) -> String {
        format!("exports/{}/_manifest.json", self.name())
    }

    /// The object key of one file of a part.
    #[must_use]
    pub fn part_key(self, dt: &str, from: i64, to: i64, format: ExportFormat) -> String {
        format!(
            "exports/{}/dt={dt}/part-{from:020}-{to:020}.{}",
            self.name(),
            format.extension()
        )
    }
}

impl fmt::Display for Dataset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Dataset {
    type Err = EtlParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Dataset::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| EtlParseError::Dataset(s.to_owned()))
    }
}

impl ExportFormat {
    /// Both formats.
    pub const ALL: [ExportFormat; 2] = [ExportFormat::Parquet, ExportFormat::Ndjson];

    /// `parquet` or `ndjson`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            ExportFormat::Parquet => "parquet",
            ExportFormat::Ndjson => "ndjson",
        }
    }

    /// The file name extension (no dot).
    #[must_use]
    pub fn extension(self) -> &'static str {
        match self {
            ExportFormat::Parquet => "parquet",
            ExportFormat::Ndjson => "ndjson.zst",
        }
    }

    /// The `Content-Type` of its files.
    #[must_use]
    pub fn content_type(self) -> &'static str {
        match self {
            ExportFormat::Parquet => "application/vnd.apache.parquet",
            ExportFormat::Ndjson => "application/zstd",
        }
    }
}

impl fmt::Display for ExportFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for ExportFormat {
    type Err = EtlParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ExportFormat::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| EtlParseError::Format(s.to_owned()))
    }
}

/// The body of an `etl` message: export `dataset` (every dataset when absent) as `format`.
///
/// Sending it is all a scheduler does; the consumer exports whatever is new since the
/// dataset's watermark, so a message sent twice costs one empty run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EtlMessage {
    /// The dataset, or `None` for all of them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dataset: Option<Dataset>,
    /// The file format (default Parquet).
    #[serde(default)]
    pub format: ExportFormat,
}

impl EtlMessage {
    /// The datasets this message covers.
    #[must_use]
    pub fn datasets(&self) -> Vec<Dataset> {
        match self.dataset {
            Some(d) => vec![d],
            None => Dataset::ALL.to_vec(),
        }
    }
}

use ColumnType::{Bool, Float64, Int64, Timestamp, Utf8};

const USAGE_EVENTS: &[Column] = &[
    Column::new("seq", Int64, false),
    Column::new("tenant_id", Utf8, false),
    Column::new("idempotency_key", Utf8, false),
    Column::new("kind", Utf8, false),
    Column::new("quantity", Int64, false),
    Column::new("credits", Int64, false),
    Column::new("occurred_at", Timestamp, false),
    Column::new("received_at", Timestamp, false),
    Column::new("meta", Utf8, true),
    Column::new("request_id", Utf8, true),
];

const LEDGER_ENTRIES: &[Column] = &[
    Column::new("seq", Int64, false),
    Column::new("id", Utf8, false),
    Column::new("tenant_id", Utf8, false),
    Column::new("delta", Int64, false),
    Column::new("kind", Utf8, false),
    Column::new("ref", Utf8, true),
    Column::new("created_at", Timestamp, false),
];

const JOBS: &[Column] = &[
    Column::new("seq", Int64, false),
    Column::new("id", Utf8, false),
    Column::new("tenant_id", Utf8, false),
    Column::new("type", Utf8, false),
    Column::new("status", Utf8, false),
    Column::new("params", Utf8, false),
    Column::new("attempts", Int64, false),
    Column::new("error", Utf8, true),
    Column::new("credits_charged", Int64, false),
    Column::new("progress", Float64, false),
    Column::new("cancel_requested", Bool, false),
    Column::new("request_id", Utf8, true),
    Column::new("created_at", Timestamp, false),
    Column::new("started_at", Timestamp, true),
    Column::new("finished_at", Timestamp, true),
];

const UPLOADS: &[Column] = &[
    Column::new("seq", Int64, false),
    Column::new("key", Utf8, false),
    Column::new("tenant_id", Utf8, false),
    Column::new("filename", Utf8, false),
    Column::new("content_type", Utf8, false),
    Column::new("size", Int64, false),
    Column::new("sha256", Utf8, false),
    Column::new("scan", Utf8, false),
    Column::new("signature", Utf8, true),
    Column::new("request_id", Utf8, true),
    Column::new("created_at", Timestamp, false),
    Column::new("scanned_at", Timestamp, true),
];

/// Text columns with few distinct values (dictionary-encoded in Parquet).
pub const CATEGORICAL: &[&str] = &[
    "tenant_id",
    "kind",
    "type",
    "status",
    "scan",
    "content_type",
    "signature",
];

/// A column's type in the exported files.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    /// 64-bit signed integer.
    Int64,
    /// 64-bit float.
    Float64,
    /// Boolean.
    Bool,
    /// UTF-8 text.
    Utf8,
    /// Microseconds since the Unix epoch, UTC (Parquet `TIMESTAMP(MICROS, isAdjustedToUTC)`).
    Timestamp,
}

/// One exported column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// Its name, the table's column name.
    pub name: &'static str,
    /// Its type.
    pub ty: ColumnType,
    /// May be null.
    pub nullable: bool,
}

impl Column {
    const fn new(name: &'static str, ty: ColumnType, nullable: bool) -> Self {
        Self { name, ty, nullable }
    }
}

/// `_manifest.json`: every complete file of a dataset. Files not listed here are not (yet)
/// part of the export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The dataset.
    pub dataset: Dataset,
    /// Every complete file, by format, then watermark, then date.
    pub parts: Vec<ManifestPart>,
}

/// One complete file of an export.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestPart {
    /// Its object key.
    pub key: String,
    /// Its format.
    pub format: ExportFormat,
    /// The event date of its rows (`YYYY-MM-DD`, UTC).
    pub dt: String,
    /// The first watermark (`seq`) of the part it belongs to.
    pub from: i64,
    /// The last watermark (`seq`) of the part it belongs to, inclusive.
    pub to: i64,
    /// Rows in this file.
    pub rows: i64,
    /// Its size in bytes.
    pub bytes: i64,
    /// SHA-256 of its bytes, lower-case hex.
    pub sha256: String,
}

/// The `dt=` value of a timestamp in microseconds since the epoch: its UTC date.
#[must_use]
pub fn dt_of_micros(micros: i64) -> String {
    let days = micros.div_euclid(86_400_000_000);
    dt_of_days(days)
}

/// `YYYY-MM-DD` of a day number (days since 1970-01-01).
#[must_use]
pub fn dt_of_days(days: i64) -> String {
    // Civil-from-days (Howard Hinnant's algorithm): exact for every i64 day we can meet.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for d in Dataset::ALL {
            assert_eq!(d.name().parse::<Dataset>(), Ok(d));
        }
        for f in ExportFormat::ALL {
            assert_eq!(f.name().parse::<ExportFormat>(), Ok(f));
        }
        assert!("events".parse::<Dataset>().is_err());
        assert!("csv".parse::<ExportFormat>().is_err());
    }

    #[test]
    fn message_json() {
        let m: EtlMessage = serde_json::from_str("{}").expect("empty body");
        assert_eq!(m.datasets(), Dataset::ALL.to_vec());
        assert_eq!(m.format, ExportFormat::Parquet);
        let m: EtlMessage =
            serde_json::from_str(r#"{"dataset":"jobs","format":"ndjson"}"#).expect("valid");
        assert_eq!(m.datasets(), vec![Dataset::Jobs]);
        assert_eq!(m.format, ExportFormat::Ndjson);
        assert!(serde_json::from_str::<EtlMessage>(r#"{"dataset":"nope"}"#).is_err());
    }

    #[test]
    fn keys_sort_by_watermark() {
        let a = Dataset::UsageEvents.part_key("2026-01-02", 1, 99, ExportFormat::Parquet);
        assert_eq!(
            a,
            "exports/usage_events/dt=2026-01-02/part-00000000000000000001-00000000000000000099.parquet"
        );
        let b = Dataset::UsageEvents.part_key("2026-01-02", 100, 1000, ExportFormat::Parquet);
        assert!(a < b);
    }

    #[test]
    fn dates() {
        assert_eq!(dt_of_micros(0), "1970-01-01");
        assert_eq!(dt_of_micros(-1), "1969-12-31");
        // 2026-11-26T01:00:00Z
        assert_eq!(dt_of_micros(1_795_654_800_000_000), "2026-11-26");
        assert_eq!(dt_of_days(11_016), "2000-02-29");
        assert_eq!(dt_of_days(19_417), "2023-03-01");
    }

    #[test]
    fn partition_columns_are_timestamps() {
        for d in Dataset::ALL {
            assert_eq!(d.columns()[0].name, "seq");
            assert_eq!(d.columns()[d.partition_column()].ty, ColumnType::Timestamp);
        }
    }
}
