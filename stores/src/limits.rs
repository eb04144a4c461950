//! Rate-limit buckets and cost-guard counters.
//!
//! Buckets: [`MemoryLimiter`] keeps them in the process (the embedded shape has one server);
//! [`PgLimiter`] keeps them in `rate_limit_buckets`, one atomic statement per check on the
//! database's clock, so every server of the scale-out shape takes from the same bucket.
//!
//! Cost counters live in `cost_counters` on both backends and are charged inside the
//! transaction that enqueues the work, so a failed enqueue charges nothing.

use std::collections::hash_map::{Entry, HashMap};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use cognomega_core::limits::{CostMetric, Decision, LimitError, Rate, RateLimiter};
use sqlx::PgPool;

use crate::{Database, StoreError, Tx};

/// The limiter for a store: in-process over SQLite, shared in the database over PostgreSQL.
#[must_use]
pub fn limiter(db: &Database) -> Arc<dyn RateLimiter> {
    match db {
        Database::Sqlite(_) => Arc::new(MemoryLimiter::default()),
        Database::Postgres(pg) => Arc::new(PgLimiter::new(pg.pool.clone())),
    }
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
    rate: Rate,
}

impl Bucket {
    fn full_at(&self, now: Instant) -> bool {
        let elapsed = now.duration_since(self.updated).as_secs_f64();
        self.tokens + elapsed * self.rate.rate >= f64::from(self.rate.burst)
    }
}

/// Buckets in a sharded map (one mutex per shard, so concurrent checks of different keys
/// rarely wait on each other). Memory is bounded: a shard that reaches its capacity first drops
/// the buckets that have refilled (forgetting a full bucket changes nothing), and if that frees
/// nothing, forgets them all, which can only let a burst through again.
#[derive(Debug)]
pub struct MemoryLimiter {
    shards: Box<[Mutex<HashMap<String, Bucket>>]>,
    hasher: RandomState,
    per_shard: usize,
}

const SHARDS: usize = 32;

impl Default for MemoryLimiter {
    /// 32 shards of at most 8,192 buckets: about 260,000 keys busy at once.
    fn default() -> Self {
        Self::with_capacity(SHARDS * 8_192)
    }
}

impl MemoryLimiter {
    /// A limiter that keeps at most about `capacity` buckets.
    #[must_use]
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            hasher: RandomState::new(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    /// Buckets currently held.
    #[must_use]
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                s.lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .len()
            })
            .sum()
    }

    /// No bucket held.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn take(&self, key: &str, rate: Rate, now: Instant) -> Decision {
        let shard = usize::try_from(self.hasher.hash_one(key) % SHARDS as u64).unwrap_or(0);
        let mut map = self.shards[shard]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if map.len() >= self.per_shard && !map.contains_key(key) {
            map.retain(|_, b| !b.full_at(now));
            if map.len() >= self.per_shard {
                map.clear();
            }
        }
        let (tokens, allowed) = match map.entry(key.to_owned()) {
            Entry::Occupied(mut e) => {
                let b = e.get_mut();
                let (tokens, allowed) =
                    rate.take(b.tokens, now.duration_since(b.updated).as_secs_f64());
                *b = Bucket {
                    tokens,
                    updated: now,
                    rate,
                };
                (tokens, allowed)
            }
            Entry::Vacant(e) => {
                let (tokens, allowed) = rate.take(f64::from(rate.burst), 0.0);
                e.insert(Bucket {
                    tokens,
                    updated: now,
                    rate,
                });
                (tokens, allowed)
            }
        };
        rate.decision(tokens, allowed)
    }
}

#[async_trait::async_trait]
impl RateLimiter for MemoryLimiter {
    async fn check(&self, key: &str, rate: Rate) -> Result<Decision, LimitError> {
        Ok(self.take(key, rate, Instant::now()))
    }

    fn location(&self) -> &'static str {
        "in_process"
    }
}

/// Buckets in PostgreSQL's `rate_limit_buckets` (UNLOGGED: a check writes no WAL and commits
/// without waiting for the disk; a crash empties the table, which only refills every bucket).
#[derive(Debug, Clone)]
pub struct PgLimiter {
    pool: PgPool,
}

