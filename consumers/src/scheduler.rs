//! The scheduler loop: every process that consumes runs one; the process holding the leader
//! lease enqueues due ticks, the others stand by and take over within one lease TTL when the
//! leader dies (or at once when it shuts down cleanly and gives the lease up).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cognomega_core::schedule::Schedule;
use cognomega_core::time::UnixMillis;
use cognomega_stores::{schedules, Database};
use tokio_util::sync::CancellationToken;

/// Timing of the scheduler loop.
#[derive(Debug, Clone, Copy)]
pub struct SchedulerOptions {
    /// How often the loop wakes to renew the lease and look for due ticks.
    pub poll: Duration,
    /// Lease lifetime: a dead leader is replaced after at most this long (plus one poll).
    pub lease_ttl: Duration,
}

impl Default for SchedulerOptions {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(500),
            lease_ttl: Duration::from_secs(5),
        }
    }
}

/// One process's scheduler.
#[derive(Debug, Clone)]
pub struct Scheduler {
    db: Database,
    schedules: Arc<Vec<Schedule>>,
    holder: String,
    options: SchedulerOptions,
}

fn now() -> UnixMillis {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    UnixMillis(ms)
}

/// A holder id unique to this process: `host:pid:random`.
#[must_use]
pub fn holder_id() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "host".into());
    format!("{host}:{}:{:08x}", std::process::id(), fastrand::u32(..))
}

impl Scheduler {
    /// A scheduler for `schedules` (disabled ones are skipped).
    #[must_use]
    pub fn new(db: Database, schedules: Vec<Schedule>, options: SchedulerOptions) -> Self {
        Self {
            db,
            schedules: Arc::new(schedules),
            holder: holder_id(),
            options,
        }
    }

    /// This process's holder id.
    #[must_use]
    pub fn holder(&self) -> &str {
        &self.holder
    }

    /// Runs until `cancel`, then gives the lease up.
    pub async fn run(self, cancel: CancellationToken) {
        let ttl = i64::try_from(self.options.lease_ttl.as_millis()).unwrap_or(i64::MAX);
        // Last enqueued tick per schedule while leading; reloaded on every (re)gained lease.
        let mut last: Option<BTreeMap<String, UnixMillis>> = None;
        let mut leading_since = now();
        loop {
            match self.step(ttl, &mut last, &mut leading_since).await {
                Ok(()) => {}
                Err(e) => {
                    // A failed step changes nothing durable; the next poll retries.
                    tracing::warn!(error = %e, "scheduler step failed; retrying");
                    last = None;
                }
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = tokio::time::sleep(self.options.poll) => {}
            }
        }
        if last.is_some() {
            if let Err(e) = schedules::release_lease(&self.db, &self.holder).await {
                tracing::warn!(error = %e, "could not release the scheduler lease; a standby takes over when it lapses");
            } else {
                tracing::info!(holder = %self.holder, "scheduler lease released");
            }
        }
    }

    async fn step(
        &self,
        ttl: i64,
        last: &mut Option<BTreeMap<String, UnixMillis>>,
        leading_since: &mut UnixMillis,
    ) -> Result<(), cognomega_stores::StoreError> {
        let t = now();
        let Some(lease) = schedules::acquire_lease(&self.db, &self.holder, t, ttl).await? else {
            if last.take().is_some() {
                tracing::warn!(holder = %self.holder, "scheduler lease lost; standing by");
            }
            return Ok(());
        };
        let ticks = match last {
            Some(map) => map,
            None => {
                tracing::info!(holder = %self.holder, term = lease.term, "leading the schedules");
                *leading_since = t;
                let stored = schedules::last_ticks(&self.db).await?;
                last.insert(
                    stored
                        .into_iter()
                        .map(|(name, tick)| (name, tick.tick_at))
                        .collect(),
                )
            }
        };
        for schedule in self.schedules.iter().filter(|s| s.spec.enabled) {
            // With no history a schedule starts at its first tick after this leader began.
            let after = ticks.get(&schedule.name).copied().unwrap_or(*leading_since);
            let Some(tick) = schedule.latest_due(after, t) else {
                continue;
            };
            let sent = schedules::enqueue_tick(
                &self.db,
                &schedule.name,
                tick,
                &schedule.queue,
                &schedule.spec.body,
                &schedule.tick_key(tick),
                &self.holder,
                t,
            )
            .await?;
            match sent {
                Some(id) => tracing::info!(
                    schedule = %schedule.name,
                    queue = %schedule.queue,
                    tick = tick.0,
                    message_id = id.0,
                    "schedule tick enqueued"
                ),
                None => {
                    tracing::debug!(schedule = %schedule.name, tick = tick.0, "tick already enqueued")
                }
            }
            ticks.insert(schedule.name.clone(), tick);
        }
        Ok(())
    }
}
