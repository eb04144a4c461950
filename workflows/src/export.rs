//! The analytics export, written once: each run exports what is new in a dataset since its
//! watermark, as Parquet or NDJSON.zst files under `exports/`, and rewrites the dataset's
//! `_manifest.json`. The native `etl` consumer and `cognomega export` run it over sqlx and the
//! object stores; the edge's `etl` consumer over Hyperdrive and R2. The host supplies only the
//! row scan and the encoding ([`ExportHost::encode`]): natively a blocking scan thread feeding
//! an encoder thread, on the edge a stream from PostgreSQL in the invocation itself.
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

use cognomega_core::etl::{self, sql, Dataset, ExportFormat, Manifest, ManifestPart, PartPlanner};
use cognomega_core::objects::{NewObject, ObjectStore};
use cognomega_core::queue::MaybeSendSync;
use cognomega_core::sql::{Dialect, Executor, Row, SqlError, Transaction, Value};
use cognomega_pipelines::export::FinishedFile;
use futures::StreamExt as _;

pub use cognomega_core::etl::Part;

/// What an export needs from its host.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait ExportHost: MaybeSendSync {
    /// Where the files and manifests go.
    fn objects(&self) -> &dyn ObjectStore;

    /// Reads, each on its own (the workflow writes only in [`ExportHost::begin`]'s
    /// transactions; a stale read of the watermark only loses the compare-and-swap).
    fn db(&self) -> Box<dyn Executor + '_>;

    /// A transaction.
    async fn begin(&self) -> Result<Box<dyn Transaction + '_>, SqlError>;

    /// The files of `part`: its rows (`seq` in `part.from..=part.to`, in `seq` order) encoded
    /// by [`cognomega_pipelines::export::PartFiles`], one file per event date.
    async fn encode(&self, part: &Part) -> Result<Vec<FinishedFile>, ExportError>;

    /// Parts written at once (each is completed on its own).
    fn parts_in_flight(&self) -> usize {
        1
    }

    /// Called between writing a part's files and completing it; `false` stops the run there,
    /// as a crash would (the tests' failure injection).
    fn after_write(&self, _part: &Part) -> bool {
        true
    }
}

/// What a run did for one dataset and format.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExportReport {
    /// The dataset.
    pub dataset: Option<Dataset>,
    /// The format.
    pub format: ExportFormat,
    /// Parts completed by this run (earlier runs' planned parts included).
    pub parts: u64,
    /// Files written.
    pub files: u64,
    /// Rows written.
    pub rows: u64,
    /// Bytes written.
    pub bytes: u64,
    /// The watermark after the run.
    pub watermark: Option<i64>,
    /// Another run planned the new range first (this run only finished older parts).
    pub raced: bool,
}

impl ExportReport {
    fn add(&mut self, other: &ExportReport) {
        self.parts += other.parts;
        self.files += other.files;
        self.rows += other.rows;
        self.bytes += other.bytes;
    }
}

/// An export failed; nothing incomplete reached a manifest.
#[derive(Debug)]
pub enum ExportError {
    /// The database.
    Sql(SqlError),
    /// Object storage.
    Objects(String),
    /// Scanning or encoding the rows.
    Encode(String),
    /// A starting watermark was given for a dataset that already has one.
    AlreadyStarted {
        /// The dataset.
        dataset: Dataset,
        /// The format.
        format: ExportFormat,
        /// Its current watermark.
        watermark: i64,
    },
    /// The failure-injection hook stopped the run.
    Interrupted {
        /// The dataset.
        dataset: Dataset,
        /// First seq.
        from: i64,
        /// Last seq.
        to: i64,
    },
}

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sql(e) => write!(f, "database: {e}"),
            Self::Objects(e) => write!(f, "object storage: {e}"),
            Self::Encode(e) => write!(f, "export rows: {e}"),
            Self::AlreadyStarted {
                dataset,
                format,
                watermark,
            } => write!(
                f,
                "{dataset} ({format}) is already exported through seq {watermark}; a starting \
                 watermark only applies to a dataset with no exports yet. Run without it to \
                 continue from {watermark}"
            ),
            Self::Interrupted { dataset, from, to } => write!(
                f,
                "export of {dataset} part {from}..={to} interrupted after writing its files"
            ),
        }
    }
}

impl std::error::Error for ExportError {}

impl From<SqlError> for ExportError {
    fn from(e: SqlError) -> Self {
        Self::Sql(e)
    }
}

/// What planning did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// These parts are now planned (none when nothing new is visible).
    Planned(Vec<Part>),
    /// Another run moved the watermark first; it owns the new range.
    Raced,
}

