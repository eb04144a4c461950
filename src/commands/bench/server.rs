//! The server under test: `cognomega serve` as a separate child process over a throwaway store
//! (so client and server are different processes talking over loopback), or an already running
//! server given by `--url`.

use std::collections::VecDeque;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};

use super::client::Target;
use super::{Backend, Ctx, ThrowawayStore};

/// How long the child may take to migrate and start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the child gets to stop after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Lines of the child's stderr kept for error messages.
const TAIL_LINES: usize = 30;

/// What the benchmark talks to.
pub(super) struct Server {
    pub(super) target: Target,
    child: Option<ChildServer>,
}

struct ChildServer {
    child: Child,
    pid: u32,
    stderr: Arc<Mutex<VecDeque<String>>>,
    store: ThrowawayStore,
}

impl Server {
    /// `--url` given: that server. Otherwise a `serve` child over a new throwaway store.
    pub(super) async fn start(
        ctx: &Ctx,
        backend: Backend,
        url: Option<&str>,
    ) -> anyhow::Result<Self> {
        Self::start_with(ctx, backend, url, &[]).await
    }

    /// Like [`Server::start`], with extra `serve` flags for the child.
    pub(super) async fn start_with(
        ctx: &Ctx,
        backend: Backend,
        url: Option<&str>,
        extra: &[String],
    ) -> anyhow::Result<Self> {
        Self::start_with_env(ctx, backend, url, extra, &[]).await
    }

    /// Like [`Server::start_with`], with extra environment variables for the child.
    pub(super) async fn start_with_env(
        ctx: &Ctx,
        backend: Backend,
        url: Option<&str>,
        extra: &[String],
        env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        if let Some(url) = url {
            return Ok(Self {
                target: Target::parse(url).await?,
                child: None,
            });
        }
        let store = ThrowawayStore::create(backend, ctx.database_url.as_deref()).await?;
        // The child migrates on start itself; the bench keeps no connection to the store.
        store.db.close().await;
        match spawn(&store, extra, env).await {
            Ok((child, pid, stderr, url)) => match Target::parse(&url).await {
                Ok(target) => Ok(Self {
                    target,
                    child: Some(ChildServer {
                        child,
                        pid,
                        stderr,
                        store,
                    }),
                }),
                Err(e) => {
                    let server = ChildServer {
                        child,
                        pid,
                        stderr,
                        store,
                    };
                    let _ = server.stop().await;
                    Err(e)
                }
            },
            Err(e) => {
                store.destroy().await?;
                Err(e)
            }
        }
    }

    /// Whether the server is a child this benchmark started.
    pub(super) fn is_child(&self) -> bool {
        self.child.is_some()
    }

    /// The child server's peak resident set size (VmHWM) in MiB; `None` for a `--url` server.
    pub(super) fn peak_rss_mib(&self) -> Option<f64> {
        let pid = self.child.as_ref()?.pid;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        super::vm_hwm_mib(&status)
    }

    /// CPU seconds the child server has used so far; `None` for a `--url` server.
    pub(super) fn cpu_seconds(&self) -> Option<f64> {
        super::cpu_seconds(&self.child.as_ref()?.pid.to_string())
    }

    /// The last lines the child wrote to stderr (for error messages); empty for `--url`.
    pub(super) fn stderr_tail(&self) -> String {
        self.child.as_ref().map_or_else(String::new, |c| {
            let lines = c
                .stderr
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            lines
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join("\n")
        })
    }

    /// Adds the child's last stderr lines to an error.
    pub(super) fn explain(&self, e: anyhow::Error) -> anyhow::Error {
        let tail = self.stderr_tail();
        if tail.is_empty() {
            e
        } else {
            e.context(format!("the server's last log lines:\n{tail}"))
        }
    }

    /// Stops the child (SIGTERM, then SIGKILL after a grace period) and destroys its store.
    pub(super) async fn stop(self) -> anyhow::Result<()> {
        match self.child {
            Some(child) => child.stop().await,
            None => Ok(()),
        }
    }
}

impl ChildServer {
    async fn stop(mut self) -> anyhow::Result<()> {
        let terminated = std::process::Command::new("kill")
            .args(["-TERM", &self.pid.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        let exited = terminated
            && tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
                .await
                .is_ok();
        if !exited {
            tracing::warn!(
                pid = self.pid,
                "the benchmark server did not stop on SIGTERM; killing it"
            );
            let _ = self.child.kill().await;
        }
        self.store.destroy().await
    }
}

type Spawned = (Child, u32, Arc<Mutex<VecDeque<String>>>, String);

/// Starts `cognomega serve` on a free loopback port over `store`; returns once it listens.
async fn spawn(
    store: &ThrowawayStore,
    extra: &[String],
    env: &[(String, String)],
) -> anyhow::Result<Spawned> {
    let exe = std::env::current_exe()
        .context("cannot find this program's own path to start the benchmark server")?;
    let admin_key = format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    let mut cmd = Command::new(exe);
    // Nothing from this shell's COGNOMEGA_* configuration may change the server under test
    // (a --no-consumers, other prices, another database…): every setting is explicit.
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("COGNOMEGA_") {
            cmd.env_remove(key);
        }
    }
    let data_dir = store.dir.join("server");
    cmd.arg("--data-dir")
        .arg(&data_dir)
        .args(["--log", "warn", "--log-format", "text"])
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-key",
            &admin_key,
        ])
        .args(["--shutdown-grace", "10"])
        .args(extra)
        // Through the environment, not argv: a PostgreSQL URL may carry a password.
        .env("COGNOMEGA_DATABASE_URL", store.url.expose())
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .context("cannot start the benchmark server (cognomega serve)")?;
    let pid = child.id().context("the benchmark server exited at once")?;
    let stderr = child
        .stderr
        .take()
        .context("the benchmark server's stderr is not piped")?;
    let tail = Arc::new(Mutex::new(VecDeque::with_capacity(TAIL_LINES)));
    let (url_tx, url_rx) = tokio::sync::oneshot::channel();
    let keep = tail.clone();
    tokio::spawn(async move {
        // Reads stderr to its end, so the child never blocks on a full pipe.
        let mut lines = BufReader::new(stderr).lines();
        let mut url_tx = Some(url_tx);
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(rest) = line.strip_prefix("cognomega listening on ") {
                if let Some(tx) = url_tx.take() {
                    let _ = tx.send(
                        rest.split_whitespace()
                            .next()
                            .unwrap_or_default()
                            .to_owned(),
                    );
                }
            }
            let mut keep = keep
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if keep.len() == TAIL_LINES {
                keep.pop_front();
            }
            keep.push_back(line);
        }
    });
    let url = match tokio::time::timeout(START_TIMEOUT, url_rx).await {
        Ok(Ok(url)) => url,
        outcome => {
            let _ = child.kill().await;
            // Let the reader collect the last lines.
            tokio::time::sleep(Duration::from_millis(100)).await;
            let lines = tail
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
                .join("\n");
            let why = if outcome.is_err() {
                format!("did not listen within {START_TIMEOUT:?}")
            } else {
                "exited before listening".to_owned()
            };
            bail!(
                "the benchmark server (cognomega serve on {}) {why}; its output:\n{lines}",
                store.url
            );
        }
    };
    Ok((child, pid, tail, url))
}
