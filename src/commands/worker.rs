//! `cognomega worker`.

use std::time::Duration;

use cognomega_consumers::scheduler::{Scheduler, SchedulerOptions};
use cognomega_consumers::RuntimeOptions;

use super::{shutdown_signal, Ctx};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds in-flight batches get to finish on SIGINT/SIGTERM before they are released.
    #[arg(long, env = "COGNOMEGA_SHUTDOWN_GRACE", default_value_t = 30)]
    shutdown_grace: u64,

    /// Run no periodic schedules in this process (one process among all that run them leads
    /// at a time; the others stand by).
    #[arg(long, env = "COGNOMEGA_NO_SCHEDULES")]
    no_schedules: bool,

    #[command(flatten)]
    api: super::settings::ApiArgs,

    /// Longest idle wait between polls, in milliseconds (wake-up hints cut it short).
    #[arg(long, env = "COGNOMEGA_POLL_INTERVAL_MS", default_value_t = 500)]
    poll_interval_ms: u64,
}

pub async fn run(ctx: Ctx, args: Args) -> anyhow::Result<()> {
    let schedules = if args.no_schedules {
        None
    } else {
        Some(ctx.file_config()?.schedules()?)
    };
    let db = ctx.open().await?;
    let options = RuntimeOptions {
        poll_interval: Duration::from_millis(args.poll_interval_ms.max(1)),
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
    };
    let objects = cognomega_stores::objects::Objects::open(&ctx.storage()?.objects_url)?;
    let clamd = args.api.clamd()?;
    let voices = cognomega_providers::voice::Voices::from_config(&args.api.voice_providers(&ctx)?)
        .map_err(|e| anyhow::anyhow!("voice providers: {e}"))?;
    let rt = cognomega::wiring::runtime(
        &db,
        &cognomega_producers::job_types(&voices),
        options,
        &args.api.billing()?,
        None,
        &objects,
        clamd.as_ref(),
        &std::sync::Arc::new(ctx.lifecycle_policy()?),
    )?;
    let running = rt.start().await?;
    tracing::info!(backend = db.backend(), queues = ?running.queues(), "worker consuming");
    let shutdown = shutdown_signal();
    let scheduler = schedules.map(|s| {
        let scheduler = Scheduler::new(db.clone(), s, SchedulerOptions::default());
        tracing::info!(
            holder = scheduler.holder(),
            "scheduler standing by for the leader lease"
        );
        tokio::spawn(scheduler.run(shutdown.clone()))
    });
    shutdown.cancelled().await;
    if let Some(scheduler) = scheduler {
        let _ = scheduler.await;
    }
    let report = running.stop().await;
    if report.released_batches > 0 {
        tracing::warn!(
            batches = report.released_batches,
            "released unfinished batches back to their queues"
        );
    }
    db.close().await;
    Ok(())
}
