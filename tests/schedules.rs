//! Periodic schedules: one leader enqueues each tick exactly once, whoever else runs; a dead
//! leader is replaced within seconds; after downtime the missed tick is enqueued once. Checked
//! with in-process schedulers on both backends, and with real `cognomega worker` processes on
//! PostgreSQL, one of them SIGKILLed while it leads.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use cognomega_consumers::scheduler::{Scheduler, SchedulerOptions};
use cognomega_core::schedule::{Schedule, ScheduleSpec};
use cognomega_core::time::UnixMillis;
use cognomega_stores::{schedules, Database};
use cognomega_testkit::{both_backends, q, wait_for, Backend, TestDb};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

both_backends!(
    two_schedulers_enqueue_each_tick_exactly_once,
    a_dead_leader_is_replaced_within_seconds,
    missed_ticks_are_enqueued_once_on_recovery,
);

fn every_second(name: &str, queue: &str) -> anyhow::Result<Schedule> {
    Ok(Schedule::parse(
        name,
        ScheduleSpec {
            cron: "* * * * * *".into(),
            queue: queue.into(),
            body: serde_json::json!({ "from": name }),
            enabled: true,
        },
    )?)
}

fn fast() -> SchedulerOptions {
    SchedulerOptions {
        poll: Duration::from_millis(100),
        lease_ttl: Duration::from_millis(1500),
    }
}

fn now() -> UnixMillis {
    UnixMillis(chrono::Utc::now().timestamp_millis())
}

async fn depth(db: &Database, queue: &str) -> anyhow::Result<u64> {
    Ok(db.queue().stats(&q(queue)).await?.depth)
}

/// Every tick recorded is distinct, and the queue holds exactly one message per tick.
async fn assert_once_per_tick(db: &Database, schedule: &str, queue: &str) -> anyhow::Result<usize> {
    let ticks = schedules::ticks(db, schedule).await?;
    let mut seen = std::collections::BTreeSet::new();
    for t in &ticks {
        anyhow::ensure!(
            seen.insert(t.tick_at),
            "tick {} recorded twice",
            t.tick_at.0
        );
        anyhow::ensure!(
            t.message_id.is_some(),
            "tick {} has no message",
            t.tick_at.0
        );
        anyhow::ensure!(
            t.tick_at.0 % 1000 == 0,
            "tick {} is not on a second",
            t.tick_at.0
        );
    }
    let messages = depth(db, queue).await?;
    anyhow::ensure!(
        messages == ticks.len() as u64,
        "{} ticks but {messages} messages in {queue}",
        ticks.len()
    );
    Ok(ticks.len())
}

async fn two_schedulers_enqueue_each_tick_exactly_once(backend: Backend) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    let db = tdb.db().clone();
    let cancel = CancellationToken::new();
    let a = Scheduler::new(db.clone(), vec![every_second("tick", "sched-a")?], fast());
    let b = Scheduler::new(db.clone(), vec![every_second("tick", "sched-a")?], fast());
    let holders = [a.holder().to_owned(), b.holder().to_owned()];
    let ha = tokio::spawn(a.run(cancel.clone()));
    let hb = tokio::spawn(b.run(cancel.clone()));
    wait_for(Duration::from_secs(15), || async {
        Ok((schedules::ticks(&db, "tick").await?.len() >= 4).then_some(()))
    })
    .await?;
    cancel.cancel();
    ha.await?;
    hb.await?;
    let n = assert_once_per_tick(&db, "tick", "sched-a").await?;
    assert!(n >= 4, "{n}");
    // Nobody died, so one process did all the work.
    let ticks = schedules::ticks(&db, "tick").await?;
    let by: std::collections::BTreeSet<&str> =
        ticks.iter().map(|t| t.enqueued_by.as_str()).collect();
    assert_eq!(by.len(), 1, "{by:?}");
    assert!(holders.iter().any(|h| by.contains(h.as_str())));
    // Consecutive: a leader that was live all along missed no second.
    for pair in ticks.windows(2) {
        assert_eq!(pair[1].tick_at.0 - pair[0].tick_at.0, 1000, "{ticks:?}");
    }
    // A clean shutdown gives the lease up at once.
    let lease = schedules::leader(&db).await?;
    assert!(lease.is_some_and(|l| l.expires_at <= now()));
    Ok(())
}

