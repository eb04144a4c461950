//! `cognomega bench usage` and `bench credits` as a user runs them: each starts its own
//! `serve` child over a throwaway store, prints one JSON object with `--json`, and leaves
//! nothing behind. Functional checks only: no figure is compared against a target here.

use std::path::Path;
use std::process::{Output, Stdio};
use std::time::Duration;

use cognomega_testkit::wait_for;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_cognomega");

fn pg_admin_url() -> String {
    std::env::var("COGNOMEGA_TEST_PG_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

async fn run(cwd: &Path, args: &[&str]) -> anyhow::Result<Output> {
    Ok(Command::new(BIN)
        .current_dir(cwd)
        .args(args)
        .env_remove("COGNOMEGA_DATABASE_URL")
        .env_remove("COGNOMEGA_DATA_DIR")
        .stdin(Stdio::null())
        .output()
        .await?)
}

/// Runs a bench subcommand with `--json` and returns its report.
async fn bench_json(args: &[&str]) -> anyhow::Result<Value> {
    let dir = tempfile::tempdir()?;
    let mut all = vec!["--log", "warn", "bench"];
    all.extend_from_slice(args);
    all.push("--json");
    let out = run(dir.path(), &all).await?;
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).map_err(|e| {
        anyhow::anyhow!(
            "{args:?} printed no JSON object ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })?;
    assert!(
        !dir.path().join("cognomega-data").exists(),
        "the bench uses a throwaway store, not ./cognomega-data"
    );
    Ok(report)
}

fn assert_positive(report: &Value, fields: &[&str]) {
    for field in fields {
        assert!(
            report[*field].as_f64().is_some_and(|v| v > 0.0),
            "{field} in {report}"
        );
    }
}

const USAGE_FIELDS: [&str; 8] = [
    "accepted_events_per_s",
    "e2e_events_per_s",
    "request_p50_ms",
    "request_p99_ms",
    "requests_per_s",
    "loopback_floor_p50_ms",
    "e2e_s",
    "ingest_s",
];

const CREDITS_FIELDS: [&str; 7] = [
    "achieved_rps",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
    "idle_p50_ms",
    "loopback_floor_p50_ms",
];

async fn usage(backend: &str, extra: &[&str]) -> anyhow::Result<()> {
    let mut args = vec![
        "usage",
        "--backend",
        backend,
        "--events",
        "2000",
        "--tenants",
        "2",
        "--connections",
        "4",
    ];
    args.extend_from_slice(extra);
    let report = bench_json(&args).await?;
    assert_positive(&report, &USAGE_FIELDS);
    assert_positive(&report, &["server_peak_rss_mib"]);
    assert_eq!(report["events"], 2000);
    assert_eq!(report["requests"], 20, "100-event batches by default");
    assert_eq!(report["backend"], backend);
    assert_eq!(report["server"], "child");
    Ok(())
}

async fn credits(backend: &str, extra: &[&str]) -> anyhow::Result<()> {
    let mut args = vec![
        "credits",
        "--backend",
        backend,
        "--rps",
        "200",
        "--duration",
        "1",
        "--connections",
        "4",
    ];
    args.extend_from_slice(extra);
    let report = bench_json(&args).await?;
    assert_positive(&report, &CREDITS_FIELDS);
    assert_positive(&report, &["server_peak_rss_mib"]);
    assert_eq!(report["requests"], 200);
    assert_eq!(report["ok"], 200, "every request answered with the grant");
    assert_eq!(report["errors"], 0);
    assert_eq!(report["wrong_balances"], 0);
    assert_eq!(report["backend"], backend);
    Ok(())
}

#[tokio::test]
async fn sqlite_bench_usage_prints_json() -> anyhow::Result<()> {
    usage("sqlite", &[]).await
}

#[tokio::test]
async fn sqlite_bench_credits_prints_json() -> anyhow::Result<()> {
    credits("sqlite", &[]).await
}

#[tokio::test]
async fn sqlite_bench_gateway_prints_json() -> anyhow::Result<()> {
    let report = bench_json(&[
        "gateway",
        "--backend",
        "sqlite",
        "--rps",
        "200",
        "--duration",
        "1",
        "--miss-requests",
        "20",
        "--connections",
        "4",
    ])
    .await?;
    let runs = report["runs"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    assert_eq!(runs.len(), 2, "rate limits off, then on: {report}");
    assert_eq!(runs[0]["rate_limits"], false);
    assert_eq!(runs[1]["rate_limits"], true);
    for run in runs {
        for (phase, requests) in [("healthz", 200), ("credits_hit", 200), ("credits_miss", 20)] {
            let p = &run[phase];
            assert_eq!(p["requests"], requests, "{phase}: {p}");
            assert_eq!(p["ok"], requests, "{phase}: every request answered 200");
            assert_eq!(p["errors"], 0, "{phase}");
            assert_positive(p, &["p50_ms", "p90_ms", "p99_ms"]);
        }
        assert_eq!(run["credits_hit"]["wrong_balances"], 0);
    }
    assert!(
        report["overhead_pct"]["credits_hit_p99"].is_number(),
        "{report}"
    );
    assert_positive(
        &report["slo"],
        &[
            "gateway_p90_ratio",
            "credits_hit_p90_ratio",
            "credits_miss_p90_ratio",
        ],
    );
    Ok(())
}

#[tokio::test]
async fn sqlite_bench_voice_prints_json() -> anyhow::Result<()> {
    let report = bench_json(&[
        "voice",
        "--backend",
        "sqlite",
        "--rounds",
        "1",
        "--sessions",
        "5",
    ])
    .await?;
    assert_positive(
        &report,
        &[
            "tts_realtime_factor",
            "stt_realtime_factor",
            "engine_tts_p50_ms",
            "api_tts_p50_ms",
            "session_first_chunk_p50_ms",
            "server_peak_rss_with_sessions_mib",
        ],
    );
    assert_eq!(report["sessions_held"], 5);
    assert!(
        report["word_error_rate"].as_f64().is_some_and(|w| w >= 0.0),
        "{report}"
    );
    Ok(())
}

async fn bench_databases() -> anyhow::Result<Vec<String>> {
    let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&pg_admin_url()).await?;
    Ok(sqlx::query_scalar(
        "SELECT datname::text FROM pg_database WHERE datname LIKE 'cognomega_bench_%'",
    )
    .fetch_all(&mut conn)
    .await?)
}

#[tokio::test]
async fn postgres_bench_usage_and_credits_drop_their_databases() -> anyhow::Result<()> {
    let before = bench_databases().await?;
    let url = pg_admin_url();
    usage("postgres", &["--database-url", &url]).await?;
    credits("postgres", &["--database-url", &url]).await?;
    // Other bench runs may be in flight; ours must not be left behind.
    wait_for(Duration::from_secs(5), || async {
        let now = bench_databases().await?;
        Ok(now.iter().all(|d| before.contains(d)).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("a cognomega_bench_ database was left behind: {e}"))
}

/// `--url` drives a server someone else started: no child, no throwaway store; settlement is
/// observed through `GET /credits` alone.
#[tokio::test]
async fn bench_against_a_running_server() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut server = Command::new(BIN)
        .current_dir(dir.path())
        .args(["--log", "warn", "serve", "--listen", "127.0.0.1:0"])
        .env_remove("COGNOMEGA_DATABASE_URL")
        .env_remove("COGNOMEGA_DATA_DIR")
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let stderr = server
        .stderr
        .take()
        .ok_or_else(|| anyhow::anyhow!("no stderr"))?;
    let mut lines = BufReader::new(stderr).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = lines.next_line().await? {
            if let Some(rest) = line.strip_prefix("cognomega listening on ") {
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

    let report = bench_json(&[
        "usage",
        "--url",
        &url,
        "--events",
        "1000",
        "--batch",
        "50",
        "--tenants",
        "3",
        "--connections",
        "2",
    ])
    .await?;
    assert_positive(&report, &USAGE_FIELDS);
    assert_eq!(report["requests"], 20);
    assert_eq!(report["server"], url.as_str());
    assert!(report["server_peak_rss_mib"].is_null(), "{report}");

    let report = bench_json(&[
        "credits",
        "--url",
        &url,
        "--rps",
        "100",
        "--duration",
        "1",
        "--connections",
        "2",
    ])
    .await?;
    assert_positive(&report, &CREDITS_FIELDS);
    assert_eq!(report["errors"], 0);

    let pid = server.id().ok_or_else(|| anyhow::anyhow!("exited"))?;
    std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    let status = tokio::time::timeout(Duration::from_secs(30), server.wait()).await??;
    assert!(status.success(), "clean exit on SIGTERM: {status}");
    Ok(())
}

#[tokio::test]
async fn bench_http_help_and_usage_errors() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    for cmd in [["bench", "usage", "--help"], ["bench", "credits", "--help"]] {
        let out = run(dir.path(), &cmd).await?;
        assert!(out.status.success(), "{cmd:?} failed");
        let text = String::from_utf8_lossy(&out.stdout);
        for flag in ["--backend", "--connections", "--url", "--json"] {
            assert!(text.contains(flag), "{cmd:?} documents {flag}: {text}");
        }
    }
    let out = run(dir.path(), &["bench", "usage", "--batch", "5000"]).await?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--batch must be 1..=1000"));
    let out = run(
        dir.path(),
        &["bench", "credits", "--url", "ftp://127.0.0.1:1"],
    )
    .await?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("http://HOST:PORT"));
    // Nothing listens on port 1: the error says so.
    let out = run(
        dir.path(),
        &["bench", "credits", "--url", "http://127.0.0.1:1"],
    )
    .await?;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is the server running?"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!dir.path().join("cognomega-data").exists());
    Ok(())
}
