//! Crash proof of the money path: 100,000 usage events stream into a real `cognomega serve
//! --no-consumers` over HTTP (with client retries re-posting some batches) while real
//! `cognomega worker` processes are SIGKILLed again and again. After draining, the usage-event
//! count, the ledger sum and every cached balance equal the expected values exactly, and a
//! balance rebuild changes nothing.

use std::process::Stdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cognomega_consumers::{settlement, usage_writer};
use cognomega_stores::Database;
use cognomega_testkit::{wait_for, Backend, TestDb};
use serde_json::{json, Value};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_cognomega");
const ADMIN: &str = "crash-admin-key";
const TENANTS: usize = 10;
const REQUESTS: usize = 1_000;
const PER_REQUEST: usize = 100;
const JOB_PRICE: i64 = 10;

fn command(tdb: &TestDb) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["--log", "warn", "--data-dir"])
        .arg(tdb.data_dir())
        .args(["--database-url", tdb.url().expose()])
        .stdin(Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn start_server(tdb: &TestDb) -> anyhow::Result<(Child, String)> {
    let mut cmd = command(tdb);
    cmd.args([
        "serve",
        "--no-consumers",
        "--listen",
        "127.0.0.1:0",
        "--admin-key",
        ADMIN,
    ]);
    cognomega_testkit::spawn_serve(cmd).await
}

fn spawn_worker(tdb: &TestDb) -> anyhow::Result<Child> {
    Ok(command(tdb)
        .args(["worker", "--poll-interval-ms", "50"])
        .stdout(Stdio::null())
        .spawn()?)
}

async fn scalar(db: &Database, sql: &str) -> anyhow::Result<i64> {
    Ok(match db {
        Database::Sqlite(s) => sqlx::query_scalar(sql).fetch_one(&s.read).await?,
        Database::Postgres(p) => {
            sqlx::query_scalar(&sql.replace("SUM(delta)", "SUM(delta)::bigint"))
                .fetch_one(&p.pool)
                .await?
        }
    })
}

async fn crash_proof(backend: Backend) -> anyhow::Result<()> {
    cognomega_testkit::init_tracing();
    let tdb = TestDb::new(backend).await?;
    let (_server, url) = start_server(&tdb).await?;
    cognomega_core::tls::install();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()?;

    let mut tokens = Vec::new();
    for _ in 0..TENANTS {
        let body: Value = client
            .post(format!("{url}/auth/guest"))
            .send()
            .await?
            .json()
            .await?;
        tokens.push((
            body["token"].as_str().unwrap_or_default().to_owned(),
            body["tenant_id"].as_str().unwrap_or_default().to_owned(),
        ));
    }

    // Workers die every few hundred milliseconds while the events stream in.
    let streaming = Arc::new(AtomicBool::new(true));
    let killer = {
        let streaming = streaming.clone();
        let mut kills = 0u32;
        let mut workers = vec![spawn_worker(&tdb)?, spawn_worker(&tdb)?];
        let data_dir = tdb.data_dir().to_path_buf();
        let db_url = tdb.url().expose().to_owned();
        tokio::spawn(async move {
            let mut round = 0u64;
            while streaming.load(Ordering::SeqCst) || kills < 6 {
                tokio::time::sleep(Duration::from_millis(250 + (round * 97) % 400)).await;
                round += 1;
                if let Some(mut w) = workers.pop() {
                    let _ = w.start_kill();
                    let _ = w.wait().await;
                    kills += 1;
                }
                let w = Command::new(BIN)
                    .args(["--log", "error", "--data-dir"])
                    .arg(&data_dir)
                    .args([
                        "--database-url",
                        &db_url,
                        "worker",
                        "--poll-interval-ms",
                        "50",
                    ])
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .kill_on_drop(true)
                    .spawn();
                if let Ok(w) = w {
                    workers.insert(0, w);
                }
            }
            (kills, workers)
        })
    };

    // 1,000 requests of 100 events, 8 in flight; every 10th request is posted twice (a client
    // retry after a lost response).
    let mut sent = 0usize;
    let mut handles = Vec::new();
    for r in 0..REQUESTS {
        let (token, _) = tokens[r % TENANTS].clone();
        let events: Vec<Value> = (0..PER_REQUEST)
            .map(|i| json!({"idempotency_key": format!("r{r}-e{i}"), "kind": "job", "quantity": 1}))
            .collect();
        let body = json!({ "events": events });
        let copies = if r % 10 == 0 { 2 } else { 1 };
        for _ in 0..copies {
            let (client, url, token, body) = (
                client.clone(),
                format!("{url}/usage"),
                token.clone(),
                body.clone(),
            );
            handles.push(tokio::spawn(async move {
                let resp = client
                    .post(url)
                    .bearer_auth(token)
                    .json(&body)
                    .send()
                    .await?;
                anyhow::ensure!(resp.status() == 202, "POST /usage: {}", resp.status());
                Ok::<_, anyhow::Error>(())
            }));
        }
        sent += 1;
        if handles.len() >= 8 {
            for h in handles.drain(..) {
                h.await??;
            }
        }
    }
    for h in handles {
        h.await??;
    }
    assert_eq!(sent, REQUESTS);
    streaming.store(false, Ordering::SeqCst);
    let (kills, survivors) = killer.await?;
    assert!(kills >= 6, "workers were killed {kills} times");

    // The survivors (and leases of the killed ones, once expired) drain everything.
    let db = tdb.db();
    let expected_events = i64::try_from(REQUESTS * PER_REQUEST)?;
    let driver = db.queue();
    wait_for(Duration::from_secs(240), || async {
        let n = scalar(db, "SELECT COUNT(*) FROM usage_events").await?;
        let usage = driver.stats(&usage_writer::queue()).await?;
        let settle = driver.stats(&settlement::queue()).await?;
        let idle = usage.depth
            + usage.in_flight
            + usage.delayed
            + settle.depth
            + settle.in_flight
            + settle.delayed
            == 0;
        Ok((n == expected_events && idle).then_some(()))
    })
    .await?;
    drop(survivors);

    let per_tenant_events = expected_events / i64::try_from(TENANTS)?;
    let expected_balance = 1000 - per_tenant_events * JOB_PRICE;
    assert_eq!(
        scalar(db, "SELECT COUNT(*) FROM usage_events").await?,
        expected_events
    );
    assert_eq!(
        scalar(db, "SELECT COALESCE(SUM(delta), 0) FROM ledger_entries").await?,
        expected_balance * i64::try_from(TENANTS)?,
        "ledger sum"
    );
    assert_eq!(
        scalar(db, "SELECT COUNT(*) FROM ledger_entries").await?,
        expected_events + i64::try_from(TENANTS)?
    );
    let dlq = driver.stats(&usage_writer::queue()).await?.dlq_depth
        + driver.stats(&settlement::queue()).await?.dlq_depth;
    assert_eq!(dlq, 0, "nothing dead-lettered");
    for (token, tenant) in &tokens {
        let balance = wait_for(Duration::from_secs(60), || async {
            let body: Value = client
                .get(format!("{url}/credits"))
                .bearer_auth(token)
                .send()
                .await?
                .json()
                .await?;
            let b = body["balance"].as_i64().unwrap_or(i64::MIN);
            Ok((b == expected_balance).then_some(b))
        })
        .await
        .map_err(|e| anyhow::anyhow!("cached balance of {tenant}: {e}"))?;
        assert_eq!(balance, expected_balance);
    }
    let rebuilt: Value = client
        .post(format!("{url}/admin/rebuild-balance-cache"))
        .header("X-Admin-Key", ADMIN)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        rebuilt["changed"], 0,
        "derived balances already equal the ledger"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_money_path_survives_sigkill() -> anyhow::Result<()> {
    crash_proof(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_money_path_survives_sigkill() -> anyhow::Result<()> {
    crash_proof(Backend::Postgres).await
}
