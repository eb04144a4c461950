//! `etl` → analytics exports: each message (an [`EtlMessage`]) exports whatever is new in its
//! dataset(s) since the watermark, as Parquet or NDJSON.zst files under `exports/`, and
//! rewrites each dataset's `_manifest.json`. The [`Exporter`] is also what `cognomega export`
//! runs in-process.
//!
//! A run: finish the parts an earlier run planned but did not complete (a crash, a failed
//! upload), plan the new range (see `cognomega_stores::exports`), then for each part stream its
//! rows from the database into the file writers on a blocking thread (one Arrow batch at a
//! time), put the files, record them and mark the part complete in one transaction, and finally
//! rewrite the manifest from the recorded files. The files of a part are deterministic, so a
//! repeated write puts the same bytes under the same keys, and a message delivered twice costs
//! one empty run.

use std::sync::Arc;

use bytes::Bytes;
use cognomega_core::etl::{Dataset, ExportFormat, Manifest, DEFAULT_MAX_ROWS_PER_PART};
use cognomega_core::queue::{HandlerError, MessageBatch};

use crate::typed::{Decoded, TypedHandler, Unreadable};
use cognomega_pipelines::export::{ExportWriteError, FinishedFile, PartFiles};
use cognomega_stores::exports::{self, DayBatch, ExportStoreError, Part, Plan, WrittenFile};
use cognomega_stores::objects::{InvalidObjectKey, ObjectError, ObjectKey, Objects, PutMeta};
use cognomega_stores::Database;
use futures::StreamExt;
use tokio::sync::mpsc;

pub use cognomega_core::etl::EtlMessage;

pub use cognomega_core::queue::catalog::etl::{queue, settings, QUEUE};

/// Parts written at once by one run on PostgreSQL: the server decodes and sends one part's
/// rows on one core, so two parts keep both busy.
pub const PARTS_IN_FLIGHT: usize = 2;

/// Parts written at once by one run on SQLite: one part's scan thread and encoding thread
/// already keep two cores busy, and every part in flight holds one open file per event date.
pub const SQLITE_PARTS_IN_FLIGHT: usize = 1;

/// Called between writing a part's files and completing it; returning `false` stops the run
/// there, as a crash would (tests use it to prove recovery).
pub type AfterWrite = Arc<dyn Fn(&Part) -> bool + Send + Sync>;

/// Progress callbacks, for a progress bar.
pub trait ExportProgress: Send + Sync {
    /// A part starts: rows with seq in `part.from..=part.to`.
    fn part(&self, _part: &Part) {}
    /// `rows` more rows were encoded.
    fn rows(&self, _rows: u64) {}
}

/// No progress reporting.
#[derive(Debug, Clone, Copy, Default)]
pub struct Silent;

impl ExportProgress for Silent {}

/// How an export runs.
#[derive(Clone)]
pub struct ExportOptions {
    /// Rows per part at most (bounds memory: a part's files are built in memory).
    pub max_rows_per_part: u64,
    /// Rows per Arrow batch streamed from the database.
    pub batch_rows: usize,
    /// Failure injection between writing and completing a part.
    pub after_write: Option<AfterWrite>,
}

impl Default for ExportOptions {
    fn default() -> Self {
        Self {
            max_rows_per_part: DEFAULT_MAX_ROWS_PER_PART,
            batch_rows: cognomega_pipelines::export::rows::BATCH_ROWS,
            after_write: None,
        }
    }
}

impl std::fmt::Debug for ExportOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportOptions")
            .field("max_rows_per_part", &self.max_rows_per_part)
            .field("batch_rows", &self.batch_rows)
            .field("after_write", &self.after_write.is_some())
            .finish()
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

