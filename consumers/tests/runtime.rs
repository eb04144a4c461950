//! The consumer runtime against both backends: batching, batch timeout, concurrency limit,
//! whole-batch retry on handler error or panic, dead-lettering, lease heartbeats, and graceful
//! shutdown.

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cognomega_consumers::{Runtime, RuntimeOptions};
use cognomega_core::queue::{
    BatchHandler, HandlerError, MessageBatch, MessageId, OutgoingMessage, QueueSettings,
};
use cognomega_testkit::{q, settings, wait_for, Backend, TestDb};

/// Records every batch it sees, then does what `behave` says.
#[derive(Default)]
struct Recorder {
    batches: Mutex<Vec<Vec<(MessageId, u32)>>>,
    running: AtomicUsize,
    peak: AtomicUsize,
    hold: Duration,
    fail_first_deliveries: bool,
    panic_first_delivery: bool,
}

impl Recorder {
    fn batches(&self) -> Vec<Vec<(MessageId, u32)>> {
        self.batches.lock().expect("lock").clone()
    }

    fn delivered(&self) -> usize {
        self.batches().iter().map(Vec::len).sum()
    }
}

#[async_trait::async_trait]
impl BatchHandler for Recorder {
    async fn handle(&self, batch: &mut MessageBatch) -> Result<(), HandlerError> {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        self.batches.lock().expect("lock").push(
            batch
                .messages()
                .iter()
                .map(|m| (m.id, m.attempts))
                .collect(),
        );
        tokio::time::sleep(self.hold).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        let first = batch.messages().iter().any(|m| m.attempts == 1);
        if self.panic_first_delivery && first {
            panic!("boom on first delivery");
        }
        if self.fail_first_deliveries && first {
            return Err(HandlerError::retryable("first delivery fails"));
        }
        Ok(())
    }
}

fn fast_options() -> RuntimeOptions {
    RuntimeOptions {
        poll_interval: Duration::from_millis(50),
        shutdown_grace: Duration::from_secs(10),
    }
}

async fn send_n(tdb: &TestDb, queue: &str, n: usize) -> anyhow::Result<Vec<MessageId>> {
    let msgs = (0..n)
        .map(|i| OutgoingMessage::new(format!("{{\"n\":{i}}}").into_bytes()))
        .collect();
    Ok(tdb
        .db()
        .queue()
        .send_batch(&q(queue), msgs)
        .await?
        .into_iter()
        .map(|r| r.id)
        .collect())
}

async fn start(
    tdb: &TestDb,
    queue: &str,
    s: QueueSettings,
    handler: Arc<Recorder>,
) -> anyhow::Result<cognomega_consumers::RunningRuntime> {
    let mut rt = Runtime::new(tdb.db().queue(), fast_options());
    rt.register(q(queue), s, handler)?;
    Ok(rt.start().await?)
}

async fn batches_respect_max_batch_size(backend: Backend) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    let ids = send_n(&tdb, "work", 95).await?;
    let rec = Arc::new(Recorder::default());
    let running = start(
        &tdb,
        "work",
        settings(|s| s.max_batch_size = 10),
        rec.clone(),
    )
    .await?;
    assert!(running.wait_idle(Duration::from_secs(30)).await, "drained");
    running.stop().await;
    let batches = rec.batches();
    assert!(
        batches.iter().all(|b| !b.is_empty() && b.len() <= 10),
        "sizes: {:?}",
        batches.iter().map(Vec::len).collect::<Vec<_>>()
    );
    let seen: HashSet<MessageId> = batches.iter().flatten().map(|(id, _)| *id).collect();
    assert_eq!(seen, ids.into_iter().collect::<HashSet<_>>());
    assert_eq!(rec.delivered(), 95, "each delivered once");
    let stats = tdb.db().queue().stats(&q("work")).await?;
    assert_eq!(
        stats.drain.count(),
        95,
        "every ack recorded in the drain histogram"
    );
    Ok(())
}

