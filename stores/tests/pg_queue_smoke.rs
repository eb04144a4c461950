//! Smoke tests of the PostgreSQL queue driver against a real server
//! (postgres://postgres@127.0.0.1:5432), each in its own throwaway database.
//!
//! The ignored tests at the end are measurements, not checks:
//! `cargo test -p cognomega-stores --test pg_queue_smoke -- --ignored --nocapture`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cognomega_core::queue::{
    IdempotencyKey, LeaseToken, MessageId, OutgoingMessage, QueueDriver, QueueName, QueueSettings,
    Settlement,
};
use cognomega_stores::{Database, DatabaseUrl, PgQueue, Tx};
use sqlx::Connection;

const ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A database created for one test and dropped afterwards, even when the test panics.
struct TestDb {
    name: String,
    url: DatabaseUrl,
    db: Database,
}

impl TestDb {
    async fn new() -> Self {
        let name = format!("cognomega_t_{}", uuid::Uuid::new_v4().simple());
        let mut admin = sqlx::PgConnection::connect(ADMIN_URL)
            .await
            .expect("PostgreSQL must run at 127.0.0.1:5432 (user postgres, db test)");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create test database");
        admin.close().await.expect("close admin connection");
        let url = DatabaseUrl::parse(&format!("postgres://postgres@127.0.0.1:5432/{name}"))
            .expect("valid url");
        let db = Database::open(&url).await.expect("open and migrate");
        Self { name, url, db }
    }

    async fn finish(self) {
        self.db.close().await;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop cannot await, and may run on the test's runtime thread: use a thread of our own.
        let dropped = std::thread::spawn(move || -> Result<(), sqlx::Error> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut admin = sqlx::PgConnection::connect(ADMIN_URL).await?;
                sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .execute(&mut admin)
                    .await?;
                admin.close().await
            })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!("could not drop test database {}: {dropped:?}", self.name);
        }
    }
}

fn qn(name: &str) -> QueueName {
    QueueName::parse(name).expect("valid queue name")
}

fn now_ms() -> i64 {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970");
    i64::try_from(since.as_millis()).expect("fits")
}

fn key(k: &str) -> IdempotencyKey {
    IdempotencyKey::parse(k).expect("valid key")
}

fn acks(token: LeaseToken, ids: impl IntoIterator<Item = MessageId>) -> Vec<Settlement> {
    ids.into_iter()
        .map(|id| Settlement::Ack { id, token })
        .collect()
}

