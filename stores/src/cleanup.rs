//! `POST /admin/cleanup` and `cognomega cleanup`: deletes what retention allows and reports
//! counts, or (dry run) only counts.
//!
//! Four kinds of garbage:
//! - queue messages and idempotency keys past retention (the queue driver's `prune`; the dry
//!   run counts with the same conditions);
//! - expired guest tenants with nothing left: guest tier, created (and so token-issued) longer
//!   ago than the token lifetime plus the grace, zero in both the balance cache table and the
//!   ledger, no queued or running job, no upload waiting for its scan. Their mutable rows go
//!   (users, balances, KV entries keyed by the tenant, the tenant); `usage_events` and
//!   `ledger_entries` are append-only and stay;
//! - objects under `uploads/`, `artifacts/`, `inputs/` and `quarantine/` that no row refers
//!   to, last written longer ago than the grace (an upload or job input is written before its
//!   row commits, so a young row-less object may be in flight);
//! - upload and artifact rows whose object is gone: marked `tier = 'expired'`, the state the
//!   lifecycle sweeper gives a row whose object it deleted, which the API already answers with
//!   410 (`artifact_expired`, `file_expired`). Deleting them instead would turn a job's
//!   artifact list and an upload's status into 404s for things the tenant did create.
//!
//! Every part is idempotent: a second run finds nothing.
//!
//! The report, the retentions, the ownership rule and the PostgreSQL statements are
//! `cognomega_core::cleanup`'s, shared with the edge's cleanup (`wrangler/edge`).

use std::collections::HashSet;
use std::time::Duration;

use cognomega_core::cleanup::{self as shared, sql, MissingRow, ObjectRow, Retentions};
use cognomega_core::queue::PruneReport;
use cognomega_core::sql::{Dialects, Executor as _, Row, SqlError};
use cognomega_core::time::duration_ms;
use futures::TryStreamExt;

use crate::objects::{ObjectError, ObjectKey, Objects};
use crate::queue::now_ms;
use crate::{Database, StoreError, Tx};

pub use cognomega_core::cleanup::{CleanupReport, DEFAULT_GRACE, ROW_OWNED_PREFIXES};

/// What a cleanup may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupOptions {
    /// Only count.
    pub dry_run: bool,
    /// Guest token lifetime: a guest tenant older than this (plus `grace`) holds no live token.
    pub token_ttl: Duration,
    /// Objects and rows younger than this are never touched (writes in flight).
    pub grace: Duration,
}

/// Errors of a cleanup.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    /// The database.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The queue driver.
    #[error(transparent)]
    Queue(#[from] cognomega_core::queue::QueueError),
    /// The object store.
    #[error(transparent)]
    Objects(#[from] ObjectError),
}

impl From<sqlx::Error> for CleanupError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(StoreError::Sqlx(e))
    }
}

impl From<SqlError> for CleanupError {
    fn from(e: SqlError) -> Self {
        Self::Store(StoreError::Sql(e))
    }
}

/// Runs a cleanup (see the module docs).
pub async fn run(
    db: &Database,
    objects: &Objects,
    opts: CleanupOptions,
) -> Result<CleanupReport, CleanupError> {
    let now = now_ms().0;
    let grace_ms = duration_ms(opts.grace);
    let messages = if opts.dry_run {
        prunable(db).await?
    } else {
        // Ask keys past their 24 hours go with the expired queue keys.
        crate::ask_replays::prune(db, now).await?;
        db.queue().prune().await?
    };
    let guest_cutoff = now
        .saturating_sub(duration_ms(opts.token_ttl))
        .saturating_sub(grace_ms);
    let guests = expired_guests(db, guest_cutoff).await?;
    if !opts.dry_run && !guests.is_empty() {
        delete_tenants(db, &guests).await?;
    }
    let (orphaned, missing) = object_garbage(db, objects, now - grace_ms).await?;
    if !opts.dry_run {
        for key in &orphaned {
            objects.delete(key).await?;
        }
        mark_expired(db, &missing, now).await?;
    }
    Ok(CleanupReport {
        dry_run: opts.dry_run,
        messages,
        guest_tenants: guests.len() as u64,
        orphaned_objects: orphaned.len() as u64,
        rows_missing_objects: missing.len() as u64,
        removed_tenants: if opts.dry_run { Vec::new() } else { guests },
    })
}

