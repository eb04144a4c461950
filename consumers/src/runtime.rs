//! The batch loop of each queue, and starting/stopping them together.

use std::collections::HashMap;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cognomega_core::queue::{
    settle_batch_with, BatchHandler, HandlerError, LeaseToken, MessageBatch, MessageId,
    QueueDriver, QueueError, QueueName, QueueSettings, ReceivedMessage, SettingsError, Settlement,
};
use futures::FutureExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::acker::Acker;
use cognomega_core::queue::ConsumerMetrics;

/// Runtime-wide knobs.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    /// Longest sleep of an idle queue loop between polls (wake-up hints cut it short).
    pub poll_interval: Duration,
    /// How long in-flight batches may run after shutdown starts before they are released.
    pub shutdown_grace: Duration,
}

impl Default for RuntimeOptions {
    fn default() -> Self {
        Self {
            poll_interval: Duration::from_millis(500),
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

struct Registration {
    queue: QueueName,
    settings: QueueSettings,
    handler: Arc<dyn BatchHandler>,
}

/// Consumers of a set of queues, sharing one driver.
pub struct Runtime {
    driver: Arc<dyn QueueDriver>,
    registrations: Vec<Registration>,
    options: RuntimeOptions,
    metrics: Arc<ConsumerMetrics>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field(
                "queues",
                &self
                    .registrations
                    .iter()
                    .map(|r| r.queue.as_str())
                    .collect::<Vec<_>>(),
            )
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// What a runtime did before it stopped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Batches still running when the grace period ended, whose messages were released.
    pub released_batches: u64,
}

impl Runtime {
    /// A runtime with no consumers yet.
    #[must_use]
    pub fn new(driver: Arc<dyn QueueDriver>, options: RuntimeOptions) -> Self {
        Self {
            driver,
            registrations: Vec::new(),
            options,
            metrics: Arc::default(),
        }
    }

    /// Registers the handler of one queue.
    pub fn register(
        &mut self,
        queue: QueueName,
        settings: QueueSettings,
        handler: Arc<dyn BatchHandler>,
    ) -> Result<&mut Self, SettingsError> {
        settings.validate(&queue)?;
        self.registrations.push(Registration {
            queue,
            settings,
            handler,
        });
        Ok(self)
    }

    /// Registers the consumer of `queue` for its message type: the runtime decodes each message
    /// once ([`crate::typed`]).
    pub fn consume<H: crate::TypedHandler + 'static>(
        &mut self,
        queue: QueueName,
        settings: QueueSettings,
        handler: H,
    ) -> Result<&mut Self, SettingsError> {
        self.register(queue, settings, Arc::new(crate::Typed(handler)))
    }

    /// The counters this runtime updates.
    #[must_use]
    pub fn metrics(&self) -> Arc<ConsumerMetrics> {
        self.metrics.clone()
    }

    /// Keeps only the consumers of `queues` (a worker dedicated to some queues, or a test
    /// draining one stage of a pipeline).
    pub fn retain_queues(&mut self, queues: &[QueueName]) {
        self.registrations.retain(|r| queues.contains(&r.queue));
    }

    /// Declares every queue, then starts one batch loop per queue in the background.
    pub async fn start(self) -> Result<RunningRuntime, QueueError> {
        for r in &self.registrations {
            self.driver.declare(&r.queue, &r.settings).await?;
        }
        let shutdown = CancellationToken::new();
        let hard_stop = CancellationToken::new();
        let queues: Vec<QueueName> = self.registrations.iter().map(|r| r.queue.clone()).collect();
        let mut loops = JoinSet::new();
        for r in self.registrations {
            let ctx = LoopCtx {
                driver: self.driver.clone(),
                queue: r.queue,
                settings: r.settings,
                handler: r.handler,
                options: self.options.clone(),
                metrics: self.metrics.clone(),
                shutdown: shutdown.clone(),
                hard_stop: hard_stop.clone(),
            };
            loops.spawn(queue_loop(ctx));
        }
        Ok(RunningRuntime {
            driver: self.driver,
            queues,
            shutdown,
            hard_stop,
            loops,
            grace: self.options.shutdown_grace,
            metrics: self.metrics,
        })
    }

    /// Runs until `shutdown` is cancelled, then stops gracefully.
    pub async fn run(self, shutdown: CancellationToken) -> Result<RunReport, QueueError> {
        let running = self.start().await?;
        shutdown.cancelled().await;
        Ok(running.stop().await)
    }
}

/// A started runtime.
#[derive(Debug)]
pub struct RunningRuntime {
    driver: Arc<dyn QueueDriver>,
    queues: Vec<QueueName>,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    loops: JoinSet<u64>,
    grace: Duration,
    metrics: Arc<ConsumerMetrics>,
}

impl RunningRuntime {
    /// The queues being consumed.
    #[must_use]
    pub fn queues(&self) -> &[QueueName] {
        &self.queues
    }

    /// The counters this runtime updates.
    #[must_use]
    pub fn metrics(&self) -> Arc<ConsumerMetrics> {
        self.metrics.clone()
    }

    /// Waits until every consumed queue has nothing ready, in flight or delayed (checked twice,
    /// `settle` apart, so a message in the middle of a hand-over is not missed), or `timeout`.
    /// Returns whether it became idle.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let settle = Duration::from_millis(50);
        let mut quiet_rounds = 0;
        while Instant::now() < deadline {
            let mut busy = false;
            for q in &self.queues {
                match self.driver.stats(q).await {
                    Ok(s) if s.depth + s.in_flight + s.delayed == 0 => {}
                    _ => busy = true,
                }
            }
            quiet_rounds = if busy { 0 } else { quiet_rounds + 1 };
            if quiet_rounds >= 2 {
                return true;
            }
            tokio::time::sleep(settle).await;
        }
        false
    }

    /// Stops claiming, waits up to the grace period for in-flight batches, then releases the
    /// rest back to their queues.
    pub async fn stop(mut self) -> RunReport {
        self.shutdown.cancel();
        let hard_stop = self.hard_stop.clone();
        let grace = self.grace;
        let timer = tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            hard_stop.cancel();
        });
        let mut report = RunReport::default();
        while let Some(res) = self.loops.join_next().await {
            if let Ok(released) = res {
                report.released_batches += released;
            }
        }
        timer.abort();
        report
    }
}