#[tokio::test]
async fn send_claim_ack_and_stats() {
    let t = TestDb::new().await;
    let queue = t.db.queue();
    let q = qn("smoke");
    let settings = QueueSettings::default();
    queue.declare(&q, &settings).await.expect("declare");

    let mut first = OutgoingMessage::new("a").request_id("req-1");
    first.options.content_type = Some("text/plain".into());
    let receipts = queue
        .send_batch(
            &q,
            vec![
                first,
                OutgoingMessage::new("b").idempotency_key(key("order-1")),
                OutgoingMessage::new("c"),
                OutgoingMessage::new("b-again").idempotency_key(key("order-1")),
                OutgoingMessage::new("later").delay(Duration::from_secs(60)),
            ],
        )
        .await
        .expect("send");
    assert_eq!(receipts.len(), 5);
    assert!(!receipts[1].duplicate);
    assert!(receipts[3].duplicate, "a key repeated in one batch dedups");
    assert_eq!(receipts[3].id, receipts[1].id);
    let ids: Vec<MessageId> = [0, 1, 2, 4].iter().map(|&i| receipts[i].id).collect();
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "ids follow input order"
    );

    let again = queue
        .send(
            &q,
            OutgoingMessage::new("b3").idempotency_key(key("order-1")),
        )
        .await
        .expect("send again");
    assert!(again.duplicate);
    assert_eq!(again.id, receipts[1].id);

    let stats = queue.stats(&q).await.expect("stats");
    assert_eq!(
        (stats.depth, stats.in_flight, stats.delayed),
        (3, 0, 1),
        "{stats:?}"
    );
    assert!(stats.oldest_age_ms >= 0);

    let claim = queue.claim(&q, &settings, 10).await.expect("claim");
    assert!(claim.token.0 > 0);
    assert_eq!(claim.dead_lettered, 0);
    let got: Vec<MessageId> = claim.messages.iter().map(|m| m.id).collect();
    assert_eq!(got, vec![ids[0], ids[1], ids[2]]);
    let m = &claim.messages[0];
    assert_eq!(m.body, b"a");
    assert_eq!(m.attempts, 1);
    assert_eq!(m.content_type.as_deref(), Some("text/plain"));
    assert_eq!(m.request_id.as_deref(), Some("req-1"));
    let now = now_ms();
    assert!(m.enqueued_at.0 <= now + 1000 && m.enqueued_at.0 > now - 60_000);
    assert!(claim.lease_until.0 > now + 20_000, "lease ends in ~30 s");

    let stats = queue.stats(&q).await.expect("stats");
    assert_eq!((stats.depth, stats.in_flight, stats.delayed), (0, 3, 1));
    assert!(queue
        .claim(&q, &settings, 10)
        .await
        .expect("claim")
        .messages
        .is_empty());

    let report = queue
        .settle(&q, &settings, &acks(claim.token, got.clone()))
        .await
        .expect("ack");
    assert_eq!(report.acked, 3);
    assert!(report.refused.is_empty());
    let report = queue
        .settle(&q, &settings, &acks(claim.token, got.clone()))
        .await
        .expect("ack again");
    assert_eq!(report.acked, 0);
    assert_eq!(report.refused, got);

    let stats = queue.stats(&q).await.expect("stats");
    assert_eq!(stats.drain.count(), 3);
    assert_eq!((stats.depth, stats.in_flight, stats.delayed), (0, 0, 1));
    assert_eq!(queue.queues().await.expect("queues"), vec![q.clone()]);
    t.finish().await;
}

#[tokio::test]
async fn stale_tokens_are_refused() {
    let t = TestDb::new().await;
    let queue = t.db.queue();
    let q = qn("stale");
    let settings = QueueSettings {
        lease: Duration::from_millis(200),
        ..Default::default()
    };
    let id = queue
        .send(&q, OutgoingMessage::new("x"))
        .await
        .expect("send")
        .id;
    let c1 = queue.claim(&q, &settings, 10).await.expect("claim");
    assert_eq!(c1.messages.len(), 1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let c2 = queue.claim(&q, &settings, 10).await.expect("reclaim");
    assert_eq!(c2.messages.len(), 1, "an expired lease is visible again");
    assert_eq!(c2.messages[0].attempts, 2);
    assert!(c2.token > c1.token);

    assert_eq!(
        queue
            .extend_lease(c1.token, &[id], Duration::from_secs(10))
            .await
            .expect("extend"),
        0
    );
    assert_eq!(
        queue
            .extend_lease(c2.token, &[id], Duration::from_secs(10))
            .await
            .expect("extend"),
        1
    );
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        queue
            .claim(&q, &settings, 10)
            .await
            .expect("claim")
            .messages
            .is_empty(),
        "the extended lease still holds"
    );

    let report = queue
        .settle(&q, &settings, &acks(c1.token, [id]))
        .await
        .expect("stale ack");
    assert_eq!((report.acked, report.refused.clone()), (0, vec![id]));
    let report = queue
        .settle(
            &q,
            &settings,
            &[
                Settlement::Retry {
                    id,
                    token: c1.token,
                    delay: Duration::ZERO,
                    error: None,
                },
                Settlement::Ack {
                    id,
                    token: c2.token,
                },
            ],
        )
        .await
        .expect("mixed settle");
    assert_eq!((report.acked, report.retried), (1, 0));
    assert_eq!(report.refused, vec![id]);
    t.finish().await;
}

