//! SQL of jobs and their artifacts.

use serde::Serialize;
use sqlx::Row;

use crate::queue::now_ms;
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

const COLUMNS_SQLITE: &str = "id, tenant_id, type, status, params, input_key, progress, stage, attempts, error, \
    credits_charged, cancel_requested <> 0 AS cancel_requested, request_id, created_at, started_at, finished_at";
const COLUMNS_PG: &str = "id, tenant_id, type, status, params, input_key, progress::float8 AS progress, stage, attempts::bigint AS attempts, error, \
    credits_charged, cancel_requested, request_id, (extract(epoch from created_at) * 1000)::bigint AS created_at, \
    (extract(epoch from started_at) * 1000)::bigint AS started_at, (extract(epoch from finished_at) * 1000)::bigint AS finished_at";

fn job_from<R: Row>(row: &R) -> Result<Job, sqlx::Error>
where
    for<'c> &'c str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<i64>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    f64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    bool: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(Job {
        id: row.try_get("id")?,
        tenant_id: row.try_get("tenant_id")?,
        job_type: row.try_get("type")?,
        status: row.try_get("status")?,
        params: row.try_get("params")?,
        input_key: row.try_get("input_key")?,
        progress: row.try_get("progress")?,
        stage: row.try_get("stage")?,
        attempts: row.try_get("attempts")?,
        error: row.try_get("error")?,
        credits_charged: row.try_get("credits_charged")?,
        cancel_requested: row.try_get("cancel_requested")?,
        request_id: row.try_get("request_id")?,
        created_at_ms: row.try_get("created_at")?,
        started_at_ms: row.try_get("started_at")?,
        finished_at_ms: row.try_get("finished_at")?,
    })
}

/// Inserts a job; with an idempotency key already used by the tenant, returns the existing
/// job's id and `false`.
pub async fn insert(tx: &mut Tx, job: &NewJob<'_>) -> Result<(String, bool), StoreError> {
    let created: Option<String> = match tx {
        Tx::Sqlite { tx, .. } => {
            // No sequences in SQLite; the single writer makes MAX+1 safe.
            sqlx::query_scalar(
                "INSERT INTO jobs (id, seq, tenant_id, type, status, idempotency_key, params, input_key, request_id, created_at)
                 VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs), ?2, ?3, 'queued', ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT (tenant_id, idempotency_key) DO NOTHING RETURNING id",
            )
            .bind(job.id)
            .bind(job.tenant_id)
            .bind(job.job_type)
            .bind(job.idempotency_key)
            .bind(job.params)
            .bind(job.input_key)
            .bind(job.request_id)
            .bind(now_ms().0)
            .fetch_optional(&mut **tx)
            .await?
        }
        Tx::Postgres { tx, .. } => {
            sqlx::query_scalar(cognomega_core::jobs::PG_INSERT)
                .bind(job.id)
                .bind(job.tenant_id)
                .bind(job.job_type)
                .bind(job.idempotency_key)
                .bind(job.params)
                .bind(job.input_key)
                .bind(job.request_id)
                .fetch_optional(&mut **tx)
                .await?
        }
    };
    if let Some(id) = created {
        return Ok((id, true));
    }
    let existing = cognomega_core::sql::Executor::query_opt(
        tx,
        cognomega_core::jobs::BY_KEY,
        &[job.tenant_id.into(), job.idempotency_key.into()],
    )
    .await?
    .ok_or_else(|| StoreError::Sqlx(sqlx::Error::RowNotFound))?
    .text(0)?;
    Ok((existing, false))
}

/// A job by id; with `tenant`, only if it belongs to that tenant.
pub async fn get(db: &Database, id: &str, tenant: Option<&str>) -> Result<Option<Job>, StoreError> {
    let job = match db {
        Database::Sqlite(s) => {
            let sql = format!("SELECT {COLUMNS_SQLITE} FROM jobs WHERE id = ?1 AND (?2 IS NULL OR tenant_id = ?2)");
            let row = sqlx::query(&sql)
                .bind(id)
                .bind(tenant)
                .fetch_optional(&s.read)
                .await?;
            row.as_ref().map(job_from).transpose()?
        }
        Database::Postgres(pg) => {
            let sql = format!("SELECT {COLUMNS_PG} FROM jobs WHERE id = $1 AND ($2::text IS NULL OR tenant_id = $2)");
            let row = sqlx::query(&sql)
                .bind(id)
                .bind(tenant)
                .fetch_optional(&pg.pool)
                .await?;
            row.as_ref().map(job_from).transpose()?
        }
    };
    Ok(job)
}

/// A tenant's jobs, newest first, after `cursor` (an id from the previous page).
pub async fn list(
    db: &Database,
    tenant: &str,
    status: Option<&str>,
    job_type: Option<&str>,
    limit: u32,
    cursor: Option<&str>,
) -> Result<Vec<Job>, StoreError> {
    let limit = i64::from(limit);
    Ok(match db {
        Database::Sqlite(s) => {
            let sql = format!(
                "SELECT {COLUMNS_SQLITE} FROM jobs WHERE tenant_id = ?1 AND (?2 IS NULL OR status = ?2)
                 AND (?3 IS NULL OR type = ?3) AND (?4 IS NULL OR id < ?4) ORDER BY id DESC LIMIT ?5"
            );
            let rows = sqlx::query(&sql)
                .bind(tenant)
                .bind(status)
                .bind(job_type)
                .bind(cursor)
                .bind(limit)
                .fetch_all(&s.read)
                .await?;
            rows.iter().map(job_from).collect::<Result<_, _>>()?
        }
        Database::Postgres(pg) => {
            let sql = format!(
                "SELECT {COLUMNS_PG} FROM jobs WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2)
                 AND ($3::text IS NULL OR type = $3) AND ($4::text IS NULL OR id < $4) ORDER BY id DESC LIMIT $5"
            );
            let rows = sqlx::query(&sql)
                .bind(tenant)
                .bind(status)
                .bind(job_type)
                .bind(cursor)
                .bind(limit)
                .fetch_all(&pg.pool)
                .await?;
            rows.iter().map(job_from).collect::<Result<_, _>>()?
        }
    })
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
        .map(|r| -> Result<_, cognomega_core::sql::SqlError> {
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
