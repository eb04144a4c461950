//! The `Idempotency-Key`s of `POST /api/si/ask` (`ask_replays`), with the statements both
//! hosts share (`cognomega_core::ai::replay`).

use cognomega_core::ai::replay::{self, Existing};
use cognomega_core::sql::Executor as _;

use crate::{Database, StoreError};

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
    // On the SQLite writer: a claim must see the last committed claim.
    let mut db = db.clone();
    // A live row can vanish between the claim and the look-up (released by its claimant):
    // then claim again.
    for _ in 0..3 {
        let args = [
            tenant.into(),
            key.into(),
            hash.into(),
            now.into(),
            expired.into(),
            abandoned.into(),
        ];
        if let Some(row) = db.query_opt(replay::CLAIM, &args).await? {
            return Ok(Claim::Claimed(row.int(0)?));
        }
        let row = db
            .query_opt(replay::LOOKUP, &[tenant.into(), key.into()])
            .await?;
        if let Some(r) = row {
            return Ok(Claim::Live(Existing {
                request_hash: r.text(0)?,
                state: r.text(1)?,
                claimed_at: r.int(2)?,
                response: r.opt_text(3)?,
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
    let args = [tenant.into(), key.into(), claimed_at.into(), json.into()];
    db.clone().execute(replay::FINISH, &args).await?;
    Ok(())
}

/// Gives up the claim made at `claimed_at` (nothing was billed: a retry asks afresh).
pub async fn release(
    db: &Database,
    tenant: &str,
    key: &str,
    claimed_at: i64,
) -> Result<(), StoreError> {
    let args = [tenant.into(), key.into(), claimed_at.into()];
    db.clone().execute(replay::RELEASE, &args).await?;
    Ok(())
}

/// Retention: deletes keys older than their 24 hours; returns how many went.
pub async fn prune(db: &Database, now_ms: i64) -> Result<u64, StoreError> {
    let cutoff = now_ms.saturating_sub(replay::KEY_TTL_MS);
    Ok(db.clone().execute(replay::PRUNE, &[cutoff.into()]).await?)
}
