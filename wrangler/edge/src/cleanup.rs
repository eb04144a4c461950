//! `POST /admin/cleanup?dry_run=&grace_secs=` on the edge: the native cleanup
//! (`cognomega_stores::cleanup`) on PostgreSQL through Hyperdrive and the R2 bucket `OBJECTS`,
//! with the native query rules, 400s and report (`cognomega_core::cleanup::CleanupReport`).
//! The statements, the queue retentions and the rule deciding which objects are orphaned and
//! which rows lost their object are `cognomega_core::cleanup`'s, the ones the native
//! PostgreSQL store runs; the steps run in the native order:
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

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use cognomega_core::cleanup::{
    self as shared, sql, CleanupReport, MissingRow, ObjectRow, Retentions, ROW_OWNED_PREFIXES,
};
use cognomega_core::queue::PruneReport;
use cognomega_core::time::duration_ms;
use tokio_postgres::Client;
use worker::{Bucket, Env, Request};

use crate::http::{self, ApiError, ApiResult};

/// What a cleanup may touch (as `cognomega_stores::cleanup::CleanupOptions`).
#[derive(Debug, Clone, Copy)]
struct Options {
    /// Only count.
    dry_run: bool,
    /// Guest token lifetime, ms.
    token_ttl_ms: i64,
    /// Objects and rows younger than this are never touched, ms.
    grace_ms: i64,
}

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
fn options(env: &Env, query: &HashMap<String, String>) -> Result<Options, ApiError> {
    let (dry_run, grace) =
        shared::query_options(query.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|(code, message)| ApiError::bad_request(code, message))?;
    Ok(Options {
        dry_run,
        token_ttl_ms: duration_ms(Duration::from_secs(crate::config::token_ttl_secs(env))),
        grace_ms: duration_ms(grace),
    })
}

fn now_ms() -> i64 {
    i64::try_from(worker::Date::now().as_millis()).unwrap_or(i64::MAX)
}

