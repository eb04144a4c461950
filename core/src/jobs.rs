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
//! The statements here are written once (`$n`, epoch milliseconds); the claim and the verdicts
//! also set the job's timestamps, whose column types differ between SQLite (epoch milliseconds)
//! and PostgreSQL (`timestamptz`): those are [`Dialects`] pairs, side by side. Both hosts run
//! them through the functions below (the run itself is `cognomega-workflows`' job workflow).

use serde::Serialize;

use crate::sql::{Dialects, Executor, SqlError, Transaction, Value};

/// How long a native run holds its job without renewing (the `jobs.<type>` queue's lease); it
/// renews every third of it.
pub const NATIVE_LEASE_MS: i64 = 120_000;
/// How long an edge run holds its job: a queue consumer invocation's wall-clock limit
/// (15 minutes), after which the run is certainly over.
pub const EDGE_LEASE_MS: i64 = 15 * 60_000;

/// The claim condition every host's claim statement carries, with `$2` now and `$3` the
/// claiming delivery: queued, or running under an expired lease or this delivery's own.
pub const CLAIMABLE: &str = "(status = 'queued' OR (status = 'running' AND (lease_until IS NULL OR lease_until < $2 OR lease_owner = $3)))";

/// A new queued job — `$1` id, `$2` tenant, `$3` type, `$4` idempotency key, `$5` params,
/// `$6` input key, `$7` request id (SQLite: `$8` now) — returning its `id`; no row back when
/// the tenant already used the key (a concurrent submit won). SQLite has no sequences: the
/// single writer makes `MAX(seq) + 1` safe.
pub const INSERT: Dialects = Dialects {
    sqlite: "INSERT INTO jobs (id, seq, tenant_id, type, status, idempotency_key, params, input_key, request_id, created_at)
             VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), $2, $3, 'queued', $4, $5, $6, $7, $8)
             ON CONFLICT (tenant_id, idempotency_key) DO NOTHING RETURNING id",
    postgres: "INSERT INTO jobs (id, tenant_id, type, status, idempotency_key, params, input_key, request_id)
     VALUES ($1, $2, $3, 'queued', $4, $5, $6, $7)
     ON CONFLICT (tenant_id, idempotency_key) DO NOTHING RETURNING id",
};

/// The job tenant `$1` created with idempotency key `$2`: its `id`.
pub const BY_KEY: &str = "SELECT id FROM jobs WHERE tenant_id = $1 AND idempotency_key = $2";

/// Marks job `$1` `dead` with the error `$2` at `$3` unless it already reached a final status
/// (its message went to the dead-letter queue without any delivery finishing it).
pub const BURY: Dialects = Dialects {
    sqlite: "UPDATE jobs SET status = 'dead', error = $2, finished_at = $3, lease_until = NULL
             WHERE id = $1 AND status IN ('queued', 'running')",
    postgres: "UPDATE jobs SET status = 'dead', error = $2,
                   finished_at = to_timestamp($3::float8 / 1000), lease_until = NULL
               WHERE id = $1 AND status IN ('queued', 'running')",
};

/// Claims job `$1` at `$2` for the delivery `$3` until `$4` ([`CLAIMABLE`]). Returns
/// `tenant_id, type, params, input_key, request_id, cancel_requested, attempts`.
pub const START: Dialects = Dialects {
    sqlite: "UPDATE jobs SET status = 'running', attempts = attempts + 1,
                 started_at = COALESCE(started_at, $2), progress = 0, stage = NULL,
                 lease_owner = $3, lease_until = $4
             WHERE id = $1 AND (status = 'queued' OR (status = 'running' AND (lease_until IS NULL OR lease_until < $2 OR lease_owner = $3)))
             RETURNING tenant_id, type, params, input_key, request_id, cancel_requested, attempts",
    postgres: "UPDATE jobs SET status = 'running', attempts = attempts + 1,
                   started_at = COALESCE(started_at, to_timestamp($2::float8 / 1000)), progress = 0,
                   stage = NULL, lease_owner = $3, lease_until = $4
               WHERE id = $1 AND (status = 'queued' OR (status = 'running' AND (lease_until IS NULL OR lease_until < $2 OR lease_owner = $3)))
               RETURNING tenant_id, type, params, input_key, request_id, cancel_requested, attempts",
};

