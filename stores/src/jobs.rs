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

/// Cancels a tenant's job.
pub async fn cancel(db: &Database, tenant: &str, id: &str) -> Result<CancelOutcome, StoreError> {
    let mut tx = db.begin().await?;
    let status: Option<String> = match &mut tx {
        Tx::Sqlite { tx, .. } => {
            sqlx::query_scalar("SELECT status FROM jobs WHERE id = ?1 AND tenant_id = ?2")
                .bind(id)
                .bind(tenant)
                .fetch_optional(&mut **tx)
                .await?
        }
        Tx::Postgres { tx, .. } => {
            sqlx::query_scalar(
                "SELECT status FROM jobs WHERE id = $1 AND tenant_id = $2 FOR UPDATE",
            )
            .bind(id)
            .bind(tenant)
            .fetch_optional(&mut **tx)
            .await?
        }
    };
    let outcome = match status.as_deref() {
        None => CancelOutcome::NotFound,
        Some("queued") => {
            finish_in(
                &mut tx,
                id,
                None,
                "cancelled",
                Some("cancelled before it started"),
            )
            .await?;
            CancelOutcome::Cancelled
        }
        Some("running") => {
            match &mut tx {
                Tx::Sqlite { tx, .. } => {
                    sqlx::query("UPDATE jobs SET cancel_requested = 1 WHERE id = ?1")
                        .bind(id)
                        .execute(&mut **tx)
                        .await?;
                }
                Tx::Postgres { tx, .. } => {
                    sqlx::query("UPDATE jobs SET cancel_requested = true WHERE id = $1")
                        .bind(id)
                        .execute(&mut **tx)
                        .await?;
                }
            }
            CancelOutcome::Requested
        }
        Some(other) => CancelOutcome::Finished(other.to_owned()),
    };
    tx.commit().await?;
    Ok(outcome)
}

/// Claims a job for the delivery `owner` (its message id) for one more attempt, holding it
/// until `now + lease_ms` (the attempt fence, [`cognomega_core::jobs`]). `None` when it must not
/// run here: cancelled, already finished, or running under another delivery's live lease.
pub async fn start_run(
    db: &Database,
    id: &str,
    owner: &str,
    lease_ms: i64,
) -> Result<Option<Job>, StoreError> {
    let claimable = cognomega_core::jobs::CLAIMABLE;
    let (sqlite, pg) = (
        format!(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = COALESCE(started_at, $2),
                 progress = 0, stage = NULL, lease_owner = $3, lease_until = $4
             WHERE id = $1 AND {claimable} RETURNING {COLUMNS_SQLITE}"
        ),
        format!(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, started_at = COALESCE(started_at, now()),
                 progress = 0, stage = NULL, lease_owner = $3, lease_until = $4
             WHERE id = $1 AND {claimable} RETURNING {COLUMNS_PG}"
        ),
    );
    let now = now_ms().0;
    Ok(match db {
        Database::Sqlite(s) => {
            let row = sqlx::query(&sqlite)
                .bind(id)
                .bind(now)
                .bind(owner)
                .bind(now + lease_ms)
                .fetch_optional(&s.write)
                .await?;
            row.as_ref().map(job_from).transpose()?
        }
        Database::Postgres(p) => {
            let row = sqlx::query(&pg)
                .bind(id)
                .bind(now)
                .bind(owner)
                .bind(now + lease_ms)
                .fetch_optional(&p.pool)
                .await?;
            row.as_ref().map(job_from).transpose()?
        }
    })
}

/// Records progress of the run `owner` and renews its lease by `lease_ms`; returns whether it
/// must stop (cancellation requested, or the job is no longer its own).
pub async fn progress(
    db: &Database,
    id: &str,
    owner: &str,
    stage: &str,
    fraction: f64,
    lease_ms: i64,
) -> Result<bool, StoreError> {
    cognomega_core::jobs::progress(
        &mut db.clone(),
        id,
        owner,
        stage,
        fraction,
        now_ms().0 + lease_ms,
    )
    .await
    .map_err(StoreError::from)
}

/// Renews the lease of the run `owner` by `lease_ms`; `false` when it no longer owns the job.
pub async fn renew(
    db: &Database,
    id: &str,
    owner: &str,
    lease_ms: i64,
) -> Result<bool, StoreError> {
    cognomega_core::jobs::renew(&mut db.clone(), id, owner, now_ms().0 + lease_ms)
        .await
        .map_err(StoreError::from)
}

/// Moves job `id` to a final status; with `owner`, only while that run owns it. Returns
/// whether the job changed.
async fn finish_in(
    tx: &mut Tx,
    id: &str,
    owner: Option<&str>,
    status: &str,
    error: Option<&str>,
) -> Result<bool, StoreError> {
    let changed = match tx {
        Tx::Sqlite { tx, .. } => sqlx::query(
            "UPDATE jobs SET status = $2, error = $3, finished_at = $5
             WHERE id = $1 AND ($4 IS NULL OR (lease_owner = $4 AND status = 'running'))",
        )
        .bind(id)
        .bind(status)
        .bind(error)
        .bind(owner)
        .bind(now_ms().0)
        .execute(&mut **tx)
        .await?
        .rows_affected(),
        Tx::Postgres { tx, .. } => sqlx::query(
            "UPDATE jobs SET status = $2, error = $3, finished_at = now()
             WHERE id = $1 AND ($4::text IS NULL OR (lease_owner = $4 AND status = 'running'))",
        )
        .bind(id)
        .bind(status)
        .bind(error)
        .bind(owner)
        .execute(&mut **tx)
        .await?
        .rows_affected(),
    };
    Ok(changed > 0)
}