#[tokio::test]
async fn retry_dead_letter_replay_release() {
    let t = TestDb::new().await;
    let queue = t.db.queue();
    let q = qn("work");
    let dlq = qn("work-dlq");
    let settings = QueueSettings {
        max_retries: 1,
        dead_letter_queue: Some(dlq.clone()),
        ..Default::default()
    };
    queue.declare(&q, &settings).await.expect("declare");
    queue
        .declare(&dlq, &QueueSettings::default())
        .await
        .expect("declare dlq");

    let id = queue
        .send(&q, OutgoingMessage::new("payload"))
        .await
        .expect("send")
        .id;
    let c = queue.claim(&q, &settings, 10).await.expect("claim");
    let report = queue
        .settle(
            &q,
            &settings,
            &[Settlement::Retry {
                id,
                token: c.token,
                delay: Duration::ZERO,
                error: Some("boom".into()),
            }],
        )
        .await
        .expect("retry");
    assert_eq!(report.retried, 1);
    let c = queue.claim(&q, &settings, 10).await.expect("claim");
    assert_eq!(c.messages[0].attempts, 2);
    let report = queue
        .settle(
            &q,
            &settings,
            &[Settlement::DeadLetter {
                id,
                token: c.token,
                error: "fatal".into(),
            }],
        )
        .await
        .expect("dead-letter");
    assert_eq!(report.dead_lettered, 1);
    let stats = queue.stats(&q).await.expect("stats");
    assert_eq!((stats.depth, stats.dlq_depth), (0, 1));
    let dead = queue.dead_letters(&dlq, 10).await.expect("dead letters");
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, id);
    assert_eq!(dead[0].original_queue.as_ref(), Some(&q));
    assert_eq!(dead[0].attempts, 2);
    assert_eq!(dead[0].error.as_deref(), Some("fatal"));
    assert_eq!(dead[0].body_preview, "payload");
    assert!(dead[0].dead_at.is_some());

    assert_eq!(
        queue
            .replay(&dlq, Some(&[MessageId(-1)]))
            .await
            .expect("replay none"),
        0
    );
    assert_eq!(queue.replay(&dlq, None).await.expect("replay"), 1);
    let c = queue.claim(&q, &settings, 10).await.expect("claim");
    assert_eq!((c.messages[0].id, c.messages[0].attempts), (id, 1));

    // Release gives the delivery back.
    let report = queue
        .settle(&q, &settings, &[Settlement::Release { id, token: c.token }])
        .await
        .expect("release");
    assert_eq!(report.released, 1);
    let c = queue.claim(&q, &settings, 10).await.expect("claim");
    assert_eq!(c.messages[0].attempts, 1);

    // A retry with a delay is delayed.
    queue
        .settle(
            &q,
            &settings,
            &[Settlement::Retry {
                id,
                token: c.token,
                delay: Duration::from_secs(60),
                error: None,
            }],
        )
        .await
        .expect("retry later");
    let stats = queue.stats(&q).await.expect("stats");
    assert_eq!((stats.depth, stats.delayed), (0, 1));

    // Without a dead-letter queue the message is dropped.
    let lone = qn("lone");
    let plain = QueueSettings::default();
    let id = queue
        .send(&lone, OutgoingMessage::new("x"))
        .await
        .expect("send")
        .id;
    let c = queue.claim(&lone, &plain, 10).await.expect("claim");
    let report = queue
        .settle(
            &lone,
            &plain,
            &[Settlement::DeadLetter {
                id,
                token: c.token,
                error: "no".into(),
            }],
        )
        .await
        .expect("drop");
    assert_eq!((report.dropped, report.dead_lettered), (1, 0));
    assert_eq!(queue.stats(&lone).await.expect("stats").depth, 0);

    // A message whose every lease expired is dead-lettered by the next claim.
    let flaky = qn("flaky");
    let short = QueueSettings {
        max_retries: 0,
        lease: Duration::from_millis(100),
        dead_letter_queue: Some(dlq.clone()),
        ..Default::default()
    };
    let id = queue
        .send(&flaky, OutgoingMessage::new("y"))
        .await
        .expect("send")
        .id;
    assert_eq!(
        queue
            .claim(&flaky, &short, 10)
            .await
            .expect("claim")
            .messages
            .len(),
        1
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    let c = queue.claim(&flaky, &short, 10).await.expect("claim");
    assert!(c.messages.is_empty());
    assert_eq!(c.dead_lettered, 1);
    let dead = queue.dead_letters(&dlq, 10).await.expect("dead letters");
    assert!(
        dead.iter()
            .any(|d| d.id == id && d.original_queue.as_ref() == Some(&flaky) && d.attempts == 1),
        "the dead message shows the one delivery it got"
    );
    t.finish().await;
}

