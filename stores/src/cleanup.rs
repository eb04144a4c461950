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

use cognomega_core::cleanup::{self as shared, sql, CleanupHost, Retentions};
use cognomega_core::queue::PruneReport;
use cognomega_core::sql::{Executor, SqlError, Transaction};
use futures::TryStreamExt;

use crate::objects::{ObjectError, ObjectKey, Objects};
use crate::queue::now_ms;
use crate::{Database, StoreError};

pub use cognomega_core::cleanup::{
    CleanupOptions, CleanupReport, DEFAULT_GRACE, ROW_OWNED_PREFIXES,
};

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
    /// A step of the run.
    #[error("cleanup: {0}")]
    Run(String),
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

/// Runs a cleanup (see the module docs): the shared run (`cognomega_core::cleanup::run`) on
/// this database, its queue driver and `objects`.
pub async fn run(
    db: &Database,
    objects: &Objects,
    opts: CleanupOptions,
) -> Result<CleanupReport, CleanupError> {
    let host = Native { db, objects };
    shared::run(&host, opts).await.map_err(CleanupError::Run)
}

/// The native host of a cleanup.
struct Native<'a> {
    db: &'a Database,
    objects: &'a Objects,
}

#[async_trait::async_trait]
impl CleanupHost for Native<'_> {
    fn db(&self) -> Box<dyn Executor + '_> {
        Box::new(self.db.clone())
    }

    async fn begin(&self) -> Result<Box<dyn Transaction + '_>, SqlError> {
        self.db.transaction().await
    }

    async fn prune(&self, dry_run: bool) -> Result<PruneReport, String> {
        if dry_run {
            prunable(self.db).await.map_err(|e| e.to_string())
        } else {
            self.db.queue().prune().await.map_err(|e| e.to_string())
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, i64)>, String> {
        let prefix = ObjectKey::parse(prefix).map_err(|e| e.to_string())?;
        let mut page = self.objects.list(Some(&prefix));
        let mut listed = Vec::new();
        while let Some(meta) = page.try_next().await.map_err(|e| e.to_string())? {
            listed.push((
                meta.key.as_str().to_owned(),
                meta.last_modified.timestamp_millis(),
            ));
        }
        Ok(listed)
    }

    async fn delete(&self, key: &str) -> Result<(), String> {
        let key = ObjectKey::parse(key).map_err(|e| e.to_string())?;
        self.objects.delete(&key).await.map_err(|e| e.to_string())
    }

    fn now_ms(&self) -> i64 {
        now_ms().0
    }
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
