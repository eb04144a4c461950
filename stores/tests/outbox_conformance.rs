//! The transactional outbox (`cognomega_core::outbox`), run natively on both backends with the
//! statements the edge runs on PostgreSQL: staged messages commit (or roll back) with their
//! write, a send that fails after the commit is delivered by a later relay exactly once, and
//! concurrent relays never send a message twice. Each check runs as `sqlite::name` and
//! `postgres::name`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use cognomega_core::outbox::{self, Outgoing, Relayed, Sender, CLAIM_MS};
use cognomega_core::sql::Executor;
use cognomega_stores::Database;
use cognomega_testkit::{Backend, TestDb};

/// A broker that records what it took and refuses the queues it is told to.
#[derive(Default)]
struct Broker {
    taken: Mutex<Vec<(String, String)>>,
    refuse: Mutex<BTreeSet<String>>,
}

impl Broker {
    fn refuse(&self, queue: &str) {
        self.refuse
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(queue.to_owned());
    }

    fn accept_all(&self) {
        self.refuse
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// How many times each body was taken.
    fn deliveries(&self) -> BTreeMap<String, usize> {
        let mut out = BTreeMap::new();
        for (_, body) in self
            .taken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
        {
            *out.entry(body.clone()).or_insert(0) += 1;
        }
        out
    }

    fn taken(&self) -> Vec<(String, String)> {
        self.taken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

#[async_trait::async_trait]
impl Sender for Broker {
    async fn send(&self, queue: &str, messages: &[Outgoing]) -> Result<(), String> {
        if self
            .refuse
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(queue)
        {
            return Err(format!("{queue}: the broker is unavailable"));
        }
        let mut taken = self
            .taken
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        for m in messages {
            taken.push((queue.to_owned(), m.body.clone()));
        }
        Ok(())
    }
}

const NOW: i64 = 1_800_000_000_000;

async fn stage_committed(
    db: &Database,
    batch: &str,
    messages: &[(&str, &str)],
) -> anyhow::Result<()> {
    let mut tx = db.begin().await?;
    for (queue, body) in messages {
        outbox::stage(
            &mut tx,
            batch,
            queue,
            (*body).to_owned(),
            Some("req-1"),
            NOW,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(())
}

async fn staged_messages_commit_or_roll_back_with_their_write(
    backend: Backend,
) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    let mut db = tdb.db().clone();
    let mut tx = db.begin().await?;
    outbox::stage(
        &mut tx,
        "w1",
        "jobs.x",
        r#"{"job_id":"a"}"#.into(),
        None,
        NOW,
    )
    .await?;
    tx.rollback().await?;
    assert_eq!(outbox::pending(&mut db).await?, (0, None), "rolled back");
    stage_committed(&db, "w2", &[("jobs.x", r#"{"job_id":"b"}"#)]).await?;
    assert_eq!(outbox::pending(&mut db).await?, (1, Some(NOW)));
    let broker = Broker::default();
    let done = outbox::relay(&mut db, &broker, None, "claim-1", NOW).await?;
    assert_eq!(done, Relayed { sent: 1, failed: 0 });
    assert_eq!(
        broker.taken(),
        vec![("jobs.x".to_owned(), r#"{"job_id":"b"}"#.to_owned())]
    );
    let row = db
        .query_opt(
            "SELECT request_id, sent_at, attempts FROM outbox WHERE batch = $1",
            &["w2".into()],
        )
        .await?
        .ok_or_else(|| anyhow::anyhow!("the row is gone"))?;
    assert_eq!(row.opt_text(0)?.as_deref(), Some("req-1"));
    assert_eq!(row.opt_int(1)?, Some(NOW), "marked sent");
    assert_eq!(row.int(2)?, 1);
    assert_eq!(outbox::pending(&mut db).await?.0, 0);
    Ok(())
}

async fn a_send_that_fails_after_the_commit_is_delivered_later_exactly_once(
    backend: Backend,
) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    let mut db = tdb.db().clone();
    stage_committed(
        &db,
        "upload-1",
        &[
            ("av-scan", r#"{"key":"u1"}"#),
            ("usage", r#"{"usage":"u1"}"#),
        ],
    )
    .await?;
    stage_committed(&db, "upload-2", &[("av-scan", r#"{"key":"u2"}"#)]).await?;
    let broker = Broker::default();
    broker.refuse("av-scan");
    // The write's own send, right after its commit: the scan queue is down.
    let first = outbox::relay(&mut db, &broker, Some("upload-1"), "c1", NOW).await?;
    assert_eq!(first, Relayed { sent: 1, failed: 1 });
    assert_eq!(outbox::pending(&mut db).await?.0, 2, "two scans unsent");
    let error = db
        .query_opt(
            "SELECT last_error FROM outbox WHERE batch = 'upload-1' AND queue = 'av-scan'",
            &[],
        )
        .await?
        .and_then(|r| r.opt_text(0).ok().flatten());
    assert!(
        error.is_some_and(|e| e.contains("unavailable")),
        "the failure is recorded on the row"
    );
    // The cron relay a minute later: the broker is back.
    broker.accept_all();
    let later = outbox::relay(&mut db, &broker, None, "c2", NOW + 60_000).await?;
    assert_eq!(later, Relayed { sent: 2, failed: 0 });
    // And again: nothing is sent twice.
    let again = outbox::relay(&mut db, &broker, None, "c3", NOW + 120_000).await?;
    assert_eq!(again, Relayed::default());
    let deliveries = broker.deliveries();
    assert_eq!(deliveries.len(), 3);
    assert!(
        deliveries.values().all(|n| *n == 1),
        "each exactly once: {deliveries:?}"
    );
    Ok(())
}

async fn a_relay_only_for_its_write_leaves_the_others(backend: Backend) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    let mut db = tdb.db().clone();
    stage_committed(&db, "a", &[("q", "1"), ("q", "2")]).await?;
    stage_committed(&db, "b", &[("q", "3")]).await?;
    let broker = Broker::default();
    let done = outbox::relay(&mut db, &broker, Some("a"), "c1", NOW).await?;
    assert_eq!(done.sent, 2);
    assert_eq!(
        broker.taken(),
        vec![("q".into(), "1".into()), ("q".into(), "2".into())],
        "oldest first"
    );
    assert_eq!(outbox::pending(&mut db).await?.0, 1);
    Ok(())
}

async fn concurrent_relays_send_each_message_once(backend: Backend) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    let db = tdb.db().clone();
    let messages: Vec<String> = (0..1200).map(|i| format!(r#"{{"n":{i}}}"#)).collect();
    let mut tx = db.begin().await?;
    for (i, body) in messages.iter().enumerate() {
        let queue = if i % 3 == 0 { "settlement" } else { "usage" };
        outbox::stage(&mut tx, "bulk", queue, body.clone(), None, NOW).await?;
    }
    tx.commit().await?;
    let broker = std::sync::Arc::new(Broker::default());
    let relays: Vec<_> = (0..4)
        .map(|n| {
            let mut db = db.clone();
            let broker = broker.clone();
            tokio::spawn(async move {
                outbox::relay(&mut db, &*broker, None, &format!("relay-{n}"), NOW).await
            })
        })
        .collect();
    let mut sent = 0;
    for r in relays {
        let done = r.await??;
        assert_eq!(done.failed, 0);
        sent += done.sent;
    }
    assert_eq!(sent, messages.len(), "the relays split the rows");
    let deliveries = broker.deliveries();
    assert_eq!(deliveries.len(), messages.len(), "every message sent");
    assert!(deliveries.values().all(|n| *n == 1), "none sent twice");
    Ok(())
}

async fn a_relay_that_died_mid_send_is_taken_over_after_its_claim(
    backend: Backend,
) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    let mut db = tdb.db().clone();
    stage_committed(&db, "w", &[("q", "m")]).await?;
    // A relay claims the row and dies before it marks it sent.
    let claimed = db
        .query(
            outbox::CLAIM,
            &[
                "dead".into(),
                NOW.into(),
                (NOW + CLAIM_MS).into(),
                None::<&str>.into(),
                10.into(),
            ],
        )
        .await?;
    assert_eq!(claimed.len(), 1);
    let broker = Broker::default();
    let during = outbox::relay(&mut db, &broker, None, "live", NOW + CLAIM_MS - 1).await?;
    assert_eq!(during, Relayed::default(), "the claim still holds");
    let after = outbox::relay(&mut db, &broker, None, "live", NOW + CLAIM_MS + 1).await?;
    assert_eq!(after.sent, 1, "sent once the claim expired");
    Ok(())
}

async fn sent_rows_are_pruned_after_a_day(backend: Backend) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    let mut db = tdb.db().clone();
    stage_committed(&db, "w", &[("q", "1")]).await?;
    stage_committed(&db, "v", &[("q", "2")]).await?;
    let broker = Broker::default();
    outbox::relay(&mut db, &broker, Some("w"), "c", NOW).await?;
    assert_eq!(outbox::prune(&mut db, NOW + 1000).await?, 0, "kept a day");
    assert_eq!(
        outbox::prune(&mut db, NOW + outbox::KEEP_SENT_MS + 1).await?,
        1,
        "the sent row goes"
    );
    assert_eq!(outbox::pending(&mut db).await?.0, 1, "the unsent row stays");
    Ok(())
}

cognomega_testkit::both_backends!(
    staged_messages_commit_or_roll_back_with_their_write,
    a_send_that_fails_after_the_commit_is_delivered_later_exactly_once,
    a_relay_only_for_its_write_leaves_the_others,
    concurrent_relays_send_each_message_once,
    a_relay_that_died_mid_send_is_taken_over_after_its_claim,
    sent_rows_are_pruned_after_a_day,
);
