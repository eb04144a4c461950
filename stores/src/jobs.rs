//! SQL of jobs and their artifacts.

use cognomega_core::sql::Executor as _;

use crate::queue::now_ms;
use crate::{Database, StoreError, Tx};

pub use cognomega_core::jobs::Job;
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

use cognomega_core::jobs::INSERT;

/// Inserts a job; with an idempotency key already used by the tenant, returns the existing
/// job's id and `false`.
pub async fn insert(tx: &mut Tx, job: &NewJob<'_>) -> Result<(String, bool), StoreError> {
    let (sql, args) = INSERT.stamped(
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

/// A job by id; with `tenant`, only if it belongs to that tenant.
pub async fn get(db: &Database, id: &str, tenant: Option<&str>) -> Result<Option<Job>, StoreError> {
    let mut read = crate::sql::Reader(db);
    Ok(cognomega_core::jobs::get(&mut read, id, tenant).await?)
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
    let mut read = crate::sql::Reader(db);
    Ok(cognomega_core::jobs::list(&mut read, tenant, status, job_type, limit, cursor).await?)
}

/// Artifacts of a job, by name.
pub async fn artifacts(db: &Database, job_id: &str) -> Result<Vec<ArtifactRow>, StoreError> {
    let mut read = crate::sql::Reader(db);
    Ok(cognomega_core::jobs::artifacts(&mut read, job_id).await?)
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