/// Exports what is new in `dataset` as `format`, at most `max_rows` rows per part. `since`
/// sets the starting watermark of a dataset never exported in that format (rows with
/// `seq > since`); for one already exported it is an error, returned before anything changes.
pub async fn export<H: ExportHost + ?Sized>(
    host: &H,
    dataset: Dataset,
    format: ExportFormat,
    since: Option<i64>,
    max_rows: u64,
) -> Result<ExportReport, ExportError> {
    let mut report = ExportReport {
        dataset: Some(dataset),
        format,
        ..ExportReport::default()
    };
    if since.is_some() {
        if let Some(watermark) = watermark(&mut *host.db(), dataset, format).await? {
            return Err(ExportError::AlreadyStarted {
                dataset,
                format,
                watermark,
            });
        }
    }
    let unfinished = planned_parts(&mut *host.db(), dataset, format).await?;
    write_parts(host, unfinished, &mut report).await?;
    match plan(host, dataset, format, since, max_rows).await? {
        Plan::Planned(parts) => write_parts(host, parts, &mut report).await?,
        Plan::Raced => report.raced = true,
    }
    write_manifest(host, dataset).await?;
    report.watermark = watermark(&mut *host.db(), dataset, format).await?;
    Ok(report)
}

/// The dataset's watermark for `format`: the last `seq` planned into a part, if any run
/// started yet.
pub async fn watermark(
    db: &mut dyn Executor,
    dataset: Dataset,
    format: ExportFormat,
) -> Result<Option<i64>, SqlError> {
    let row = (db.query_opt(
        sql::WATERMARK,
        &[dataset.name().into(), format.name().into()],
    ))
    .await?;
    row.map(|r| r.int(0)).transpose()
}

/// Planned parts not yet complete, oldest first.
pub async fn planned_parts(
    db: &mut dyn Executor,
    dataset: Dataset,
    format: ExportFormat,
) -> Result<Vec<Part>, SqlError> {
    let args = [dataset.name().into(), format.name().into()];
    let rows = db.query(sql::PLANNED_PARTS, &args).await?;
    rows.iter()
        .map(|r| {
            Ok(Part {
                dataset,
                format,
                from: r.int(0)?,
                to: r.int(1)?,
            })
        })
        .collect()
}

/// Plans the parts after the watermark (see the module docs).
pub async fn plan<H: ExportHost + ?Sized>(
    host: &H,
    dataset: Dataset,
    format: ExportFormat,
    since: Option<i64>,
    max_rows: u64,
) -> Result<Plan, ExportError> {
    let current = watermark(&mut *host.db(), dataset, format).await?;
    let start = etl::plan_start(current, since).map_err(|a| ExportError::AlreadyStarted {
        dataset,
        format,
        watermark: a.watermark,
    })?;
    let high = visible_high(host, dataset).await?;
    let mut planner = PartPlanner::new(dataset, format, start, high, max_rows);
    let nth_sql = sql::nth_seq(dataset);
    while let Some((after, offset)) = planner.next_lookup() {
        let args = [after.into(), offset.into()];
        planner.found(scalar(&mut *host.db(), &nth_sql, &args).await?);
    }
    let parts = planner.into_parts();
    if parts.is_empty() {
        return Ok(Plan::Planned(parts));
    }
    let (d, f) = (dataset.name(), format.name());
    // The watermark moves from `current` to `high`, or a concurrent run moved it first.
    let mut tx = host.begin().await?;
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
        tx.rollback().await?;
        return Ok(Plan::Raced);
    }
    for p in &parts {
        let args = [d.into(), f.into(), p.from.into(), p.to.into()];
        tx.execute(sql::INSERT_PART, &args).await?;
    }
    tx.commit().await?;
    Ok(Plan::Planned(parts))
}

/// The highest `seq` below which every row is committed and final (see the module docs).
async fn visible_high<H: ExportHost + ?Sized>(host: &H, dataset: Dataset) -> Result<i64, SqlError> {
    let max_sql = sql::max_seq(dataset);
    let max = match host.db().dialect() {
        Dialect::Sqlite => scalar(&mut *host.db(), &max_sql, &[]).await?,
        Dialect::Postgres => {
            let mut tx = host.begin().await?;
            tx.execute(&sql::lock_share(dataset), &[]).await?;
            let max = scalar(&mut *tx, &max_sql, &[]).await?;
            tx.commit().await?;
            max
        }
    }
    .unwrap_or(0);
    let Some(unsettled) = sql::first_unsettled(dataset) else {
        return Ok(max);
    };
    let first = scalar(&mut *host.db(), unsettled, &[]).await?;
    Ok(etl::visible_high(max, first))
}

/// The integer the one-column read `sql` returns (null, or no row: `None`).
async fn scalar(db: &mut dyn Executor, sql: &str, args: &[Value]) -> Result<Option<i64>, SqlError> {
    let row = db.query_opt(sql, args).await?;
    Ok(row.map(|r| r.opt_int(0)).transpose()?.flatten())
}

