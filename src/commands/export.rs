//! `cognomega export`: runs the analytics export in this process, against the configured
//! database and object store (the same work an `etl` queue message does on a worker).

use anyhow::Context as _;
use cognomega_consumers::etl::{ExportProgress, ExportReport, Exporter};
use cognomega_core::etl::{Dataset, ExportFormat};
use cognomega_stores::exports::Part;
use cognomega_stores::objects::Objects;
use indicatif::{ProgressBar, ProgressStyle};

use super::Ctx;

/// Export datasets incrementally to Parquet (or NDJSON.zst) under `exports/` in the object store.
///
/// Each dataset (`usage_events`, `ledger_entries`, `jobs`, `uploads`) is exported from its
/// watermark, the last insertion sequence number (`seq`) already exported, so rows inserted
/// late with an old event time are never missed. Files are Hive-partitioned by event date:
/// exports/{dataset}/dt=YYYY-MM-DD/part-{from}-{to}.parquet, and exports/{dataset}/_manifest.json
/// lists every complete file. Re-running is safe: an interrupted part is finished with the same
/// bytes, and a run with nothing new writes nothing but the manifest. See docs/analytics.md.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// One dataset (usage_events, ledger_entries, jobs, uploads); default: all of them.
    #[arg(long, value_parser = parse_dataset)]
    dataset: Option<Dataset>,
    /// File format.
    #[arg(long, value_parser = parse_format, default_value = "parquet")]
    format: ExportFormat,
    /// Starting watermark of a dataset never exported in this format: export only rows with
    /// seq > SINCE (default 0, everything). Refused once a dataset has been exported, because
    /// its watermark already says where the next run starts.
    #[arg(long, value_name = "SEQ", value_parser = clap::value_parser!(i64).range(0..))]
    since: Option<i64>,
    /// Print one JSON object per dataset instead of text, and no progress bar.
    #[arg(long)]
    json: bool,
}

fn parse_dataset(s: &str) -> Result<Dataset, String> {
    s.parse()
        .map_err(|e: cognomega_core::etl::EtlParseError| e.to_string())
}

fn parse_format(s: &str) -> Result<ExportFormat, String> {
    s.parse()
        .map_err(|e: cognomega_core::etl::EtlParseError| e.to_string())
}

pub async fn run(ctx: Ctx, args: Args) -> anyhow::Result<()> {
    let storage = ctx.storage()?;
    let db = ctx.open().await?;
    let objects = Objects::open(&storage.objects_url)
        .with_context(|| format!("cannot open the object store {}", storage.objects_url))?;
    let exporter = Exporter::new(db.clone(), objects);
    let datasets = args.dataset.map_or(Dataset::ALL.to_vec(), |d| vec![d]);
    let result = export_all(&exporter, &datasets, &args).await;
    db.close().await;
    result
}

async fn export_all(exporter: &Exporter, datasets: &[Dataset], args: &Args) -> anyhow::Result<()> {
    for &dataset in datasets {
        let bar = Bar::new(!args.json, dataset);
        let report = exporter
            .export(dataset, args.format, args.since, &bar)
            .await
            .with_context(|| format!("exporting {dataset}"))?;
        bar.0.finish_and_clear();
        print_report(&report, args.json)?;
    }
    Ok(())
}

fn print_report(report: &ExportReport, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
        return Ok(());
    }
    let dataset = report.dataset.map_or("?", Dataset::name);
    let watermark = report
        .watermark
        .map_or_else(|| "none".to_owned(), |w| w.to_string());
    println!(
        "{dataset:<15} {}: {} parts, {} files, {} rows, {} bytes; watermark {watermark}{}",
        report.format,
        report.parts,
        report.files,
        report.rows,
        report.bytes,
        if report.raced {
            " (another run is exporting the newest rows)"
        } else {
            ""
        }
    );
    Ok(())
}

/// A progress bar over rows; its length grows as parts start (by their seq range, an upper
/// bound of their rows).
struct Bar(ProgressBar);

impl Bar {
    fn new(show: bool, dataset: Dataset) -> Self {
        if !show {
            return Self(ProgressBar::hidden());
        }
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>15} [{bar:40}] {pos}/{len} rows ({per_sec}, eta {eta})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar.set_prefix(dataset.name());
        Self(bar)
    }
}

impl ExportProgress for Bar {
    fn part(&self, part: &Part) {
        let span = u64::try_from(part.to - part.from + 1).unwrap_or(0);
        self.0.inc_length(span);
    }

    fn rows(&self, rows: u64) {
        self.0.inc(rows);
    }
}
