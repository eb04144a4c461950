//! `cognomega audit` on both backends: a real money flow over HTTP audits clean; editing or
//! deleting a ledger row, drifting a cached balance, or slipping an entry in behind the chain
//! fails the audit naming the entry or tenant; queued work is "pending"; sealing is idempotent
//! and concurrent sealers build one chain.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use cognomega_core::billing::{SettlementKind, SettlementMessage};
use cognomega_stores::audit::Problem;
use cognomega_stores::{ledger_chain, Database};
use cognomega_testkit::{Backend, Guest, TestApp, TestDb, ADMIN_KEY};
use serde_json::{json, Value};
use tokio::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_cognomega");

/// One `cognomega audit --json` run writing into `out`: (exit code, the JSON report, stderr).
async fn audit(tdb: &TestDb, out: &Path, extra: &[&str]) -> anyhow::Result<(i32, Value, String)> {
    let output = Command::new(BIN)
        .args(["--database-url", tdb.url().expose(), "--data-dir"])
        .arg(tdb.data_dir())
        .args(["audit", "--json", "--out"])
        .arg(out)
        .args(extra)
        .stdin(Stdio::null())
        .output()
        .await?;
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let code = output.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let json_path = stdout
        .lines()
        .find_map(|l| l.strip_prefix("report: "))
        .ok_or_else(|| anyhow::anyhow!("no report path (exit {code}): {stdout}\n{stderr}"))?;
    let report: Value = serde_json::from_str(&std::fs::read_to_string(json_path)?)?;
    let md = Path::new(json_path).with_extension("md");
    anyhow::ensure!(md.exists(), "no summary next to {json_path}");
    Ok((code, report, stderr))
}

async fn exec(db: &Database, sql: &str) -> anyhow::Result<u64> {
    Ok(match db {
        Database::Sqlite(s) => sqlx::query(sql).execute(&s.write).await?.rows_affected(),
        Database::Postgres(p) => sqlx::query(sql).execute(&p.pool).await?.rows_affected(),
    })
}

async fn scalar_i64(db: &Database, sql: &str) -> anyhow::Result<i64> {
    Ok(match db {
        Database::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(&s.read).await?,
        Database::Postgres(p) => sqlx::query_scalar(sql).fetch_one(&p.pool).await?,
    })
}

/// The (seq, id) of a tenant's first usage entry.
async fn usage_entry(db: &Database, tenant: &str) -> anyhow::Result<(i64, String)> {
    let sql = format!(
        "SELECT seq FROM ledger_entries WHERE tenant_id = '{tenant}' AND kind = 'usage' ORDER BY seq LIMIT 1"
    );
    let seq = scalar_i64(db, &sql).await?;
    let id = match db {
        Database::Sqlite(s) => {
            sqlx::query_scalar("SELECT id FROM ledger_entries WHERE seq = ?1")
                .bind(seq)
                .fetch_one(&s.read)
                .await?
        }
        Database::Postgres(p) => {
            sqlx::query_scalar("SELECT id FROM ledger_entries WHERE seq = $1")
                .bind(seq)
                .fetch_one(&p.pool)
                .await?
        }
    };
    Ok((seq, id))
}

async fn post_usage(app: &TestApp, guest: &Guest, events: &[Value]) -> anyhow::Result<()> {
    let resp = app
        .client
        .post(app.url("/usage"))
        .bearer_auth(&guest.token)
        .json(&json!({ "events": events }))
        .send()
        .await?;
    anyhow::ensure!(resp.status() == 202, "POST /usage: {}", resp.status());
    Ok(())
}

