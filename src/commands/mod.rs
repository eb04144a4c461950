//! One module per subcommand.

pub mod audit;
#[cfg(feature = "bench")]
pub mod bench;
pub mod cleanup;
pub mod dlq;
pub mod export;
pub mod fake_provider;
pub mod keys;
pub mod lifecycle;
pub mod probe;
pub mod queues;
pub mod schedules;
pub mod serve;
pub mod settings;
pub mod worker;

use std::path::PathBuf;

use anyhow::Context as _;
use cognomega::config::StorageConfig;
use cognomega_stores::Database;
use tokio_util::sync::CancellationToken;

/// Global options every command sees.
#[derive(Debug)]
pub struct Ctx {
    pub data_dir: PathBuf,
    pub database_url: Option<String>,
    pub objects_url: Option<String>,
    pub config: Option<PathBuf>,
    pub lifecycle_policy: Option<PathBuf>,
}

impl Ctx {
    pub fn storage(&self) -> anyhow::Result<StorageConfig> {
        StorageConfig::resolve_with_objects(
            &self.data_dir,
            self.database_url.as_deref(),
            self.objects_url.as_deref(),
        )
    }

    /// The config file (or the defaults).
    pub fn file_config(&self) -> anyhow::Result<cognomega::config::FileConfig> {
        cognomega::config::FileConfig::load(self.config.as_deref(), &self.data_dir)
    }

    /// The lifecycle policy: defaults, with `--lifecycle-policy` layered over them.
    pub fn lifecycle_policy(&self) -> anyhow::Result<cognomega_r2_lifecycle::policy::Policy> {
        cognomega::config::lifecycle_policy(self.lifecycle_policy.as_deref())
    }

    /// Opens and migrates the configured database.
    pub async fn open(&self) -> anyhow::Result<Database> {
        let storage = self.storage()?;
        Database::open(&storage.database_url)
            .await
            .with_context(|| format!("cannot open the database {}", storage.database_url))
    }
}

pub async fn migrate(ctx: Ctx) -> anyhow::Result<()> {
    let storage = ctx.storage()?;
    let db = Database::connect(&storage.database_url).await?;
    db.migrate().await?;
    println!(
        "migrations applied ({} at {})",
        db.backend(),
        storage.database_url
    );
    db.close().await;
    Ok(())
}

pub async fn prune(ctx: Ctx) -> anyhow::Result<()> {
    let db = ctx.open().await?;
    let report = db.queue().prune().await?;
    let now = chrono::Utc::now();
    let counters = cognomega_stores::limits::prune_counters(&db, now.timestamp()).await?;
    let ask_keys = cognomega_stores::ask_replays::prune(&db, now.timestamp_millis()).await?;
    let sessions = cognomega_stores::voice_sessions::prune(&db, now.timestamp_millis()).await?;
    println!(
        "pruned {} acked messages, {} dead messages, {} expired idempotency keys, {} spent counter windows, {} expired ask keys, {} closed voice sessions",
        report.acked, report.dead, report.dedup_keys, counters, ask_keys, sessions
    );
    db.close().await;
    Ok(())
}

/// A token cancelled on SIGINT or SIGTERM.
pub fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(
                tokio::signal::unix::SignalKind::terminate(),
            ) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C stops the process");
                    let _ = ctrl_c.await;
                    cancel.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        tracing::info!(
            "shutting down: no new work is claimed; in-flight batches finish or are released"
        );
        cancel.cancel();
    });
    token
}

/// `cognomega bench …` in a build without the benchmark harness (the `bench` feature, off by
/// default: it is most of this binary's own code and compile time). Takes any arguments and
/// says how to get it.
#[cfg(not(feature = "bench"))]
#[derive(Debug, clap::Args)]
pub struct NoBench {
    /// The benchmark and its flags.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[cfg(not(feature = "bench"))]
impl NoBench {
    /// The error that explains what to do.
    pub fn refuse(self) -> anyhow::Result<()> {
        anyhow::bail!(
            "this cognomega was built without the benchmark harness (`bench {}`): build it with \
             `cargo build --release --features bench`, or run \
             `cargo run --release --features bench -- bench {}`",
            self.args.join(" "),
            self.args.join(" ")
        )
    }
}