async fn a_dead_leader_is_replaced_within_seconds(backend: Backend) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    let db = tdb.db().clone();
    let first = Scheduler::new(db.clone(), vec![every_second("tick", "sched-b")?], fast());
    let first_holder = first.holder().to_owned();
    let first_task = tokio::spawn(first.run(CancellationToken::new()));
    wait_for(Duration::from_secs(10), || async {
        Ok((!schedules::ticks(&db, "tick").await?.is_empty()).then_some(()))
    })
    .await?;
    // The standby starts while the first one leads.
    let cancel = CancellationToken::new();
    let second = Scheduler::new(db.clone(), vec![every_second("tick", "sched-b")?], fast());
    let second_holder = second.holder().to_owned();
    let second_task = tokio::spawn(second.run(cancel.clone()));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    // The leader dies without a word: its task is dropped, its lease stays until it lapses.
    first_task.abort();
    let died = now();
    let taken = wait_for(Duration::from_secs(10), || async {
        let ticks = schedules::ticks(&db, "tick").await?;
        Ok(ticks
            .iter()
            .find(|t| t.enqueued_by == second_holder)
            .map(|t| t.enqueued_at))
    })
    .await?;
    let gap = taken.0 - died.0;
    // TTL 1.5 s plus a poll, with room for a slow machine.
    assert!(gap < 5_000, "took over after {gap} ms");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    cancel.cancel();
    second_task.await?;
    assert_once_per_tick(&db, "tick", "sched-b").await?;
    let ticks = schedules::ticks(&db, "tick").await?;
    let by: std::collections::BTreeSet<&str> =
        ticks.iter().map(|t| t.enqueued_by.as_str()).collect();
    assert!(by.contains(first_holder.as_str()) && by.contains(second_holder.as_str()));
    let lease = schedules::leader(&db).await?;
    assert!(
        lease.is_some_and(|l| l.term >= 2),
        "the lease changed hands"
    );
    Ok(())
}

async fn missed_ticks_are_enqueued_once_on_recovery(backend: Backend) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    let db = tdb.db().clone();
    let minutely = Schedule::parse(
        "minutely",
        ScheduleSpec {
            cron: "0 * * * * *".into(),
            queue: "sched-c".into(),
            body: serde_json::json!({}),
            enabled: true,
        },
    )?;
    // The last tick ran ten minutes ago; the platform was down since.
    let t = now();
    let last = UnixMillis((t.0 / 60_000 - 10) * 60_000);
    let sent = schedules::enqueue_tick(
        &db,
        "minutely",
        last,
        &q("sched-c"),
        &serde_json::json!({}),
        &minutely.tick_key(last),
        "earlier",
        last,
    )
    .await?;
    assert!(sent.is_some());
    // The same tick again (another process, a retry) is refused.
    let again = schedules::enqueue_tick(
        &db,
        "minutely",
        last,
        &q("sched-c"),
        &serde_json::json!({}),
        &minutely.tick_key(last),
        "other",
        t,
    )
    .await?;
    assert_eq!(again, None);
    for _round in 0..2 {
        // Two recoveries in a row (the second finds nothing missing).
        let cancel = CancellationToken::new();
        let s = Scheduler::new(db.clone(), vec![minutely.clone()], fast());
        let task = tokio::spawn(s.run(cancel.clone()));
        wait_for(Duration::from_secs(10), || async {
            Ok((schedules::ticks(&db, "minutely").await?.len() >= 2).then_some(()))
        })
        .await?;
        tokio::time::sleep(Duration::from_millis(600)).await;
        cancel.cancel();
        task.await?;
    }
    let ticks = schedules::ticks(&db, "minutely").await?;
    let expected_latest = UnixMillis(now().0 / 60_000 * 60_000);
    // Exactly two: the old one and the latest missed minute (not the nine in between). If the
    // minute turned during the test, a third, newer tick is legitimate.
    assert!(ticks.len() == 2 || ticks.len() == 3, "{ticks:?}");
    assert_eq!(ticks[0].tick_at, last);
    assert!(
        ticks[1].tick_at.0 >= expected_latest.0 - 60_000,
        "{ticks:?}"
    );
    assert_once_per_tick(&db, "minutely", "sched-c").await?;
    Ok(())
}

