//! `POST /admin/cleanup?dry_run=&grace_secs=` on the edge: the cleanup the native host runs
//! (`cognomega_core::cleanup::run`: its query rules, 400s, statements and report) on PostgreSQL
//! through Hyperdrive and the R2 bucket `OBJECTS`; the steps:
//!
//! 1. the queue prune (or, dry, its count): the edge's `queue_messages` holds only the dead
//!    letters the dlq Worker records (the live queues are Cloudflare Queues), but the same
//!    statements run, and are right on any rows;
//! 2. expired guest tenants with nothing left (created longer ago than the token lifetime plus
//!    the grace) lose their mutable rows in one transaction, then their KV balance entries;
//! 3. R2 is listed under the row-owned prefixes *before* the rows are read (an object written
//!    after the listing belongs to a row younger than the grace), objects older than the grace
//!    (by their upload time) that no row owns are deleted, and rows older than the grace whose
//!    object was not listed are marked `expired`.
//!
//! Every step is idempotent, so a run cut short (a Worker's CPU or subrequest limit on a very
//! large bucket: one subrequest per listed page of 1000 objects, per deleted object and per
//! removed guest's KV entry) is finished by running it again; `cognomega cleanup` does the same
//! work from the command line against the same database and R2's S3 API.

use std::collections::HashMap;
use std::time::Duration;

use cognomega_core::cleanup::{
    self as shared, sql, CleanupHost, CleanupOptions, CleanupReport, Retentions,
};
use cognomega_core::queue::PruneReport;
use cognomega_core::sql::{Executor, SqlError, Transaction};
use tokio_postgres::types::ToSql;
use tokio_postgres::Client;
use worker::{Bucket, Env, Request};

use crate::http::{self, ApiError, ApiResult};
use crate::sql::{Pg, PgTx};

/// `POST /admin/cleanup` (the caller is already checked as admin).
pub async fn cleanup(req: &Request, env: &Env) -> ApiResult {
    let url = req.url()?;
    // As the native `Query<HashMap>`: a repeated key keeps its last value.
    let query: HashMap<String, String> = url
        .query_pairs()
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let opts = options(env, &query)?;
    let report = run(env, opts).await?;
    worker::console_log!(
        "cleanup done: dry_run={} acked={} dead={} dedup_keys={} guest_tenants={} \
         orphaned_objects={} rows_missing_objects={}",
        report.dry_run,
        report.messages.acked,
        report.messages.dead,
        report.messages.dedup_keys,
        report.guest_tenants,
        report.orphaned_objects,
        report.rows_missing_objects
    );
    http::json(200, &report)
}

/// The query, by the native rules and messages (`cognomega_core::cleanup::query_options`).
fn options(env: &Env, query: &HashMap<String, String>) -> Result<CleanupOptions, ApiError> {
    let (dry_run, grace) =
        shared::query_options(query.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|(code, message)| ApiError::bad_request(code, message))?;
    Ok(CleanupOptions {
        dry_run,
        token_ttl: Duration::from_secs(crate::config::token_ttl_secs(env)),
        grace,
    })
}

/// The cleanup (see the module docs): the shared run on this deployment.
async fn run(env: &Env, opts: CleanupOptions) -> Result<CleanupReport, ApiError> {
    let db = crate::db::connect(env).await?;
    let host = Edge {
        env,
        db: &db,
        bucket: env.bucket("OBJECTS")?,
    };
    shared::run(&host, opts).await.map_err(ApiError::internal)
}

/// The edge as a cleanup's host: PostgreSQL through Hyperdrive, R2, the KV balances.
struct Edge<'a> {
    env: &'a Env,
    db: &'a Client,
    bucket: Bucket,
}

