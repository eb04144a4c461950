//! `cognomega bench …`: benchmarks that print their figures.
//!
//! `bench queue`, the burn-down benchmark of the queue engine:
//! 1. bulk-enqueue N no-op messages (enqueue/s);
//! 2. drain them with the real consumer runtime, acks durable (work/s);
//! 3. on an idle queue, send one message at a time and time enqueue → handler start
//!    (latency p50/p99);
//! 4. report the process's peak RSS.
//!
//! `bench sweep` measures the lifecycle sweeper (see [`sweep`]).
//!
//! `bench usage` and `bench credits` measure the money path over HTTP (see [`usage`] and
//! [`credits`]): a `cognomega serve` child process on loopback, driven by a separate client.
//!
//! `bench gateway` measures the gateway and its rate limiting (see [`gateway`]).
//!
//! `bench edge` compares the Cloudflare edge shape under local workerd with the native server
//! (see [`edge`]).
//!
//! `bench export` seeds usage events in bulk and exports them to Parquet (see [`export`]).
//!
//! `bench audit` seeds a consistent ledger in bulk and times sealing, verifying and
//! reconciling it (see [`audit`]).
//!
//! Each runs against a throwaway store: a temporary SQLite file, or a PostgreSQL database it
//! creates and drops.

mod ask;
mod audit;
mod client;
mod credits;
mod edge;
mod export;
mod gateway;
mod jobs;
mod server;
mod sweep;
mod upload;
mod usage;
mod voice;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use cognomega_consumers::{Runtime, RuntimeOptions};
use cognomega_core::queue::{
    BatchHandler, HandlerError, MessageBatch, OutgoingMessage, QueueName, QueueSettings,
};
use cognomega_stores::{Database, DatabaseUrl};
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;
use tokio::sync::mpsc;

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Burn-down of N no-op jobs: enqueue/s, work/s, enqueue→start latency, peak RSS.
    Queue(QueueArgs),
    /// POST /usage ingest over HTTP: accepted events/s, request latency, events/s settled into
    /// the ledger, the server's peak RSS.
    Usage(usage::UsageArgs),
    /// GET /credits under an open-loop constant request rate: achieved rate, latency
    /// percentiles measured from each request's scheduled time, errors.
    Credits(credits::CreditsArgs),
    /// GET /healthz and GET /credits (cache hit and miss) at a constant rate, with rate
    /// limiting off and on: latency percentiles, the overhead of rate limiting, SLO ratios.
    Gateway(gateway::GatewayArgs),
    /// `sketch_to_app` throughput of real worker processes: jobs per minute, run time p50/p99.
    Jobs(jobs::JobsArgs),
    /// POST /api/si/ask against a loopback fake provider: the latency the orchestrator adds
    /// (p50/p99, straight to the provider vs through the API) and asks per second.
    Ask(ask::AskArgs),
    /// The voice service's local engines: synthesis and transcription real-time factors, the
    /// round trip's word error rate, and what POST /voice/tts adds to the engine.
    Voice(voice::VoiceArgs),
    /// Usage events exported to Parquet: rows/s, files and bytes, peak RSS.
    Export(export::ExportArgs),
    /// A large streamed upload (MB/s, server peak RSS), many small ones, and the av-scan drain.
    Upload(upload::UploadArgs),
    /// `cognomega audit` over a seeded ledger: entries/s of sealing, verifying, reconciling.
    Audit(audit::AuditArgs),
    Edge(edge::EdgeArgs),
    /// The lifecycle sweeper over N objects on the local folder: objects/s of a day-31 sweep
    /// (recompression) and a day-91 sweep (expiry), bytes saved.
    Sweep(sweep::SweepArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, clap::Args)]
struct QueueArgs {
    /// Which queue backend to measure.
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    backend: Backend,
    /// Jobs to enqueue and drain.
    #[arg(long, default_value_t = 100_000)]
    jobs: u64,
    /// Batches handled at once (max_concurrency).
    #[arg(long, default_value_t = 30)]
    concurrency: u16,
    /// Messages per batch (max_batch_size, 1..=100).
    #[arg(long, default_value_t = 100)]
    batch_size: u16,
    /// Samples of the idle-queue latency measurement.
    #[arg(long, default_value_t = 1_000)]
    latency_samples: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    backend: Backend,
    jobs: u64,
    concurrency: u16,
    batch_size: u16,
    enqueue_per_s: f64,
    work_per_s: f64,
    latency_p50_ms: f64,
    latency_p99_ms: f64,
    latency_samples: u32,
    peak_rss_mib: f64,
}

