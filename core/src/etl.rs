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

/// A starting watermark (`--since`) was given for a dataset that already has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlreadyStarted {
    /// The dataset's current watermark.
    pub watermark: i64,
}

/// Where planning starts: the current watermark, or `since` (default 0: everything) for a
/// dataset never exported in that format. `since` for one already exported is refused.
pub fn plan_start(current: Option<i64>, since: Option<i64>) -> Result<i64, AlreadyStarted> {
    match (current, since) {
        (Some(watermark), Some(_)) => Err(AlreadyStarted { watermark }),
        (Some(w), None) => Ok(w),
        (None, s) => Ok(s.unwrap_or(0)),
    }
}

/// The highest `seq` a run may plan: `max` (the highest committed `seq`), but stopping before
/// the first row not yet final (`first_unsettled`: a queued or running job, an upload pending
/// its scan), so an exported row never changes afterwards.
#[must_use]
pub fn visible_high(max: i64, first_unsettled: Option<i64>) -> i64 {
    first_unsettled.map_or(max, |f| max.min(f - 1))
}

/// Splits `start+1..=high` into parts of at most `max_rows` rows. The boundaries come from the
/// table (seqs have gaps), one lookup per part: [`PartPlanner::next_lookup`] names the query
/// ([`sql::nth_seq`] with `(after, offset)`), [`PartPlanner::found`] takes its answer.
#[derive(Debug, Clone)]
pub struct PartPlanner {
    dataset: Dataset,
    format: ExportFormat,
    from: i64,
    high: i64,
    offset: i64,
    parts: Vec<Part>,
}

impl PartPlanner {
    /// Plans `start+1..=high` in parts of at most `max_rows` rows.
    #[must_use]
    pub fn new(
        dataset: Dataset,
        format: ExportFormat,
        start: i64,
        high: i64,
        max_rows: u64,
    ) -> Self {
        Self {
            dataset,
            format,
            from: start,
            high,
            offset: i64::try_from(max_rows.max(1) - 1).unwrap_or(i64::MAX),
            parts: Vec::new(),
        }
    }

    /// The next lookup, `(after, offset)`: the `seq` `offset` rows past the first one after
    /// `after` ends the next part. `None` once the range is covered.
    #[must_use]
    pub fn next_lookup(&self) -> Option<(i64, i64)> {
        (self.from < self.high).then_some((self.from, self.offset))
    }

    /// The answer to [`PartPlanner::next_lookup`] (`None`: fewer rows remain): plans a part.
    pub fn found(&mut self, nth: Option<i64>) {
        let to = nth.map_or(self.high, |n| n.min(self.high));
        self.parts.push(Part {
            dataset: self.dataset,
            format: self.format,
            from: self.from + 1,
            to,
        });
        self.from = to;
    }

    /// The planned parts, in watermark order.
    #[must_use]
    pub fn into_parts(self) -> Vec<Part> {
        self.parts
    }
}

/// The export SQL, one statement set for every host (the native PostgreSQL and SQLite stores
/// through sqlx, the edge through tokio-postgres). Parameters are numbered (`$1`), which both
/// backends accept; tables and columns are those of `migrations/*/0006_exports.sql`.
pub mod sql {
    use super::Dataset;