#[tokio::test]
async fn prune_and_dedup_expiry() {
    let t = TestDb::new().await;
    let queue = t.db.queue();
    let q = qn("prune");
    let dlq = qn("prune-dlq");
    let settings = QueueSettings {
        retain_acked: Duration::from_millis(50),
        dead_retention: Duration::from_millis(50),
        dedup_window: Duration::from_millis(50),
        dead_letter_queue: Some(dlq.clone()),
        ..Default::default()
    };
    queue.declare(&q, &settings).await.expect("declare");
    let first = queue
        .send(&q, OutgoingMessage::new("k").idempotency_key(key("k")))
        .await
        .expect("send");
    let dup = queue
        .send(&q, OutgoingMessage::new("k").idempotency_key(key("k")))
        .await
        .expect("send");
    assert!(dup.duplicate && dup.id == first.id);
    let dead = queue
        .send(&q, OutgoingMessage::new("d"))
        .await
        .expect("send")
        .id;
    let c = queue.claim(&q, &settings, 10).await.expect("claim");
    let report = queue
        .settle(
            &q,
            &settings,
            &[
                Settlement::Ack {
                    id: first.id,
                    token: c.token,
                },
                Settlement::DeadLetter {
                    id: dead,
                    token: c.token,
                    error: "bad".into(),
                },
            ],
        )
        .await
        .expect("settle");
    assert_eq!((report.acked, report.dead_lettered), (1, 1));
    let stats = queue.stats(&q).await.expect("stats");
    assert_eq!((stats.acked_retained, stats.dlq_depth), (1, 1));
    assert_eq!(stats.drain.count(), 1);

    tokio::time::sleep(Duration::from_millis(100)).await;
    let fresh = queue
        .send(&q, OutgoingMessage::new("k2").idempotency_key(key("k")))
        .await
        .expect("send");
    assert!(!fresh.duplicate, "the dedup window passed");
    assert_ne!(fresh.id, first.id);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let report = queue.prune().await.expect("prune");
    assert_eq!((report.acked, report.dead, report.dedup_keys), (1, 1, 1));
    let stats = queue.stats(&q).await.expect("stats");
    assert_eq!(
        (stats.acked_retained, stats.dlq_depth, stats.depth),
        (0, 0, 1)
    );
    t.finish().await;
}

#[tokio::test]
async fn transactional_enqueue() {
    let t = TestDb::new().await;
    let queue = t.db.queue();
    let q = qn("outbox");
    sqlx::query("CREATE TABLE business (id BIGINT PRIMARY KEY)")
        .execute(&pg_pool(&t.db))
        .await
        .expect("create table");

    let mut tx = t.db.begin().await.expect("begin");
    business_write(&mut tx, 1).await;
    tx.send(&q, OutgoingMessage::new("one"))
        .await
        .expect("send in tx");
    tx.rollback().await.expect("rollback");
    assert_eq!(queue.stats(&q).await.expect("stats").depth, 0);
    assert_eq!(business_rows(&t.db).await, 0);

    let mut tx = t.db.begin().await.expect("begin");
    business_write(&mut tx, 2).await;
    let receipts = tx
        .send_batch(
            &q,
            vec![
                OutgoingMessage::new("two"),
                OutgoingMessage::new("three").idempotency_key(key("t")),
                OutgoingMessage::new("three").idempotency_key(key("t")),
            ],
        )
        .await
        .expect("send in tx");
    assert!(receipts[2].duplicate);
    tx.commit().await.expect("commit");
    assert_eq!(queue.stats(&q).await.expect("stats").depth, 2);
    assert_eq!(business_rows(&t.db).await, 1);
    t.finish().await;
}