pub async fn run(ctx: Ctx, args: Args) -> anyhow::Result<()> {
    match args.what {
        What::Queue(args) => queue(&ctx, args).await,
        What::Usage(args) => usage::run(&ctx, args).await,
        What::Credits(args) => credits::run(&ctx, args).await,
        What::Gateway(args) => gateway::run(&ctx, args).await,
        What::Jobs(args) => jobs::run(args, ctx.database_url.as_deref()).await,
        What::Upload(args) => upload::run(&ctx, args).await,
        What::Sweep(args) => sweep::run(&ctx, args).await,
        What::Export(args) => export::run(&ctx, args).await,
        What::Ask(args) => ask::run(&ctx, args).await,
        What::Voice(args) => voice::run(&ctx, args).await,
        What::Audit(args) => audit::run(&ctx, args).await,
        What::Edge(args) => edge::run(&ctx, args).await,
    }
}

async fn queue(ctx: &Ctx, args: QueueArgs) -> anyhow::Result<()> {
    if args.jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    let settings = QueueSettings {
        max_batch_size: args.batch_size,
        max_concurrency: args.concurrency,
        lease: Duration::from_secs(120),
        ..QueueSettings::default()
    };
    settings
        .validate(&bench_queue())
        .map_err(|e| anyhow::anyhow!("{e}: adjust --batch-size/--concurrency"))?;
    let store = ThrowawayStore::create(args.backend, ctx.database_url.as_deref()).await?;
    let result = measure(&store.db, &args, &settings).await;
    store.destroy().await?;
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "cognomega bench queue: backend={:?} jobs={} concurrency={} batch_size={}",
            report.backend, report.jobs, report.concurrency, report.batch_size
        );
        println!("  enqueue   {:>12.0} msg/s", report.enqueue_per_s);
        println!(
            "  work      {:>12.0} jobs/s (durable acks)",
            report.work_per_s
        );
        println!(
            "  latency   p50 {:.3} ms, p99 {:.3} ms (enqueue → handler start, idle queue, {} samples)",
            report.latency_p50_ms, report.latency_p99_ms, report.latency_samples
        );
        println!("  peak RSS  {:.1} MiB", report.peak_rss_mib);
    }
    Ok(())
}

fn bench_queue() -> QueueName {
    QueueName::parse("bench.burn-down").unwrap_or_else(|_| unreachable!("valid queue name"))
}