async fn batch_timeout_gathers_a_partial_batch(backend: Backend) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    let rec = Arc::new(Recorder::default());
    let s = settings(|s| {
        s.max_batch_size = 10;
        s.max_batch_timeout = Duration::from_millis(1500);
    });
    let running = start(&tdb, "gather", s, rec.clone()).await?;
    let first_sent = Instant::now();
    for _ in 0..3 {
        send_n(&tdb, "gather", 1).await?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    wait_for(Duration::from_secs(20), || async {
        Ok((rec.delivered() == 3).then_some(()))
    })
    .await?;
    let waited = first_sent.elapsed();
    running.stop().await;
    // Three messages sent 100 ms apart arrive as ONE batch, delivered although it never filled.
    assert_eq!(rec.batches().len(), 1, "batches: {:?}", rec.batches());
    assert!(
        waited >= Duration::from_millis(1000),
        "a partial batch waits for the timeout ({waited:?})"
    );
    Ok(())
}

async fn concurrency_limit_is_honoured(backend: Backend) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    send_n(&tdb, "limited", 40).await?;
    let rec = Arc::new(Recorder {
        hold: Duration::from_millis(100),
        ..Recorder::default()
    });
    let s = settings(|s| {
        s.max_batch_size = 2;
        s.max_concurrency = 3;
    });
    let running = start(&tdb, "limited", s, rec.clone()).await?;
    assert!(running.wait_idle(Duration::from_secs(60)).await);
    running.stop().await;
    assert_eq!(
        rec.peak.load(Ordering::SeqCst),
        3,
        "never more than max_concurrency batches at once, and it is reached"
    );
    assert_eq!(rec.delivered(), 40);
    Ok(())
}

async fn handler_error_retries_the_whole_batch(backend: Backend) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    send_n(&tdb, "flaky", 5).await?;
    let rec = Arc::new(Recorder {
        fail_first_deliveries: true,
        ..Recorder::default()
    });
    let s = settings(|s| s.retry_delay = Duration::from_millis(50));
    let running = start(&tdb, "flaky", s, rec.clone()).await?;
    assert!(running.wait_idle(Duration::from_secs(30)).await);
    let counters = running.metrics().snapshot()[&q("flaky")].clone();
    running.stop().await;
    let deliveries: Vec<(MessageId, u32)> = rec.batches().into_iter().flatten().collect();
    assert_eq!(
        deliveries.iter().filter(|(_, a)| *a == 1).count(),
        5,
        "all five failed once"
    );
    assert_eq!(
        deliveries.iter().filter(|(_, a)| *a == 2).count(),
        5,
        "and all five succeeded on retry"
    );
    assert_eq!((counters.retried, counters.acked), (5, 5));
    assert!(counters.handler_errors >= 1);
    Ok(())
}

async fn panicking_handler_is_retried_not_fatal(backend: Backend) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    send_n(&tdb, "panicky", 3).await?;
    let rec = Arc::new(Recorder {
        panic_first_delivery: true,
        ..Recorder::default()
    });
    let s = settings(|s| s.retry_delay = Duration::from_millis(50));
    let running = start(&tdb, "panicky", s, rec.clone()).await?;
    assert!(running.wait_idle(Duration::from_secs(30)).await);
    running.stop().await;
    let attempts: Vec<u32> = rec
        .batches()
        .into_iter()
        .flatten()
        .map(|(_, a)| a)
        .collect();
    assert_eq!(
        attempts.iter().filter(|a| **a == 2).count(),
        3,
        "redelivered after the panic: {attempts:?}"
    );
    Ok(())
}

