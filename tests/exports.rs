//! Exports through the API and the command line: `POST /admin/exports` enqueues `etl` messages
//! that the in-process consumer runs; `GET /exports` lists every dataset's files with signed
//! links that download exactly the recorded bytes; bad input gets 400 in the error envelope;
//! `/metrics` counts exported rows; `cognomega export` runs the same export in-process. Both
//! backends.

use std::process::Stdio;
use std::time::Duration;

use cognomega_testkit::{both_backends, Backend, TestApp, TestDb, ADMIN_KEY};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_cognomega");

async fn count(db: &cognomega_stores::Database, sql: &str) -> anyhow::Result<i64> {
    Ok(match db {
        cognomega_stores::Database::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(&s.read).await?,
        cognomega_stores::Database::Postgres(p) => {
            sqlx::query_scalar(sql).fetch_one(&p.pool).await?
        }
    })
}

async fn exports_over_http(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn(backend).await?;
    let guest = app.guest().await?;
    let events: Vec<Value> = (0..120)
        .map(|i| json!({"idempotency_key": format!("k{i}"), "kind": "tokens_in", "quantity": 10 + i}))
        .collect();
    let resp = app
        .client
        .post(app.url("/usage"))
        .bearer_auth(&guest.token)
        .json(&json!({ "events": events }))
        .send()
        .await?;
    assert_eq!(resp.status(), 202);
    app.wait_idle(Duration::from_secs(60)).await?;

    // Admin only.
    let resp = app.client.post(app.url("/admin/exports")).send().await?;
    assert_eq!(resp.status(), 401);
    // Bad dataset / format / body: 400 in the envelope, nothing queued.
    for (body, code) in [
        (json!({"dataset": "passwords"}), "invalid_dataset"),
        (json!({"format": "csv"}), "invalid_format"),
        (json!({"dataset": "jobs", "extra": 1}), "invalid_json"),
    ] {
        let resp = app
            .client
            .post(app.url("/admin/exports"))
            .header("x-admin-key", ADMIN_KEY)
            .json(&body)
            .send()
            .await?;
        assert_eq!(resp.status(), 400, "{body}");
        let err: Value = resp.json().await?;
        assert_eq!(err["error"]["code"], code, "{err}");
        assert!(err["error"]["request_id"].is_string());
    }

    // No body: every dataset, Parquet.
    let resp = app
        .client
        .post(app.url("/admin/exports"))
        .header("x-admin-key", ADMIN_KEY)
        .send()
        .await?;
    assert_eq!(resp.status(), 202);
    let queued: Value = resp.json().await?;
    let queued = queued["queued"].as_array().cloned().unwrap_or_default();
    assert_eq!(queued.len(), 4, "{queued:?}");
    assert!(queued
        .iter()
        .all(|q| q["message_id"].is_i64() && q["format"] == "parquet"));
    app.wait_idle(Duration::from_secs(60)).await?;

    let resp = app
        .client
        .get(app.url("/exports"))
        .header("x-admin-key", ADMIN_KEY)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let listing: Value = resp.json().await?;
    let datasets = listing["datasets"].as_array().cloned().unwrap_or_default();
    assert_eq!(datasets.len(), 4);
    let usage = datasets
        .iter()
        .find(|d| d["dataset"] == "usage_events")
        .cloned()
        .unwrap_or_default();
    assert_eq!(usage["manifest_key"], "exports/usage_events/_manifest.json");
    let parts = usage["parts"].as_array().cloned().unwrap_or_default();
    assert!(!parts.is_empty());
    let rows: i64 = parts.iter().filter_map(|p| p["rows"].as_i64()).sum();
    assert_eq!(
        rows,
        count(app.tdb.db(), "SELECT COUNT(*) FROM usage_events").await?
    );
    let ledger = datasets
        .iter()
        .find(|d| d["dataset"] == "ledger_entries")
        .and_then(|d| d["parts"].as_array().cloned())
        .unwrap_or_default();
    let ledger_rows: i64 = ledger.iter().filter_map(|p| p["rows"].as_i64()).sum();
    assert_eq!(
        ledger_rows,
        count(app.tdb.db(), "SELECT COUNT(*) FROM ledger_entries").await?
    );

    // Each link downloads exactly the recorded bytes; a tampered one is refused.
    for part in &parts {
        let url = part["url"].as_str().unwrap_or_default();
        assert!(url.starts_with("/files/exports/usage_events/dt="), "{url}");
        let resp = app.client.get(app.url(url)).send().await?;
        assert_eq!(resp.status(), 200, "{url}");
        assert_eq!(
            resp.headers()
                .get("content-type")
                .and_then(|v| v.to_str().ok()),
            Some("application/vnd.apache.parquet")
        );
        let bytes = resp.bytes().await?;
        assert_eq!(bytes.len() as i64, part["bytes"].as_i64().unwrap_or(-1));
        let sha: String = Sha256::digest(&bytes)
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(sha, part["sha256"].as_str().unwrap_or_default());
        assert!(bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"));
        let tampered = url.replace("sig=", "sig=0");
        let resp = app.client.get(app.url(&tampered)).send().await?;
        assert_eq!(resp.status(), 403);
    }
    let resp = app.client.get(app.url("/exports")).send().await?;
    assert_eq!(resp.status(), 401);

    // One dataset as NDJSON.
    let resp = app
        .client
        .post(app.url("/admin/exports"))
        .header("x-admin-key", ADMIN_KEY)
        .json(&json!({"dataset": "usage_events", "format": "ndjson"}))
        .send()
        .await?;
    assert_eq!(resp.status(), 202);
    let body: Value = resp.json().await?;
    assert_eq!(body["queued"][0]["dataset"], "usage_events");
    assert_eq!(body["queued"][0]["format"], "ndjson");
    app.wait_idle(Duration::from_secs(60)).await?;

    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let line =
        format!("cognomega_export_rows_total{{dataset=\"usage_events\",format=\"ndjson\"}} {rows}");
    assert!(metrics.contains(&line), "{line} missing from:\n{metrics}");
    assert!(metrics
        .contains("cognomega_export_files_total{dataset=\"usage_events\",format=\"parquet\"}"));
    app.stop().await
}

async fn export_command(backend: Backend) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    let dir = tdb.data_dir().to_path_buf();
    let mut seed =
        String::from("INSERT INTO ledger_entries (id, tenant_id, delta, kind, created_at) VALUES ");
    let now = match backend {
        Backend::Sqlite => "1767225600000",
        Backend::Postgres => "now()",
    };
    let values: Vec<String> = (0..25)
        .map(|i| format!("('s{i}', 't1', {i}, 'grant', {now})"))
        .collect();
    seed.push_str(&values.join(", "));
    match tdb.db() {
        cognomega_stores::Database::Sqlite(s) => {
            sqlx::query(&seed).execute(&s.write).await?;
        }
        cognomega_stores::Database::Postgres(p) => {
            sqlx::query(&seed).execute(&p.pool).await?;
        }
    }
    let run = |args: Vec<&str>| {
        let mut cmd = Command::new(BIN);
        cmd.arg("--data-dir")
            .arg(&dir)
            .arg("--database-url")
            .arg(tdb.url().expose())
            .args(args)
            .stdin(Stdio::null());
        cmd.output()
    };
    let out = run(vec![
        "export",
        "--dataset",
        "ledger_entries",
        "--since",
        "5",
        "--json",
    ])
    .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(report["rows"], 20, "--since 5 exports seq 6..=25: {report}");
    assert_eq!(report["watermark"], 25);
    assert!(dir
        .join("objects/exports/ledger_entries/_manifest.json")
        .is_file());

    // --since once a dataset is exported: a clear error, nothing changed.
    let out = run(vec![
        "export",
        "--dataset",
        "ledger_entries",
        "--since",
        "0",
    ])
    .await?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already exported through seq 25"), "{err}");

    let out = run(vec!["export", "--dataset", "nope"]).await?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown dataset"));

    // Every dataset, nothing new for the ledger.
    let out = run(vec!["export", "--json"]).await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(lines.len(), 4);
    assert!(lines.iter().all(|l| l["rows"] == 0), "{lines:?}");
    Ok(())
}

#[tokio::test]
async fn export_has_help() -> anyhow::Result<()> {
    for args in [vec!["export", "--help"], vec!["bench", "export", "--help"]] {
        let out = Command::new(BIN).args(&args).output().await?;
        assert!(out.status.success(), "{args:?}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains("--format"), "{args:?}: {text}");
    }
    let out = Command::new(BIN)
        .args(["export", "--help"])
        .output()
        .await?;
    assert!(String::from_utf8_lossy(&out.stdout).contains("--since <SEQ>"));
    Ok(())
}

both_backends!(exports_over_http, export_command);