/// Moves job `$1` to the final status `$2` with the error `$3` at `$5`; with an owner `$4`,
/// only while that run owns it.
pub const FINISH: Dialects = Dialects {
    sqlite: "UPDATE jobs SET status = $2, error = $3, finished_at = $5, lease_until = NULL
             WHERE id = $1 AND ($4 IS NULL OR (lease_owner = $4 AND status = 'running'))",
    postgres: "UPDATE jobs SET status = $2, error = $3,
                   finished_at = to_timestamp($5::float8 / 1000), lease_until = NULL
               WHERE id = $1 AND ($4::text IS NULL OR (lease_owner = $4 AND status = 'running'))",
};

/// Job `$1` succeeded at `$4`, charged `$2` credits; with an owner `$3`, only while that run
/// owns it, and never once a cancel was asked for (the run then ends `cancelled`).
pub const SUCCEED: Dialects = Dialects {
    sqlite: "UPDATE jobs SET status = 'succeeded', progress = 1, stage = 'done', error = NULL,
                 credits_charged = $2, finished_at = $4, lease_until = NULL
             WHERE id = $1 AND NOT cancel_requested
               AND ($3 IS NULL OR (lease_owner = $3 AND status = 'running'))",
    postgres: "UPDATE jobs SET status = 'succeeded', progress = 1, stage = 'done', error = NULL,
                   credits_charged = $2, finished_at = to_timestamp($4::float8 / 1000),
                   lease_until = NULL
               WHERE id = $1 AND NOT cancel_requested
                 AND ($3::text IS NULL OR (lease_owner = $3 AND status = 'running'))",
};

/// Records artifact `$2` of job `$1` (replacing one an earlier attempt wrote): `$3` content
/// type, `$4` size, `$5` stored size, `$6` compression, `$7` sha256, `$8` tier, `$9` object key,
/// `$10` now.
pub const ARTIFACT: Dialects = Dialects {
    sqlite: "INSERT INTO job_artifacts (job_id, name, content_type, size, stored_size, compression, sha256, tier, object_key, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)
             ON CONFLICT (job_id, name) DO UPDATE SET content_type = excluded.content_type, size = excluded.size,
                 stored_size = excluded.stored_size, compression = excluded.compression, sha256 = excluded.sha256,
                 tier = excluded.tier, object_key = excluded.object_key",
    postgres: "INSERT INTO job_artifacts (job_id, name, content_type, size, stored_size, compression, sha256, tier, object_key, created_at)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, to_timestamp($10::float8 / 1000))
               ON CONFLICT (job_id, name) DO UPDATE SET content_type = EXCLUDED.content_type, size = EXCLUDED.size,
                   stored_size = EXCLUDED.stored_size, compression = EXCLUDED.compression, sha256 = EXCLUDED.sha256,
                   tier = EXCLUDED.tier, object_key = EXCLUDED.object_key",
};

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

/// A job a delivery claimed: what its run needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claimed {
    /// The owner.
    pub tenant_id: String,
    /// The job type's name.
    pub job_type: String,
    /// Normalized params (JSON text).
    pub params: String,
    /// The input's object key.
    pub input_key: String,
    /// The request that submitted it.
    pub request_id: Option<String>,
    /// A cancel was asked for while it was running under an earlier delivery.
    pub cancel_requested: bool,
    /// Runs started, this one included.
    pub attempts: i64,
}