/// Two guests, usage posted twice (duplicates), tokens with and without a charge, and an
/// adjustment posted twice under one key.
async fn money_flow(app: &TestApp) -> anyhow::Result<(Guest, Guest)> {
    let a = app.guest().await?;
    let b = app.guest().await?;
    let jobs: Vec<Value> = (0..30)
        .map(|i| json!({"idempotency_key": format!("job-{i}"), "kind": "job", "quantity": 1}))
        .collect();
    post_usage(app, &a, &jobs).await?;
    post_usage(app, &a, &jobs[10..]).await?;
    let tokens: Vec<Value> = (0..20)
        .map(|i| json!({"idempotency_key": format!("tok-{i}"), "kind": "tokens_in", "quantity": 1500 * i}))
        .collect();
    post_usage(app, &b, &tokens).await?;
    post_usage(app, &b, &tokens).await?;
    for _ in 0..2 {
        let resp = app
            .client
            .post(app.url("/credits/adjust"))
            .header("X-Admin-Key", ADMIN_KEY)
            .header("Idempotency-Key", "goodwill-1")
            .json(&json!({"tenant_id": b.tenant_id, "delta": 250, "reason": "goodwill"}))
            .send()
            .await?;
        anyhow::ensure!(resp.status() == 202, "adjust: {}", resp.status());
    }
    app.wait_idle(Duration::from_secs(60)).await?;
    Ok((a, b))
}

fn findings(report: &Value, problem: &str) -> Vec<Value> {
    report["findings"]
        .as_array()
        .map(|all| {
            all.iter()
                .filter(|f| f["problem"] == problem)
                .cloned()
                .collect()
        })
        .unwrap_or_default()
}

async fn a_money_flow_audits_clean_and_edits_or_deletions_are_named(
    backend: Backend,
) -> anyhow::Result<()> {
    let app = TestApp::spawn(backend).await?;
    let (a, b) = money_flow(&app).await?;
    let db = app.tdb.db();
    let out = app.tdb.data_dir().join("proofs");
    let entries = scalar_i64(db, "SELECT COUNT(*) FROM ledger_entries").await?;
    // 2 grants + 30 jobs + 19 charged token events (1500 × 0 costs nothing) + 1 adjustment.
    assert_eq!(entries, 2 + 30 + 19 + 1);

    let (code, report, stderr) = audit(&app.tdb, &out, &[]).await?;
    assert_eq!(code, 0, "{report:#}\n{stderr}");
    assert_eq!(report["status"], "clean");
    assert_eq!(report["findings"], json!([]));
    assert_eq!(report["sealed_now"], entries);
    assert_eq!(report["chain"]["length"], entries);
    assert_eq!(report["chain"]["verified"], true);
    let counts = &report["reconciliation"]["counts"];
    assert_eq!(counts["usage_events"], 50);
    assert_eq!(counts["billable_usage_events"], 49);
    assert_eq!(counts["ledger_entries"], entries);
    assert_eq!(counts["ledger_total"], counts["balance_total"]);
    assert_eq!(counts["adjustments"]["applied"], 1);
    let head = report["chain"]["head"].clone();

    // Sealing again seals nothing and keeps the head.
    let (code, again, _) = audit(&app.tdb, &out, &[]).await?;
    assert_eq!(code, 0);
    assert_eq!(again["sealed_now"], 0);
    assert_eq!(again["chain"]["head"], head);

    // Edit one entry's delta: the chain names it, and the balances no longer add up.
    let (seq, id) = usage_entry(db, &a.tenant_id).await?;
    exec(
        db,
        &format!("UPDATE ledger_entries SET delta = delta - 1 WHERE seq = {seq}"),
    )
    .await?;
    let (code, report, stderr) = audit(&app.tdb, &out, &[]).await?;
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["status"], "failed");
    assert!(stderr.contains("audit FAILED"), "{stderr}");
    let altered = findings(&report, "altered");
    assert_eq!(altered.len(), 1, "{report:#}");
    assert_eq!(altered[0]["seq"], seq);
    assert_eq!(altered[0]["id"], id.as_str());
    assert_eq!(altered[0]["tenant_id"], a.tenant_id.as_str());
    let drift = findings(&report, "balance_mismatch");
    assert_eq!(drift.len(), 1);
    assert_eq!(drift[0]["tenant_id"], a.tenant_id.as_str());
    assert_eq!(findings(&report, "settlement_mismatch").len(), 1);

    // Put it back: the same bytes hash the same, so the audit is clean again.
    exec(
        db,
        &format!("UPDATE ledger_entries SET delta = delta + 1 WHERE seq = {seq}"),
    )
    .await?;
    let (code, report, _) = audit(&app.tdb, &out, &[]).await?;
    assert_eq!(code, 0, "{report:#}");

    // Delete an entry of the other tenant: named by seq and id, its usage event unsettled.
    let (seq, id) = usage_entry(db, &b.tenant_id).await?;
    assert_eq!(
        exec(db, &format!("DELETE FROM ledger_entries WHERE seq = {seq}")).await?,
        1
    );
    let (code, report, _) = audit(&app.tdb, &out, &["--no-seal"]).await?;
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["sealed_now"], Value::Null);
    let deleted = findings(&report, "deleted");
    assert_eq!(deleted.len(), 1, "{report:#}");
    assert_eq!(deleted[0]["seq"], seq);
    assert_eq!(deleted[0]["id"], id.as_str());
    let unsettled = findings(&report, "unsettled");
    assert_eq!(unsettled.len(), 1);
    assert_eq!(unsettled[0]["id"], id.as_str());
    assert_eq!(unsettled[0]["tenant_id"], b.tenant_id.as_str());
    assert!(findings(&report, "altered").is_empty(), "{report:#}");
    app.stop().await
}

