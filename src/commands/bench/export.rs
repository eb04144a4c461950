//! `cognomega bench export`: seeds N usage events with bulk SQL into a throwaway store, spread
//! over 30 days with 1 % late events (inserted with an event time two days back), then exports
//! them in-process to the local folder and reports rows/s, files and bytes written, and the
//! process's peak RSS (the part cap bounds it, whatever N is).

use std::time::Instant;

use anyhow::bail;
use cognomega_consumers::etl::{ExportProgress, ExportReport, Exporter};
use cognomega_core::etl::{Dataset, ExportFormat, DEFAULT_MAX_ROWS_PER_PART};
use cognomega_stores::exports::Part;
use cognomega_stores::objects::{ObjectStoreUrl, Objects};
use cognomega_stores::Database;
use indicatif::ProgressBar;
use serde::Serialize;

use super::{cpu_seconds, peak_rss_mib, progress, Backend, Ctx, ThrowawayStore};

#[derive(Debug, clap::Args)]
pub struct ExportArgs {
    /// Which database to seed and export from.
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    backend: Backend,
    /// Usage events to seed and export.
    #[arg(long, default_value_t = 1_000_000)]
    rows: u64,
    /// File format.
    #[arg(long, value_parser = parse_format, default_value = "parquet")]
    format: ExportFormat,
    /// Rows per part at most.
    #[arg(long, default_value_t = DEFAULT_MAX_ROWS_PER_PART)]
    part_rows: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_format(s: &str) -> Result<ExportFormat, String> {
    s.parse()
        .map_err(|e: cognomega_core::etl::EtlParseError| e.to_string())
}

#[derive(Debug, Serialize)]
struct Report {
    backend: Backend,
    format: ExportFormat,
    rows: u64,
    seed_rows_per_s: f64,
    export_s: f64,
    export_rows_per_s: f64,
    export_cpu_s: f64,
    export_rows_per_cpu_s: f64,
    seed_peak_rss_mib: f64,
    /// False where the kernel refused to reset the peak: then it includes the seeding.
    peak_rss_is_export_only: bool,
    parts: u64,
    files: u64,
    bytes: u64,
    peak_rss_mib: f64,
}

/// Rows seeded per statement (one transaction each).
const SEED_CHUNK: u64 = 500_000;
/// 2026-01-01T00:00:00Z in ms: the first event time.
const BASE_MS: i64 = 1_767_225_600_000;
/// Events spread over 30 days.
const SPAN_MS: i64 = 30 * 86_400_000;

pub async fn run(ctx: &Ctx, args: ExportArgs) -> anyhow::Result<()> {
    if args.rows == 0 {
        bail!("--rows must be at least 1");
    }
    let store = ThrowawayStore::create(args.backend, ctx.database_url.as_deref()).await?;
    let result = measure(&store, &args).await;
    store.destroy().await?;
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "cognomega bench export: backend={:?} format={} rows={}",
            report.backend, report.format, report.rows
        );
        println!(
            "  seed      {:>12.0} rows/s (bulk SQL)",
            report.seed_rows_per_s
        );
        println!(
            "  export    {:>12.0} rows/s ({:.2} s; {} parts, {} files, {:.1} MiB)",
            report.export_rows_per_s,
            report.export_s,
            report.parts,
            report.files,
            mib(report.bytes)
        );
        println!(
            "  CPU       {:.2} s for the export ({:.0} rows per CPU-second)",
            report.export_cpu_s, report.export_rows_per_cpu_s
        );
        println!(
            "  peak RSS  {:.1} MiB during the export{} (seeding: {:.1} MiB)",
            report.peak_rss_mib,
            if report.peak_rss_is_export_only {
                ""
            } else {
                ", seeding included"
            },
            report.seed_peak_rss_mib
        );
    }
    Ok(())
}

#[allow(clippy::cast_precision_loss)]
fn mib(bytes: u64) -> f64 {
    bytes as f64 / 1_048_576.0
}