fn pg_pool(db: &Database) -> sqlx::PgPool {
    match db {
        Database::Postgres(pg) => pg.pool.clone(),
        Database::Sqlite(_) => panic!("expected PostgreSQL"),
    }
}

async fn business_write(tx: &mut Tx, id: i64) {
    let Tx::Postgres { tx } = tx else {
        panic!("expected a PostgreSQL transaction")
    };
    sqlx::query("INSERT INTO business (id) VALUES ($1)")
        .bind(id)
        .execute(&mut **tx)
        .await
        .expect("business write");
}

async fn business_rows(db: &Database) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM business")
        .fetch_one(&pg_pool(db))
        .await
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_a_waiting_consumer() {
    let t = TestDb::new().await;
    let consumer = t.db.queue();
    // A second pool and driver, as another process would have: only NOTIFY can reach us.
    let producer_db = Database::connect(&t.url).await.expect("connect");
    let producer = producer_db.queue();
    let q = qn("wake");

    // Visible work returns at once; delayed work wakes the waiter when it becomes visible.
    producer
        .send(
            &q,
            OutgoingMessage::new("d").delay(Duration::from_millis(300)),
        )
        .await
        .expect("send");
    let start = Instant::now();
    consumer.wait_for_work(&q, Duration::from_secs(5)).await;
    let waited = start.elapsed();
    assert!(
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(2),
        "{waited:?}"
    );
    let start = Instant::now();
    consumer.wait_for_work(&q, Duration::from_secs(5)).await;
    assert!(start.elapsed() < Duration::from_millis(200));
    let c = consumer
        .claim(&q, &QueueSettings::default(), 10)
        .await
        .expect("claim");
    consumer
        .settle(
            &q,
            &QueueSettings::default(),
            &acks(c.token, c.messages.iter().map(|m| m.id)),
        )
        .await
        .expect("ack");

    for round in 0..3 {
        let waiting = Arc::clone(&consumer);
        let wq = q.clone();
        let waiter = tokio::spawn(async move {
            waiting.wait_for_work(&wq, Duration::from_secs(5)).await;
            Instant::now()
        });
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(
            !waiter.is_finished(),
            "round {round}: nothing to wake for yet"
        );
        let sent = Instant::now();
        producer
            .send(&q, OutgoingMessage::new("now"))
            .await
            .expect("send");
        let woke = waiter.await.expect("waiter");
        let latency = woke.saturating_duration_since(sent);
        assert!(
            latency < Duration::from_millis(100),
            "round {round}: woke after {latency:?}"
        );
        let c = consumer
            .claim(&q, &QueueSettings::default(), 10)
            .await
            .expect("claim");
        assert_eq!(c.messages.len(), 1);
        consumer
            .settle(
                &q,
                &QueueSettings::default(),
                &acks(c.token, c.messages.iter().map(|m| m.id)),
            )
            .await
            .expect("ack");
        // Drain the permit the wake-up left behind.
        consumer.wait_for_work(&q, Duration::from_millis(1)).await;
    }
    producer_db.close().await;
    t.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_task_ends_with_its_driver() {
    let t = TestDb::new().await;
    let pool = pg_pool(&t.db);
    let listening = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND query LIKE 'LISTEN%'",
        )
        .fetch_one(&pool)
        .await
        .expect("pg_stat_activity")
    };
    let queue = PgQueue::new(pool.clone());
    let q = qn("idle");
    queue.wait_for_work(&q, Duration::from_millis(50)).await;
    queue.wait_for_work(&q, Duration::from_millis(10)).await;
    assert_eq!(
        listening().await,
        1,
        "one listener per driver, started once"
    );

    drop(queue);
    let deadline = Instant::now() + Duration::from_secs(3);
    while listening().await > 0 {
        assert!(
            Instant::now() < deadline,
            "the listener outlived its driver"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Closing the database is not held up by a running listener.
    t.db.queue()
        .wait_for_work(&q, Duration::from_millis(50))
        .await;
    assert_eq!(listening().await, 1);
    tokio::time::timeout(Duration::from_secs(5), t.finish())
        .await
        .expect("close returns with a listener running");
}

/// Drain throughput: N no-op messages, claimed and acked up to 1000 at a time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement"]
async fn bench_drain_throughput() {
    let t = TestDb::new().await;
    let queue = t.db.queue();
    let q = qn("bench");
    let settings = QueueSettings::default();
    let total: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let consumers: usize = std::env::var("BENCH_CONSUMERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let batch: usize = std::env::var("BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);

    let start = Instant::now();
    for _ in 0..total / 1000 {
        let msgs = (0..1000)
            .map(|i| OutgoingMessage::new(format!("{{\"n\":{i}}}")))
            .collect();
        queue.send_batch(&q, msgs).await.expect("send");
    }
    let send_s = start.elapsed().as_secs_f64();
    println!(
        "sent {total} in {send_s:.2}s: {:.0} msg/s",
        total as f64 / send_s
    );

    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..consumers {
        let queue = Arc::clone(&queue);
        let q = q.clone();
        let settings = settings.clone();
        tasks.push(tokio::spawn(async move {
            let mut drained = 0usize;
            let (mut claim_t, mut ack_t) = (Duration::ZERO, Duration::ZERO);
            loop {
                let t0 = Instant::now();
                let c = queue.claim(&q, &settings, batch).await.expect("claim");
                claim_t += t0.elapsed();
                if c.messages.is_empty() {
                    break;
                }
                let t0 = Instant::now();
                let r = queue
                    .settle(
                        &q,
                        &settings,
                        &acks(c.token, c.messages.iter().map(|m| m.id)),
                    )
                    .await
                    .expect("ack");
                ack_t += t0.elapsed();
                drained += r.acked as usize;
            }
            (drained, claim_t, ack_t)
        }));
    }
    let mut drained = 0;
    for task in tasks {
        let (n, claim_t, ack_t) = task.await.expect("consumer");
        println!("consumer: {n} msgs, claim {claim_t:?}, ack {ack_t:?}");
        drained += n;
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "drained {drained} in {secs:.2}s with {consumers} consumer(s), batch {batch}: {:.0} msg/s",
        drained as f64 / secs
    );
    assert_eq!(drained, total);
    let stats = queue.stats(&q).await.expect("stats");
    assert_eq!(stats.drain.count(), total as u64);
    t.finish().await;
}

/// Enqueue → claim latency through NOTIFY, with the consumer on its own pool.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement"]
async fn bench_notify_latency() {
    let t = TestDb::new().await;
    let consumer = t.db.queue();
    let producer_db = Database::connect(&t.url).await.expect("connect");
    let producer = producer_db.queue();
    let q = qn("latency");
    let settings = QueueSettings::default();
    consumer.wait_for_work(&q, Duration::from_millis(1)).await;

    let rounds = 200;
    let cq = q.clone();
    let consumer_task = tokio::spawn(async move {
        let mut seen = Vec::with_capacity(rounds);
        while seen.len() < rounds {
            let c = consumer.claim(&cq, &settings, 100).await.expect("claim");
            let at = Instant::now();
            if c.messages.is_empty() {
                consumer.wait_for_work(&cq, Duration::from_secs(1)).await;
                continue;
            }
            consumer
                .settle(
                    &cq,
                    &settings,
                    &acks(c.token, c.messages.iter().map(|m| m.id)),
                )
                .await
                .expect("ack");
            for _ in &c.messages {
                seen.push(at);
            }
        }
        seen
    });
    let mut sent = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        sent.push(Instant::now());
        producer
            .send(&q, OutgoingMessage::new("ping"))
            .await
            .expect("send");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen = consumer_task.await.expect("consumer");
    let mut lat: Vec<Duration> = sent
        .iter()
        .zip(&seen)
        .map(|(s, c)| c.saturating_duration_since(*s))
        .collect();
    lat.sort();
    println!(
        "enqueue→claim latency over {rounds}: p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        lat[rounds / 2],
        lat[rounds * 9 / 10],
        lat[rounds * 99 / 100],
        lat[rounds - 1]
    );
    producer_db.close().await;
    t.finish().await;
}