async fn a_drifted_balance_or_a_rewritten_chain_fails(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn(backend).await?;
    let (a, _) = money_flow(&app).await?;
    let db = app.tdb.db();
    let out = app.tdb.data_dir().join("proofs");
    let (code, first, _) = audit(&app.tdb, &out, &[]).await?;
    assert_eq!(code, 0, "{first:#}");
    exec(
        db,
        &format!(
            "UPDATE balances SET balance = balance + 5 WHERE tenant_id = '{}'",
            a.tenant_id
        ),
    )
    .await?;
    let (code, report, _) = audit(&app.tdb, &out, &[]).await?;
    assert_eq!(code, 1, "{report:#}");
    let drift = findings(&report, "balance_mismatch");
    assert_eq!(drift.len(), 1, "{report:#}");
    assert_eq!(drift[0]["tenant_id"], a.tenant_id.as_str());
    assert_eq!(report["chain"]["verified"], true);
    assert_eq!(report["findings"].as_array().map(Vec::len), Some(1));
    let resp = app
        .client
        .post(app.url("/admin/rebuild-balance-cache"))
        .header("X-Admin-Key", ADMIN_KEY)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let (code, report, _) = audit(&app.tdb, &out, &[]).await?;
    assert_eq!(code, 0, "{report:#}");

    // Rewrite the whole chain consistently from a changed ledger: the walk alone cannot tell,
    // an earlier report's head can.
    let first_path = std::fs::read_dir(&out)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .min()
        .ok_or_else(|| anyhow::anyhow!("no report in {}", out.display()))?;
    let (seq, _) = usage_entry(db, &a.tenant_id).await?;
    exec(
        db,
        &format!("UPDATE ledger_entries SET ref = 'forged' WHERE seq = {seq}"),
    )
    .await?;
    exec(db, "DELETE FROM ledger_chain").await?;
    let previous = first_path.to_string_lossy().into_owned();
    let (code, report, _) = audit(&app.tdb, &out, &["--previous", &previous]).await?;
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(findings(&report, "altered").len(), 0);
    assert_eq!(findings(&report, "chain_rewritten").len(), 1, "{report:#}");
    assert_eq!(report["previous_report"]["matches"], false);
    app.stop().await
}

async fn queued_work_is_pending_until_drained(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn_with(backend, false).await?;
    let g = app.guest().await?;
    post_usage(
        &app,
        &g,
        &[json!({"idempotency_key": "j", "kind": "job", "quantity": 1})],
    )
    .await?;
    let out = app.tdb.data_dir().join("proofs");
    let (code, report, stderr) = audit(&app.tdb, &out, &[]).await?;
    assert_eq!(code, 2, "{report:#}\n{stderr}");
    assert_eq!(report["status"], "pending");
    assert_eq!(report["reconciliation"]["pending"], true);
    assert!(stderr.contains("--wait"), "{stderr}");
    let usage = report["queues"]
        .as_array()
        .and_then(|q| q.iter().find(|q| q["queue"] == "usage").cloned())
        .unwrap_or_default();
    assert_eq!(usage["depth"], 1, "{report:#}");
    app.drain(&[]).await?;
    let (code, report, _) = audit(&app.tdb, &out, &["--wait", "10"]).await?;
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["reconciliation"]["counts"]["ledger_entries"], 2);
    app.stop().await
}

