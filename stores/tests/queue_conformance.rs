//! The queue contract (`cognomega_core::queue::QueueDriver` plus transactional enqueue), checked
//! the same way against every native backend.
//!
//! Each check is an `async fn name(backend: Backend) -> anyhow::Result<()>`; the
//! `conformance!` macro at the bottom turns it into `sqlite::name` and `postgres::name` tests.
//! A behaviour change in one driver belongs here first, so the other driver has to follow.
//!
//! Timing: anything that must happen "eventually" is polled with a generous deadline
//! ([`PATIENCE`]), because CI runs on a loaded two-core machine. The one tight bound is the
//! wake-up check ([`WAKE_PROMPTLY`]), which is about a hint arriving at all, not about speed.

use std::cell::{Cell, RefCell};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cognomega_core::queue::{
    settle_batch, Claim, HandlerError, IdempotencyKey, LeaseToken, MessageBatch, MessageId,
    OutgoingMessage, PruneReport, QueueDriver, QueueError, QueueName, QueueSettings, SettleReport,
    Settlement, DRAIN_BUCKETS_MS,
};
use cognomega_core::time::UnixMillis;
use cognomega_stores::{Database, Tx};
use cognomega_testkit::{q, settings, wait_for, wait_until, Backend, TestDb};
use tokio::time::{sleep, sleep_until, Instant};

/// Deadline for anything that should happen soon: far longer than any delay or lease used
/// below, so a slow machine does not fail a correct driver.
const PATIENCE: Duration = Duration::from_secs(20);

/// A lease short enough to let it expire inside a test, long enough that a stalled machine
/// does not let it expire between two statements that expect it held (the minimum is 1 s).
const SHORT_LEASE: Duration = Duration::from_secs(2);

/// How soon a waiting consumer must notice a send. Without the wake-up hint it would sleep until
/// its `max_wait` (a minute here) or at best a one-second poll, so anything this short shows the
/// hint arrived.
const WAKE_PROMPTLY: Duration = Duration::from_millis(500);

/// Slack for comparing the test's clock with timestamps the store took (PostgreSQL uses the
/// server's clock; both run on this machine, so only rounding and statement latency differ).
const CLOCK_SLACK_MS: i64 = 2_000;

/// One test's database and the queue driver over it.
struct Fixture {
    // Declared first so the driver (and any listener it runs) goes before the database.
    driver: Arc<dyn QueueDriver>,
    tdb: TestDb,
}

impl Fixture {
    async fn new(backend: Backend) -> anyhow::Result<Self> {
        let tdb = TestDb::new(backend).await?;
        let driver = tdb.db().queue();
        Ok(Self { driver, tdb })
    }

    /// Declares `name` with `settings` and returns its name.
    async fn declare(&self, name: &str, settings: &QueueSettings) -> anyhow::Result<QueueName> {
        let queue = q(name);
        self.driver.declare(&queue, settings).await?;
        Ok(queue)
    }

    async fn send(&self, queue: &QueueName, body: &str) -> anyhow::Result<MessageId> {
        Ok(self.driver.send(queue, msg(body)).await?.id)
    }

    async fn claim(
        &self,
        queue: &QueueName,
        settings: &QueueSettings,
        max: usize,
    ) -> anyhow::Result<Claim> {
        Ok(self.driver.claim(queue, settings, max).await?)
    }

    /// Polls until a claim delivers something (or dead-letters something on the way).
    async fn claim_eventually(
        &self,
        queue: &QueueName,
        settings: &QueueSettings,
        max: usize,
    ) -> anyhow::Result<Claim> {
        wait_for(PATIENCE, || async {
            let claim = self.claim(queue, settings, max).await?;
            Ok((!claim.messages.is_empty() || !claim.dead.is_empty()).then_some(claim))
        })
        .await
    }

    async fn ack_all(
        &self,
        queue: &QueueName,
        settings: &QueueSettings,
        claim: &Claim,
    ) -> anyhow::Result<SettleReport> {
        Ok(self.driver.settle(queue, settings, &acks(claim)).await?)
    }

    /// Runs a claim through a handler the way the consumer runtime does: `decide` plays the
    /// handler's per-message calls, `outcome` is what it returned.
    async fn handle(
        &self,
        queue: &QueueName,
        settings: &QueueSettings,
        claim: Claim,
        outcome: Result<(), HandlerError>,
        decide: impl FnOnce(&mut MessageBatch),
    ) -> anyhow::Result<SettleReport> {
        let mut batch = MessageBatch::new(queue.clone(), claim.messages);
        decide(&mut batch);
        let items = settle_batch(batch, &outcome, settings, claim.token, || 0.5);
        Ok(self.driver.settle(queue, settings, &items).await?)
    }
}

fn msg(body: &str) -> OutgoingMessage {
    OutgoingMessage::new(body.as_bytes().to_vec())
}

fn key(raw: &str) -> IdempotencyKey {
    IdempotencyKey::parse(raw).expect("valid idempotency key in a test")
}

fn ids(claim: &Claim) -> Vec<MessageId> {
    claim.messages.iter().map(|m| m.id).collect()
}

fn bodies(claim: &Claim) -> Vec<String> {
    claim
        .messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.body).into_owned())
        .collect()
}

fn acks(claim: &Claim) -> Vec<Settlement> {
    claim
        .messages
        .iter()
        .map(|m| Settlement::Ack {
            id: m.id,
            token: claim.token,
        })
        .collect()
}

fn now_ms() -> i64 {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis();
    i64::try_from(ms).expect("fits")
}

/// Sleeps until the wall clock is safely past `instant` (a lease end the store computed).
async fn sleep_past(instant: UnixMillis) {
    let wait = instant.0 + 200 - now_ms();
    if wait > 0 {
        sleep(Duration::from_millis(u64::try_from(wait).unwrap_or(0))).await;
    }
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).expect("fits")
}

// ---------------------------------------------------------------------------------------------
// Sending and claiming
// ---------------------------------------------------------------------------------------------