struct LoopCtx {
    driver: Arc<dyn QueueDriver>,
    queue: QueueName,
    settings: QueueSettings,
    handler: Arc<dyn BatchHandler>,
    options: RuntimeOptions,
    metrics: Arc<ConsumerMetrics>,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
}

/// Messages of one batch with the lease token each was claimed under (a batch that waited to
/// fill up may span claims).
struct Leased {
    messages: Vec<ReceivedMessage>,
    tokens: HashMap<MessageId, LeaseToken>,
}

impl Leased {
    fn push_claim(&mut self, token: LeaseToken, messages: Vec<ReceivedMessage>) {
        for m in &messages {
            self.tokens.insert(m.id, token);
        }
        self.messages.extend(messages);
    }
}

/// One queue's loop; returns how many batches had to be released at shutdown.
async fn queue_loop(ctx: LoopCtx) -> u64 {
    let ctx = Arc::new(ctx);
    let (acker, acker_task) = Acker::spawn(
        ctx.driver.clone(),
        ctx.queue.clone(),
        ctx.settings.clone(),
        ctx.metrics.clone(),
    );
    let slots = Arc::new(Semaphore::new(usize::from(ctx.settings.max_concurrency)));
    let batch_size = usize::from(ctx.settings.max_batch_size);
    let mut batches: JoinSet<bool> = JoinSet::new();
    let mut error_backoff = Duration::from_millis(100);
    // Set after an idle queue woke up and its batch window was waited out: that claim takes
    // what the window gathered and is not held open any longer.
    let mut gathered = false;
    // Set when the last claim took fewer messages than it asked for: the queue had nothing
    // more visible, so the next claim would most likely come back empty. Waiting for work
    // first (a read, woken by sends) keeps that empty claim, a write transaction, off the
    // single SQLite writer and off the producers' way.
    let mut drained = false;
    loop {
        while batches.try_join_next().is_some() {}
        if std::mem::take(&mut drained) && !idle(&ctx, &mut gathered).await {
            break;
        }
        let first = tokio::select! {
            permit = slots.clone().acquire_owned() => match permit { Ok(p) => p, Err(_) => break },
            () = ctx.shutdown.cancelled() => break,
        };
        // Slots come back in bursts (one coalesced ack releases many batches); yielding once
        // lets the rest of a burst return, so the claim below is one big statement instead of
        // several small ones — each a write transaction, and on SQLite an fsync.
        if slots.available_permits() + 1 < usize::from(ctx.settings.max_concurrency) {
            tokio::task::yield_now().await;
        }
        let mut permits = vec![first];
        while let Ok(p) = slots.clone().try_acquire_owned() {
            permits.push(p);
        }
        let wanted = permits.len() * batch_size;
        let claim = match ctx.driver.claim(&ctx.queue, &ctx.settings, wanted).await {
            Ok(claim) => {
                error_backoff = Duration::from_millis(100);
                claim
            }
            Err(e) => {
                tracing::warn!(queue = %ctx.queue, error = %e, "claim failed; backing off");
                drop(permits);
                tokio::select! {
                    () = tokio::time::sleep(error_backoff) => {},
                    () = ctx.shutdown.cancelled() => break,
                }
                error_backoff = (error_backoff * 2).min(Duration::from_secs(5));
                continue;
            }
        };
        let dead_lettered = claim.dead.len();
        if !claim.dead.is_empty() {
            ctx.metrics.settled(
                &ctx.queue,
                &Default::default(),
                u64::try_from(dead_lettered).unwrap_or(u64::MAX),
            );
            ctx.handler.dead_lettered(&claim.dead).await;
        }
        if claim.messages.is_empty() {
            drop(permits);
            if !idle(&ctx, &mut gathered).await {
                break;
            }
            continue;
        }
        let mut leased = Leased {
            messages: Vec::new(),
            tokens: HashMap::new(),
        };
        leased.push_claim(claim.token, claim.messages);
        let window_waited = std::mem::take(&mut gathered);
        if leased.messages.len() < batch_size
            && !ctx.settings.max_batch_timeout.is_zero()
            && !window_waited
        {
            fill_batch(&ctx, &mut leased, batch_size).await;
        }
        // Messages dead-lettered by the claim took places in it too.
        drained = leased.messages.len() + dead_lettered < wanted;
        let mut rest = leased.messages;
        while !rest.is_empty() {
            let tail = rest.split_off(rest.len().min(batch_size));
            let chunk = std::mem::replace(&mut rest, tail);
            let tokens = chunk
                .iter()
                .filter_map(|m| leased.tokens.get(&m.id).map(|t| (m.id, *t)))
                .collect();
            let Some(permit) = permits.pop() else {
                // More messages than slots cannot happen (claims are sized to free slots);
                // should it ever, the lease simply expires and they are delivered again.
                break;
            };
            batches.spawn(run_batch(ctx.clone(), acker.clone(), chunk, tokens, permit));
        }
    }
    // Shutdown: in-flight batches finish or are released by the hard stop.
    let mut released = 0;
    while let Some(res) = batches.join_next().await {
        if matches!(res, Ok(false)) {
            released += 1;
        }
    }
    drop(acker);
    let _ = acker_task.await;
    released
}

