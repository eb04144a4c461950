//! `cognomega worker`.

use std::time::Duration;

use cognomega_consumers::RuntimeOptions;

use super::{shutdown_signal, Ctx};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Seconds in-flight batches get to finish on SIGINT/SIGTERM before they are released.
    #[arg(long, env = "COGNOMEGA_SHUTDOWN_GRACE", default_value_t = 30)]
    shutdown_grace: u64,

    #[command(flatten)]
    api: super::settings::ApiArgs,

    /// Longest idle wait between polls, in milliseconds (wake-up hints cut it short).
    #[arg(long, env = "COGNOMEGA_POLL_INTERVAL_MS", default_value_t = 500)]
    poll_interval_ms: u64,
}

pub async fn run(ctx: Ctx, args: Args) -> anyhow::Result<()> {
    let db = ctx.open().await?;
    let options = RuntimeOptions {
        poll_interval: Duration::from_millis(args.poll_interval_ms.max(1)),
        shutdown_grace: Duration::from_secs(args.shutdown_grace),
    };
    let objects = cognomega_stores::objects::Objects::open(&ctx.storage()?.objects_url)?;
    let clamd = args.api.clamd()?;
    let rt = cognomega::wiring::runtime(
        &db,
        options,
        &args.api.billing()?,
        None,
        &objects,
        clamd.as_ref(),
        &std::sync::Arc::new(ctx.lifecycle_policy()?),
    )?;
    let running = rt.start().await?;
    tracing::info!(backend = db.backend(), queues = ?running.queues(), "worker consuming");
    shutdown_signal().cancelled().await;
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
