//! PostgreSQL-only behaviour of the queue driver that the shared conformance suite cannot
//! express: NOTIFY reaching a consumer in another pool (another process), and the LISTEN
//! connection's lifecycle.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cognomega_core::queue::{
    LeaseToken, MessageId, OutgoingMessage, QueueDriver, QueueName, QueueSettings, Settlement,
};
use cognomega_stores::{Database, PgQueue};
use cognomega_testkit::{Backend, TestDb};

fn qn(name: &str) -> QueueName {
    QueueName::parse(name).expect("valid queue name")
}

fn acks(token: LeaseToken, ids: impl IntoIterator<Item = MessageId>) -> Vec<Settlement> {
    ids.into_iter()
        .map(|id| Settlement::Ack { id, token })
        .collect()
}

fn pg_pool(db: &Database) -> sqlx::PgPool {
    match db {
        Database::Postgres(pg) => pg.pool.clone(),
        Database::Sqlite(_) => panic!("a PostgreSQL test got a SQLite database"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_a_waiting_consumer() {
    let t = TestDb::new(Backend::Postgres).await.expect("test database");
    let consumer = t.db().queue();
    // A second pool and driver, as another process would have: only NOTIFY can reach us.
    let producer_db = Database::connect(t.url()).await.expect("connect");
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
        waited >= Duration::from_millis(200) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    let start = Instant::now();
    consumer.wait_for_work(&q, Duration::from_secs(5)).await;
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "visible work returns at once"
    );
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

    // Rounds alternate a plain send and a send inside the producer's own transaction: both
    // wake the other process only after their commit.
    for round in 0..4 {
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
        if round % 2 == 0 {
            producer
                .send(&q, OutgoingMessage::new("now"))
                .await
                .expect("send");
        } else {
            let mut tx = producer_db.begin().await.expect("begin");
            tx.send(&q, OutgoingMessage::new("in a transaction"))
                .await
                .expect("send in a transaction");
            tx.commit().await.expect("commit");
        }
        let woke = waiter.await.expect("waiter");
        let latency = woke.saturating_duration_since(sent);
        assert!(
            // The waiter polls once a second at the latest (IDLE_POLL_CAP), which would end
            // its wait ~850 ms after this send: anything well below that was the NOTIFY.
            latency < Duration::from_millis(500),
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
    t.db().close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_task_ends_with_its_driver() {
    let t = TestDb::new(Backend::Postgres).await.expect("test database");
    let pool = pg_pool(t.db());
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
    t.db()
        .queue()
        .wait_for_work(&q, Duration::from_millis(50))
        .await;
    assert_eq!(listening().await, 1);
    tokio::time::timeout(Duration::from_secs(5), t.db().close())
        .await
        .expect("close returns with a listener running");
}
