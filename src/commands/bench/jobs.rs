//! `cognomega bench jobs`: `sketch_to_app` throughput of real `cognomega worker` processes.
//!
//! Enqueues N jobs on a generated sketch (default 1600×1200) straight into a throwaway store,
//! starts `--workers` worker processes against it, and times the drain: jobs per minute, and
//! the per-job run time (started → finished) p50/p99 from the job rows.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use cognomega_consumers::jobs::{self as job_queue, JobMessage};
use cognomega_core::queue::OutgoingMessage;
use cognomega_pipelines::synth::Sketch;
use cognomega_stores::jobs::NewJob;
use cognomega_stores::objects::{ObjectKey, ObjectStoreUrl, Objects, PutMeta};
use cognomega_stores::Database;
use serde::Serialize;

use super::{percentile, progress, Backend, ThrowawayStore};

#[derive(Debug, clap::Args)]
pub(super) struct JobsArgs {
    /// Which store the workers share.
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    backend: Backend,
    /// Jobs to run.
    #[arg(long, default_value_t = 120)]
    jobs: u32,
    /// Worker processes (each runs two jobs at a time).
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// Sketch width in pixels.
    #[arg(long, default_value_t = 1600)]
    width: u32,
    /// Sketch height in pixels.
    #[arg(long, default_value_t = 1200)]
    height: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    backend: Backend,
    jobs: u32,
    workers: u32,
    width: u32,
    height: u32,
    jobs_per_minute: f64,
    run_p50_ms: f64,
    run_p99_ms: f64,
}

pub(super) async fn run(args: JobsArgs, database_url: Option<&str>) -> anyhow::Result<()> {
    if args.jobs == 0 || args.workers == 0 {
        bail!("--jobs and --workers must be at least 1");
    }
    let store = ThrowawayStore::create(args.backend, database_url).await?;
    let result = measure(&store, &args).await;
    store.destroy().await?;
    let report = result?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "cognomega bench jobs: sketch_to_app {}x{}, {} jobs, {} workers, backend={:?}",
            report.width, report.height, report.jobs, report.workers, report.backend
        );
        println!("  throughput  {:>8.1} jobs/minute", report.jobs_per_minute);
        println!(
            "  run time    p50 {:.1} ms, p99 {:.1} ms (started → finished, per job)",
            report.run_p50_ms, report.run_p99_ms
        );
    }
    Ok(())
}

async fn measure(store: &ThrowawayStore, args: &JobsArgs) -> anyhow::Result<Report> {
    let db = &store.db;
    let objects_dir = store.dir.join("objects");
    let objects = Objects::open(&ObjectStoreUrl::Local(objects_dir.clone()))?;
    let (png, _) = Sketch::generate(42, args.width, args.height);
    let png = bytes::Bytes::from(png);
    let queue = job_queue::queue("sketch_to_app");
    for _ in 0..args.jobs {
        let id = uuid::Uuid::now_v7().to_string();
        let key = ObjectKey::parse(&format!("inputs/bench/{id}"))?;
        objects
            .put(&key, png.clone(), &PutMeta::content_type("image/png"))
            .await?;
        let mut tx = db.begin().await?;
        let new = NewJob {
            id: &id,
            tenant_id: "bench",
            job_type: "sketch_to_app",
            idempotency_key: None,
            params: "{}",
            input_key: key.as_str(),
            request_id: None,
        };
        cognomega_stores::jobs::insert(&mut tx, &new).await?;
        tx.send(&queue, OutgoingMessage::json(&JobMessage { job_id: id })?)
            .await?;
        tx.commit().await?;
    }
    let bar = progress(!args.json, u64::from(args.jobs), "jobs");
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..args.workers {
        workers.push(
            tokio::process::Command::new(std::env::current_exe()?)
                .args(["--log", "error", "--data-dir"])
                .arg(&store.dir)
                .args(["--database-url", store.url.expose(), "--objects-url"])
                .arg(&objects_dir)
                .args(["worker", "--poll-interval-ms", "50"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .context("cannot start a worker process")?,
        );
    }
    loop {
        let done = count(
            db,
            "SELECT COUNT(*) FROM jobs WHERE status IN ('succeeded', 'failed', 'dead')",
        )
        .await?;
        bar.set_position(u64::try_from(done).unwrap_or(0));
        if done >= i64::from(args.jobs) {
            break;
        }
        if started.elapsed() > Duration::from_secs(3600) {
            bail!("the jobs did not finish within an hour");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    for mut w in workers {
        let _ = w.start_kill();
        let _ = w.wait().await;
    }
    let failed = count(db, "SELECT COUNT(*) FROM jobs WHERE status <> 'succeeded'").await?;
    if failed > 0 {
        bail!("{failed} jobs did not succeed");
    }
    let mut runs = run_times_ms(db).await?;
    runs.sort_by(f64::total_cmp);
    Ok(Report {
        backend: args.backend,
        jobs: args.jobs,
        workers: args.workers,
        width: args.width,
        height: args.height,
        jobs_per_minute: f64::from(args.jobs) / elapsed * 60.0,
        run_p50_ms: percentile(&runs, 0.5),
        run_p99_ms: percentile(&runs, 0.99),
    })
}

async fn count(db: &Database, sql: &str) -> anyhow::Result<i64> {
    Ok(match db {
        Database::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(&s.read).await?,
        Database::Postgres(pg) => sqlx::query_scalar(sql).fetch_one(&pg.pool).await?,
    })
}

async fn run_times_ms(db: &Database) -> anyhow::Result<Vec<f64>> {
    let rows: Vec<f64> =
        match db {
            Database::Sqlite(s) => {
                sqlx::query_scalar("SELECT CAST(finished_at - started_at AS REAL) FROM jobs")
                    .fetch_all(&s.read)
                    .await?
            }
            Database::Postgres(pg) => sqlx::query_scalar(
                "SELECT (extract(epoch from finished_at - started_at) * 1000)::float8 FROM jobs",
            )
            .fetch_all(&pg.pool)
            .await?,
        };
    Ok(rows)
}
