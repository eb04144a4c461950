//! Real `cognomega worker` processes are killed with SIGKILL mid-batch, repeatedly, while they
//! drain probe messages whose handler records an idempotent effect. Afterwards every message's
//! effect exists exactly once and nothing is left in flight. A SIGTERM'd worker finishes its
//! in-flight batches and exits cleanly.

use std::collections::HashSet;
use std::process::Stdio;
use std::time::Duration;

use cognomega_consumers::probe::{self, Probe};
use cognomega_core::queue::{OutgoingMessage, QueueStats};
use cognomega_stores::Database;
use cognomega_testkit::{wait_for, Backend, TestDb};
use tokio::process::{Child, Command};

fn spawn_worker(tdb: &TestDb) -> anyhow::Result<Child> {
    Ok(Command::new(env!("CARGO_BIN_EXE_cognomega"))
        .args(["--log", "warn", "--data-dir"])
        .arg(tdb.data_dir())
        .args([
            "--database-url",
            tdb.url().expose(),
            "worker",
            "--poll-interval-ms",
            "50",
            "--shutdown-grace",
            "20",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?)
}

async fn effects(db: &Database) -> anyhow::Result<Vec<(String, i64)>> {
    let sql = "SELECT key, CAST(deliveries AS BIGINT) FROM queue_probe_effects";
    Ok(match db {
        Database::Sqlite(s) => sqlx::query_as(sql).fetch_all(&s.read).await?,
        Database::Postgres(pg) => sqlx::query_as(sql).fetch_all(&pg.pool).await?,
    })
}

async fn stats(db: &Database) -> anyhow::Result<QueueStats> {
    Ok(db.queue().stats(&probe::queue()).await?)
}

async fn send_probes(db: &Database, n: usize, work_ms: u64) -> anyhow::Result<HashSet<String>> {
    let keys: Vec<String> = (0..n).map(|i| format!("probe-{i}")).collect();
    let msgs = keys
        .iter()
        .map(|key| {
            OutgoingMessage::json(&Probe {
                key: key.clone(),
                work_ms,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    db.queue().send_batch(&probe::queue(), msgs).await?;
    Ok(keys.into_iter().collect())
}

async fn sigkill_mid_batch_loses_nothing(backend: Backend) -> anyhow::Result<()> {
    cognomega_testkit::init_tracing();
    let tdb = TestDb::new(backend).await?;
    let db = tdb.db();
    const N: usize = 3_000;
    let expected = send_probes(db, N, 25).await?;

    let mut kills = 0;
    for round in 0..5u64 {
        let mut worker = spawn_worker(&tdb)?;
        // Kill only while a batch is in flight, so each kill lands mid-batch.
        wait_for(Duration::from_secs(60), || async {
            Ok((stats(db).await?.in_flight > 0).then_some(()))
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(40 + round * 37)).await;
        worker.start_kill()?;
        worker.wait().await?;
        kills += 1;
    }
    let applied_before_recovery = effects(db).await?.len();
    assert!(
        applied_before_recovery < N,
        "the kills should have interrupted the drain"
    );

    // One last worker drains the rest, including batches whose leases the killed ones held.
    let mut worker = spawn_worker(&tdb)?;
    wait_for(Duration::from_secs(180), || async {
        let s = stats(db).await?;
        Ok((s.depth + s.in_flight + s.delayed == 0 && effects(db).await?.len() == N).then_some(()))
    })
    .await?;

    let rows = effects(db).await?;
    let keys: HashSet<String> = rows.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(rows.len(), N, "every probe's effect exists exactly once");
    assert_eq!(keys, expected);
    assert!(rows.iter().all(|(_, d)| *d >= 1));
    let s = stats(db).await?;
    assert_eq!(
        (s.depth, s.in_flight, s.delayed, s.dlq_depth),
        (0, 0, 0, 0),
        "nothing left behind: {s:?}"
    );
    assert_eq!(kills, 5);

    // SIGTERM: a clean exit.
    cognomega_testkit::terminate(&worker)?;
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait()).await??;
    assert!(
        status.success(),
        "worker exit status after SIGTERM: {status}"
    );
    Ok(())
}

async fn sigterm_finishes_in_flight_batches(backend: Backend) -> anyhow::Result<()> {
    cognomega_testkit::init_tracing();
    let tdb = TestDb::new(backend).await?;
    let db = tdb.db();
    // Slow batches (400 ms each) so SIGTERM arrives while several are running.
    send_probes(db, 400, 400).await?;
    let mut worker = spawn_worker(&tdb)?;
    let in_flight = wait_for(Duration::from_secs(60), || async {
        let s = stats(db).await?;
        Ok((s.in_flight > 0).then_some(s.in_flight))
    })
    .await?;
    cognomega_testkit::terminate(&worker)?;
    let status = tokio::time::timeout(Duration::from_secs(30), worker.wait()).await??;
    assert!(status.success(), "graceful exit: {status}");
    let s = stats(db).await?;
    assert_eq!(s.in_flight, 0, "no lease left behind after a graceful stop");
    let applied = effects(db).await?.len();
    // The batches in flight at SIGTERM were finished, not abandoned: their effects exist and the
    // remaining messages are ready (not stuck under a lease) for the next worker.
    assert!(
        applied as u64 >= in_flight.min(50),
        "in-flight batches finished: {applied} applied"
    );
    assert_eq!(
        applied as u64 + s.depth,
        400,
        "every message is either applied or ready again"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sigkill_mid_batch_loses_nothing() -> anyhow::Result<()> {
    sigkill_mid_batch_loses_nothing(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sigkill_mid_batch_loses_nothing() -> anyhow::Result<()> {
    sigkill_mid_batch_loses_nothing(Backend::Postgres).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sigterm_finishes_in_flight_batches() -> anyhow::Result<()> {
    sigterm_finishes_in_flight_batches(Backend::Sqlite).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sigterm_finishes_in_flight_batches() -> anyhow::Result<()> {
    sigterm_finishes_in_flight_batches(Backend::Postgres).await
}