/// Claims job `id` for the delivery `owner` until `now_ms + lease_ms` (the attempt fence).
/// `None` when it must not run here: cancelled, already finished, or running under another
/// delivery's live lease.
pub async fn start<E: Executor + ?Sized>(
    db: &mut E,
    id: &str,
    owner: &str,
    now_ms: i64,
    lease_ms: i64,
) -> Result<Option<Claimed>, SqlError> {
    let sql = START.pick(db.dialect());
    let Some(row) = db
        .query_opt(
            sql,
            &[
                id.into(),
                now_ms.into(),
                owner.into(),
                (now_ms + lease_ms).into(),
            ],
        )
        .await?
    else {
        return Ok(None);
    };
    Ok(Some(Claimed {
        tenant_id: row.text(0)?,
        job_type: row.text(1)?,
        params: row.text(2)?,
        input_key: row.text(3)?,
        request_id: row.opt_text(4)?,
        cancel_requested: row.bool(5)?,
        attempts: row.int(6)?,
    }))
}

/// Moves job `id` to a final status (`failed`, `cancelled`, `dead`) with an error; with
/// `owner`, only while that run owns it (a run that lost its lease gives no verdict). Whether
/// the job changed.
pub async fn finish<E: Executor + ?Sized>(
    db: &mut E,
    id: &str,
    owner: Option<&str>,
    status: &str,
    error: Option<&str>,
    now_ms: i64,
) -> Result<bool, SqlError> {
    let sql = FINISH.pick(db.dialect());
    let args = [
        id.into(),
        status.into(),
        error.into(),
        owner.into(),
        now_ms.into(),
    ];
    Ok(db.execute(sql, &args).await? > 0)
}

/// Marks job `id` `dead` unless it already reached a final status. Whether it changed.
pub async fn bury<E: Executor + ?Sized>(
    db: &mut E,
    id: &str,
    error: &str,
    now_ms: i64,
) -> Result<bool, SqlError> {
    let sql = BURY.pick(db.dialect());
    Ok(db
        .execute(sql, &[id.into(), error.into(), now_ms.into()])
        .await?
        > 0)
}

/// An artifact row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArtifactRow {
    /// File name.
    pub name: String,
    /// MIME type.
    pub content_type: String,
    /// Original size in bytes.
    pub size: i64,
    /// Stored (compressed) size.
    pub stored_size: i64,
    /// `none` | `zstd` | `gzip`.
    pub compression: String,
    /// Hex sha256 of the original bytes.
    pub sha256: String,
    /// Lifecycle tier (`hot` when written).
    pub tier: String,
    /// Where the bytes are.
    pub object_key: String,
}

/// How a finished run's verdict was recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Succeeded with its artifacts: bill it.
    Succeeded,
    /// A cancel came in while it ran: `cancelled`, its artifacts listed, not billed.
    Cancelled,
    /// The run no longer owns the job (another delivery took it over): nothing written.
    Lost,
}

/// Records a finished run in the caller's transaction (which also produces the usage event on
/// [`Verdict::Succeeded`]): the status and credits, and the artifact rows (replacing any from
/// an earlier attempt). With `owner`, only while that run owns the job.
pub async fn succeed<T: Transaction + ?Sized>(
    tx: &mut T,
    id: &str,
    owner: Option<&str>,
    artifacts: &[ArtifactRow],
    credits: i64,
    now_ms: i64,
) -> Result<Verdict, SqlError> {
    let dialect = tx.dialect();
    let args = [id.into(), credits.into(), owner.into(), now_ms.into()];
    let verdict = if tx.execute(SUCCEED.pick(dialect), &args).await? > 0 {
        Verdict::Succeeded
    } else if finish(
        tx,
        id,
        owner,
        "cancelled",
        Some("cancelled while running"),
        now_ms,
    )
    .await?
    {
        Verdict::Cancelled
    } else {
        return Ok(Verdict::Lost);
    };
    for a in artifacts {
        let args = [
            id.into(),
            Value::from(&a.name),
            Value::from(&a.content_type),
            a.size.into(),
            a.stored_size.into(),
            Value::from(&a.compression),
            Value::from(&a.sha256),
            Value::from(&a.tier),
            Value::from(&a.object_key),
            now_ms.into(),
        ];
        tx.execute(ARTIFACT.pick(dialect), &args).await?;
    }
    Ok(verdict)
}