fn settlement(i: usize, tenant: &str) -> SettlementMessage {
    SettlementMessage {
        id: format!("grant-{tenant}-{i}"),
        tenant_id: tenant.to_owned(),
        delta: 1,
        kind: SettlementKind::Grant,
        reference: None,
    }
}

async fn append(db: &Database, from: usize, to: usize) -> anyhow::Result<()> {
    let entries: Vec<SettlementMessage> = (from..to).map(|i| settlement(i, "t")).collect();
    let mut tx = db.begin().await?;
    cognomega_workflows::settle::settle(&mut tx, &entries, i64::MIN, 0).await?;
    tx.commit().await?;
    Ok(())
}

async fn concurrent_sealers_build_one_chain(backend: Backend) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    let db = tdb.db().clone();
    // A second connection pool, as a second process would have.
    let other = Database::open(tdb.url()).await?;
    append(&db, 0, 25_000).await?;
    let mut tasks = Vec::new();
    for i in 0..4 {
        let sealer = if i % 2 == 0 {
            db.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            ledger_chain::seal(&sealer, &|_| {}).await
        }));
    }
    // Entries keep arriving while the sealers run.
    for chunk in 0..10 {
        append(&db, 25_000 + chunk * 500, 25_500 + chunk * 500).await?;
    }
    let mut sealed = 0;
    for t in tasks {
        sealed += t.await??.sealed;
    }
    sealed += ledger_chain::seal(&other, &|_| {}).await?.sealed;
    assert_eq!(sealed, 30_000, "every entry sealed exactly once");
    assert_eq!(ledger_chain::seal(&db, &|_| {}).await?.sealed, 0);
    let chain = ledger_chain::verify(&db, &|_| {}).await?;
    assert_eq!(chain.length, 30_000);
    assert!(chain.findings.is_empty(), "{:?}", chain.findings);
    assert_eq!(chain.unsealed_above_head, 0);
    // Positions follow seq: position n seals the n-th entry.
    let out_of_order = scalar_i64(
        &db,
        "SELECT COUNT(*) FROM ledger_chain c JOIN ledger_chain n ON n.pos = c.pos + 1 \
         WHERE n.entry_seq <= c.entry_seq",
    )
    .await?;
    assert_eq!(out_of_order, 0);

    // An entry slipped in below the head is never sealed and is named.
    let sneak = match backend {
        Backend::Sqlite => {
            "INSERT INTO ledger_entries (seq, id, tenant_id, delta, kind, created_at) \
             VALUES (0, 'grant-sneaky', 't', 1000000, 'grant', 1)"
        }
        Backend::Postgres => {
            "INSERT INTO ledger_entries (seq, id, tenant_id, delta, kind) \
             VALUES (0, 'grant-sneaky', 't', 1000000, 'grant')"
        }
    };
    exec(&db, sneak).await?;
    assert_eq!(ledger_chain::seal(&db, &|_| {}).await?.sealed, 0);
    let chain = ledger_chain::verify(&db, &|_| {}).await?;
    assert_eq!(chain.findings.len(), 1, "{:?}", chain.findings);
    let f = &chain.findings[0];
    assert_eq!(f.problem, Problem::Unsealed);
    assert_eq!((f.seq, f.id.as_deref()), (Some(0), Some("grant-sneaky")));
    other.close().await;
    Ok(())
}

cognomega_testkit::both_backends!(
    a_money_flow_audits_clean_and_edits_or_deletions_are_named,
    a_drifted_balance_or_a_rewritten_chain_fails,
    queued_work_is_pending_until_drained,
    concurrent_sealers_build_one_chain,
);