    /// `(dataset, format)` ⇒ the watermark.
    pub const WATERMARK: &str =
        "SELECT watermark FROM export_watermarks WHERE dataset = $1 AND format = $2";
    /// `(dataset, format)` ⇒ `(from_seq, to_seq)` of the planned parts, oldest first.
    pub const PLANNED_PARTS: &str = "SELECT from_seq, to_seq FROM export_parts \
         WHERE dataset = $1 AND format = $2 AND state = 'planned' ORDER BY from_seq";
    /// `(dataset, format, from, to)`: one planned part.
    pub const INSERT_PART: &str = "INSERT INTO export_parts \
         (dataset, format, from_seq, to_seq, state) VALUES ($1, $2, $3, $4, 'planned')";
    /// `(dataset, format, watermark)`: the first run of a dataset creates its watermark row; a
    /// concurrent first run conflicts and changes nothing.
    pub const INSERT_WATERMARK: &str =
        "INSERT INTO export_watermarks (dataset, format, watermark) \
         VALUES ($1, $2, $3) ON CONFLICT (dataset, format) DO NOTHING";
    /// `(dataset, format, new, old)`: the compare-and-swap of the watermark.
    pub const SWAP_WATERMARK: &str = "UPDATE export_watermarks SET watermark = $3 \
         WHERE dataset = $1 AND format = $2 AND watermark = $4";
    /// `(key, dataset, format, from, to, dt, rows, bytes, sha256)`: a written file; completing a
    /// part twice keeps the first record.
    pub const INSERT_FILE: &str = "INSERT INTO export_files \
         (object_key, dataset, format, from_seq, to_seq, dt, rows, bytes, sha256) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (object_key) DO NOTHING";
    /// `(dataset, format, from)`: the part is complete.
    pub const COMPLETE_PART: &str = "UPDATE export_parts SET state = 'complete' \
         WHERE dataset = $1 AND format = $2 AND from_seq = $3";
    /// `(dataset)` ⇒ every recorded file, by format, watermark and date: `(object_key,
    /// format, dt, from_seq, to_seq, rows, bytes, sha256)`.
    pub const FILES: &str = "SELECT object_key, format, dt, from_seq, to_seq, rows, bytes, sha256 \
         FROM export_files WHERE dataset = $1 ORDER BY format, from_seq, dt";
    /// `(key)` ⇒ the recorded file, columns as [`FILES`].
    pub const FILE: &str = "SELECT object_key, format, dt, from_seq, to_seq, rows, bytes, sha256 \
         FROM export_files WHERE object_key = $1";

    /// `(after, offset)` ⇒ the `seq` `offset` rows past the first one after `after`.
    #[must_use]
    pub fn nth_seq(dataset: Dataset) -> String {
        format!(
            "SELECT seq FROM {} WHERE seq > $1 ORDER BY seq LIMIT 1 OFFSET $2",
            dataset.name()
        )
    }

    /// ⇒ the highest `seq` (0 when empty).
    #[must_use]
    pub fn max_seq(dataset: Dataset) -> String {
        format!("SELECT COALESCE(MAX(seq), 0) FROM {}", dataset.name())
    }

    /// PostgreSQL only: waits for every inserting transaction to finish, so `MAX(seq)` read
    /// under it has no uncommitted `seq` below it (see `stores/src/exports.rs`).
    #[must_use]
    pub fn lock_share(dataset: Dataset) -> String {
        format!("LOCK TABLE {} IN SHARE MODE", dataset.name())
    }

    /// ⇒ the first `seq` whose row may still change (`NULL` if none), for datasets whose rows
    /// change after insertion.
    #[must_use]
    pub fn first_unsettled(dataset: Dataset) -> Option<&'static str> {
        match dataset {
            Dataset::Jobs => {
                Some("SELECT MIN(seq) FROM jobs WHERE status IN ('queued', 'running')")
            }
            Dataset::Uploads => Some("SELECT MIN(seq) FROM uploads WHERE scan = 'pending'"),
            Dataset::UsageEvents | Dataset::LedgerEntries => None,
        }
    }
}

/// `POST /admin/exports`'s body: optional `{"dataset", "format"}` (no dataset: all; no format:
/// Parquet). An empty body is every dataset as Parquet.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExportRequest {
    dataset: Option<String>,
    format: Option<String>,
}

/// A refused `POST /admin/exports` body: a 400 with this code and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRequestError {
    /// `invalid_json`, `invalid_dataset` or `invalid_format`.
    pub code: &'static str,
    /// What to send instead.
    pub message: String,
}