async fn measure(
    db: &Database,
    args: &QueueArgs,
    settings: &QueueSettings,
) -> anyhow::Result<Report> {
    let driver = db.queue();
    let queue = bench_queue();
    let show = !args.json;

    // 1. Enqueue.
    let bar = progress(show, args.jobs, "enqueue");
    let started = Instant::now();
    let mut sent = 0u64;
    while sent < args.jobs {
        let n = (args.jobs - sent).min(10_000);
        let batch = (0..n).map(|_| OutgoingMessage::new(&b"{}"[..])).collect();
        driver.send_batch(&queue, batch).await?;
        sent += n;
        bar.set_position(sent);
    }
    let enqueue_s = started.elapsed().as_secs_f64();
    bar.finish_and_clear();

    // 2. Drain with the real runtime; done when the last ack has committed.
    let bar = progress(show, args.jobs, "drain");
    let handled = Arc::new(AtomicU64::new(0));
    let mut rt = Runtime::new(driver.clone(), RuntimeOptions::default());
    rt.register(
        queue.clone(),
        settings.clone(),
        Arc::new(NoOp(handled.clone())),
    )?;
    let metrics = rt.metrics();
    let started = Instant::now();
    let running = rt.start().await?;
    loop {
        let acked = metrics.snapshot().get(&queue).map_or(0, |c| c.acked);
        bar.set_position(acked);
        if acked >= args.jobs {
            break;
        }
        if started.elapsed() > Duration::from_secs(3600) {
            bail!(
                "the drain did not finish within an hour ({acked} of {} acked)",
                args.jobs
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let work_s = started.elapsed().as_secs_f64();
    running.stop().await;
    bar.finish_and_clear();

    // 3. Latency on an idle queue.
    let (p50, p99) = latency(driver, args.latency_samples, show).await?;

    #[allow(clippy::cast_precision_loss)]
    let jobs = args.jobs as f64;
    Ok(Report {
        backend: args.backend,
        jobs: args.jobs,
        concurrency: args.concurrency,
        batch_size: args.batch_size,
        enqueue_per_s: jobs / enqueue_s,
        work_per_s: jobs / work_s,
        latency_p50_ms: p50,
        latency_p99_ms: p99,
        latency_samples: args.latency_samples,
        peak_rss_mib: peak_rss_mib(),
    })
}

async fn latency(
    driver: Arc<dyn cognomega_core::queue::QueueDriver>,
    samples: u32,
    show: bool,
) -> anyhow::Result<(f64, f64)> {
    let queue =
        QueueName::parse("bench.latency").unwrap_or_else(|_| unreachable!("valid queue name"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let settings = QueueSettings {
        max_batch_size: 1,
        max_concurrency: 1,
        ..QueueSettings::default()
    };
    let mut rt = Runtime::new(
        driver.clone(),
        RuntimeOptions {
            poll_interval: Duration::from_secs(1),
            ..Default::default()
        },
    );
    rt.register(queue.clone(), settings, Arc::new(Stamp(tx)))?;
    let running = rt.start().await?;
    // Let the consumer reach its idle wait before the first sample.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let bar = progress(show, u64::from(samples), "latency");
    let mut lat = Vec::with_capacity(samples as usize);
    for i in 0..samples {
        let sent = Instant::now();
        driver
            .send(&queue, OutgoingMessage::new(&b"{}"[..]))
            .await?;
        let start = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .context("a latency probe was not delivered within 10 s")?
            .context("the latency consumer stopped")?;
        lat.push(start.saturating_duration_since(sent).as_secs_f64() * 1e3);
        bar.set_position(u64::from(i + 1));
        // Let the ack commit and the consumer go back to waiting: each sample hits an idle queue.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    bar.finish_and_clear();
    running.stop().await;
    lat.sort_by(f64::total_cmp);
    Ok((percentile(&lat, 0.50), percentile(&lat, 0.99)))
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn progress(show: bool, len: u64, what: &'static str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(len);
    bar.set_style(
        ProgressStyle::with_template("{prefix:>8} [{bar:40}] {pos}/{len} ({per_sec}, eta {eta})")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_prefix(what);
    bar
}

/// Peak resident set size of this process (VmHWM), in MiB.
fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    vm_hwm_mib(&status).unwrap_or(0.0)
}

/// CPU time (user + system, every thread) process `pid` (or `self`) has used so far, in seconds,
/// from `/proc/PID/stat`.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After "PID (comm) ", utime and stime are the 12th and 13th fields.
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    let mut fields = rest.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    // USER_HZ, the unit of those fields, is 100 on every Linux architecture's user ABI.
    #[allow(clippy::cast_precision_loss)]
    Some((utime + stime) as f64 / 100.0)
}

/// The VmHWM line of a `/proc/PID/status` text, in MiB.
fn vm_hwm_mib(status: &str) -> Option<f64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
}

#[derive(Debug)]
struct NoOp(Arc<AtomicU64>);

#[async_trait::async_trait]
impl BatchHandler for NoOp {
    async fn handle(&self, batch: &mut MessageBatch) -> Result<(), HandlerError> {
        self.0
            .fetch_add(batch.messages().len() as u64, Ordering::Relaxed);
        Ok(())
    }
}

#[derive(Debug)]
struct Stamp(mpsc::UnboundedSender<Instant>);

#[async_trait::async_trait]
impl BatchHandler for Stamp {
    async fn handle(&self, _batch: &mut MessageBatch) -> Result<(), HandlerError> {
        let _ = self.0.send(Instant::now());
        Ok(())
    }
}

/// A store created for one run and destroyed afterwards.
struct ThrowawayStore {
    db: Database,
    /// Where the store is (handed to a `serve` child by the HTTP benchmarks).
    url: DatabaseUrl,
    /// A temporary directory: the SQLite file, and a data directory for a `serve` child.
    dir: std::path::PathBuf,
    /// The PostgreSQL database to drop afterwards, and the admin URL to drop it through.
    pg: Option<(DatabaseUrl, String)>,
}

const DEFAULT_PG_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

impl ThrowawayStore {
    async fn create(backend: Backend, database_url: Option<&str>) -> anyhow::Result<Self> {
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let dir = std::env::temp_dir().join(format!("cognomega-bench-{tag}"));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create the temporary directory {}", dir.display()))?;
        let created = match backend {
            Backend::Sqlite => {
                let url = DatabaseUrl::sqlite_file(&dir.join("bench.db"));
                Database::open(&url)
                    .await
                    .map(|db| (db, url, None))
                    .map_err(anyhow::Error::from)
            }
            Backend::Postgres => Self::create_pg(database_url, &tag).await,
        };
        match created {
            Ok((db, url, pg)) => Ok(Self { db, url, dir, pg }),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                Err(e)
            }
        }
    }

    async fn create_pg(
        database_url: Option<&str>,
        tag: &str,
    ) -> anyhow::Result<(Database, DatabaseUrl, Option<(DatabaseUrl, String)>)> {
        let admin = DatabaseUrl::parse(database_url.unwrap_or(DEFAULT_PG_ADMIN_URL))?;
        if !admin.is_postgres() {
            bail!(
                "--backend postgres needs a postgres:// --database-url (or COGNOMEGA_DATABASE_URL)"
            );
        }
        let name = format!("cognomega_bench_{tag}");
        let admin_db = Database::connect(&admin).await?;
        if let Database::Postgres(pg) = &admin_db {
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&pg.pool)
                .await
                .with_context(|| {
                    format!(
                        "cannot create the benchmark database on {admin}: the user needs CREATEDB"
                    )
                })?;
        }
        admin_db.close().await;
        let url = DatabaseUrl::parse(&with_database(admin.expose(), &name))?;
        match Database::open(&url).await {
            Ok(db) => Ok((db, url, Some((admin, name)))),
            Err(e) => {
                let _ = drop_pg(&admin, &name).await;
                Err(e.into())
            }
        }
    }

    async fn destroy(self) -> anyhow::Result<()> {
        self.db.close().await;
        let dropped = match &self.pg {
            Some((admin, name)) => drop_pg(admin, name).await,
            None => Ok(()),
        };
        std::fs::remove_dir_all(&self.dir)
            .with_context(|| format!("cannot remove {}", self.dir.display()))?;
        dropped
    }
}

async fn drop_pg(admin: &DatabaseUrl, name: &str) -> anyhow::Result<()> {
    let admin_db = Database::connect(admin).await?;
    if let Database::Postgres(pg) = &admin_db {
        sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .execute(&pg.pool)
            .await
            .with_context(|| {
                format!("cannot drop the benchmark database {name}; drop it by hand")
            })?;
    }
    admin_db.close().await;
    Ok(())
}

/// The same URL pointing at another database.
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = url
        .split_once('?')
        .map_or((url, None), |(b, q)| (b, Some(q)));
    let (scheme, rest) = base.split_once("://").unwrap_or(("postgres", base));
    let authority = rest.split_once('/').map_or(rest, |(a, _)| a);
    match query {
        Some(q) => format!("{scheme}://{authority}/{name}?{q}"),
        None => format!("{scheme}://{authority}/{name}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_swapped() {
        assert_eq!(
            with_database("postgres://u@h:5432/test", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(with_database("postgres://u@h", "x"), "postgres://u@h/x");
        assert_eq!(
            with_database("postgres://u:p@h/db?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
    }

    #[test]
    fn own_cpu_time_is_readable() {
        assert!(cpu_seconds("self").is_some_and(|s| s >= 0.0));
        assert!(cpu_seconds("0").is_none());
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert!((percentile(&v, 0.5) - 50.0).abs() < f64::EPSILON);
        assert!((percentile(&v, 0.99) - 99.0).abs() < f64::EPSILON);
        assert!((percentile(&[], 0.5)).abs() < f64::EPSILON);
    }
}
