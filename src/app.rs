//! Starting and stopping the platform: HTTP API plus (optionally) all consumers, in one process.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use cognomega_consumers::scheduler::{Scheduler, SchedulerOptions};
use cognomega_consumers::{RunningRuntime, RuntimeOptions};
use cognomega_producers::AppState;

use cognomega_stores::kv::BalanceCache;
use cognomega_stores::objects::Objects;
use cognomega_stores::Database;
use tokio_util::sync::CancellationToken;

use crate::config::ServeConfig;
use crate::wiring;

/// A running platform.
#[derive(Debug)]
pub struct Platform {
    /// The address the API listens on.
    pub addr: SocketAddr,
    /// The database it uses.
    pub db: Database,
    state: AppState,
    shutdown: CancellationToken,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    consumers: Option<RunningRuntime>,
    scheduler: Option<tokio::task::JoinHandle<()>>,
}

impl Platform {
    /// Opens (and migrates) the store, starts the consumers and the HTTP server.
    pub async fn start(config: &ServeConfig, options: RuntimeOptions) -> anyhow::Result<Self> {
        let db = Database::open(&config.storage.database_url)
            .await
            .with_context(|| format!("cannot open the database {}", config.storage.database_url))?;
        // Fresh for a second, then served stale for up to 30 s while one refresh runs: in-process
        // settlements invalidate it at once; other processes' settlements show within a second.
        let balances =
            BalanceCache::new(db.clone(), Duration::from_secs(1), Duration::from_secs(30));
        let objects =
            Objects::open(&config.storage.objects_url).context("cannot open the object store")?;
        let mut state = AppState::new(
            db.clone(),
            config.api.clone(),
            balances.clone(),
            objects.clone(),
        )
        .await
        .context("cannot load the JWT signing keys")?;
        let consumers = if config.consumers {
            let rt = wiring::runtime(
                &db,
                &state.job_types,
                options,
                &config.api.billing,
                Some(balances),
                &objects,
                config.clamd.as_ref(),
                &config.lifecycle,
            )?;
            state.consumer_metrics = Some(rt.metrics());
            Some(rt.start().await?)
        } else {
            None
        };
        let shutdown = CancellationToken::new();
        let scheduler = match (&consumers, &config.schedules) {
            (Some(_), Some(schedules)) => {
                let scheduler =
                    Scheduler::new(db.clone(), schedules.clone(), SchedulerOptions::default());
                Some(tokio::spawn(scheduler.run(shutdown.clone())))
            }
            _ => None,
        };
        let listener = tokio::net::TcpListener::bind(config.listen)
            .await
            .with_context(|| {
                format!(
                    "cannot listen on {}; is another server using it? Pass --listen HOST:PORT",
                    config.listen
                )
            })?;
        let addr = listener.local_addr()?;
        // Pick up key rotations done by other processes (`cognomega keys rotate`).
        let auth = state.auth.clone();
        let reload_stop = shutdown.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(30)) => auth.reload().await,
                    () = reload_stop.cancelled() => break,
                }
            }
        });
        // Voice sessions whose process died (no heartbeat): settled here, once.
        let sweep_state = state.clone();
        let sweep_stop = shutdown.clone();
        tokio::spawn(async move {
            let every =
                (sweep_state.config.voice_session_stale / 3).max(Duration::from_millis(100));
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {}
                    () = sweep_stop.cancelled() => break,
                }
                match cognomega_producers::routes::settle_stale_voice_sessions(&sweep_state).await {
                    Ok(0) => {}
                    Ok(n) => {
                        tracing::info!(sessions = n, "settled voice sessions whose process stopped")
                    }
                    Err(e) => tracing::warn!(error = %e, "voice session sweep failed; retrying"),
                }
            }
        });
        let app = cognomega_producers::router(state.clone());
        let server = tokio::spawn(crate::http_server::serve(
            listener,
            app,
            config.api.timeouts.header_read,
            shutdown.clone(),
        ));
        Ok(Self {
            addr,
            db,
            state,
            shutdown,
            server,
            consumers,
            scheduler,
        })
    }

    /// The API's state (for tests and embedding).
    #[must_use]
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// The base URL of the API.
    #[must_use]
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The running consumers, if this process runs them.
    #[must_use]
    pub fn consumers(&self) -> Option<&RunningRuntime> {
        self.consumers.as_ref()
    }

    /// Stops accepting requests, lets in-flight ones finish (up to `grace`), then stops the
    /// consumers gracefully and closes the database.
    pub async fn stop(self, grace: Duration) -> anyhow::Result<()> {
        self.shutdown.cancel();
        match tokio::time::timeout(grace, self.server).await {
            Ok(joined) => joined??,
            Err(_) => {
                tracing::warn!("HTTP requests still running after the grace period; closing anyway")
            }
        }
        if let Some(scheduler) = self.scheduler {
            let _ = scheduler.await;
        }
        if let Some(rt) = self.consumers {
            let report = rt.stop().await;
            if report.released_batches > 0 {
                tracing::warn!(
                    batches = report.released_batches,
                    "released unfinished batches back to their queues"
                );
            }
        }
        self.db.close().await;
        Ok(())
    }
}
