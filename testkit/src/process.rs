//! The `cognomega` binary as a child process.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// What `serve` prints once it listens.
const LISTENING: &str = "cognomega listening on ";

/// Starts a prepared `cognomega … serve …` command and returns the child with the base URL it
/// listens on (read from its stderr, which keeps being drained so the child never blocks on a
/// full pipe).
pub async fn spawn_serve(mut command: Command) -> anyhow::Result<(Child, String)> {
    let mut child = command
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("the child has no stderr"))?;
    let mut lines = BufReader::new(stderr).lines();
    let url = tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix(LISTENING) {
                return Ok::<_, anyhow::Error>(
                    rest.split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned(),
                );
            }
        }
        anyhow::bail!("serve exited before listening")
    })
    .await??;
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, url))
}

/// Sends SIGTERM (graceful shutdown) to a child.
pub fn terminate(child: &Child) -> anyhow::Result<()> {
    let pid = child
        .id()
        .ok_or_else(|| anyhow::anyhow!("the child already exited"))?;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    anyhow::ensure!(status.success(), "kill -TERM {pid} failed");
    Ok(())
}
