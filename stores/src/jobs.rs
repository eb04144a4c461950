//! SQL of jobs and their artifacts.

use cognomega_core::sql::{Dialects, Executor as _, Row, SqlError};
use serde::Serialize;

use crate::queue::now_ms;
use crate::stamped::Stamped;
use crate::{Database, StoreError, Tx};

/// A job row. Times are epoch milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize)]
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

pub use cognomega_core::jobs::{ArtifactRow, CancelOutcome};

/// A job to insert.
#[derive(Debug, Clone)]
pub struct NewJob<'a> {
    /// UUIDv7.
    pub id: &'a str,
    /// Owner.
    pub tenant_id: &'a str,
    /// Type name.
    pub job_type: &'a str,
    /// Client idempotency key.
    pub idempotency_key: Option<&'a str>,
    /// Normalized params.
    pub params: &'a str,
    /// Input object key.
    pub input_key: &'a str,
    /// Submitting request.
    pub request_id: Option<&'a str>,
}

/// The columns of a [`Job`], in [`job_from`]'s order (SQLite: times in epoch ms, booleans 0/1).
macro_rules! sqlite_columns {
    () => {
        "id, tenant_id, type, status, params, input_key, progress, stage, attempts, error, \
         credits_charged, cancel_requested <> 0 AS cancel_requested, request_id, created_at, \
         started_at, finished_at"
    };
}

/// The columns of a [`Job`], in [`job_from`]'s order (PostgreSQL: times read as epoch ms).
macro_rules! pg_columns {
    () => {
        "id, tenant_id, type, status, params, input_key, progress::float8 AS progress, stage, \
         attempts::bigint AS attempts, error, credits_charged, cancel_requested, request_id, \
         (extract(epoch from created_at) * 1000)::bigint AS created_at, \
         (extract(epoch from started_at) * 1000)::bigint AS started_at, \
         (extract(epoch from finished_at) * 1000)::bigint AS finished_at"
    };
}

fn job_from(row: &Row) -> Result<Job, SqlError> {
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

const INSERT: Stamped = Stamped(cognomega_core::jobs::INSERT);

/// Inserts a job; with an idempotency key already used by the tenant, returns the existing
/// job's id and `false`.
pub async fn insert(tx: &mut Tx, job: &NewJob<'_>) -> Result<(String, bool), StoreError> {
    let (sql, args) = INSERT.bind(
        tx.dialect(),
        vec![
            job.id.into(),
            job.tenant_id.into(),
            job.job_type.into(),
            job.idempotency_key.into(),
            job.params.into(),
            job.input_key.into(),
            job.request_id.into(),
        ],
        now_ms().0,
    );
    if let Some(row) = tx.query_opt(sql, &args).await? {
        return Ok((row.text(0)?, true));
    }
    let existing = tx
        .query_opt(
            cognomega_core::jobs::BY_KEY,
            &[job.tenant_id.into(), job.idempotency_key.into()],
        )
        .await?
        .ok_or_else(|| StoreError::Sqlx(sqlx::Error::RowNotFound))?
        .text(0)?;
    Ok((existing, false))
}

/// Job `$1`, of tenant `$2` unless null.
const GET: Dialects = Dialects {
    sqlite: concat!(
        "SELECT ",
        sqlite_columns!(),
        " FROM jobs WHERE id = $1 AND ($2 IS NULL OR tenant_id = $2)"
    ),
    postgres: concat!(
        "SELECT ",
        pg_columns!(),
        " FROM jobs WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)"
    ),
};

/// A job by id; with `tenant`, only if it belongs to that tenant.
pub async fn get(db: &Database, id: &str, tenant: Option<&str>) -> Result<Option<Job>, StoreError> {
    let mut read = crate::sql::Reader(db);
    let row = read
        .query_opt(GET.pick(read.dialect()), &[id.into(), tenant.into()])
        .await?;
    Ok(row.as_ref().map(job_from).transpose()?)
}

/// Tenant `$1`'s jobs, newest first: with status `$2` and type `$3` unless null, ids below
/// `$4` unless null, at most `$5`.
const LIST: Dialects = Dialects {
    sqlite: concat!(
        "SELECT ",
        sqlite_columns!(),
        " FROM jobs WHERE tenant_id = $1 AND ($2 IS NULL OR status = $2)
          AND ($3 IS NULL OR type = $3) AND ($4 IS NULL OR id < $4) ORDER BY id DESC LIMIT $5"
    ),
    postgres: concat!(
        "SELECT ",
        pg_columns!(),
        " FROM jobs WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2)
          AND ($3::text IS NULL OR type = $3) AND ($4::text IS NULL OR id < $4) ORDER BY id DESC LIMIT $5"
    ),
};

/// A tenant's jobs, newest first, after `cursor` (an id from the previous page).
pub async fn list(
    db: &Database,
    tenant: &str,
    status: Option<&str>,
    job_type: Option<&str>,
    limit: u32,
    cursor: Option<&str>,
) -> Result<Vec<Job>, StoreError> {
    let mut read = crate::sql::Reader(db);
    let args = [
        tenant.into(),
        status.into(),
        job_type.into(),
        cursor.into(),
        i64::from(limit).into(),
    ];
    let rows = read.query(LIST.pick(read.dialect()), &args).await?;
    Ok(rows.iter().map(job_from).collect::<Result<_, _>>()?)
}

/// The artifacts of job `$1`, by name.
const ARTIFACTS: &str =
    "SELECT name, content_type, size, stored_size, compression, sha256, tier, object_key
                 FROM job_artifacts WHERE job_id = $1 ORDER BY name";

/// Artifacts of a job, by name.
pub async fn artifacts(db: &Database, job_id: &str) -> Result<Vec<ArtifactRow>, StoreError> {
    let rows = cognomega_core::sql::Executor::query(
        &mut crate::sql::Reader(db),
        ARTIFACTS,
        &[job_id.into()],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| -> Result<_, SqlError> {
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
        .collect::<Result<_, _>>()?)
}

/// Cancels a tenant's job: a queued one at once, a running one at its next stage boundary.
pub async fn cancel(db: &Database, tenant: &str, id: &str) -> Result<CancelOutcome, StoreError> {
    let mut tx = db.begin().await?;
    let outcome = cognomega_core::jobs::cancel(&mut tx, tenant, id, now_ms().0).await?;
    tx.commit().await?;
    Ok(outcome)
}

/// The job a tenant created with an idempotency key, if any.
pub async fn find_by_key(
    db: &Database,
    tenant: &str,
    key: &str,
) -> Result<Option<String>, StoreError> {
    let row = cognomega_core::sql::Executor::query_opt(
        &mut crate::sql::Reader(db),
        cognomega_core::jobs::BY_KEY,
        &[tenant.into(), key.into()],
    )
    .await?;
    Ok(row.map(|r| r.text(0)).transpose()?)
}