/// What the queue driver's `prune` would delete now: its conditions, counted. Settings are
/// parsed in Rust as `prune` parses them, so a queue whose settings do not parse is skipped the
/// same way.
pub async fn prunable(db: &Database) -> Result<PruneReport, CleanupError> {
    let declared = crate::sql::Reader(db)
        .query(sql::QUEUE_SETTINGS, &[])
        .await?
        .iter()
        .map(|r| Ok((r.text(0)?, r.text(1)?)))
        .collect::<Result<Vec<_>, SqlError>>()?;
    // Clamped as the drivers clamp: PostgreSQL intervals are bounded where SQLite's integers
    // are not.
    let Retentions {
        queues,
        retain_acked_ms: retain_acked,
        dead_retention_ms: dead_retention,
    } = Retentions::from_declared(declared);
    let (acked, dead, dedup): (i64, i64, i64) = match db {
        Database::Sqlite(s) => {
            // The per-queue retentions travel as one JSON array (SQLite has no array binds).
            let keep: Vec<(&String, i64, i64)> = queues
                .iter()
                .zip(retain_acked.iter().zip(&dead_retention))
                .map(|(q, (a, d))| (q, *a, *d))
                .collect();
            sqlx::query_as(
                "WITH keep AS (
                     SELECT value ->> 0 AS queue, value ->> 1 AS acked_ms, value ->> 2 AS dead_ms
                     FROM json_each(?2)
                 )
                 SELECT
                   (SELECT COUNT(*) FROM queue_messages m JOIN keep k ON m.queue = k.queue
                     WHERE m.state = 2 AND m.acked_at < ?1 - k.acked_ms),
                   (SELECT COUNT(*) FROM queue_messages m JOIN keep k ON m.original_queue = k.queue
                     WHERE m.dead_at IS NOT NULL AND m.dead_at < ?1 - k.dead_ms),
                   (SELECT COUNT(*) FROM queue_dedup WHERE expires_at <= ?1)",
            )
            .bind(now_ms().0)
            .bind(serde_json::to_string(&keep).unwrap_or_else(|_| "[]".into()))
            .fetch_one(&s.read)
            .await?
        }
        Database::Postgres(p) => {
            sqlx::query_as(sql::PRUNABLE)
                .bind(&queues)
                .bind(&retain_acked)
                .bind(&dead_retention)
                .fetch_one(&p.pool)
                .await?
        }
    };
    Ok(shared::prune_report(acked, dead, dedup))
}

/// `(cutoff_ms)` ⇒ the ids of guest tenants created before the cutoff with nothing left.
const EXPIRED_GUESTS: Dialects = Dialects {
    sqlite: sql::SQLITE_EXPIRED_GUESTS,
    postgres: sql::EXPIRED_GUESTS,
};

/// Guest tenants created before `cutoff_ms` with nothing left (see the module docs), by id.
async fn expired_guests(db: &Database, cutoff_ms: i64) -> Result<Vec<String>, CleanupError> {
    let mut read = crate::sql::Reader(db);
    let rows = read
        .query(EXPIRED_GUESTS.pick(read.dialect()), &[cutoff_ms.into()])
        .await?;
    Ok(rows.iter().map(|r| r.text(0)).collect::<Result<_, _>>()?)
}

/// Deletes the mutable rows of `tenants` in one transaction. Usage events and ledger entries
/// are append-only (the audit trail) and stay.
async fn delete_tenants(db: &Database, tenants: &[String]) -> Result<(), CleanupError> {
    // Users first: they reference the tenant.
    const TABLES: [&str; 4] = sql::TENANT_DELETES;
    let mut tx = db.begin().await?;
    match &mut tx {
        Tx::Sqlite { tx, .. } => {
            let ids = serde_json::to_string(tenants).unwrap_or_else(|_| "[]".into());
            for delete in TABLES {
                sqlx::query(&format!("{delete} (SELECT value FROM json_each(?1))"))
                    .bind(&ids)
                    .execute(&mut **tx)
                    .await?;
            }
        }
        Tx::Postgres { tx, .. } => {
            for delete in sql::DELETE_TENANT_ROWS {
                sqlx::query(delete).bind(tenants).execute(&mut **tx).await?;
            }
        }
    }
    tx.commit().await?;
    Ok(())
}