/// Writes `parts`, [`ExportHost::parts_in_flight`] at a time. A failed part does not cancel
/// the others: they complete (or fail) on their own, and the failed one stays planned for the
/// next run.
async fn write_parts<H: ExportHost + ?Sized>(
    host: &H,
    parts: Vec<Part>,
    report: &mut ExportReport,
) -> Result<(), ExportError> {
    let mut running = futures::stream::iter(parts)
        .map(|part| async move { write_part(host, &part).await })
        .buffer_unordered(host.parts_in_flight().max(1));
    let mut first_error = None;
    while let Some(one) = running.next().await {
        match one {
            Ok(one) => report.add(&one),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Encodes the part's files, puts them, then records them and completes the part in one
/// transaction. Completing a part twice (two runs finishing the same planned part) keeps the
/// first record.
async fn write_part<H: ExportHost + ?Sized>(
    host: &H,
    part: &Part,
) -> Result<ExportReport, ExportError> {
    let mut report = ExportReport::default();
    let files = host.encode(part).await?;
    let mut written = Vec::with_capacity(files.len());
    for file in files {
        let key = (part.dataset).part_key(&file.dt, part.from, part.to, part.format);
        let bytes = file.bytes.len() as u64;
        host.objects()
            .put(NewObject {
                key: &key,
                bytes: file.bytes,
                content_type: part.format.content_type(),
                meta: &[("sha256", file.sha256.clone())],
            })
            .await
            .map_err(|e| ExportError::Objects(format!("put {key}: {e}")))?;
        report.files += 1;
        report.rows += file.rows;
        report.bytes += bytes;
        written.push((key, file.dt, file.rows, bytes, file.sha256));
    }
    if !host.after_write(part) {
        return Err(ExportError::Interrupted {
            dataset: part.dataset,
            from: part.from,
            to: part.to,
        });
    }
    let (d, f) = (part.dataset.name(), part.format.name());
    let mut tx = host.begin().await?;
    for (key, dt, rows, bytes, sha256) in written {
        let args = [
            key.into(),
            d.into(),
            f.into(),
            part.from.into(),
            part.to.into(),
            dt.into(),
            i64::try_from(rows).unwrap_or(i64::MAX).into(),
            i64::try_from(bytes).unwrap_or(i64::MAX).into(),
            sha256.into(),
        ];
        tx.execute(sql::INSERT_FILE, &args).await?;
    }
    tx.execute(sql::COMPLETE_PART, &[d.into(), f.into(), part.from.into()])
        .await?;
    tx.commit().await?;
    report.parts = 1;
    Ok(report)
}

/// Rewrites `_manifest.json` from the recorded files until what it wrote is still what the
/// database holds: a run that completes a part after this run read the files rewrites the
/// manifest itself after its own write, so the last manifest written lists every file.
async fn write_manifest<H: ExportHost + ?Sized>(
    host: &H,
    dataset: Dataset,
) -> Result<(), ExportError> {
    let key = dataset.manifest_key();
    let mut parts = files(&mut *host.db(), dataset).await?;
    for _ in 0..10 {
        let body = Manifest {
            dataset,
            parts: parts.clone(),
        }
        .to_json()
        .map_err(|e| ExportError::Encode(e.to_string()))?;
        host.objects()
            .put(NewObject {
                key: &key,
                bytes: body,
                content_type: "application/json",
                meta: &[],
            })
            .await
            .map_err(|e| ExportError::Objects(format!("put {key}: {e}")))?;
        let now = files(&mut *host.db(), dataset).await?;
        if now == parts {
            return Ok(());
        }
        parts = now;
    }
    // The next run rewrites it.
    Ok(())
}

/// A row of [`sql::FILES`] or [`sql::FILE`].
fn manifest_part(r: &Row) -> Result<ManifestPart, SqlError> {
    Ok(ManifestPart {
        key: r.text(0)?,
        // Only the exporters write the column, from `ExportFormat::name`.
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
/// format, watermark and date: the content of its `_manifest.json` and of `GET /exports`.
pub async fn files(db: &mut dyn Executor, dataset: Dataset) -> Result<Vec<ManifestPart>, SqlError> {
    let rows = db.query(sql::FILES, &[dataset.name().into()]).await?;
    rows.iter().map(manifest_part).collect()
}

/// The recorded file under `key`, if any (what `GET /files/exports/…` serves).
pub async fn file(db: &mut dyn Executor, key: &str) -> Result<Option<ManifestPart>, SqlError> {
    let row = db.query_opt(sql::FILE, &[key.into()]).await?;
    row.as_ref().map(manifest_part).transpose()
}