/// The status of tenant `$2`'s job `$1`, locked for the cancel's transaction on PostgreSQL
/// (SQLite's write transaction holds the whole database).
pub const STATUS_FOR_CANCEL: Dialects = Dialects {
    sqlite: "SELECT status FROM jobs WHERE id = $1 AND tenant_id = $2",
    postgres: "SELECT status FROM jobs WHERE id = $1 AND tenant_id = $2 FOR UPDATE",
};
/// Asks running job `$1` to stop at its next stage boundary.
pub const REQUEST_CANCEL: &str = "UPDATE jobs SET cancel_requested = TRUE WHERE id = $1";

/// What a cancel request did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CancelOutcome {
    /// It was queued: cancelled now.
    Cancelled,
    /// It is running: it stops at its next stage boundary.
    Requested,
    /// It already finished with this status.
    Finished(String),
    /// No such job for this tenant.
    NotFound,
}

/// Cancels tenant `tenant`'s job `id` in the caller's transaction: a queued one at once, a
/// running one at its next stage boundary (its run reads the request back at each stage).
pub async fn cancel<E: Executor + ?Sized>(
    tx: &mut E,
    tenant: &str,
    id: &str,
    now_ms: i64,
) -> Result<CancelOutcome, SqlError> {
    let sql = STATUS_FOR_CANCEL.pick(tx.dialect());
    let status = tx.query_opt(sql, &[id.into(), tenant.into()]).await?;
    let status = status.map(|row| row.text(0)).transpose()?;
    Ok(match status.as_deref() {
        None => CancelOutcome::NotFound,
        Some("queued") => {
            let why = Some("cancelled before it started");
            finish(tx, id, None, "cancelled", why, now_ms).await?;
            CancelOutcome::Cancelled
        }
        Some("running") => {
            tx.execute(REQUEST_CANCEL, &[id.into()]).await?;
            CancelOutcome::Requested
        }
        Some(other) => CancelOutcome::Finished(other.to_owned()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_claims_carry_the_fence() {
        assert!(START.sqlite.contains(CLAIMABLE));
        assert!(START.postgres.contains(CLAIMABLE));
    }
}

/// A job row. Times are epoch milliseconds.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Job {
    /// UUIDv7.
    pub id: String,
    /// Owner.
    pub tenant_id: String,
    /// Job type name.
    pub job_type: String,
    /// queued | running | succeeded | failed | cancelled | dead
    pub status: String,
    /// Normalized params (JSON text).
    pub params: String,
    /// Object key of the input.
    pub input_key: String,
    /// 0..=1.
    pub progress: f64,
    /// Current or last stage.
    pub stage: Option<String>,
    /// Runs started.
    pub attempts: i64,
    /// Why it failed.
    pub error: Option<String>,
    /// Credits charged on success.
    pub credits_charged: i64,
    /// A running job should stop at its next stage boundary.
    pub cancel_requested: bool,
    /// The submitting request.
    pub request_id: Option<String>,
    /// Submitted.
    pub created_at_ms: i64,
    /// First run started.
    pub started_at_ms: Option<i64>,
    /// Reached a final status.
    pub finished_at_ms: Option<i64>,
}

/// The columns of a [`Job`], in [`job_from`]'s order (SQLite: times in epoch ms, booleans 0/1).
macro_rules! sqlite_job_columns {
    () => {
        "id, tenant_id, type, status, params, input_key, progress, stage, attempts, error, \
         credits_charged, cancel_requested <> 0 AS cancel_requested, request_id, created_at, \
         started_at, finished_at"
    };
}

/// The columns of a [`Job`], in [`job_from`]'s order (PostgreSQL: times read as epoch ms).
macro_rules! pg_job_columns {
    () => {
        "id, tenant_id, type, status, params, input_key, progress::float8 AS progress, stage, \
         attempts::bigint AS attempts, error, credits_charged, cancel_requested, request_id, \
         (extract(epoch from created_at) * 1000)::bigint AS created_at, \
         (extract(epoch from started_at) * 1000)::bigint AS started_at, \
         (extract(epoch from finished_at) * 1000)::bigint AS finished_at"
    };
}

fn job_from(row: &crate::sql::Row) -> Result<Job, SqlError> {
    Ok(Job {
        id: row.text(0)?,
        tenant_id: row.text(1)?,
        job_type: row.text(2)?,
        status: row.text(3)?,
        params: row.text(4)?,
        input_key: row.text(5)?,
        progress: row.real(6)?,
        stage: row.opt_text(7)?,
        attempts: row.int(8)?,
        error: row.opt_text(9)?,
        credits_charged: row.int(10)?,
        cancel_requested: row.bool(11)?,
        request_id: row.opt_text(12)?,
        created_at_ms: row.int(13)?,
        started_at_ms: row.opt_int(14)?,
        finished_at_ms: row.opt_int(15)?,
    })
}

/// Job `$1`, of tenant `$2` unless null.
pub const GET: Dialects = Dialects {
    sqlite: concat!(
        "SELECT ",
        sqlite_job_columns!(),
        " FROM jobs WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2)"
    ),
    postgres: concat!(
        "SELECT ",
        pg_job_columns!(),
        " FROM jobs WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)"
    ),
};

/// Tenant `$1`'s jobs, newest first: with status `$2` and type `$3` unless null, ids below
/// `$4` unless null, at most `$5`.
pub const LIST: Dialects = Dialects {
    sqlite: concat!(
        "SELECT ",
        sqlite_job_columns!(),
        " FROM jobs WHERE tenant_id = $1 AND ($2 IS NULL OR status = $2)
          AND ($3 IS NULL OR type = $3) AND ($4 IS NULL OR id < $4) ORDER BY id DESC LIMIT $5"
    ),
    postgres: concat!(
        "SELECT ",
        pg_job_columns!(),
        " FROM jobs WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2)
          AND ($3::text IS NULL OR type = $3) AND ($4::text IS NULL OR id < $4) ORDER BY id DESC LIMIT $5"
    ),
};

/// The artifacts of job `$1`, by name.
pub const ARTIFACTS: &str =
    "SELECT name, content_type, size, stored_size, compression, sha256, tier, object_key
     FROM job_artifacts WHERE job_id = $1 ORDER BY name";

/// A job by id; with `tenant`, only if it belongs to that tenant.
pub async fn get<E: Executor + ?Sized>(
    db: &mut E,
    id: &str,
    tenant: Option<&str>,
) -> Result<Option<Job>, SqlError> {
    let statement = GET.pick(db.dialect());
    let row = db.query_opt(statement, &[id.into(), tenant.into()]).await?;
    row.as_ref().map(job_from).transpose()
}

/// A tenant's jobs, newest first, after `cursor` (an id from the previous page).
pub async fn list<E: Executor + ?Sized>(
    db: &mut E,
    tenant: &str,
    status: Option<&str>,
    job_type: Option<&str>,
    limit: u32,
    cursor: Option<&str>,
) -> Result<Vec<Job>, SqlError> {
    let args = [
        tenant.into(),
        status.into(),
        job_type.into(),
        cursor.into(),
        i64::from(limit).into(),
    ];
    let statement = LIST.pick(db.dialect());
    let rows = db.query(statement, &args).await?;
    rows.iter().map(job_from).collect()
}

/// The artifacts of a job, by name.
pub async fn artifacts<E: Executor + ?Sized>(
    db: &mut E,
    job_id: &str,
) -> Result<Vec<ArtifactRow>, SqlError> {
    let rows = db.query(ARTIFACTS, &[job_id.into()]).await?;
    rows.iter()
        .map(|r| {
            Ok(ArtifactRow {
                name: r.text(0)?,
                content_type: r.text(1)?,
                size: r.int(2)?,
                stored_size: r.int(3)?,
                compression: r.text(4)?,
                sha256: r.text(5)?,
                tier: r.text(6)?,
                object_key: r.text(7)?,
            })
        })
        .collect()
}
