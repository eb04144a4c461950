//! `cognomega serve`.

use std::net::SocketAddr;
use std::time::Duration;

use cognomega::app::Platform;
use cognomega::config::{ServeConfig, DEFAULT_LISTEN};
use cognomega_consumers::RuntimeOptions;

use super::{shutdown_signal, Ctx};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Address of the HTTP API.
    #[arg(long, env = "COGNOMEGA_LISTEN", default_value = DEFAULT_LISTEN)]
    listen: SocketAddr,

    /// Serve HTTP only and leave the queues to `cognomega worker` processes.
    #[arg(long, env = "COGNOMEGA_NO_CONSUMERS")]
    no_consumers: bool,

    /// Run no periodic schedules in this process (they run where consumers run; one process
    /// leads at a time).
    #[arg(long, env = "COGNOMEGA_NO_SCHEDULES")]
    no_schedules: bool,

    #[command(flatten)]
    api: super::settings::ApiArgs,

    /// Seconds in-flight requests and batches get to finish on shutdown.
    #[arg(long, env = "COGNOMEGA_SHUTDOWN_GRACE", default_value_t = 30)]
    shutdown_grace: u64,
}

pub async fn run(ctx: Ctx, args: Args) -> anyhow::Result<()> {
    let grace = Duration::from_secs(args.shutdown_grace);
    let storage = ctx.storage()?;
    let api = args.api.api_config(&ctx)?;
    let config = ServeConfig {
        storage,
        listen: args.listen,
        consumers: !args.no_consumers,
        api,
        clamd: args.api.clamd()?,
        schedules: if args.no_schedules {
            None
        } else {
            Some(ctx.file_config()?.schedules()?)
        },
        lifecycle: std::sync::Arc::new(ctx.lifecycle_policy()?),
    };
    let options = RuntimeOptions {
        shutdown_grace: grace,
        ..RuntimeOptions::default()
    };
    let platform = Platform::start(&config, options).await?;
    tracing::info!(
        url = %platform.base_url(),
        database = %config.storage.database_url,
        data_dir = %config.storage.data_dir.display(),
        consumers = config.consumers,
        "cognomega is serving"
    );
    eprintln!(
        "cognomega listening on {} (data: {})",
        platform.base_url(),
        config.storage.data_dir.display()
    );
    shutdown_signal().cancelled().await;
    platform.stop(grace).await
}
