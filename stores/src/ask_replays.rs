//! The `Idempotency-Key`s of `POST /api/si/ask` (`ask_replays`), with the statements both
//! hosts share (`cognomega_core::ai::replay`).

use cognomega_core::ai::replay::{self, Existing};

use crate::{Database, StoreError};

/// The same statement on either backend's pool (the SQLite writer: a claim must see the last
/// committed claim).
macro_rules! on_pool {
    ($db:expr, |$pool:ident| $body:expr) => {
        match $db {
            Database::Sqlite(s) => {
                let $pool = &s.write;
                $body
            }
            Database::Postgres(p) => {
                let $pool = &p.pool;
                $body
            }
        }
    };
}

/// The outcome of a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Claimed at this time (epoch ms): ask, then `finish` or `release` with it.
    Claimed(i64),
    /// A live claim holds the key: judge it with `replay::decide`.
    Live(Existing),
}

/// Claims `key` for `tenant` and a request body hashed `hash`, at `now_ms`.
pub async fn claim(
    db: &Database,
    tenant: &str,
    key: &str,
    hash: &str,
    now_ms: i64,
) -> Result<Claim, StoreError> {
    let (now, expired, abandoned) = replay::claim_times(now_ms);
    // A live row can vanish between the claim and the look-up (released by its claimant):
    // then claim again.
    for _ in 0..3 {
        let claimed: Option<i64> = on_pool!(db, |pool| sqlx::query_scalar(replay::CLAIM)
            .bind(tenant)
            .bind(key)
            .bind(hash)
            .bind(now)
            .bind(expired)
            .bind(abandoned)
            .fetch_optional(pool)
            .await?);
        if let Some(at) = claimed {
            return Ok(Claim::Claimed(at));
        }
        let row: Option<(String, String, i64, Option<String>)> =
            on_pool!(db, |pool| sqlx::query_as(replay::LOOKUP)
                .bind(tenant)
                .bind(key)
                .fetch_optional(pool)
                .await?);
        if let Some((request_hash, state, claimed_at, response)) = row {
            return Ok(Claim::Live(Existing {
                request_hash,
                state,
                claimed_at,
                response,
            }));
        }
    }
    Err(StoreError::Queue(
        cognomega_core::queue::QueueError::Invalid(
            "the Idempotency-Key changed hands three times during one claim".into(),
        ),
    ))
}

/// Stores the response of the claim made at `claimed_at`.
pub async fn finish(
    db: &Database,
    tenant: &str,
    key: &str,
    claimed_at: i64,
    response: &replay::Recorded,
) -> Result<(), StoreError> {
    let json = response.to_json();
    on_pool!(db, |pool| sqlx::query(replay::FINISH)
        .bind(tenant)
        .bind(key)
        .bind(claimed_at)
        .bind(&json)
        .execute(pool)
        .await
        .map(drop)?);
    Ok(())
}

/// Gives up the claim made at `claimed_at` (nothing was billed: a retry asks afresh).
pub async fn release(
    db: &Database,
    tenant: &str,
    key: &str,
    claimed_at: i64,
) -> Result<(), StoreError> {
    on_pool!(db, |pool| sqlx::query(replay::RELEASE)
        .bind(tenant)
        .bind(key)
        .bind(claimed_at)
        .execute(pool)
        .await
        .map(drop)?);
    Ok(())
}

/// Retention: deletes keys older than their 24 hours; returns how many went.
pub async fn prune(db: &Database, now_ms: i64) -> Result<u64, StoreError> {
    let cutoff = now_ms.saturating_sub(replay::KEY_TTL_MS);
    Ok(on_pool!(db, |pool| sqlx::query(replay::PRUNE)
        .bind(cutoff)
        .execute(pool)
        .await?
        .rows_affected()))
}