async fn send_and_claim_round_trip(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    let s = QueueSettings::default();
    let work = fx.declare("work", &s).await?;

    let before = now_ms();
    let sent = fx
        .driver
        .send(
            &work,
            OutgoingMessage::json(&serde_json::json!({"n": 1}))?.request_id("req-1"),
        )
        .await?;
    let plain = fx.send(&work, "plain").await?;
    let after = now_ms();
    assert!(!sent.duplicate);
    assert_ne!(sent.id, plain);

    let claim = fx.claim(&work, &s, 10).await?;
    assert_eq!(ids(&claim), [sent.id, plain]);
    assert!(claim.dead.is_empty());
    let first = &claim.messages[0];
    assert_eq!(
        first.json::<serde_json::Value>()?,
        serde_json::json!({"n": 1})
    );
    assert_eq!(first.content_type.as_deref(), Some("application/json"));
    assert_eq!(first.request_id.as_deref(), Some("req-1"));
    assert_eq!(first.attempts, 1);
    assert!(
        (before - CLOCK_SLACK_MS..=after + CLOCK_SLACK_MS).contains(&first.enqueued_at.0),
        "enqueued_at {} outside [{before}, {after}]",
        first.enqueued_at.0
    );
    let second = &claim.messages[1];
    assert_eq!(second.body, b"plain");
    assert_eq!(second.content_type, None);
    assert_eq!(second.request_id, None);
    assert_eq!(second.attempts, 1);
    let lease = ms(s.lease);
    assert!(
        claim.lease_until.0 >= before + lease - CLOCK_SLACK_MS
            && claim.lease_until.0 <= now_ms() + lease + CLOCK_SLACK_MS,
        "lease_until {} is not about {lease} ms from now",
        claim.lease_until.0
    );

    // Leased messages are invisible until the lease ends.
    let again = fx.claim(&work, &s, 10).await?;
    assert!(again.messages.is_empty(), "re-claimed {:?}", ids(&again));

    // Every claim draws a strictly larger fencing token.
    let third = fx.send(&work, "third").await?;
    let next = fx.claim(&work, &s, 10).await?;
    assert_eq!(ids(&next), [third]);
    assert!(
        next.token > claim.token,
        "{:?} <= {:?}",
        next.token,
        claim.token
    );
    Ok(())
}

async fn claims_oldest_visible_first(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    let s = QueueSettings::default();
    let work = fx.declare("work", &s).await?;

    let a = fx.send(&work, "a").await?;
    let b = fx.send(&work, "b").await?;
    let c = fx.send(&work, "c").await?;
    for expected in [a, b, c] {
        let claim = fx.claim(&work, &s, 1).await?;
        assert_eq!(ids(&claim), [expected]);
    }

    // Order is by visibility, not by id: a message sent first with a delay comes after one
    // sent later without.
    let late = fx
        .driver
        .send(&work, msg("late").delay(Duration::from_millis(1500)))
        .await?
        .id;
    let early = fx.send(&work, "early").await?;
    wait_until(PATIENCE, || async {
        fx.driver
            .stats(&work)
            .await
            .is_ok_and(|st| st.depth == 2 && st.delayed == 0)
    })
    .await?;
    assert_eq!(ids(&fx.claim(&work, &s, 1).await?), [early]);
    assert_eq!(ids(&fx.claim(&work, &s, 1).await?), [late]);
    Ok(())
}

async fn claim_respects_max(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    let s = QueueSettings::default();
    let work = fx.declare("work", &s).await?;
    let receipts = fx
        .driver
        .send_batch(&work, (0..7).map(|i| msg(&i.to_string())).collect())
        .await?;
    let sent: Vec<MessageId> = receipts.iter().map(|r| r.id).collect();

    let mut seen = Vec::new();
    for expected in [3, 3, 1, 0] {
        let claim = fx.claim(&work, &s, 3).await?;
        assert_eq!(claim.messages.len(), expected);
        seen.extend(ids(&claim));
    }
    assert_eq!(
        seen, sent,
        "each message claimed exactly once, oldest first"
    );
    Ok(())
}

async fn send_batch_receipts_follow_input_order(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    let s = QueueSettings::default();
    let work = fx.declare("work", &s).await?;
    assert!(fx.driver.send_batch(&work, Vec::new()).await?.is_empty());

    // Plain and keyed messages interleaved: a driver that inserts them in groups must still
    // answer in input order.
    let batch = vec![
        msg("0"),
        msg("1").idempotency_key(key("k-1")),
        msg("2"),
        msg("3"),
        msg("4").idempotency_key(key("k-4")),
        msg("5"),
    ];
    let receipts = fx.driver.send_batch(&work, batch).await?;
    assert_eq!(receipts.len(), 6);
    assert!(receipts.iter().all(|r| !r.duplicate));
    let unique: HashSet<MessageId> = receipts.iter().map(|r| r.id).collect();
    assert_eq!(unique.len(), 6);

    let claim = fx.claim(&work, &s, 10).await?;
    let body_of: HashMap<MessageId, String> = claim
        .messages
        .iter()
        .map(|m| (m.id, String::from_utf8_lossy(&m.body).into_owned()))
        .collect();
    for (i, receipt) in receipts.iter().enumerate() {
        assert_eq!(body_of[&receipt.id], i.to_string(), "receipt {i}");
    }
    Ok(())
}

/// Bursts of concurrent sends with pauses between them: every send is answered with its
/// receipt. On SQLite concurrent sends share a group commit, and the hand-over from one
/// committer to the next is exactly what bursts exercise (a committer finishing as the next
/// burst started once dropped a sender: "the group commit went away", seen under `bench ask`;
/// that window is too narrow to hit on demand, so this checks the behaviour around it).
async fn concurrent_send_bursts_all_succeed(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    let s = QueueSettings::default();
    let work = fx.declare("work", &s).await?;
    let mut sent = 0;
    for round in 0_u64..40 {
        let sends = (0..16).map(|i| {
            let driver = fx.driver.clone();
            let work = work.clone();
            tokio::spawn(async move { driver.send(&work, msg(&format!("{round}-{i}"))).await })
        });
        for joined in futures::future::join_all(sends).await {
            joined??;
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(round % 3)).await;
    }
    assert_eq!(fx.driver.stats(&work).await?.depth, sent);
    Ok(())
}

/// A sender that goes away while it commits (its client hung up) strands nobody: on SQLite a
/// sender that finds nobody else sending commits in its own task, and whatever queued behind it
/// must still be answered, by a committer it hands over to. Every surviving send is answered
/// within a bound (a stranded one would wait forever), and the queue holds exactly those plus
/// whatever the dropped senders committed before they went away.
async fn a_sender_dropped_mid_commit_strands_nobody(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    let s = QueueSettings::default();
    let work = fx.declare("work", &s).await?;
    let mut answered = 0;
    for round in 0_u64..60 {
        let lone = {
            let (driver, work) = (fx.driver.clone(), work.clone());
            tokio::spawn(async move { driver.send(&work, msg(&format!("lone-{round}"))).await })
        };
        // Let the lone sender start (alone), then queue others behind it and drop it.
        for _ in 0..round % 4 {
            tokio::task::yield_now().await;
        }
        let followers: Vec<_> = (0..4)
            .map(|i| {
                let (driver, work) = (fx.driver.clone(), work.clone());
                tokio::spawn(async move { driver.send(&work, msg(&format!("{round}-{i}"))).await })
            })
            .collect();
        lone.abort();
        for f in followers {
            tokio::time::timeout(Duration::from_secs(10), f)
                .await
                .map_err(|_| anyhow::anyhow!("round {round}: a send was stranded"))???;
            answered += 1;
        }
    }
    let after = tokio::time::timeout(Duration::from_secs(10), fx.driver.send(&work, msg("after")))
        .await
        .map_err(|_| anyhow::anyhow!("the queue took no send after the drops"))??;
    assert!(!after.duplicate);
    let depth = fx.driver.stats(&work).await?.depth;
    // Each dropped sender either committed before it went away or left nothing.
    assert!(
        (answered + 1..=answered + 61).contains(&depth),
        "depth {depth} after {answered} answered sends"
    );
    Ok(())
}

