//! Running a job: the attempt fence both hosts hold a job with while they run it.
//!
//! A job's message can be delivered twice while the job runs (a re-send, an operator's
//! injected copy, a broker's at-least-once redelivery). The delivery that claims the job writes
//! itself into the row as `lease_owner` (its message id) with `lease_until`, and renews the lease
//! while it runs. Another delivery meanwhile finds the lease live and does not run the job: it
//! is acked, because the owner's own message is still unacked and comes back if the owner dies.
//! That redelivery (same message id) takes the job over at once, and anyone takes it over once
//! the lease expired. Progress, the verdict and the success are written only while the writer
//! still owns the lease, so a run that lost it cannot overwrite the one that took over.
//!
//! The statements here are the same on every backend (`$n`, epoch milliseconds); the claim and
//! the verdicts also set the job's timestamps, whose column types differ between SQLite and
//! PostgreSQL, and live beside their host's other job statements.

use crate::sql::{Executor, SqlError};

/// How long a native run holds its job without renewing (the `jobs.<type>` queue's lease); it
/// renews every third of it.
pub const NATIVE_LEASE_MS: i64 = 120_000;
/// How long an edge run holds its job: a queue consumer invocation's wall-clock limit
/// (15 minutes), after which the run is certainly over.
pub const EDGE_LEASE_MS: i64 = 15 * 60_000;

/// The claim condition every host's claim statement carries, with `$2` now and `$3` the
/// claiming delivery: queued, or running under an expired lease or this delivery's own.
pub const CLAIMABLE: &str = "(status = 'queued' OR (status = 'running' AND (lease_until IS NULL OR lease_until < $2 OR lease_owner = $3)))";

/// PostgreSQL: a new queued job — `$1` id, `$2` tenant, `$3` type, `$4` idempotency key, `$5`
/// params, `$6` input key, `$7` request id. No row back when the tenant already used the key (a
/// concurrent submit won). SQLite has no sequences: its variant numbers `seq` itself.
pub const PG_INSERT: &str =
    "INSERT INTO jobs (id, tenant_id, type, status, idempotency_key, params, input_key, request_id)
     VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7)
     ON CONFLICT (tenant_id, idempotency_key) DO NOTHING RETURNING id";

/// The job tenant `$1` created with idempotency key `$2`: its `id`.
pub const BY_KEY: &str = "SELECT id FROM jobs WHERE tenant_id = $1 AND idempotency_key = $2";

/// PostgreSQL: marks job `$1` `dead` with the error `$2` unless it already reached a final
/// status (its message went to the dead-letter queue without any delivery finishing it).
pub const PG_BURY: &str = "UPDATE jobs SET status = 'dead', error = $2, finished_at = now()
     WHERE id = $1 AND status IN ('queued', 'running')";

/// Records progress of job `$1` owned by `$2`: stage `$3`, fraction `$4`, lease renewed to
/// `$5`. Returns `cancel_requested`; no row when the run no longer owns the job.
pub const PROGRESS: &str = "UPDATE jobs SET stage = $3, progress = $4, lease_until = $5
     WHERE id = $1 AND lease_owner = $2 AND status = 'running'
     RETURNING cancel_requested";
/// Renews the lease of job `$1` owned by `$2` to `$3`.
pub const RENEW: &str = "UPDATE jobs SET lease_until = $3
     WHERE id = $1 AND lease_owner = $2 AND status = 'running'";

/// Progress of a run: whether it must stop (cancel requested, or the job is no longer its own).
pub async fn progress<E: Executor + ?Sized>(
    db: &mut E,
    id: &str,
    owner: &str,
    stage: &str,
    fraction: f64,
    lease_until: i64,
) -> Result<bool, SqlError> {
    let row = db
        .query_opt(
            PROGRESS,
            &[
                id.into(),
                owner.into(),
                stage.into(),
                crate::sql::Value::Real(fraction.clamp(0.0, 1.0)),
                lease_until.into(),
            ],
        )
        .await?;
    match row {
        Some(row) => row.bool(0),
        // Cancelled while queued and redelivered, finished, or taken over: stop.
        None => Ok(true),
    }
}

/// Renews a run's lease; `false` when the run no longer owns the job.
pub async fn renew<E: Executor + ?Sized>(
    db: &mut E,
    id: &str,
    owner: &str,
    lease_until: i64,
) -> Result<bool, SqlError> {
    Ok(db
        .execute(RENEW, &[id.into(), owner.into(), lease_until.into()])
        .await?
        > 0)
}