/// Moves a job to a final status (`failed`, `cancelled`, `dead`) with an error; with `owner`,
/// only while that run owns it (a run that lost its lease gives no verdict). Returns whether the
/// job changed.
pub async fn finish(
    db: &Database,
    id: &str,
    owner: Option<&str>,
    status: &str,
    error: Option<&str>,
) -> Result<bool, StoreError> {
    let mut tx = db.begin().await?;
    let changed = finish_in(&mut tx, id, owner, status, error).await?;
    tx.commit().await?;
    Ok(changed)
}

/// Marks a job `dead` with `error` unless it already reached a final status (a redelivered
/// success, a cancellation, an earlier verdict): for a job whose message went to the dead-letter
/// queue without any delivery finishing it. Returns whether the job changed.
pub async fn bury(db: &Database, id: &str, error: &str) -> Result<bool, StoreError> {
    let changed = match db {
        Database::Sqlite(s) => sqlx::query(
            "UPDATE jobs SET status = 'dead', error = ?2, finished_at = ?3
             WHERE id = ?1 AND status IN ('queued', 'running')",
        )
        .bind(id)
        .bind(error)
        .bind(now_ms().0)
        .execute(&s.write)
        .await?
        .rows_affected(),
        Database::Postgres(pg) => sqlx::query(cognomega_core::jobs::PG_BURY)
            .bind(id)
            .bind(error)
            .execute(&pg.pool)
            .await?
            .rows_affected(),
    };
    Ok(changed > 0)
}

/// Records a successful run: status, credits and artifact rows (replacing any from an earlier
/// attempt). With `owner`, only while that run owns the job: `false` (nothing written) when it
/// lost its lease. Runs inside the caller's transaction, which also produces the usage event.
pub async fn succeed(
    tx: &mut Tx,
    id: &str,
    owner: Option<&str>,
    artifacts: &[ArtifactRow],
    credits: i64,
) -> Result<bool, StoreError> {
    let now = now_ms().0;
    let changed = match tx {
        Tx::Sqlite { tx, .. } => sqlx::query(
            "UPDATE jobs SET status = 'succeeded', progress = 1, stage = 'done', error = NULL,
                 credits_charged = $2, finished_at = $4, lease_until = NULL
             WHERE id = $1 AND ($3 IS NULL OR (lease_owner = $3 AND status = 'running'))",
        )
        .bind(id)
        .bind(credits)
        .bind(owner)
        .bind(now)
        .execute(&mut **tx)
        .await?
        .rows_affected(),
        Tx::Postgres { tx, .. } => sqlx::query(
            "UPDATE jobs SET status = 'succeeded', progress = 1, stage = 'done', error = NULL,
                 credits_charged = $2, finished_at = now(), lease_until = NULL
             WHERE id = $1 AND ($3::text IS NULL OR (lease_owner = $3 AND status = 'running'))",
        )
        .bind(id)
        .bind(credits)
        .bind(owner)
        .execute(&mut **tx)
        .await?
        .rows_affected(),
    };
    if changed == 0 {
        return Ok(false);
    }
    for a in artifacts {
        match tx {
            Tx::Sqlite { tx, .. } => {
                sqlx::query(
                    "INSERT INTO job_artifacts (job_id, name, content_type, size, stored_size, compression, sha256, tier, object_key, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
                     ON CONFLICT (job_id, name) DO UPDATE SET content_type = excluded.content_type, size = excluded.size,
                         stored_size = excluded.stored_size, compression = excluded.compression, sha256 = excluded.sha256,
                         tier = excluded.tier, object_key = excluded.object_key",
                )
                .bind(id)
                .bind(&a.name)
                .bind(&a.content_type)
                .bind(a.size)
                .bind(a.stored_size)
                .bind(&a.compression)
                .bind(&a.sha256)
                .bind(&a.tier)
                .bind(&a.object_key)
                .bind(now)
                .execute(&mut **tx)
                .await?;
            }
            Tx::Postgres { tx, .. } => {
                sqlx::query(
                    "INSERT INTO job_artifacts (job_id, name, content_type, size, stored_size, compression, sha256, tier, object_key)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (job_id, name) DO UPDATE SET content_type = EXCLUDED.content_type, size = EXCLUDED.size,
                         stored_size = EXCLUDED.stored_size, compression = EXCLUDED.compression, sha256 = EXCLUDED.sha256,
                         tier = EXCLUDED.tier, object_key = EXCLUDED.object_key",
                )
                .bind(id)
                .bind(&a.name)
                .bind(&a.content_type)
                .bind(a.size)
                .bind(a.stored_size)
                .bind(&a.compression)
                .bind(&a.sha256)
                .bind(&a.tier)
                .bind(&a.object_key)
                .execute(&mut **tx)
                .await?;
            }
        }
    }
    Ok(true)
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