/// Waits until the queue has work (or the poll interval passed); false on shutdown.
///
/// A queue that was idle gathers its partial batch BEFORE claiming it: one claim (a write
/// transaction) for the whole window instead of a claim per arrival, and the single SQLite
/// writer stays free for the producers meanwhile. `gathered` tells the next claim so.
async fn idle(ctx: &LoopCtx, gathered: &mut bool) -> bool {
    tokio::select! {
        () = ctx.driver.wait_for_work(&ctx.queue, ctx.options.poll_interval) => {},
        () = ctx.shutdown.cancelled() => return false,
    }
    if !ctx.settings.max_batch_timeout.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(ctx.settings.max_batch_timeout) => {},
            () = ctx.shutdown.cancelled() => return false,
        }
        *gathered = true;
    }
    true
}

/// Waits up to `max_batch_timeout` for a partial batch to fill up.
async fn fill_batch(ctx: &LoopCtx, leased: &mut Leased, batch_size: usize) {
    let deadline = Instant::now() + ctx.settings.max_batch_timeout;
    while leased.messages.len() < batch_size {
        let now = Instant::now();
        if now >= deadline {
            break;
        }
        tokio::select! {
            () = ctx.driver.wait_for_work(&ctx.queue, deadline - now) => {},
            () = ctx.shutdown.cancelled() => break,
        }
        match ctx
            .driver
            .claim(
                &ctx.queue,
                &ctx.settings,
                batch_size - leased.messages.len(),
            )
            .await
        {
            Ok(more) if !more.messages.is_empty() => leased.push_claim(more.token, more.messages),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(queue = %ctx.queue, error = %e, "claim while filling a batch failed");
                break;
            }
        }
    }
}