/// The cleanup (see the module docs).
async fn run(env: &Env, opts: Options) -> Result<CleanupReport, ApiError> {
    let now = now_ms();
    let db = crate::db::connect(env).await?;
    let messages = if opts.dry_run {
        prunable(&db).await?
    } else {
        // Ask keys past their 24 hours go with the expired queue keys (as natively in
        // `cognomega prune`).
        db.execute(
            cognomega_core::ai::replay::PRUNE,
            &[&now.saturating_sub(cognomega_core::ai::replay::KEY_TTL_MS)],
        )
        .await?;
        prune(&db).await?
    };
    let guest_cutoff = now
        .saturating_sub(opts.token_ttl_ms)
        .saturating_sub(opts.grace_ms);
    let guests: Vec<String> = db
        .query(sql::EXPIRED_GUESTS, &[&guest_cutoff])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if !opts.dry_run && !guests.is_empty() {
        delete_tenants(&db, &guests).await?;
        forget_balances(env, &guests).await?;
    }
    let bucket = env.bucket("OBJECTS")?;
    let (orphaned, missing) = object_garbage(&db, &bucket, now - opts.grace_ms).await?;
    if !opts.dry_run {
        for key in &orphaned {
            bucket.delete(key.as_str()).await?;
        }
        mark_expired(&db, &missing, now).await?;
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

async fn retentions(db: &Client) -> Result<Retentions, ApiError> {
    let declared = db
        .query(sql::QUEUE_SETTINGS, &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect::<Vec<(String, String)>>();
    Ok(Retentions::from_declared(declared))
}

/// What the prune would delete now: its conditions, counted.
async fn prunable(db: &Client) -> Result<PruneReport, ApiError> {
    let r = retentions(db).await?;
    let row = db
        .query_one(
            sql::PRUNABLE,
            &[&r.queues, &r.retain_acked_ms, &r.dead_retention_ms],
        )
        .await?;
    Ok(shared::prune_report(row.get(0), row.get(1), row.get(2)))
}

/// The native PostgreSQL driver's prune: acked and dead messages past their queue's
/// retention, expired idempotency keys.
async fn prune(db: &Client) -> Result<PruneReport, ApiError> {
    let r = retentions(db).await?;
    let mut report = PruneReport::default();
    if !r.queues.is_empty() {
        report.acked = db
            .execute(sql::PRUNE_ACKED, &[&r.queues, &r.retain_acked_ms])
            .await?;
        report.dead = db
            .execute(sql::PRUNE_DEAD, &[&r.queues, &r.dead_retention_ms])
            .await?;
    }
    report.dedup_keys = db.execute(sql::PRUNE_DEDUP, &[]).await?;
    Ok(report)
}

/// Runs `statements` (each bound to `params`) in one transaction.
async fn in_transaction(
    db: &Client,
    statements: impl IntoIterator<
        Item = (
            &'static str,
            Vec<&(dyn tokio_postgres::types::ToSql + Sync)>,
        ),
    >,
) -> Result<(), ApiError> {
    db.batch_execute("BEGIN").await?;
    let done = async {
        for (statement, params) in statements {
            db.execute(statement, &params).await?;
        }
        Ok::<_, tokio_postgres::Error>(())
    }
    .await;
    match done {
        Ok(()) => {
            db.batch_execute("COMMIT").await?;
            Ok(())
        }
        Err(e) => {
            let _ = db.batch_execute("ROLLBACK").await;
            Err(e.into())
        }
    }
}

/// Deletes the mutable rows of `tenants` in one transaction. Usage events and ledger entries
/// are append-only (the audit trail) and stay.
async fn delete_tenants(db: &Client, tenants: &[String]) -> Result<(), ApiError> {
    let ids: Vec<&(dyn tokio_postgres::types::ToSql + Sync)> = vec![&tenants];
    in_transaction(
        db,
        sql::DELETE_TENANT_ROWS
            .iter()
            .map(|statement| (*statement, ids.clone())),
    )
    .await
}

/// Removed guests' cached balances (KV), as the native route drops them from its cache.
async fn forget_balances(env: &Env, tenants: &[String]) -> Result<(), ApiError> {
    let kv = env.kv("KV")?;
    for tenant in tenants {
        let key = crate::billing::balance_key(tenant);
        if let Err(e) = kv.delete(&key).await {
            // The rows are gone already: a stale entry only lasts until its TTL.
            worker::console_warn!("cleanup: KV delete {key}: {e}");
        }
    }
    Ok(())
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

/// Every object under the row-owned prefixes: `(key, uploaded epoch ms)`.
async fn list_owned_prefixes(bucket: &Bucket) -> Result<Vec<(String, i64)>, ApiError> {
    let mut listed = Vec::new();
    for prefix in ROW_OWNED_PREFIXES {
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
    }
    Ok(listed)
}

/// Lists the row-owned prefixes, then reads the rows: objects older than `before_ms` that no
/// row owns, and rows (older than `before_ms`) whose object was not listed.
async fn object_garbage(
    db: &Client,
    bucket: &Bucket,
    before_ms: i64,
) -> Result<(Vec<String>, Vec<MissingRow>), ApiError> {
    let listed = list_owned_prefixes(bucket).await?;
    let present: HashSet<String> = listed.iter().map(|(k, _)| k.clone()).collect();
    let row = |r: &tokio_postgres::Row| -> ObjectRow {
        (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))
    };
    let uploads: Vec<ObjectRow> = db
        .query(sql::UPLOAD_ROWS, &[])
        .await?
        .iter()
        .map(row)
        .collect();
    let artifacts: Vec<ObjectRow> = db
        .query(sql::ARTIFACT_ROWS, &[])
        .await?
        .iter()
        .map(row)
        .collect();
    let inputs: Vec<String> = db
        .query(sql::JOB_INPUT_KEYS, &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let (missing, owned) = shared::rows_and_keys(uploads, artifacts, inputs, &present, before_ms);
    Ok((shared::orphaned(listed, &owned, before_ms), missing))
}

/// Marks rows whose object is gone as `expired`, only while they still point at that object,
/// in one transaction.
async fn mark_expired(db: &Client, rows: &[MissingRow], now: i64) -> Result<(), ApiError> {
    if rows.is_empty() {
        return Ok(());
    }
    in_transaction(
        db,
        rows.iter().map(|row| match row {
            MissingRow::Upload { key, object_key } => (
                sql::EXPIRE_UPLOAD,
                vec![
                    key as &(dyn tokio_postgres::types::ToSql + Sync),
                    object_key,
                    &now,
                ],
            ),
            MissingRow::Artifact {
                job_id,
                name,
                object_key,
            } => (
                sql::EXPIRE_ARTIFACT,
                vec![
                    job_id as &(dyn tokio_postgres::types::ToSql + Sync),
                    name,
                    object_key,
                    &now,
                ],
            ),
        }),
    )
    .await
}