/// The messages a `POST /admin/exports` body asks for, one per dataset.
pub fn export_request(body: &[u8]) -> Result<Vec<EtlMessage>, ExportRequestError> {
    let request: ExportRequest = if body.iter().all(u8::is_ascii_whitespace) {
        ExportRequest::default()
    } else {
        serde_json::from_slice(body).map_err(|e| ExportRequestError {
            code: "invalid_json",
            message: format!("the body must be {{\"dataset\"?, \"format\"?}}: {e}"),
        })?
    };
    let invalid = |e: EtlParseError| ExportRequestError {
        code: match e {
            EtlParseError::Dataset(_) => "invalid_dataset",
            EtlParseError::Format(_) => "invalid_format",
        },
        message: e.to_string(),
    };
    let datasets = match request.dataset.as_deref() {
        Some(d) => vec![d.parse::<Dataset>().map_err(invalid)?],
        None => Dataset::ALL.to_vec(),
    };
    let format = match request.format.as_deref() {
        Some(f) => f.parse::<ExportFormat>().map_err(invalid)?,
        None => ExportFormat::default(),
    };
    Ok(datasets
        .into_iter()
        .map(|d| EtlMessage {
            dataset: Some(d),
            format,
        })
        .collect())
}

/// One dataset in `GET /exports`: its manifest's files, each with a download `url`.
#[derive(Debug, Clone, Serialize)]
pub struct ListedDataset {
    /// The dataset.
    pub dataset: Dataset,
    /// Its `_manifest.json` key.
    pub manifest_key: String,
    /// Its complete files.
    pub parts: Vec<ListedPart>,
}

/// One file in `GET /exports`.
#[derive(Debug, Clone, Serialize)]
pub struct ListedPart {
    /// The manifest's record of it.
    #[serde(flatten)]
    pub part: ManifestPart,
    /// Where to download it (presigned, or a signed `/files/…` link).
    pub url: String,
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

impl Manifest {
    /// The bytes of `_manifest.json`: pretty JSON and a final newline.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let mut body = serde_json::to_vec_pretty(self)?;
        body.push(b'\n');
        Ok(body)
    }
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
    fn planning_splits_by_the_looked_up_seqs() {
        assert_eq!(plan_start(None, None), Ok(0));
        assert_eq!(plan_start(None, Some(7)), Ok(7));
        assert_eq!(plan_start(Some(9), None), Ok(9));
        assert_eq!(
            plan_start(Some(9), Some(1)),
            Err(AlreadyStarted { watermark: 9 })
        );
        assert_eq!(visible_high(100, None), 100);
        assert_eq!(visible_high(100, Some(42)), 41);
        // seqs 1..=10 with a gap at 5, parts of at most 3 rows, up to 9.
        let seqs = [1, 2, 3, 4, 6, 7, 8, 9, 10];
        let mut p = PartPlanner::new(Dataset::Jobs, ExportFormat::Parquet, 0, 9, 3);
        while let Some((after, offset)) = p.next_lookup() {
            let nth = seqs
                .iter()
                .filter(|&&s| s > after)
                .nth(usize::try_from(offset).expect("small"))
                .copied();
            p.found(nth);
        }
        let ranges: Vec<(i64, i64)> = p.into_parts().iter().map(|p| (p.from, p.to)).collect();
        assert_eq!(ranges, vec![(1, 3), (4, 7), (8, 9)]);
        let none = PartPlanner::new(Dataset::Jobs, ExportFormat::Parquet, 9, 9, 3);
        assert_eq!(none.next_lookup(), None);
    }

    #[test]
    fn export_requests() {
        let all = export_request(b" ").expect("empty body");
        assert_eq!(all.len(), 4);
        assert!(all.iter().all(|m| m.format == ExportFormat::Parquet));
        let one = export_request(br#"{"dataset":"jobs","format":"ndjson"}"#).expect("valid");
        assert_eq!(
            one,
            vec![EtlMessage {
                dataset: Some(Dataset::Jobs),
                format: ExportFormat::Ndjson
            }]
        );
        let code = |b: &[u8]| export_request(b).map(|_| ()).map_err(|e| e.code);
        assert_eq!(code(br#"{"dataset":"x"}"#), Err("invalid_dataset"));
        assert_eq!(code(br#"{"format":"csv"}"#), Err("invalid_format"));
        assert_eq!(code(br#"{"other":1}"#), Err("invalid_json"));
        assert_eq!(code(b"{"), Err("invalid_json"));
    }

    #[test]
    fn partition_columns_are_timestamps() {
        for d in Dataset::ALL {
            assert_eq!(d.columns()[0].name, "seq");
            assert_eq!(d.columns()[d.partition_column()].ty, ColumnType::Timestamp);
        }
    }
}