async fn delay_is_honoured(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    let s = QueueSettings::default();
    let work = fx.declare("work", &s).await?;
    let delay = Duration::from_secs(2);

    let sent_at = now_ms();
    let id = fx.driver.send(&work, msg("later").delay(delay)).await?.id;
    assert!(fx.claim(&work, &s, 10).await?.messages.is_empty());
    let st = fx.driver.stats(&work).await?;
    assert_eq!((st.delayed, st.depth, st.in_flight), (1, 0, 0));

    let claim = fx.claim_eventually(&work, &s, 10).await?;
    let claimed_at = now_ms();
    assert_eq!(ids(&claim), [id]);
    assert!(
        claimed_at >= sent_at + ms(delay),
        "claimed {} ms after send, before the {delay:?} delay",
        claimed_at - sent_at
    );
    let st = fx.driver.stats(&work).await?;
    assert_eq!((st.delayed, st.depth, st.in_flight), (0, 0, 1));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Idempotency keys
// ---------------------------------------------------------------------------------------------

async fn dedups_by_idempotency_key(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    let s = QueueSettings::default();
    let a = fx.declare("a", &s).await?;
    let b = fx.declare("b", &s).await?;

    let first = fx
        .driver
        .send(&a, msg("first").idempotency_key(key("k1")))
        .await?;
    let second = fx
        .driver
        .send(&a, msg("second").idempotency_key(key("k1")))
        .await?;
    assert!(!first.duplicate);
    assert!(second.duplicate);
    assert_eq!(second.id, first.id);

    // A key repeated inside one batch dedups against its first occurrence.
    let batch = fx
        .driver
        .send_batch(
            &a,
            vec![
                msg("k2-a").idempotency_key(key("k2")),
                msg("k2-b").idempotency_key(key("k2")),
                msg("unkeyed"),
            ],
        )
        .await?;
    assert!(!batch[0].duplicate);
    assert!(batch[1].duplicate);
    assert_eq!(batch[1].id, batch[0].id);
    assert!(!batch[2].duplicate);

    // Keys are per queue.
    let other = fx
        .driver
        .send(&b, msg("elsewhere").idempotency_key(key("k1")))
        .await?;
    assert!(!other.duplicate);
    assert_ne!(other.id, first.id);

    let claim = fx.claim(&a, &s, 10).await?;
    assert_eq!(bodies(&claim), ["first", "k2-a", "unkeyed"]);
    assert_eq!(bodies(&fx.claim(&b, &s, 10).await?), ["elsewhere"]);

    // The key outlives the message: inside the window a resend after the ack is still a no-op.
    assert_eq!(fx.ack_all(&a, &s, &claim).await?.acked, 3);
    let resend = fx
        .driver
        .send(&a, msg("third").idempotency_key(key("k1")))
        .await?;
    assert!(resend.duplicate);
    assert_eq!(resend.id, first.id);
    assert!(fx.claim(&a, &s, 10).await?.messages.is_empty());
    Ok(())
}

async fn dedup_window_expires(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    // Short, yet long enough that the two sends below fall inside it on a stalled machine.
    let window = Duration::from_secs(1);
    let s = settings(|s| s.dedup_window = window);
    let work = fx.declare("work", &s).await?;

    let first = fx
        .driver
        .send(&work, msg("1").idempotency_key(key("k")))
        .await?;
    let window_ends = Instant::now() + window;
    let dup = fx
        .driver
        .send(&work, msg("2").idempotency_key(key("k")))
        .await?;
    assert!(dup.duplicate);
    assert_eq!(dup.id, first.id);

    sleep_until(window_ends + Duration::from_millis(300)).await;
    let fresh = fx
        .driver
        .send(&work, msg("3").idempotency_key(key("k")))
        .await?;
    assert!(
        !fresh.duplicate,
        "the key was still deduplicating after its window"
    );
    assert_ne!(fresh.id, first.id);
    // And the key now guards the new message.
    let dup = fx
        .driver
        .send(&work, msg("4").idempotency_key(key("k")))
        .await?;
    assert!(dup.duplicate);
    assert_eq!(dup.id, fresh.id);

    assert_eq!(bodies(&fx.claim(&work, &s, 10).await?), ["1", "3"]);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Leases and fencing tokens
// ---------------------------------------------------------------------------------------------

async fn redelivers_after_lease_expiry(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    let s = settings(|s| s.lease = SHORT_LEASE);
    let work = fx.declare("work", &s).await?;
    let id = fx.send(&work, "crashy").await?;

    let first = fx.claim(&work, &s, 10).await?;
    assert_eq!(ids(&first), [id]);
    assert!(fx.claim(&work, &s, 10).await?.messages.is_empty());

    // Never settled, as if the worker crashed: the expired lease makes it visible again.
    let second = fx.claim_eventually(&work, &s, 10).await?;
    assert_eq!(ids(&second), [id]);
    assert_eq!(second.messages[0].attempts, 2);
    assert_eq!(second.messages[0].body, b"crashy");
    assert!(second.token > first.token);
    Ok(())
}

async fn stale_token_is_refused(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    let s = settings(|s| {
        s.lease = SHORT_LEASE;
        s.dead_letter_queue = Some(q("work-dlq"));
    });
    let work = fx.declare("work", &s).await?;
    let id = fx.send(&work, "fenced").await?;
    let old = fx.claim(&work, &s, 10).await?;
    let new = fx.claim_eventually(&work, &s, 10).await?;
    assert_eq!(ids(&new), [id]);
    // Hold it for the rest of the test, however slowly the test runs.
    assert_eq!(
        fx.driver
            .extend_lease(new.token, &[id], Duration::from_secs(60))
            .await?,
        1
    );

    // The first worker wakes up and tries every kind of settlement with its stale token.
    let stale = [
        Settlement::Ack {
            id,
            token: old.token,
        },
        Settlement::Retry {
            id,
            token: old.token,
            delay: Duration::ZERO,
            error: Some("late".into()),
        },
        Settlement::DeadLetter {
            id,
            token: old.token,
            error: "late".into(),
        },
        Settlement::Release {
            id,
            token: old.token,
        },
    ];
    for item in &stale {
        let report = fx
            .driver
            .settle(&work, &s, std::slice::from_ref(item))
            .await?;
        assert_eq!(report.refused, [id], "{item:?} was not refused");
        assert_eq!(
            report.acked + report.retried + report.dead_lettered + report.dropped + report.released,
            0,
            "{item:?} changed something"
        );
    }
    assert_eq!(fx.driver.extend_lease(old.token, &[id], s.lease).await?, 0);
    let st = fx.driver.stats(&work).await?;
    assert_eq!((st.in_flight, st.depth, st.dlq_depth), (1, 0, 0));

    // The current holder settles normally, exactly once.
    let report = fx.ack_all(&work, &s, &new).await?;
    assert_eq!((report.acked, report.refused.len()), (1, 0));
    let twice = fx.ack_all(&work, &s, &new).await?;
    assert_eq!(twice.acked, 0);
    assert_eq!(twice.refused, [id]);
    let st = fx.driver.stats(&work).await?;
    assert_eq!((st.in_flight, st.depth), (0, 0));
    Ok(())
}

async fn extend_lease_holds_the_message(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    let s = settings(|s| s.lease = SHORT_LEASE);
    let work = fx.declare("work", &s).await?;
    let id = fx.send(&work, "long job").await?;
    let bystander = fx.send(&work, "other").await?;
    let claim = fx.claim(&work, &s, 1).await?;
    assert_eq!(ids(&claim), [id]);

    assert_eq!(
        fx.driver
            .extend_lease(claim.token, &[id], Duration::from_secs(60))
            .await?,
        1
    );
    // Ids not held under this token are not extended.
    assert_eq!(
        fx.driver
            .extend_lease(claim.token, &[bystander], Duration::from_secs(60))
            .await?,
        0
    );
    assert_eq!(
        fx.driver
            .extend_lease(
                LeaseToken(claim.token.0 + 1_000),
                &[id],
                Duration::from_secs(60)
            )
            .await?,
        0
    );

    // Well past the original lease the message is still held; only the other one comes.
    sleep(SHORT_LEASE * 2).await;
    let other = fx.claim(&work, &s, 10).await?;
    assert_eq!(ids(&other), [bystander]);
    assert_eq!(fx.ack_all(&work, &s, &claim).await?.acked, 1);
    assert_eq!(
        fx.driver
            .extend_lease(claim.token, &[id], Duration::from_secs(60))
            .await?,
        0,
        "an acked message has no lease to extend"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Retries, dead letters, replay, release
// ---------------------------------------------------------------------------------------------

async fn retry_redelivers_after_its_delay(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    let s = QueueSettings::default();
    let work = fx.declare("work", &s).await?;
    let id = fx.send(&work, "flaky").await?;
    let claim = fx.claim(&work, &s, 10).await?;

    let delay = Duration::from_secs(2);
    let retried_at = now_ms();
    let report = fx
        .driver
        .settle(
            &work,
            &s,
            &[Settlement::Retry {
                id,
                token: claim.token,
                delay,
                error: Some("upstream 503".into()),
            }],
        )
        .await?;
    assert_eq!((report.retried, report.refused.len()), (1, 0));
    assert_eq!(
        last_error(&fx.tdb, id).await?.as_deref(),
        Some("upstream 503")
    );
    assert!(fx.claim(&work, &s, 10).await?.messages.is_empty());
    let st = fx.driver.stats(&work).await?;
    assert_eq!((st.delayed, st.in_flight, st.depth), (1, 0, 0));

    let again = fx.claim_eventually(&work, &s, 10).await?;
    assert!(
        now_ms() >= retried_at + ms(delay),
        "redelivered before the retry delay"
    );
    assert_eq!(ids(&again), [id]);
    assert_eq!(again.messages[0].attempts, 2);
    Ok(())
}

/// Retries the message `rounds` times through `settle_batch` with a retryable handler error,
/// checking the attempt count of each delivery. Returns the report of the last round.
async fn fail_retryably(
    fx: &Fixture,
    queue: &QueueName,
    s: &QueueSettings,
    id: MessageId,
    rounds: u32,
) -> anyhow::Result<SettleReport> {
    let mut last = SettleReport::default();
    for attempt in 1..=rounds {
        let claim = fx.claim_eventually(queue, s, 10).await?;
        assert_eq!(ids(&claim), [id]);
        assert_eq!(claim.messages[0].attempts, attempt);
        last = fx
            .handle(
                queue,
                s,
                claim,
                Err(HandlerError::retryable("db down")),
                |_| {},
            )
            .await?;
        if attempt < rounds {
            assert_eq!(
                (last.retried, last.dead_lettered),
                (1, 0),
                "round {attempt}"
            );
        }
    }
    Ok(last)
}

async fn dead_letters_after_max_retries(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    let dlq = fx.declare("work-dlq", &QueueSettings::default()).await?;
    let s = settings(|s| {
        s.max_retries = 2;
        // Zero backoff keeps the test fast; the delays themselves are checked elsewhere.
        s.retry_delay = Duration::ZERO;
        s.dead_letter_queue = Some(dlq.clone());
    });
    let work = fx.declare("work", &s).await?;
    let sent = fx.driver.send(&work, msg("doomed")).await?.id;

    let report = fail_retryably(&fx, &work, &s, sent, 3).await?;
    assert_eq!(
        (report.dead_lettered, report.retried, report.dropped),
        (1, 0, 0)
    );

    assert!(fx.claim(&work, &s, 10).await?.messages.is_empty());
    let st = fx.driver.stats(&work).await?;
    assert_eq!(
        (st.depth, st.in_flight, st.delayed, st.dlq_depth),
        (0, 0, 0, 1)
    );
    let dead = fx.driver.dead_letters(&dlq, 10).await?;
    assert_eq!(dead.len(), 1);
    let d = &dead[0];
    assert_eq!(d.id, sent);
    assert_eq!(d.original_queue.as_ref(), Some(&work));
    assert_eq!(d.attempts, 3);
    assert!(
        d.error.as_deref().is_some_and(|e| e.contains("db down")),
        "{:?}",
        d.error
    );
    assert_eq!(d.body_preview, "doomed");
    assert!(d.dead_at.is_some_and(|t| t >= d.enqueued_at));

    // Without a dead-letter queue the message is dropped.
    let s_drop = settings(|s| {
        s.max_retries = 1;
        s.retry_delay = Duration::ZERO;
    });
    let lossy = fx.declare("lossy", &s_drop).await?;
    let id = fx.send(&lossy, "gone").await?;
    let report = fail_retryably(&fx, &lossy, &s_drop, id, 2).await?;
    assert_eq!((report.dropped, report.dead_lettered), (1, 0));
    let st = fx.driver.stats(&lossy).await?;
    assert_eq!(
        (st.depth, st.in_flight, st.delayed, st.dlq_depth),
        (0, 0, 0, 0)
    );
    assert!(fx.claim(&lossy, &s_drop, 10).await?.messages.is_empty());
    Ok(())
}

async fn expired_last_lease_dead_letters_on_claim(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    let dlq = q("work-dlq");
    let s = settings(|s| {
        s.max_retries = 1;
        s.lease = SHORT_LEASE;
        s.dead_letter_queue = Some(dlq.clone());
    });
    let work = fx.declare("work", &s).await?;
    let id = fx.send(&work, "hangs").await?;

    // Two deliveries (the allowed maximum) whose leases both run out.
    let first = fx.claim(&work, &s, 10).await?;
    assert_eq!(ids(&first), [id]);
    let second = fx.claim_eventually(&work, &s, 10).await?;
    assert_eq!(ids(&second), [id]);
    assert_eq!(second.messages[0].attempts, 2);
    sleep_past(second.lease_until).await;

    // The claim that finds it again dead-letters it instead of delivering it a third time,
    // and still delivers what else is visible.
    let keep = fx.send(&work, "healthy").await?;
    let third = fx.claim(&work, &s, 10).await?;
    assert_eq!(
        third
            .dead
            .iter()
            .map(|m| (m.id, m.attempts))
            .collect::<Vec<_>>(),
        [(id, 2)],
        "the claim names what it dead-lettered, with the deliveries it got"
    );
    assert_eq!(third.dead[0].body, b"hangs");
    assert_eq!(
        ids(&third),
        [keep],
        "the exhausted message was delivered again"
    );

    let dead = fx.driver.dead_letters(&dlq, 10).await?;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].id, id);
    assert_eq!(dead[0].original_queue.as_ref(), Some(&work));
    assert_eq!(
        dead[0].attempts, 2,
        "deliveries it got, not claims that saw it"
    );
    assert!(dead[0].error.is_some());
    assert_eq!(fx.driver.stats(&work).await?.dlq_depth, 1);

    // Without a dead-letter queue the exhausted message is dropped, and still counted.
    let s_drop = settings(|s| {
        s.max_retries = 0;
        s.lease = SHORT_LEASE;
    });
    let lossy = fx.declare("lossy", &s_drop).await?;
    let id = fx.send(&lossy, "hangs too").await?;
    assert_eq!(ids(&fx.claim(&lossy, &s_drop, 10).await?), [id]);
    let after = fx.claim_eventually(&lossy, &s_drop, 10).await?;
    assert_eq!(after.dead.len(), 1);
    assert!(after.messages.is_empty());
    let st = fx.driver.stats(&lossy).await?;
    assert_eq!((st.depth, st.in_flight, st.delayed), (0, 0, 0));
    Ok(())
}

async fn fatal_dead_letters_at_once(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    let dlq = q("work-dlq");
    let s = settings(|s| {
        s.max_retries = 5;
        s.dead_letter_queue = Some(dlq.clone());
    });
    let work = fx.declare("work", &s).await?;
    let bad = fx.send(&work, "bad").await?;
    let good = fx.send(&work, "good").await?;

    // One message marked fatal by the handler, the rest acked by its Ok.
    let claim = fx.claim(&work, &s, 10).await?;
    let report = fx
        .handle(&work, &s, claim, Ok(()), |batch| {
            assert!(batch.fail(bad, "unparseable"));
        })
        .await?;
    assert_eq!((report.dead_lettered, report.acked), (1, 1));

    // A fatal handler error dead-letters the whole undecided batch on its first delivery.
    let c = fx.send(&work, "c").await?;
    let d = fx.send(&work, "d").await?;
    let claim = fx.claim(&work, &s, 10).await?;
    let report = fx
        .handle(
            &work,
            &s,
            claim,
            Err(HandlerError::fatal("schema changed")),
            |_| {},
        )
        .await?;
    assert_eq!(
        (report.dead_lettered, report.retried, report.acked),
        (2, 0, 0)
    );

    let dead = fx.driver.dead_letters(&dlq, 10).await?;
    let summary: Vec<(MessageId, u32, Option<&str>)> = dead
        .iter()
        .map(|d| (d.id, d.attempts, d.error.as_deref()))
        .collect();
    assert_eq!(
        summary,
        [
            (bad, 1, Some("unparseable")),
            (c, 1, Some("schema changed")),
            (d, 1, Some("schema changed")),
        ]
    );
    assert!(!dead.iter().any(|m| m.id == good));
    let st = fx.driver.stats(&work).await?;
    assert_eq!((st.depth, st.in_flight, st.dlq_depth), (0, 0, 3));
    Ok(())
}

async fn replay_moves_dead_messages_back(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    let dlq = q("work-dlq");
    let s = settings(|s| {
        s.max_retries = 0;
        s.dead_letter_queue = Some(dlq.clone());
    });
    let work = fx.declare("work", &s).await?;
    let sent = fx
        .driver
        .send_batch(&work, vec![msg("one"), msg("two"), msg("three")])
        .await?;
    let [one, two, three] = [sent[0].id, sent[1].id, sent[2].id];
    let claim = fx.claim(&work, &s, 10).await?;
    let report = fx
        .handle(
            &work,
            &s,
            claim,
            Err(HandlerError::retryable("boom")),
            |_| {},
        )
        .await?;
    assert_eq!(report.dead_lettered, 3);
    assert_eq!(fx.driver.stats(&work).await?.dlq_depth, 3);

    // By id: only that one goes back, with fresh attempts.
    assert_eq!(fx.driver.replay(&dlq, Some(&[two])).await?, 1);
    assert_eq!(
        fx.driver.replay(&dlq, Some(&[MessageId(i64::MAX)])).await?,
        0
    );
    let left: Vec<MessageId> = fx
        .driver
        .dead_letters(&dlq, 10)
        .await?
        .iter()
        .map(|d| d.id)
        .collect();
    assert_eq!(left, [one, three]);
    let claim = fx.claim(&work, &s, 10).await?;
    assert_eq!(ids(&claim), [two]);
    assert_eq!(claim.messages[0].attempts, 1);
    assert_eq!(claim.messages[0].body, b"two");
    fx.ack_all(&work, &s, &claim).await?;

    // All the rest.
    assert_eq!(fx.driver.replay(&dlq, None).await?, 2);
    assert!(fx.driver.dead_letters(&dlq, 10).await?.is_empty());
    assert_eq!(fx.driver.stats(&work).await?.dlq_depth, 0);
    assert!(fx
        .claim(&dlq, &QueueSettings::default(), 10)
        .await?
        .messages
        .is_empty());
    let claim = fx.claim(&work, &s, 10).await?;
    assert_eq!(ids(&claim), [one, three]);
    assert!(claim.messages.iter().all(|m| m.attempts == 1));
    assert_eq!(bodies(&claim), ["one", "three"]);
    Ok(())
}

async fn release_does_not_count_the_attempt(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    let s = QueueSettings::default();
    let work = fx.declare("work", &s).await?;
    let id = fx.send(&work, "interrupted").await?;
    let claim = fx.claim(&work, &s, 10).await?;
    assert_eq!(claim.messages[0].attempts, 1);

    let report = fx
        .driver
        .settle(
            &work,
            &s,
            &[Settlement::Release {
                id,
                token: claim.token,
            }],
        )
        .await?;
    assert_eq!((report.released, report.refused.len()), (1, 0));

    // Visible again at once, and the interrupted delivery did not count.
    let again = fx.claim(&work, &s, 10).await?;
    assert_eq!(ids(&again), [id]);
    assert_eq!(again.messages[0].attempts, 1);
    let report = fx
        .driver
        .settle(
            &work,
            &s,
            &[Settlement::Release {
                id,
                token: claim.token,
            }],
        )
        .await?;
    assert_eq!(report.refused, [id], "release with the old token");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Retention and statistics
// ---------------------------------------------------------------------------------------------

async fn retained_acks_are_pruned_after_retention(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    let short = settings(|s| s.retain_acked = Duration::from_millis(500));
    let long = settings(|s| s.retain_acked = Duration::from_secs(3600));
    let plain = QueueSettings::default();
    let brief = fx.declare("brief", &short).await?;
    let archive = fx.declare("archive", &long).await?;
    let work = fx.declare("work", &plain).await?;
    for (queue, s) in [(&brief, &short), (&archive, &long), (&work, &plain)] {
        fx.driver
            .send_batch(queue, vec![msg("x"), msg("y")])
            .await?;
        let claim = fx.claim(queue, s, 10).await?;
        assert_eq!(fx.ack_all(queue, s, &claim).await?.acked, 2);
        // Retained or not, an acked message is never delivered again.
        assert!(fx.claim(queue, s, 10).await?.messages.is_empty());
    }
    assert_eq!(fx.driver.stats(&brief).await?.acked_retained, 2);
    assert_eq!(fx.driver.stats(&archive).await?.acked_retained, 2);
    assert_eq!(fx.driver.stats(&work).await?.acked_retained, 0);

    // Prune until the short retention has passed; the sum shows nothing else went.
    let pruned = Cell::new(0);
    wait_for(PATIENCE, || async {
        pruned.set(pruned.get() + fx.driver.prune().await?.acked);
        Ok((pruned.get() >= 2).then_some(()))
    })
    .await?;
    assert_eq!(pruned.get(), 2, "only the queue with the short retention");
    assert_eq!(fx.driver.stats(&brief).await?.acked_retained, 0);
    assert_eq!(fx.driver.stats(&archive).await?.acked_retained, 2);
    Ok(())
}

async fn prune_deletes_old_dead_messages_and_expired_keys(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    let dlq = q("shared-dlq");
    let short = settings(|s| {
        s.max_retries = 0;
        s.dead_letter_queue = Some(dlq.clone());
        s.dead_retention = Duration::from_millis(500);
        s.dedup_window = Duration::from_millis(200);
    });
    let long = settings(|s| {
        s.max_retries = 0;
        s.dead_letter_queue = Some(dlq.clone());
    });
    let brief = fx.declare("brief", &short).await?;
    let keeper = fx.declare("keeper", &long).await?;
    for (queue, s) in [(&brief, &short), (&keeper, &long)] {
        fx.driver
            .send(queue, msg("dies").idempotency_key(key("k")))
            .await?;
        let claim = fx.claim(queue, s, 10).await?;
        let report = fx
            .handle(queue, s, claim, Err(HandlerError::fatal("no")), |_| {})
            .await?;
        assert_eq!(report.dead_lettered, 1);
    }
    assert_eq!(fx.driver.dead_letters(&dlq, 10).await?.len(), 2);

    // Prune until both short retentions have passed; the sums show nothing else went.
    let total = RefCell::new(PruneReport::default());
    wait_for(PATIENCE, || async {
        let r = fx.driver.prune().await?;
        let mut total = total.borrow_mut();
        total.acked += r.acked;
        total.dead += r.dead;
        total.dedup_keys += r.dedup_keys;
        Ok((total.dead >= 1 && total.dedup_keys >= 1).then_some(()))
    })
    .await?;
    let total = total.into_inner();
    assert_eq!((total.dead, total.dedup_keys, total.acked), (1, 1, 0));

    // The dead message of the queue with the default 14-day retention stays.
    let left = fx.driver.dead_letters(&dlq, 10).await?;
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].original_queue.as_ref(), Some(&keeper));
    assert_eq!(
        fx.driver.stats(&brief).await?.dlq_depth,
        1,
        "counts the shared DLQ"
    );

    // The expired key is gone, the 24-hour one still deduplicates.
    assert!(
        !fx.driver
            .send(&brief, msg("again").idempotency_key(key("k")))
            .await?
            .duplicate
    );
    assert!(
        fx.driver
            .send(&keeper, msg("again").idempotency_key(key("k")))
            .await?
            .duplicate
    );
    Ok(())
}

async fn stats_track_the_queue(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    let dlq = q("work-dlq");
    let s = settings(|s| s.dead_letter_queue = Some(dlq.clone()));
    let work = fx.declare("work", &s).await?;

    let empty = fx.driver.stats(&work).await?;
    assert_eq!(empty.queue, work);
    assert_eq!(
        (
            empty.depth,
            empty.in_flight,
            empty.delayed,
            empty.dlq_depth,
            empty.acked_retained
        ),
        (0, 0, 0, 0, 0)
    );
    assert_eq!(empty.oldest_age_ms, 0);
    assert_eq!(empty.drain.count(), 0);

    fx.driver
        .send_batch(&work, vec![msg("a"), msg("b"), msg("c")])
        .await?;
    fx.driver
        .send(&work, msg("later").delay(Duration::from_secs(3600)))
        .await?;
    let claim = fx.claim(&work, &s, 1).await?;
    let pause = Duration::from_millis(300);
    sleep(pause).await;

    let st = fx.driver.stats(&work).await?;
    assert_eq!(
        (st.depth, st.in_flight, st.delayed, st.dlq_depth),
        (2, 1, 1, 0)
    );
    assert!(
        st.oldest_age_ms >= ms(pause) && st.oldest_age_ms < ms(PATIENCE) * 10,
        "oldest_age_ms = {}",
        st.oldest_age_ms
    );

    assert_eq!(fx.ack_all(&work, &s, &claim).await?.acked, 1);
    let st = fx.driver.stats(&work).await?;
    assert_eq!(st.drain.count(), 1);
    assert_eq!(st.drain.counts.len(), DRAIN_BUCKETS_MS.len() + 1);
    assert!(
        st.drain.sum_ms >= u64::try_from(ms(pause))?,
        "{:?}",
        st.drain
    );
    assert!(
        st.drain
            .quantile_upper_ms(1.0)
            .is_some_and(|upper| upper >= ms(pause)),
        "{:?}",
        st.drain
    );

    let next = fx.claim(&work, &s, 2).await?;
    assert_eq!(next.messages.len(), 2);
    let [ack, kill] = [next.messages[0].id, next.messages[1].id];
    let report = fx
        .driver
        .settle(
            &work,
            &s,
            &[
                Settlement::Ack {
                    id: ack,
                    token: next.token,
                },
                Settlement::DeadLetter {
                    id: kill,
                    token: next.token,
                    error: "bad".into(),
                },
            ],
        )
        .await?;
    assert_eq!((report.acked, report.dead_lettered), (1, 1));
    let st = fx.driver.stats(&work).await?;
    assert_eq!(
        (st.depth, st.in_flight, st.delayed, st.dlq_depth),
        (0, 0, 1, 1)
    );
    assert_eq!(st.drain.count(), 2, "dead-lettering is not a drain");
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Transactional enqueue
// ---------------------------------------------------------------------------------------------

/// Creates the scratch table `orders` the business writes of the outbox tests go to.
async fn create_orders(db: &Database) -> anyhow::Result<()> {
    let ddl = "CREATE TABLE orders (id BIGINT PRIMARY KEY, note TEXT NOT NULL)";
    match db {
        Database::Sqlite(db) => {
            sqlx::query(ddl).execute(&db.write).await?;
        }
        Database::Postgres(pg) => {
            sqlx::query(ddl).execute(&pg.pool).await?;
        }
    }
    Ok(())
}

/// A business write inside the producer's transaction, on whichever backend it runs.
async fn insert_order(tx: &mut Tx, id: i64) -> anyhow::Result<()> {
    match tx {
        Tx::Sqlite { tx, .. } => {
            sqlx::query("INSERT INTO orders (id, note) VALUES (?1, 'new')")
                .bind(id)
                .execute(&mut **tx)
                .await?;
        }
        Tx::Postgres { tx, .. } => {
            sqlx::query("INSERT INTO orders (id, note) VALUES ($1, 'new')")
                .bind(id)
                .execute(&mut **tx)
                .await?;
        }
    }
    Ok(())
}

async fn order_ids(db: &Database) -> anyhow::Result<Vec<i64>> {
    let sql = "SELECT id FROM orders ORDER BY id";
    Ok(match db {
        Database::Sqlite(db) => sqlx::query_scalar(sql).fetch_all(&db.read).await?,
        Database::Postgres(pg) => sqlx::query_scalar(sql).fetch_all(&pg.pool).await?,
    })
}

/// The message's `last_error` column. The contract has no read path for the error of a live
/// message (operators read it from the table), so this looks at the row itself; both schemas
/// name the column the same.
async fn last_error(tdb: &TestDb, id: MessageId) -> anyhow::Result<Option<String>> {
    Ok(match tdb.db() {
        Database::Sqlite(db) => {
            sqlx::query_scalar("SELECT last_error FROM queue_messages WHERE id = ?1")
                .bind(id.0)
                .fetch_one(&db.read)
                .await?
        }
        Database::Postgres(pg) => {
            sqlx::query_scalar("SELECT last_error FROM queue_messages WHERE id = $1")
                .bind(id.0)
                .fetch_one(&pg.pool)
                .await?
        }
    })
}

async fn transactional_enqueue(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    let s = QueueSettings::default();
    let work = fx.declare("work", &s).await?;
    let db = fx.tdb.db();
    create_orders(db).await?;

    // Rolled back: neither the order nor its message exists, and the key is not used up.
    let mut tx = db.begin().await?;
    insert_order(&mut tx, 1).await?;
    tx.send(&work, msg("order 1").idempotency_key(key("order-1")))
        .await?;
    tx.rollback().await?;
    assert!(order_ids(db).await?.is_empty());
    assert!(fx.claim(&work, &s, 10).await?.messages.is_empty());

    // Dropped without commit (a producer that bailed out with `?`): the same.
    {
        let mut tx = db.begin().await?;
        insert_order(&mut tx, 2).await?;
        tx.send(&work, msg("order 2")).await?;
    }
    assert!(order_ids(db).await?.is_empty());
    assert!(fx.claim(&work, &s, 10).await?.messages.is_empty());

    // Committed: both, together. Before the commit nobody sees the message.
    let mut tx = db.begin().await?;
    insert_order(&mut tx, 3).await?;
    let receipts = tx
        .send_batch(
            &work,
            vec![
                msg("order 3").idempotency_key(key("order-1")),
                msg("order 3 audit"),
            ],
        )
        .await?;
    assert!(receipts.iter().all(|r| !r.duplicate), "{receipts:?}");
    // Stats read through the readers, so this does not wait for the writer (SQLite).
    assert_eq!(fx.driver.stats(&work).await?.depth, 0);
    tx.commit().await?;
    assert_eq!(order_ids(db).await?, [3]);
    let claim = fx.claim(&work, &s, 10).await?;
    assert_eq!(
        ids(&claim),
        receipts.iter().map(|r| r.id).collect::<Vec<_>>()
    );
    assert_eq!(bodies(&claim), ["order 3", "order 3 audit"]);

    // The committed key deduplicates later sends from outside the transaction.
    let dup = fx
        .driver
        .send(&work, msg("again").idempotency_key(key("order-1")))
        .await?;
    assert!(dup.duplicate);
    assert_eq!(dup.id, receipts[0].id);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Waking consumers
// ---------------------------------------------------------------------------------------------

/// Starts a consumer waiting on `queue` with a long `max_wait`, checks it is really waiting,
/// runs `produce`, and returns how long after `produce` finished the waiter woke up.
async fn wake_latency<F, Fut>(
    fx: &Fixture,
    queue: &QueueName,
    produce: F,
) -> anyhow::Result<Duration>
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let driver = fx.driver.clone();
    let waiting_on = queue.clone();
    let waiter = tokio::spawn(async move {
        driver
            .wait_for_work(&waiting_on, Duration::from_secs(60))
            .await;
        Instant::now()
    });
    // Give the waiter time to park (on a loaded machine it may take a while to start).
    sleep(Duration::from_millis(500)).await;
    assert!(
        !waiter.is_finished(),
        "wait_for_work returned on an empty queue"
    );
    produce().await?;
    let produced = Instant::now();
    let woke = tokio::time::timeout(PATIENCE, waiter)
        .await
        .map_err(|_| anyhow::anyhow!("no wake-up within {PATIENCE:?} of a send"))??;
    Ok(woke.saturating_duration_since(produced))
}

async fn wait_for_work_wakes_on_send(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    let s = QueueSettings::default();
    let work = fx.declare("work", &s).await?;

    let latency = wake_latency(&fx, &work, || async {
        fx.send(&work, "wake up").await?;
        Ok(())
    })
    .await?;
    assert!(latency < WAKE_PROMPTLY, "woke {latency:?} after a send");
    let claim = fx.claim(&work, &s, 10).await?;
    fx.ack_all(&work, &s, &claim).await?;
    // Let any hint left over from the send be consumed before the next round.
    fx.driver
        .wait_for_work(&work, Duration::from_millis(100))
        .await;

    let latency = wake_latency(&fx, &work, || async {
        let mut tx = fx.tdb.db().begin().await?;
        tx.send(&work, msg("from a transaction")).await?;
        tx.commit().await?;
        Ok(())
    })
    .await?;
    assert!(latency < WAKE_PROMPTLY, "woke {latency:?} after a commit");
    Ok(())
}

async fn wait_for_work_returns_when_a_delay_ends(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    let s = QueueSettings::default();
    let work = fx.declare("work", &s).await?;
    let id = fx
        .driver
        .send(&work, msg("later").delay(Duration::from_secs(1)))
        .await?
        .id;

    // A consumer loop: nobody sends anything else, so only the delay ending can wake it
    // within the 60 s max_wait. The first wait may return at once on the send's own hint.
    let started = Instant::now();
    let mut waits = 0;
    let claim = loop {
        waits += 1;
        fx.driver
            .wait_for_work(&work, Duration::from_secs(60))
            .await;
        let claim = fx.claim(&work, &s, 10).await?;
        if !claim.messages.is_empty() {
            break claim;
        }
        assert!(
            waits < 5,
            "wait_for_work keeps returning while nothing is visible"
        );
        assert!(
            started.elapsed() < PATIENCE,
            "no wake-up when the delay ended"
        );
    };
    assert_eq!(ids(&claim), [id]);
    assert!(started.elapsed() < PATIENCE);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Concurrency and listing
// ---------------------------------------------------------------------------------------------

async fn concurrent_claims_never_share_a_message(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    let s = QueueSettings::default();
    let work = fx.declare("work", &s).await?;
    let sent: BTreeSet<MessageId> = fx
        .driver
        .send_batch(&work, (0..500).map(|i| msg(&format!("m{i}"))).collect())
        .await?
        .into_iter()
        .map(|r| r.id)
        .collect();
    assert_eq!(sent.len(), 500);

    let workers: Vec<_> = (0..2)
        .map(|_| {
            let driver = fx.driver.clone();
            let (work, s) = (work.clone(), s.clone());
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut tokens = Vec::new();
                loop {
                    let claim = driver.claim(&work, &s, 50).await?;
                    if claim.messages.is_empty() {
                        return Ok::<_, QueueError>((got, tokens));
                    }
                    assert!(claim.messages.len() <= 50);
                    tokens.push(claim.token);
                    got.extend(ids(&claim));
                }
            })
        })
        .collect();
    let mut all = Vec::new();
    let mut tokens = Vec::new();
    for worker in workers {
        let (got, t) = worker.await??;
        all.extend(got);
        tokens.extend(t);
    }
    let unique: BTreeSet<MessageId> = all.iter().copied().collect();
    assert_eq!(all.len(), 500, "some message was delivered twice");
    assert_eq!(unique, sent);
    let unique_tokens: HashSet<LeaseToken> = tokens.iter().copied().collect();
    assert_eq!(
        unique_tokens.len(),
        tokens.len(),
        "two claims shared a token"
    );
    let st = fx.driver.stats(&work).await?;
    assert_eq!((st.depth, st.in_flight), (0, 500));
    Ok(())
}

async fn queues_lists_declared_and_used_queues(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    assert!(fx.driver.queues().await?.is_empty());
    let alpha = fx.declare("alpha", &QueueSettings::default()).await?;
    let beta = q("beta");
    fx.send(&beta, "undeclared but used").await?;
    let listed: BTreeSet<QueueName> = fx.driver.queues().await?.into_iter().collect();
    assert_eq!(listed, BTreeSet::from([alpha, beta]));
    Ok(())
}

async fn declare_rejects_invalid_settings(backend: Backend) -> anyhow::Result<()> {
    let fx = Fixture::new(backend).await?;
    let work = q("work");
    let invalid = [
        settings(|s| s.max_batch_size = 0),
        settings(|s| s.lease = Duration::from_millis(10)),
        settings(|s| s.dead_letter_queue = Some(q("work"))),
    ];
    for s in &invalid {
        let err = fx.driver.declare(&work, s).await.expect_err("invalid");
        assert!(matches!(err, QueueError::Invalid(_)), "{err:?}");
    }
    assert!(
        fx.driver.queues().await?.is_empty(),
        "a refused queue was recorded"
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------

// One test per backend for each check: `sqlite::name` and `postgres::name`.
cognomega_testkit::both_backends!(
    send_and_claim_round_trip,
    claims_oldest_visible_first,
    claim_respects_max,
    send_batch_receipts_follow_input_order,
    concurrent_send_bursts_all_succeed,
    a_sender_dropped_mid_commit_strands_nobody,
    delay_is_honoured,
    dedups_by_idempotency_key,
    dedup_window_expires,
    redelivers_after_lease_expiry,
    stale_token_is_refused,
    extend_lease_holds_the_message,
    retry_redelivers_after_its_delay,
    dead_letters_after_max_retries,
    expired_last_lease_dead_letters_on_claim,
    fatal_dead_letters_at_once,
    replay_moves_dead_messages_back,
    release_does_not_count_the_attempt,
    retained_acks_are_pruned_after_retention,
    prune_deletes_old_dead_messages_and_expired_keys,
    stats_track_the_queue,
    transactional_enqueue,
    wait_for_work_wakes_on_send,
    wait_for_work_returns_when_a_delay_ends,
    concurrent_claims_never_share_a_message,
    queues_lists_declared_and_used_queues,
    declare_rejects_invalid_settings,
);

/// SQLite only: consumer-side writes relax `synchronous` for their own transaction, and the
/// single write connection is durable again for whoever holds it next, whether the relaxed
/// transaction committed, rolled back or was a claim or settlement of the driver's own.
#[tokio::test]
async fn sqlite_writer_is_durable_after_every_relaxed_holder() -> anyhow::Result<()> {
    async fn writer_synchronous(db: &Database) -> anyhow::Result<i64> {
        let Database::Sqlite(s) = db else {
            anyhow::bail!("not SQLite");
        };
        let mut conn = s.write.acquire().await?;
        Ok(sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(&mut *conn)
            .await?)
    }
    const NORMAL: i64 = 1;
    const FULL: i64 = 2;
    let fx = Fixture::new(Backend::Sqlite).await?;
    let db = fx.tdb.db();
    assert_eq!(writer_synchronous(db).await?, FULL, "fresh writer");

    let Tx::Sqlite { mut tx, .. } = db.begin_in_consumer().await? else {
        anyhow::bail!("not SQLite");
    };
    let inside: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&mut *tx)
        .await?;
    assert_eq!(inside, NORMAL, "a consumer's transaction is relaxed");
    tx.commit().await?;
    assert_eq!(
        writer_synchronous(db).await?,
        FULL,
        "after a relaxed commit"
    );

    let rolled_back = db.begin_in_consumer().await?;
    drop(rolled_back);
    assert_eq!(
        writer_synchronous(db).await?,
        FULL,
        "after a relaxed rollback"
    );

    let work = fx.declare("work", &QueueSettings::default()).await?;
    fx.send(&work, "one").await?;
    assert_eq!(writer_synchronous(db).await?, FULL, "after a durable send");
    let claim = fx.claim(&work, &QueueSettings::default(), 10).await?;
    assert_eq!(claim.messages.len(), 1);
    assert_eq!(writer_synchronous(db).await?, FULL, "after a claim");
    let report = fx.ack_all(&work, &QueueSettings::default(), &claim).await?;
    assert_eq!(report.acked, 1);
    assert_eq!(writer_synchronous(db).await?, FULL, "after a settlement");
    Ok(())
}