fn spawn_worker(tdb: &TestDb, config: &std::path::Path) -> anyhow::Result<Child> {
    Ok(Command::new(env!("CARGO_BIN_EXE_cognomega"))
        .args(["--log", "warn", "--data-dir"])
        .arg(tdb.data_dir())
        .args(["--database-url", tdb.url().expose(), "--config"])
        .arg(config)
        .args([
            "worker",
            "--poll-interval-ms",
            "100",
            "--shutdown-grace",
            "5",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()?)
}

fn pid_of(holder: &str) -> Option<u32> {
    holder.split(':').nth(1)?.parse().ok()
}

/// Real worker processes on PostgreSQL: one leads, SIGKILL it, another takes over within the
/// 5 s lease (plus a poll), and across the handover every tick is still enqueued once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_leader_worker_is_replaced_and_no_tick_doubles() -> anyhow::Result<()> {
    let tdb = TestDb::new(Backend::Postgres).await?;
    let db = tdb.db().clone();
    let config = tdb.data_dir().join("schedules.toml");
    std::fs::write(
        &config,
        "[schedules.heartbeat]\ncron = \"* * * * * *\"\nqueue = \"sched-w\"\nbody = { beat = true }\n\
         [schedules.etl-export]\nenabled = false\n[schedules.lifecycle-sweep]\nenabled = false\n\
         [schedules.retention-prune]\nenabled = false\n[schedules.ledger-seal]\nenabled = false\n",
    )?;
    let mut workers: BTreeMap<u32, Child> = BTreeMap::new();
    for _ in 0..3 {
        let child = spawn_worker(&tdb, &config)?;
        let pid = child.id().ok_or_else(|| anyhow::anyhow!("no pid"))?;
        workers.insert(pid, child);
    }
    let leader = wait_for(Duration::from_secs(30), || async {
        let ticks = schedules::ticks(&db, "heartbeat").await?;
        Ok((ticks.len() >= 2).then(|| ticks[0].enqueued_by.clone()))
    })
    .await?;
    let pid = pid_of(&leader).ok_or_else(|| anyhow::anyhow!("holder {leader} names no pid"))?;
    let mut victim = workers
        .remove(&pid)
        .ok_or_else(|| anyhow::anyhow!("leader pid {pid} is not one of ours"))?;
    victim.start_kill()?;
    victim.wait().await?;
    let killed = now();
    let successor = wait_for(Duration::from_secs(20), || async {
        let ticks = schedules::ticks(&db, "heartbeat").await?;
        Ok(ticks
            .iter()
            .find(|t| t.enqueued_by != leader)
            .map(|t| (t.enqueued_by.clone(), t.enqueued_at)))
    })
    .await?;
    let gap = successor.1 .0 - killed.0;
    assert!(
        gap < 9_000,
        "a standby took over {gap} ms after the leader died"
    );
    assert!(pid_of(&successor.0).is_some_and(|p| workers.contains_key(&p)));
    tokio::time::sleep(Duration::from_secs(2)).await;
    for child in workers.values() {
        cognomega_testkit::terminate(child)?;
    }
    for (_, mut child) in workers {
        let status = child.wait().await?;
        assert!(status.success(), "worker exited with {status}");
    }
    // The queue has no consumer for sched-w, so every tick's message is still there.
    assert_once_per_tick(&db, "heartbeat", "sched-w").await?;
    // The CLI shows the schedule, its last run, and the disabled defaults.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cognomega"))
        .args(["--database-url", tdb.url().expose(), "--data-dir"])
        .arg(tdb.data_dir())
        .arg("--config")
        .arg(&config)
        .args(["schedules", "--json"])
        .output()?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let rows = listed["schedules"].as_array().cloned().unwrap_or_default();
    let heartbeat = rows
        .iter()
        .find(|r| r["name"] == "heartbeat")
        .ok_or_else(|| anyhow::anyhow!("{listed}"))?;
    assert_eq!(heartbeat["queue"], "sched-w");
    assert!(heartbeat["last_tick"].is_string() && heartbeat["next_run"].is_string());
    let etl = rows
        .iter()
        .find(|r| r["name"] == "etl-export")
        .ok_or_else(|| anyhow::anyhow!("{listed}"))?;
    assert_eq!(etl["enabled"], false);
    assert!(etl["next_run"].is_null());
    Ok(())
}

#[test]
fn a_bad_config_file_is_refused_with_its_path() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "[schedules.etl-export]\ncron = \"every hour\"\n")?;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cognomega"))
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--config")
        .arg(&config)
        .arg("schedules")
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("etl-export") && err.contains("every hour"),
        "{err}"
    );
    Ok(())
}
