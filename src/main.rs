//! The `cognomega` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

mod commands;

/// Cognomega: a queue-first batch and job platform.
///
/// Zero config: `cognomega serve` keeps everything in ./cognomega-data (SQLite + objects folder)
/// and listens on 127.0.0.1:8787. Point --database-url at PostgreSQL to scale out with many
/// `cognomega worker` processes.
#[derive(Debug, Parser)]
#[command(name = "cognomega", version, propagate_version = true)]
struct Cli {
    /// Data directory (SQLite file and objects folder of the embedded default).
    #[arg(long, global = true, env = "COGNOMEGA_DATA_DIR", default_value = cognomega::config::DEFAULT_DATA_DIR)]
    data_dir: PathBuf,

    /// Database URL: postgres://USER@HOST/DB for the scale-out shape, or sqlite://PATH.
    /// Default: the SQLite file inside --data-dir.
    #[arg(
        long,
        global = true,
        env = "COGNOMEGA_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<String>,

    /// Object storage: a folder, file:///abs/path, or s3://bucket?endpoint=URL&region=auto
    /// (credentials from COGNOMEGA_S3_ACCESS_KEY_ID / COGNOMEGA_S3_SECRET_ACCESS_KEY).
    /// Default: DATA_DIR/objects.
    #[arg(long, global = true, env = "COGNOMEGA_OBJECTS_URL")]
    objects_url: Option<String>,

    /// Config file (TOML: schedules). Default: DATA_DIR/cognomega.toml when it exists.
    #[arg(long, global = true, env = "COGNOMEGA_CONFIG")]
    config: Option<PathBuf>,
    /// Lifecycle policy file (JSON, or TOML unless it ends in .json) layered over the defaults
    /// (see `cognomega lifecycle plan`).
    #[arg(long, global = true, env = "COGNOMEGA_LIFECYCLE_POLICY")]
    lifecycle_policy: Option<PathBuf>,

    /// Log format.
    #[arg(long, global = true, env = "COGNOMEGA_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Log filter (tracing env-filter syntax), e.g. `info` or `cognomega=debug`.
    #[arg(long, global = true, env = "COGNOMEGA_LOG", default_value = "info")]
    log: String,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP API and all consumers in one process (the embedded default).
    Serve(commands::serve::Args),
    /// Run consumers only, against a shared --database-url (run as many as you like).
    Worker(commands::worker::Args),
    /// Apply database migrations for the configured backend.
    Migrate,
    /// Print statistics of every queue.
    Queues(commands::queues::Args),
    /// List the periodic schedules with their last and next runs, and the current leader.
    Schedules(commands::schedules::Args),
    /// Inspect and replay dead-letter queues.
    Dlq(commands::dlq::Args),
    /// Delete what retention allows: acked and dead messages, expired idempotency keys.
    Prune,
    /// Delete what retention allows, expired zero-balance guests, orphaned objects; mark rows
    /// whose object is gone (`--dry-run` only counts).
    Cleanup(commands::cleanup::Args),
    /// Send probe messages and wait until the workers have applied them all.
    Probe(commands::probe::Args),
    /// Serve a stand-in model provider on loopback (OpenAI and Workers AI protocols) for trying
    /// POST /api/si/ask without a provider account.
    FakeProvider(commands::fake_provider::Args),
    /// Export datasets incrementally to Parquet or NDJSON.zst under exports/ (for analysts).
    Export(commands::export::Args),
    /// Manage the JWT signing keys.
    Keys(commands::keys::Args),
    /// Lifecycle tiers: render the bucket rules, apply them, run the sweeper.
    Lifecycle(commands::lifecycle::Args),
    /// Seal and verify the ledger's hash chain, reconcile usage ⇒ ledger ⇒ balances, and write
    /// a proof report (JSON + Markdown) under ops/proofs/. Exit 0 clean, 1 findings, 2 pending.
    Audit(commands::audit::Args),
    /// Benchmarks that print their figures.
    #[cfg(feature = "bench")]
    Bench(commands::bench::Args),
    /// Benchmarks that print their figures (not in this build: build with `--features bench`).
    #[cfg(not(feature = "bench"))]
    Bench(commands::NoBench),
}

fn init_tracing(format: LogFormat, filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    cognomega_core::tls::install();
    init_tracing(cli.log_format, &cli.log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let ctx = commands::Ctx {
            data_dir: cli.data_dir,
            database_url: cli.database_url,
            objects_url: cli.objects_url,
            config: cli.config,
            lifecycle_policy: cli.lifecycle_policy,
        };
        let done = |r: anyhow::Result<()>| r.map(|()| ExitCode::SUCCESS);
        match cli.command {
            Command::Audit(args) => commands::audit::run(ctx, args).await,
            Command::Serve(args) => done(commands::serve::run(ctx, args).await),
            Command::Worker(args) => done(commands::worker::run(ctx, args).await),
            Command::Migrate => done(commands::migrate(ctx).await),
            Command::Queues(args) => done(commands::queues::run(ctx, args).await),
            Command::Schedules(args) => done(commands::schedules::run(ctx, args).await),
            Command::Dlq(args) => done(commands::dlq::run(ctx, args).await),
            Command::Prune => done(commands::prune(ctx).await),
            Command::Cleanup(args) => done(commands::cleanup::run(ctx, args).await),
            Command::Probe(args) => done(commands::probe::run(ctx, args).await),
            Command::FakeProvider(args) => done(commands::fake_provider::run(args).await),
            Command::Export(args) => done(commands::export::run(ctx, args).await),
            Command::Keys(args) => done(commands::keys::run(ctx, args).await),
            Command::Lifecycle(args) => done(commands::lifecycle::run(ctx, args).await),
            #[cfg(feature = "bench")]
            Command::Bench(args) => done(commands::bench::run(ctx, args).await),
            #[cfg(not(feature = "bench"))]
            Command::Bench(args) => done(args.refuse()),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    /// The edge reads its settings by the names of `cognomega_core::settings::VARS`: each one
    /// must be a setting of `serve` and of `worker` under the same name.
    #[test]
    fn the_shared_settings_are_the_native_names() {
        let cli = super::Cli::command();
        for sub in ["serve", "worker"] {
            let cmd = cli.find_subcommand(sub);
            let names: Vec<String> = cmd
                .into_iter()
                .flat_map(|c| c.get_arguments())
                .filter_map(|a| a.get_env())
                .map(|e| e.to_string_lossy().into_owned())
                .collect();
            for var in cognomega_core::settings::VARS {
                assert!(names.iter().any(|n| n == var), "{sub} does not read {var}");
            }
        }
    }
}