/// Handles one batch and settles it. Returns false when it was released unfinished.
async fn run_batch(
    ctx: Arc<LoopCtx>,
    acker: Acker,
    messages: Vec<ReceivedMessage>,
    tokens: HashMap<MessageId, LeaseToken>,
    _permit: OwnedSemaphorePermit,
) -> bool {
    let started = Instant::now();
    let ids: Vec<MessageId> = messages.iter().map(|m| m.id).collect();
    let span = tracing::info_span!("batch", queue = %ctx.queue, size = ids.len(),
        first_message_id = %ids.first().map_or(0, |id| id.0),
        request_id = messages.first().and_then(|m| m.request_id.as_deref()).unwrap_or(""));
    // One line per message (debug: a busy queue delivers thousands a second), so a request id
    // leads to the message id and queue that carried it.
    span.in_scope(|| {
        for m in &messages {
            tracing::debug!(queue = %ctx.queue, message_id = m.id.0, attempts = m.attempts,
                request_id = m.request_id.as_deref().unwrap_or(""), "message delivered");
        }
    });
    let mut batch = MessageBatch::new(ctx.queue.clone(), messages);
    let outcome = {
        let handled =
            AssertUnwindSafe(ctx.handler.handle(&mut batch).instrument(span)).catch_unwind();
        tokio::select! {
            res = handled => Some(res.unwrap_or_else(|panic| Err(HandlerError::Retryable(panic_text(&panic))))),
            () = heartbeat(&ctx, &tokens) => None,
            () = ctx.hard_stop.cancelled() => None,
        }
    };
    let token_of = |id: MessageId| tokens.get(&id).copied().unwrap_or(LeaseToken(0));
    let (settlements, finished) = match &outcome {
        Some(result) => {
            if let Err(e) = result {
                tracing::warn!(queue = %ctx.queue, error = %e, "batch handler failed");
            }
            ctx.metrics
                .batch_done(&ctx.queue, started.elapsed(), result.is_err());
            (
                settle_batch_with(batch, result, &ctx.settings, token_of, fastrand::f64),
                true,
            )
        }
        None => {
            let release = ids
                .iter()
                .map(|&id| Settlement::Release {
                    id,
                    token: token_of(id),
                })
                .collect();
            (release, false)
        }
    };
    if let Err(e) = acker.settle(settlements).await {
        tracing::error!(queue = %ctx.queue, error = %e,
            "could not settle a batch; its messages will be delivered again when their leases expire");
    }
    finished
}

/// Extends the batch's leases every third of the lease until the batch is done (never returns
/// on its own unless every lease was lost).
async fn heartbeat(ctx: &LoopCtx, tokens: &HashMap<MessageId, LeaseToken>) {
    let mut by_token: HashMap<LeaseToken, Vec<MessageId>> = HashMap::new();
    for (id, token) in tokens {
        by_token.entry(*token).or_default().push(*id);
    }
    let every = ctx.settings.lease / 3;
    loop {
        tokio::time::sleep(every).await;
        for (token, ids) in &by_token {
            match ctx
                .driver
                .extend_lease(*token, ids, ctx.settings.lease)
                .await
            {
                Ok(n) if n < ids.len() as u64 => {
                    tracing::warn!(queue = %ctx.queue, lost = ids.len() as u64 - n,
                    "lease lost for part of a batch: those messages will be delivered again")
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(queue = %ctx.queue, error = %e, "lease heartbeat failed"),
            }
        }
    }
}

fn panic_text(panic: &Box<dyn std::any::Any + Send>) -> String {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic".into());
    format!("handler panicked: {what}")
}