async fn exhausted_retries_reach_the_dlq(backend: Backend) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    let ids = send_n(&tdb, "poison", 2).await?;
    #[derive(Debug)]
    struct AlwaysFails;
    #[async_trait::async_trait]
    impl BatchHandler for AlwaysFails {
        async fn handle(&self, _batch: &mut MessageBatch) -> Result<(), HandlerError> {
            Err(HandlerError::retryable("cannot parse"))
        }
    }
    let s = settings(|s| {
        s.max_retries = 2;
        s.retry_delay = Duration::from_millis(20);
        s.dead_letter_queue = Some(q("poison.dlq"));
    });
    let mut rt = Runtime::new(tdb.db().queue(), fast_options());
    rt.register(q("poison"), s, Arc::new(AlwaysFails))?;
    let running = rt.start().await?;
    assert!(running.wait_idle(Duration::from_secs(30)).await);
    running.stop().await;
    let dead = tdb.db().queue().dead_letters(&q("poison.dlq"), 10).await?;
    assert_eq!(dead.iter().map(|d| d.id).collect::<Vec<_>>(), ids);
    assert!(dead.iter().all(|d| d.attempts == 3
        && d.error
            .as_deref()
            .is_some_and(|e| e.contains("cannot parse"))));
    assert_eq!(tdb.db().queue().stats(&q("poison")).await?.dlq_depth, 2);
    Ok(())
}

async fn heartbeat_keeps_a_long_batch_leased(backend: Backend) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    send_n(&tdb, "slow", 1).await?;
    // The handler runs 3.5 s on a 1 s lease: only heartbeats keep a second worker off it.
    let rec = Arc::new(Recorder {
        hold: Duration::from_millis(3500),
        ..Recorder::default()
    });
    let s = settings(|s| s.lease = Duration::from_secs(1));
    let running = start(&tdb, "slow", s.clone(), rec.clone()).await?;
    let rival = Arc::new(Recorder::default());
    let rival_running = start(&tdb, "slow", s, rival.clone()).await?;
    assert!(running.wait_idle(Duration::from_secs(30)).await);
    running.stop().await;
    rival_running.stop().await;
    assert_eq!(
        rec.delivered() + rival.delivered(),
        1,
        "delivered exactly once despite the short lease"
    );
    Ok(())
}

async fn shutdown_releases_batches_after_the_grace_period(backend: Backend) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    send_n(&tdb, "stuck", 2).await?;
    let rec = Arc::new(Recorder {
        hold: Duration::from_secs(600),
        ..Recorder::default()
    });
    let mut rt = Runtime::new(
        tdb.db().queue(),
        RuntimeOptions {
            poll_interval: Duration::from_millis(50),
            shutdown_grace: Duration::from_millis(300),
        },
    );
    rt.register(
        q("stuck"),
        settings(|s| s.lease = Duration::from_secs(60)),
        rec.clone(),
    )?;
    let running = rt.start().await?;
    wait_for(Duration::from_secs(20), || async {
        Ok((rec.delivered() == 2).then_some(()))
    })
    .await?;
    let stopped = Instant::now();
    let report = running.stop().await;
    assert!(
        stopped.elapsed() < Duration::from_secs(10),
        "the grace period bounds shutdown"
    );
    assert!(report.released_batches >= 1);
    let stats = tdb.db().queue().stats(&q("stuck")).await?;
    // Released, not left under the 60 s lease: ready at once, attempt not counted.
    assert_eq!((stats.depth, stats.in_flight), (2, 0));
    let claim = tdb
        .db()
        .queue()
        .claim(&q("stuck"), &QueueSettings::default(), 10)
        .await?;
    assert!(
        claim.messages.iter().all(|m| m.attempts == 1),
        "released deliveries are not counted"
    );
    Ok(())
}

cognomega_testkit::both_backends!(
    batches_respect_max_batch_size,
    batch_timeout_gathers_a_partial_batch,
    concurrency_limit_is_honoured,
    handler_error_retries_the_whole_batch,
    panicking_handler_is_retried_not_fatal,
    exhausted_retries_reach_the_dlq,
    heartbeat_keeps_a_long_batch_leased,
    shutdown_releases_batches_after_the_grace_period,
);