#[async_trait::async_trait(?Send)]
impl CleanupHost for Edge<'_> {
    fn db(&self) -> Box<dyn Executor + '_> {
        Box::new(Pg(self.db))
    }

    async fn begin(&self) -> Result<Box<dyn Transaction + '_>, SqlError> {
        Ok(Box::new(PgTx::begin(self.db).await?))
    }

    /// The native PostgreSQL driver's prune (or its count): acked and dead messages past their
    /// queue's retention, expired idempotency keys.
    async fn prune(&self, dry_run: bool) -> Result<PruneReport, String> {
        let db = self.db;
        let declared = (db.query(sql::QUEUE_SETTINGS, &[]).await)
            .map_err(|e| e.to_string())?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect::<Vec<(String, String)>>();
        let r = Retentions::from_declared(declared);
        let pruned = async {
            if dry_run {
                let args: [&(dyn ToSql + Sync); 3] =
                    [&r.queues, &r.retain_acked_ms, &r.dead_retention_ms];
                let row = db.query_one(sql::PRUNABLE, &args).await?;
                return Ok(shared::prune_report(row.get(0), row.get(1), row.get(2)));
            }
            let mut report = PruneReport::default();
            if !r.queues.is_empty() {
                let acked: [&(dyn ToSql + Sync); 2] = [&r.queues, &r.retain_acked_ms];
                report.acked = db.execute(sql::PRUNE_ACKED, &acked).await?;
                let dead: [&(dyn ToSql + Sync); 2] = [&r.queues, &r.dead_retention_ms];
                report.dead = db.execute(sql::PRUNE_DEAD, &dead).await?;
            }
            report.dedup_keys = db.execute(sql::PRUNE_DEDUP, &[]).await?;
            Ok::<_, tokio_postgres::Error>(report)
        };
        pruned.await.map_err(|e| e.to_string())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<(String, i64)>, String> {
        list_prefix(&self.bucket, prefix)
            .await
            .map_err(|e| e.to_string())
    }

    async fn delete(&self, key: &str) -> Result<(), String> {
        self.bucket.delete(key).await.map_err(|e| e.to_string())
    }

    /// Removed guests' cached balances (KV), as the native route drops them from its cache.
    async fn forget(&self, tenants: &[String]) {
        let Ok(kv) = self.env.kv("KV") else {
            return;
        };
        for tenant in tenants {
            let key = crate::billing::balance_key(tenant);
            if let Err(e) = kv.delete(&key).await {
                // The rows are gone already: a stale entry only lasts until its TTL.
                worker::console_warn!("cleanup: KV delete {key}: {e}");
            }
        }
    }

    fn now_ms(&self) -> i64 {
        i64::try_from(worker::Date::now().as_millis()).unwrap_or(i64::MAX)
    }
}

/// True for a key the native store would list: `cognomega_stores::objects::ObjectKey`'s rules
/// (1..=1024 bytes of `/`-separated segments of ASCII letters, digits and `.` `_` `-` `=`, no
/// empty, `.` or `..` segment). Others were written by something else and are skipped, as
/// natively.
fn listable(key: &str) -> bool {
    !key.is_empty()
        && key.len() <= 1024
        && key.split('/').all(|segment| {
            !matches!(segment, "" | "." | "..")
                && segment
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'='))
        })
}

/// Every object under `prefix/`: `(key, uploaded epoch ms)`.
async fn list_prefix(bucket: &Bucket, prefix: &str) -> worker::Result<Vec<(String, i64)>> {
    let mut listed = Vec::new();
    // Segment-wise, as natively: `uploads` lists `uploads/…`, not `uploads2/…`.
    let prefix = format!("{prefix}/");
    let mut cursor: Option<String> = None;
    loop {
        let mut list = bucket.list().prefix(prefix.clone());
        if let Some(c) = cursor.take() {
            list = list.cursor(c);
        }
        let page = list.execute().await?;
        for object in page.objects() {
            let key = object.key();
            if !listable(&key) {
                worker::console_warn!("cleanup: skipping {key:?}: not a valid object key");
                continue;
            }
            let uploaded = i64::try_from(object.uploaded().as_millis()).unwrap_or(i64::MAX);
            listed.push((key, uploaded));
        }
        match page.cursor() {
            Some(next) if page.truncated() => cursor = Some(next),
            _ => break,
        }
    }
    Ok(listed)
}