type Owned = (Vec<MissingRow>, HashSet<String>);

/// Every upload: `(key, object_key, tier, scan, created_ms)`.
const UPLOAD_ROWS: Dialects = Dialects {
    sqlite: "SELECT key, object_key, tier, scan, created_at FROM uploads",
    postgres: sql::UPLOAD_ROWS,
};

/// Every job artifact: `(job_id, name, object_key, tier, created_ms)`.
const ARTIFACT_ROWS: Dialects = Dialects {
    sqlite: "SELECT job_id, name, object_key, tier, created_at FROM job_artifacts",
    postgres: sql::ARTIFACT_ROWS,
};

/// Every object key a row refers to, and the rows (older than `before_ms`, not yet expired)
/// whose object is not in `present`.
async fn rows_and_keys(
    db: &Database,
    present: &HashSet<String>,
    before_ms: i64,
) -> Result<Owned, CleanupError> {
    let mut read = crate::sql::Reader(db);
    let dialect = read.dialect();
    let object_row = |r: &Row| -> Result<ObjectRow, SqlError> {
        Ok((r.text(0)?, r.text(1)?, r.text(2)?, r.text(3)?, r.int(4)?))
    };
    let uploads = read
        .query(UPLOAD_ROWS.pick(dialect), &[])
        .await?
        .iter()
        .map(object_row)
        .collect::<Result<_, _>>()?;
    let artifacts = read
        .query(ARTIFACT_ROWS.pick(dialect), &[])
        .await?
        .iter()
        .map(object_row)
        .collect::<Result<_, _>>()?;
    let inputs = read
        .query(sql::JOB_INPUT_KEYS, &[])
        .await?
        .iter()
        .map(|r| r.text(0))
        .collect::<Result<_, _>>()?;
    Ok(shared::rows_and_keys(
        uploads, artifacts, inputs, present, before_ms,
    ))
}

/// Lists the row-owned prefixes, then reads the rows: objects older than `before_ms` that no
/// row owns, and rows (older than `before_ms`) whose object was not listed. Listing first means
/// an object written after the listing belongs to a row younger than the grace, which is left
/// alone.
async fn object_garbage(
    db: &Database,
    objects: &Objects,
    before_ms: i64,
) -> Result<(Vec<ObjectKey>, Vec<MissingRow>), CleanupError> {
    let mut listed = Vec::new();
    for prefix in ROW_OWNED_PREFIXES {
        let prefix = ObjectKey::parse(prefix).map_err(ObjectError::from)?;
        let mut page = objects.list(Some(&prefix));
        while let Some(meta) = page.try_next().await? {
            listed.push((meta.key, meta.last_modified.timestamp_millis()));
        }
    }
    let present: HashSet<String> = listed.iter().map(|(k, _)| k.as_str().to_owned()).collect();
    let (missing, owned) = rows_and_keys(db, &present, before_ms).await?;
    Ok((shared::orphaned(listed, &owned, before_ms), missing))
}

/// Marks rows whose object is gone as `expired`, only while they still point at that object.
async fn mark_expired(db: &Database, rows: &[MissingRow], now: i64) -> Result<(), CleanupError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut tx = db.begin().await?;
    for row in rows {
        match row {
            MissingRow::Upload { key, object_key } => {
                let args = [key.into(), object_key.into(), now.into()];
                tx.execute(sql::EXPIRE_UPLOAD, &args).await?;
            }
            MissingRow::Artifact {
                job_id,
                name,
                object_key,
            } => {
                let args = [job_id.into(), name.into(), object_key.into(), now.into()];
                tx.execute(sql::EXPIRE_ARTIFACT, &args).await?;
            }
        }
    }
    tx.commit().await?;
    Ok(())
}