impl PgLimiter {
    /// Over a pool of the shared database.
    #[must_use]
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// One statement: a new bucket starts full and gives one token; an existing one is refilled
/// by the time since its last check on the database's clock (so servers with skewed clocks
/// agree), capped at the burst, and gives one token if it has one. The row lock taken by the
/// upsert serializes concurrent checks of one key across every server. `SET` expressions all
/// see the old row, so `refilled` is the same value in each.
const PG_TAKE: &str = "
INSERT INTO rate_limit_buckets AS b (key, tokens, allowed, updated_at)
VALUES ($1, $3::float8 - 1, true, now())
ON CONFLICT (key) DO UPDATE SET
    tokens = {refilled} - CASE WHEN {refilled} >= 1 THEN 1 ELSE 0 END,
    allowed = {refilled} >= 1,
    updated_at = now()
RETURNING tokens, allowed";

const PG_REFILLED: &str = "LEAST($3::float8, b.tokens + $2::float8 * GREATEST(0, EXTRACT(EPOCH FROM now() - b.updated_at)::float8))";

fn pg_take_sql() -> &'static str {
    static SQL: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SQL.get_or_init(|| PG_TAKE.replace("{refilled}", PG_REFILLED))
}

#[async_trait::async_trait]
impl RateLimiter for PgLimiter {
    async fn check(&self, key: &str, rate: Rate) -> Result<Decision, LimitError> {
        let (tokens, allowed): (f64, bool) = sqlx::query_as(pg_take_sql())
            .bind(key)
            .bind(rate.rate)
            .bind(f64::from(rate.burst))
            .fetch_one(&self.pool)
            .await
            .map_err(|e| LimitError(e.to_string()))?;
        Ok(rate.decision(tokens, allowed))
    }

    fn location(&self) -> &'static str {
        "postgres"
    }
}

pub use cognomega_core::limits::OverCap;

/// Adds `quantity` to the tenant's counter of `metric` in the window holding `now_secs`,
/// unless that would pass `cap`: then nothing changes and the caller learns how much is used.
/// Runs inside the caller's transaction, so the count commits (or rolls back) with the enqueue
/// (`cognomega_core::limits::charge`, which the edge runs too).
pub async fn charge(
    tx: &mut Tx,
    tenant: &str,
    metric: CostMetric,
    quantity: u64,
    cap: u64,
    now_secs: i64,
) -> Result<Result<u64, OverCap>, StoreError> {
    Ok(cognomega_core::limits::charge(tx, tenant, metric, quantity, cap, now_secs).await?)
}

/// Counter windows older than this are deleted by [`prune_counters`]: two days keeps
/// yesterday's figures readable while nothing reads them any more for a decision (the longest
/// window, a day's tokens, ends before then).
pub const COUNTER_RETENTION_SECS: i64 = 2 * 86_400;

/// Deletes the cost-guard counters whose window started before `$1` (epoch seconds).
const PRUNE_COST_COUNTERS: &str = "DELETE FROM cost_counters WHERE window_start < $1";

/// Deletes the daily token counters whose day started before `$1` (epoch seconds).
const PRUNE_DAY_TOKENS: &str = "DELETE FROM usage_day_tokens WHERE day_start < $1";

/// Deletes cost-guard counters (`cost_counters`) and daily token counters (`usage_day_tokens`)
/// whose window started more than [`COUNTER_RETENTION_SECS`] before `now_secs`; returns how
/// many rows went. Part of retention pruning (`cognomega prune`, the `retention-prune`
/// schedule): without it both tables gain a row per active tenant per window forever.
pub async fn prune_counters(db: &Database, now_secs: i64) -> Result<u64, StoreError> {
    let cutoff = now_secs.saturating_sub(COUNTER_RETENTION_SECS);
    let mut tx = db.begin().await?;
    let a = cognomega_core::sql::Executor::execute(&mut tx, PRUNE_COST_COUNTERS, &[cutoff.into()])
        .await?;
    let b =
        cognomega_core::sql::Executor::execute(&mut tx, PRUNE_DAY_TOKENS, &[cutoff.into()]).await?;
    let removed = a + b;
    tx.commit().await?;
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn memory_stays_bounded_and_forgets_full_buckets_first() {
        let limiter = MemoryLimiter::with_capacity(SHARDS * 4);
        let rate = Rate::new(1_000.0, 2).expect("valid");
        let t0 = Instant::now();
        for i in 0..SHARDS * 40 {
            let _ = limiter.take(&format!("k{i}"), rate, t0);
        }
        assert!(
            limiter.len() <= SHARDS * 4,
            "{} buckets kept for a capacity of {}",
            limiter.len(),
            SHARDS * 4
        );
        // A drained bucket survives eviction while refilled ones are dropped.
        let slow = Rate::new(0.001, 1).expect("valid");
        assert!(limiter.take("drained", slow, t0).allowed);
        let later = t0 + Duration::from_secs(1);
        // Each a few milliseconds after the last, so the earlier ones have refilled.
        let mut t = later;
        for i in 0..SHARDS * 40 {
            t += Duration::from_millis(3);
            let _ = limiter.take(&format!("again{i}"), rate, t);
        }
        assert!(
            !limiter.take("drained", slow, t).allowed,
            "the drained bucket was remembered"
        );
    }
}
