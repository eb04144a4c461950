//! `etl` → analytics exports: each message (an [`EtlMessage`]) exports whatever is new in its
//! dataset(s) since the watermark, as Parquet or NDJSON.zst files under `exports/`, and
//! rewrites each dataset's `_manifest.json`. The [`Exporter`] is also what `cognomega export`
//! runs in-process.
//!
//! The run is the shared workflow (`cognomega_workflows::export`, which the edge runs too);
//! this host streams a part's rows from the database into the file writers on a blocking
//! thread (one Arrow batch at a time) and writes two parts at once on PostgreSQL. The files of a
//! part are deterministic, so a repeated write puts the same bytes under the same keys, and a
//! message delivered twice costs one empty run.

use std::sync::Arc;

use cognomega_core::etl::{Dataset, ExportFormat, DEFAULT_MAX_ROWS_PER_PART};
use cognomega_core::objects::ObjectStore;
use cognomega_core::queue::{HandlerError, MessageBatch};
use cognomega_core::sql::{Executor, SqlError, Transaction};

use crate::typed::{Decoded, TypedHandler, Unreadable};
use cognomega_pipelines::export::{FinishedFile, PartFiles};
use cognomega_stores::exports::{self, DayBatch};
use cognomega_stores::objects::Objects;
use cognomega_stores::Database;
use cognomega_workflows::export::ExportHost;
use tokio::sync::mpsc;

pub use cognomega_core::etl::EtlMessage;
pub use cognomega_core::etl::Part;
pub use cognomega_workflows::export::{ExportError, ExportReport};

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
        let run = Run {
            exporter: self,
            progress,
        };
        let max_rows = self.options.max_rows_per_part;
        cognomega_workflows::export::export(&run, dataset, format, since, max_rows).await
    }
}

/// One run of an [`Exporter`], reporting to its progress: the export workflow's host.
struct Run<'a> {
    exporter: &'a Exporter,
    progress: &'a dyn ExportProgress,
}

#[async_trait::async_trait]
impl ExportHost for Run<'_> {
    fn objects(&self) -> &dyn ObjectStore {
        &self.exporter.objects
    }

    /// The workflow only reads through this (its writes are transactions): on SQLite the
    /// reader pool, beside the writer.
    fn db(&self) -> Box<dyn Executor + '_> {
        Box::new(cognomega_stores::sql::Reader(&self.exporter.db))
    }

    async fn begin(&self) -> Result<Box<dyn Transaction + '_>, SqlError> {
        self.exporter.db.transaction().await
    }

    /// Streams the part's rows into its files: the scan on this task, the encoding on a
    /// blocking thread, a few batches in flight between them.
    async fn encode(&self, part: &Part) -> Result<Vec<FinishedFile>, ExportError> {
        self.progress.part(part);
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
            let batch_rows = self.exporter.options.batch_rows;
            let scan = exports::scan(&self.exporter.db, part, batch_rows, &tx);
            tokio::pin!(scan);
            loop {
                tokio::select! {
                    result = &mut scan => break result,
                    Some(n) = done_rx.recv() => self.progress.rows(n),
                }
            }
        };
        drop(tx);
        let files = writer.await;
        while let Ok(n) = done_rx.try_recv() {
            self.progress.rows(n);
        }
        // A scan error explains a writer that stopped early; report it first.
        scanned.map_err(|e| ExportError::Encode(e.to_string()))?;
        let files = files.map_err(|e| ExportError::Encode(format!("the writer thread: {e}")))?;
        files.map_err(|e| ExportError::Encode(e.to_string()))
    }

    fn parts_in_flight(&self) -> usize {
        match self.exporter.db {
            Database::Sqlite(_) => SQLITE_PARTS_IN_FLIGHT,
            Database::Postgres(_) => PARTS_IN_FLIGHT,
        }
    }

    fn after_write(&self, part: &Part) -> bool {
        self.exporter
            .options
            .after_write
            .as_ref()
            .is_none_or(|hook| hook(part))
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