/// An export failed; nothing incomplete reached a manifest.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// The database.
    #[error(transparent)]
    Store(#[from] ExportStoreError),
    /// Object storage.
    #[error(transparent)]
    Objects(#[from] ObjectError),
    /// An object key (a bug: keys are built from validated names).
    #[error(transparent)]
    Key(#[from] InvalidObjectKey),
    /// The file writer.
    #[error(transparent)]
    Write(#[from] ExportWriteError),
    /// The writer thread panicked or was cancelled.
    #[error("the export writer thread failed: {0}")]
    Writer(String),
    /// The failure-injection hook stopped the run.
    #[error("export of {dataset} part {from}..={to} interrupted after writing its files")]
    Interrupted {
        /// The dataset.
        dataset: Dataset,
        /// First seq.
        from: i64,
        /// Last seq.
        to: i64,
    },
}

/// Runs exports against one database and object store.
#[derive(Debug, Clone)]
pub struct Exporter {
    db: Database,
    objects: Objects,
    options: ExportOptions,
}

impl Exporter {
    /// An exporter with default options.
    #[must_use]
    pub fn new(db: Database, objects: Objects) -> Self {
        Self::with_options(db, objects, ExportOptions::default())
    }

    /// An exporter with `options`.
    #[must_use]
    pub fn with_options(db: Database, objects: Objects, options: ExportOptions) -> Self {
        Self {
            db,
            objects,
            options,
        }
    }

    /// Exports what is new in `dataset` as `format`. `since` sets the starting watermark of a
    /// dataset never exported in that format (rows with `seq > since`); for one already
    /// exported it is an error.
    pub async fn export(
        &self,
        dataset: Dataset,
        format: ExportFormat,
        since: Option<i64>,
        progress: &dyn ExportProgress,
    ) -> Result<ExportReport, ExportError> {
        let mut report = ExportReport {
            dataset: Some(dataset),
            format,
            ..ExportReport::default()
        };
        if since.is_some() {
            // Refuse before finishing anything, so the error leaves everything as it was.
            if let Some(watermark) = exports::watermark(&self.db, dataset, format).await? {
                return Err(ExportStoreError::AlreadyStarted {
                    dataset,
                    format,
                    watermark,
                }
                .into());
            }
        }
        let unfinished = exports::planned_parts(&self.db, dataset, format).await?;
        self.write_parts(unfinished, progress, &mut report).await?;
        let max_rows = self.options.max_rows_per_part;
        match exports::plan(&self.db, dataset, format, since, max_rows).await? {
            Plan::Planned(parts) => self.write_parts(parts, progress, &mut report).await?,
            Plan::Raced => report.raced = true,
        }
        self.write_manifest(dataset).await?;
        report.watermark = exports::watermark(&self.db, dataset, format).await?;
        Ok(report)
    }

    /// Writes `parts`, [`PARTS_IN_FLIGHT`] (on SQLite [`SQLITE_PARTS_IN_FLIGHT`]) at a time:
    /// parts are independent (each is completed on its own).
    async fn write_parts(
        &self,
        parts: Vec<Part>,
        progress: &dyn ExportProgress,
        report: &mut ExportReport,
    ) -> Result<(), ExportError> {
        let mut running = futures::stream::iter(parts)
            .map(|part| async move {
                let mut one = ExportReport::default();
                self.write_part(&part, progress, &mut one)
                    .await
                    .map(|()| one)
            })
            .buffer_unordered(match self.db {
                Database::Sqlite(_) => SQLITE_PARTS_IN_FLIGHT,
                Database::Postgres(_) => PARTS_IN_FLIGHT,
            });
        // A failed part does not cancel the others: they complete (or fail) on their own, and
        // the failed one stays planned for the next run.
        let mut first_error = None;
        while let Some(one) = running.next().await {
            match one {
                Ok(one) => {
                    report.parts += one.parts;
                    report.files += one.files;
                    report.rows += one.rows;
                    report.bytes += one.bytes;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "export part failed; the next run finishes it");
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn write_part(
        &self,
        part: &Part,
        progress: &dyn ExportProgress,
        report: &mut ExportReport,
    ) -> Result<(), ExportError> {
        progress.part(part);
        let files = self.encode(part, progress).await?;
        let mut written = Vec::with_capacity(files.len());
        for file in files {
            let key = ObjectKey::parse(&part.dataset.part_key(
                &file.dt,
                part.from,
                part.to,
                part.format,
            ))?;
            let bytes = i64::try_from(file.bytes.len()).unwrap_or(i64::MAX);
            let meta = PutMeta::content_type(part.format.content_type())
                .with("sha256", file.sha256.clone());
            self.objects
                .put(&key, Bytes::from(file.bytes), &meta)
                .await?;
            report.files += 1;
            report.rows += file.rows;
            report.bytes += u64::try_from(bytes).unwrap_or(0);
            written.push(WrittenFile {
                key: key.as_str().to_owned(),
                dt: file.dt,
                rows: i64::try_from(file.rows).unwrap_or(i64::MAX),
                bytes,
                sha256: file.sha256,
            });
        }
        if let Some(hook) = &self.options.after_write {
            if !hook(part) {
                return Err(ExportError::Interrupted {
                    dataset: part.dataset,
                    from: part.from,
                    to: part.to,
                });
            }
        }
        exports::complete(&self.db, part, &written).await?;
        report.parts += 1;
        tracing::info!(
            dataset = %part.dataset, format = %part.format, from = part.from, to = part.to,
            files = written.len(), "export part complete"
        );
        Ok(())
    }

    /// Streams the part's rows into its files: the scan on this task, the encoding on a blocking
    /// thread, a few batches in flight between them.
    async fn encode(
        &self,
        part: &Part,
        progress: &dyn ExportProgress,
    ) -> Result<Vec<FinishedFile>, ExportError> {
        let (tx, mut rx) = mpsc::channel::<DayBatch>(4);
        let (done_tx, mut done_rx) = mpsc::unbounded_channel::<u64>();
        let mut files = PartFiles::new(part.format, exports::arrow_schema(part.dataset));
        let writer = tokio::task::spawn_blocking(move || {
            while let Some(b) = rx.blocking_recv() {
                files.write(b.day, &b.batch)?;
                let _ = done_tx.send(b.batch.num_rows() as u64);
            }
            files.finish()
        });
        let scanned = {
            let scan = exports::scan(&self.db, part, self.options.batch_rows, &tx);
            tokio::pin!(scan);
            loop {
                tokio::select! {
                    result = &mut scan => break result,
                    Some(n) = done_rx.recv() => progress.rows(n),
                }
            }
        };
        drop(tx);
        let files = writer.await.map_err(|e| ExportError::Writer(e.to_string()));
        while let Ok(n) = done_rx.try_recv() {
            progress.rows(n);
        }
        // A scan error explains a writer that stopped early; report it first.
        scanned?;
        Ok(files??)
    }

    /// Rewrites `_manifest.json` from the recorded files until what it wrote is still what the
    /// database holds: a run that completes a part after this run read the files rewrites the
    /// manifest itself after its own write, so the last manifest written lists every file.
    async fn write_manifest(&self, dataset: Dataset) -> Result<(), ExportError> {
        let key = ObjectKey::parse(&dataset.manifest_key())?;
        let mut parts = exports::files(&self.db, dataset).await?;
        for _ in 0..10 {
            let manifest = Manifest {
                dataset,
                parts: parts.clone(),
            };
            let body = manifest
                .to_json()
                .map_err(|e| ExportError::Writer(e.to_string()))?;
            self.objects
                .put(
                    &key,
                    Bytes::from(body),
                    &PutMeta::content_type("application/json"),
                )
                .await?;
            let now = exports::files(&self.db, dataset).await?;
            if now == parts {
                return Ok(());
            }
            parts = now;
        }
        tracing::warn!(%dataset, "manifest kept changing under concurrent exports; the next run rewrites it");
        Ok(())
    }
}

/// The `etl` consumer.
#[derive(Debug, Clone)]
pub struct EtlHandler {
    exporter: Exporter,
}

impl EtlHandler {
    /// A handler running `exporter`.
    #[must_use]
    pub fn new(exporter: Exporter) -> Self {
        Self { exporter }
    }
}

#[async_trait::async_trait]
impl TypedHandler for EtlHandler {
    type Message = EtlMessage;
    const WHAT: &'static str = "etl";
    const UNREADABLE: Unreadable = Unreadable::DeadLetter;

    async fn handle(
        &self,
        _batch: &mut MessageBatch,
        work: Vec<Decoded<EtlMessage>>,
    ) -> Result<(), HandlerError> {
        for Decoded { body: message, .. } in work {
            for dataset in message.datasets() {
                let report = self
                    .exporter
                    .export(dataset, message.format, None, &Silent)
                    .await
                    .map_err(HandlerError::retryable)?;
                tracing::info!(
                    %dataset, format = %message.format, parts = report.parts, rows = report.rows,
                    watermark = report.watermark, "export run done"
                );
            }
        }
        Ok(())
    }
}
