//! The `cognomega` binary as a user runs it: zero-config `serve`, `--help` everywhere,
//! `migrate`, `queues`, `dlq`, `probe` against workers, and `bench queue --json`.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use cognomega_core::queue::{OutgoingMessage, QueueSettings, Settlement};
use cognomega_testkit::{q, wait_for, Backend, TestDb};
use serde_json::Value;
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_cognomega");

async fn run(cwd: &Path, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(BIN)
        .current_dir(cwd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .await?)
}

async fn run_owned(cwd: &Path, args: &[String]) -> anyhow::Result<Output> {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run(cwd, &args).await
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[tokio::test]
async fn every_command_has_help() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    for cmd in [
        vec!["--help"],
        vec!["serve", "--help"],
        vec!["worker", "--help"],
        vec!["migrate", "--help"],
        vec!["queues", "--help"],
        vec!["dlq", "--help"],
        vec!["dlq", "list", "--help"],
        vec!["dlq", "replay", "--help"],
        vec!["prune", "--help"],
        vec!["probe", "--help"],
        vec!["bench", "--help"],
        vec!["bench", "queue", "--help"],
    ] {
        let out = run(dir.path(), &cmd).await?;
        assert!(out.status.success(), "{cmd:?} failed");
        assert!(
            stdout(&out).contains("Usage: cognomega"),
            "{cmd:?} prints usage"
        );
    }
    // A mistake tells the user what to do.
    let out = run(dir.path(), &["serve", "--listen", "not-an-address"]).await?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--listen"));
    assert!(
        !dir.path().join("cognomega-data").exists(),
        "nothing created on a usage error"
    );
    Ok(())
}

#[tokio::test]
async fn serve_runs_with_zero_config() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut cmd = Command::new(BIN);
    cmd.current_dir(dir.path())
        .args(["--log", "warn", "serve", "--listen", "127.0.0.1:0"])
        .env_remove("COGNOMEGA_DATABASE_URL")
        .env_remove("COGNOMEGA_DATA_DIR");
    let (mut child, url) = cognomega_testkit::spawn_serve(cmd).await?;
    cognomega_core::tls::install();
    let health: Value = reqwest::get(format!("{url}/healthz")).await?.json().await?;
    assert_eq!(health["backend"], "sqlite");
    let data = dir.path().join("cognomega-data");
    assert!(
        data.join("cognomega.db").is_file(),
        "SQLite file in ./cognomega-data"
    );
    assert!(
        data.join("objects").is_dir(),
        "objects folder in ./cognomega-data"
    );

    // `queues` in another process sees the queues the server declared.
    let out = run(dir.path(), &["queues"]).await?;
    assert!(out.status.success());
    assert!(
        stdout(&out).lines().any(|l| l.starts_with("probe ")),
        "{}",
        stdout(&out)
    );

    let pid = child.id().ok_or_else(|| anyhow::anyhow!("exited"))?;
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await??;
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    Ok(())
}

async fn migrate_queues_and_dlq(backend: Backend) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    let dir = tdb.data_dir().to_path_buf();
    let url = tdb.url().expose().to_owned();
    let args = |extra: &[&str]| {
        let mut v = vec!["--database-url".to_owned(), url.clone()];
        v.extend(extra.iter().map(|s| (*s).to_owned()));
        v
    };

    let out = run_owned(&dir, &(args(&["migrate"]))).await?;
    assert!(
        out.status.success(),
        "migrate is idempotent: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A dead message, made through the driver.
    let driver = tdb.db().queue();
    let s = QueueSettings {
        dead_letter_queue: Some(q("orders.dlq")),
        ..QueueSettings::default()
    };
    driver.declare(&q("orders"), &s).await?;
    let id = driver
        .send(&q("orders"), OutgoingMessage::new(&b"{\"order\":1}"[..]))
        .await?
        .id;
    let claim = driver.claim(&q("orders"), &s, 1).await?;
    driver
        .settle(
            &q("orders"),
            &s,
            &[Settlement::DeadLetter {
                id,
                token: claim.token,
                error: "bad order".into(),
            }],
        )
        .await?;

    let out = run_owned(&dir, &(args(&["queues", "--json"]))).await?;
    let stats: Value = serde_json::from_slice(&out.stdout)?;
    let orders = stats
        .as_array()
        .and_then(|a| a.iter().find(|s| s["queue"] == "orders"))
        .cloned();
    assert_eq!(orders.map(|o| o["dlq_depth"].clone()), Some(Value::from(1)));

    let out = run_owned(&dir, &(args(&["dlq", "list", "orders.dlq", "--json"]))).await?;
    let dead: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(dead[0]["id"], id.0);
    assert_eq!(dead[0]["error"], "bad order");
    assert_eq!(dead[0]["original_queue"], "orders");

    let out = run_owned(
        &dir,
        &(args(&["dlq", "replay", "orders.dlq", "--id", &id.0.to_string()])),
    )
    .await?;
    assert!(
        stdout(&out).contains("replayed 1 messages"),
        "{}",
        stdout(&out)
    );
    assert_eq!(driver.stats(&q("orders")).await?.depth, 1);

    let out = run_owned(&dir, &(args(&["dlq", "list", "Not A Queue"]))).await?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("queue name"));
    Ok(())
}