async fn measure(store: &ThrowawayStore, args: &ExportArgs) -> anyhow::Result<Report> {
    let show = !args.json;
    let bar = progress(show, args.rows, "seed");
    let started = Instant::now();
    let mut first = 1;
    while first <= args.rows {
        let last = (first + SEED_CHUNK - 1).min(args.rows);
        seed(&store.db, first, last, args.rows).await?;
        bar.set_position(last);
        first = last + 1;
    }
    let seed_s = started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    let seed_rss_mib = peak_rss_mib();
    // Measure the export's own peak: seeding's (SQLite's statement journal, say) is not its.
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let objects = Objects::open(&ObjectStoreUrl::Local(store.dir.join("objects")))?;
    let options = cognomega_consumers::etl::ExportOptions {
        max_rows_per_part: args.part_rows,
        ..Default::default()
    };
    let exporter = Exporter::with_options(store.db.clone(), objects, options);
    let bar = Rows(progress(show, args.rows, "export"));
    let started = Instant::now();
    let cpu_before = cpu_seconds("self").unwrap_or(0.0);
    let report: ExportReport = exporter
        .export(Dataset::UsageEvents, args.format, None, &bar)
        .await?;
    let export_s = started.elapsed().as_secs_f64();
    let export_cpu_s = cpu_seconds("self").unwrap_or(0.0) - cpu_before;
    bar.0.finish_and_clear();
    if report.rows != args.rows {
        bail!("exported {} rows of {}", report.rows, args.rows);
    }
    #[allow(clippy::cast_precision_loss)]
    let rows = args.rows as f64;
    Ok(Report {
        backend: args.backend,
        format: args.format,
        rows: args.rows,
        seed_rows_per_s: rows / seed_s,
        export_s,
        export_rows_per_s: rows / export_s,
        export_cpu_s,
        export_rows_per_cpu_s: rows / export_cpu_s.max(0.001),
        seed_peak_rss_mib: seed_rss_mib,
        peak_rss_is_export_only: reset,
        parts: report.parts,
        files: report.files,
        bytes: report.bytes,
        peak_rss_mib: peak_rss_mib(),
    })
}

struct Rows(ProgressBar);

impl ExportProgress for Rows {
    fn part(&self, _part: &Part) {}

    fn rows(&self, rows: u64) {
        self.0.inc(rows);
    }
}

/// Inserts events `first..=last` of `total`: 1,000 tenants, four kinds, every 97th event late
/// by two days, every 10th with meta.
async fn seed(db: &Database, first: u64, last: u64, total: u64) -> anyhow::Result<()> {
    let (first, last, total) = (
        i64::try_from(first)?,
        i64::try_from(last)?,
        i64::try_from(total)?,
    );
    match db {
        Database::Sqlite(s) => {
            sqlx::query(
                "INSERT INTO usage_events (tenant_id, idempotency_key, kind, quantity, credits, \
                     occurred_at, received_at, meta, request_id) \
                 WITH RECURSIVE n(x) AS (SELECT $1 UNION ALL SELECT x + 1 FROM n WHERE x < $2) \
                 SELECT 'tenant-' || (x % 1000), 'bench-' || x, \
                     CASE x % 4 WHEN 0 THEN 'tokens_in' WHEN 1 THEN 'tokens_out' \
                         WHEN 2 THEN 'job' ELSE 'audio_seconds' END, \
                     (x * 7919) % 5000 + 1, (x * 104729) % 50 + 1, \
                     $3 + (x * $4) / $5 - CASE WHEN x % 97 = 0 THEN 172800000 ELSE 0 END, \
                     $3 + (x * $4) / $5, \
                     CASE WHEN x % 10 = 0 THEN '{\"model\":\"m1\"}' END, 'req-' || x \
                 FROM n",
            )
            .bind(first)
            .bind(last)
            .bind(BASE_MS)
            .bind(SPAN_MS)
            .bind(total)
            .execute(&s.write)
            .await?;
        }
        Database::Postgres(p) => {
            sqlx::query(
                "INSERT INTO usage_events (tenant_id, idempotency_key, kind, quantity, credits, \
                     occurred_at, received_at, meta, request_id) \
                 SELECT 'tenant-' || (x % 1000), 'bench-' || x, \
                     (ARRAY['tokens_in', 'tokens_out', 'job', 'audio_seconds'])[x % 4 + 1], \
                     (x * 7919) % 5000 + 1, (x * 104729) % 50 + 1, \
                     timestamptz 'epoch' + ($3 + (x * $4) / $5 \
                         - CASE WHEN x % 97 = 0 THEN 172800000 ELSE 0 END) * interval '1 millisecond', \
                     timestamptz 'epoch' + ($3 + (x * $4) / $5) * interval '1 millisecond', \
                     CASE WHEN x % 10 = 0 THEN '{\"model\":\"m1\"}' END, 'req-' || x \
                 FROM generate_series($1::bigint, $2::bigint) AS x",
            )
            .bind(first)
            .bind(last)
            .bind(BASE_MS)
            .bind(SPAN_MS)
            .bind(total)
            .execute(&p.pool)
            .await?;
        }
    }
    Ok(())
}