#[tokio::test]
async fn sqlite_migrate_queues_and_dlq() -> anyhow::Result<()> {
    migrate_queues_and_dlq(Backend::Sqlite).await
}

#[tokio::test]
async fn postgres_migrate_queues_and_dlq() -> anyhow::Result<()> {
    migrate_queues_and_dlq(Backend::Postgres).await
}

#[tokio::test]
async fn probe_through_two_postgres_workers() -> anyhow::Result<()> {
    let tdb = TestDb::new(Backend::Postgres).await?;
    let url = tdb.url().expose().to_owned();
    let spawn = || {
        Command::new(BIN)
            .current_dir(tdb.data_dir())
            .args(["--log", "warn", "--database-url", &url, "worker"])
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
    };
    let _a = spawn()?;
    let _b = spawn()?;
    let out = run(
        tdb.data_dir(),
        &[
            "--database-url",
            &url,
            "probe",
            "--messages",
            "500",
            "--timeout",
            "60",
        ],
    )
    .await?;
    assert!(
        out.status.success(),
        "probe: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout(&out).contains("500 probes applied"));
    Ok(())
}

#[tokio::test]
async fn probe_without_workers_says_what_to_do() -> anyhow::Result<()> {
    let tdb = TestDb::new(Backend::Sqlite).await?;
    let url = tdb.url().expose().to_owned();
    let out = run(
        tdb.data_dir(),
        &[
            "--database-url",
            &url,
            "probe",
            "--messages",
            "3",
            "--timeout",
            "1",
        ],
    )
    .await?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cognomega worker"));
    Ok(())
}

async fn bench_prints_json(backend: &str) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let out = run(
        dir.path(),
        &[
            "--log",
            "warn",
            "bench",
            "queue",
            "--backend",
            backend,
            "--jobs",
            "3000",
            "--latency-samples",
            "20",
            "--json",
        ],
    )
    .await?;
    assert!(
        out.status.success(),
        "bench: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout)?;
    for field in [
        "enqueue_per_s",
        "work_per_s",
        "latency_p50_ms",
        "latency_p99_ms",
        "peak_rss_mib",
    ] {
        assert!(
            report[field].as_f64().is_some_and(|v| v > 0.0),
            "{field} in {report}"
        );
    }
    assert_eq!(report["jobs"], 3000);
    assert!(
        !dir.path().join("cognomega-data").exists(),
        "the bench uses a throwaway store"
    );
    Ok(())
}

#[tokio::test]
async fn sqlite_bench_prints_json() -> anyhow::Result<()> {
    bench_prints_json("sqlite").await
}

#[tokio::test]
async fn postgres_bench_prints_json_and_drops_its_database() -> anyhow::Result<()> {
    let admin = std::env::var("COGNOMEGA_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let count = || async {
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await?;
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_database WHERE datname LIKE 'cognomega_bench_%'",
        )
        .fetch_one(&mut conn)
        .await?;
        Ok::<_, anyhow::Error>(n)
    };
    let before = count().await?;
    bench_prints_json("postgres").await?;
    // Other bench runs may be in flight; ours must not be left behind.
    wait_for(Duration::from_secs(5), || async {
        Ok((count().await? <= before).then_some(()))
    })
    .await?;
    Ok(())
}
