//! The `etl` consumer, `GET /exports` and `POST /admin/exports` on the edge: the native export
//! (`consumers/src/etl.rs`, `stores/src/exports.rs`) bound to Hyperdrive and R2.
//!
//! The algorithm is the native one, from the same pieces: the statements
//! (`cognomega_core::etl::sql`), the planning arithmetic (`PartPlanner`, `plan_start`,
//! `visible_high`), the object keys and the manifest (`cognomega_core::etl`), the row batching
//! and scan `SELECT` (`cognomega_pipelines::export::rows`) and the file writers
//! (`cognomega_pipelines::export`). A run finishes the parts an earlier run planned, plans the
//! new range (watermark compare-and-swap), writes each part (rows streamed from PostgreSQL in
//! Arrow batches into the files of that part only), records its files and completes it in one
//! transaction, then rewrites `_manifest.json`. Memory holds one part at a time.

use std::collections::HashMap;

use cognomega_core::etl::{
    self, export_request, sql, Dataset, EtlMessage, ExportFormat, ListedDataset, ListedPart,
    Manifest, ManifestPart, Part, PartPlanner,
};
use cognomega_core::files::sign_download;
use cognomega_pipelines::export::rows::{self, BatchError, Cells, Days, Dialect, BATCH_ROWS};
use cognomega_pipelines::export::{ExportWriteError, PartFiles};
use futures::TryStreamExt;
use tokio_postgres::types::{FromSql, Type};
use worker::{Bucket, Env, MessageExt, Request, Response};

use crate::consumers::{decode_all, retry, EdgeQueue};
use crate::http::{self, ApiError, ApiResult, Caller};

/// Rows per part at most on the edge (natively 1,000,000): a Worker has 128 MB, and a part's
/// files are built in memory. Parts are the same kind of range, only shorter; the keys, the
/// files' layout and the manifest are the native ones. `COGNOMEGA_EXPORT_MAX_ROWS` overrides it.
pub const EDGE_MAX_ROWS_PER_PART: u64 = 250_000;

/// How long a `GET /exports` link stays valid (as `GET /uploads/{key}`'s).
const LINK_TTL_SECS: i64 = 15 * 60;

/// The `etl` consumer: each message exports its dataset(s); a failed export retries the
/// message (the next delivery finishes what this one planned), and after `max_retries` it is
/// dead-lettered.
pub async fn run_batch(
    db: &tokio_postgres::Client,
    env: &Env,
    queue: &EdgeQueue,
    messages: &[worker::Message<serde_json::Value>],
) -> Result<(), String> {
    let bucket = env.bucket("OBJECTS").map_err(|e| e.to_string())?;
    let max_rows = crate::config::var(env, "COGNOMEGA_EXPORT_MAX_ROWS")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(EDGE_MAX_ROWS_PER_PART);
    for (m, message, _) in decode_all::<EtlMessage>(queue, messages) {
        let mut failed = None;
        for dataset in message.datasets() {
            match export(db, &bucket, dataset, message.format, max_rows).await {
                Ok(r) => worker::console_log!(
                    "export {dataset} ({}): {} parts, {} files, {} rows, watermark {:?}",
                    message.format,
                    r.parts,
                    r.files,
                    r.rows,
                    r.watermark
                ),
                Err(e) => {
                    failed = Some(format!("export {dataset} ({}): {e}", message.format));
                    break;
                }
            }
        }
        match failed {
            None => m.ack(),
            Some(e) => {
                worker::console_error!("{e}; retried, the next run finishes it");
                retry(m, queue);
            }
        }
    }
    Ok(())
}

/// What a run did.
#[derive(Debug, Default)]
struct Report {
    parts: u64,
    files: u64,
    rows: u64,
    watermark: Option<i64>,
}

/// Why an export failed; nothing incomplete reached a manifest.
#[derive(Debug)]
enum ExportError {
    Db(tokio_postgres::Error),
    Rows(String),
    Write(ExportWriteError),
    Objects(String),
}

impl std::fmt::Display for ExportError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExportError::Db(e) => write!(f, "database: {e}"),
            ExportError::Rows(e) => write!(f, "rows: {e}"),
            ExportError::Write(e) => write!(f, "file writer: {e}"),
            ExportError::Objects(e) => write!(f, "R2: {e}"),
        }
    }
}

impl From<tokio_postgres::Error> for ExportError {
    fn from(e: tokio_postgres::Error) -> Self {
        ExportError::Db(e)
    }
}

impl From<BatchError> for ExportError {
    fn from(e: BatchError) -> Self {
        ExportError::Rows(e.to_string())
    }
}

impl From<ExportWriteError> for ExportError {
    fn from(e: ExportWriteError) -> Self {
        ExportError::Write(e)
    }
}

/// One run for `dataset` as `format` (`Exporter::export` natively, without `--since`).
async fn export(
    db: &tokio_postgres::Client,
    bucket: &Bucket,
    dataset: Dataset,
    format: ExportFormat,
    max_rows: u64,
) -> Result<Report, ExportError> {
    let mut report = Report::default();
    for part in planned_parts(db, dataset, format).await? {
        write_part(db, bucket, &part, &mut report).await?;
    }
    if let Some(parts) = plan(db, dataset, format, max_rows).await? {
        for part in parts {
            write_part(db, bucket, &part, &mut report).await?;
        }
    }
    write_manifest(db, bucket, dataset).await?;
    report.watermark = watermark(db, dataset, format).await?;
    Ok(report)
}

async fn watermark(
    db: &tokio_postgres::Client,
    dataset: Dataset,
    format: ExportFormat,
) -> Result<Option<i64>, tokio_postgres::Error> {
    Ok(db
        .query_opt(sql::WATERMARK, &[&dataset.name(), &format.name()])
        .await?
        .map(|r| r.get(0)))
}

async fn planned_parts(
    db: &tokio_postgres::Client,
    dataset: Dataset,
    format: ExportFormat,
) -> Result<Vec<Part>, tokio_postgres::Error> {
    let rows = db
        .query(sql::PLANNED_PARTS, &[&dataset.name(), &format.name()])
        .await?;
    Ok(rows
        .iter()
        .map(|r| Part {
            dataset,
            format,
            from: r.get(0),
            to: r.get(1),
        })
        .collect())
}

/// Plans the parts after the watermark; `None` when another run moved it first (it owns the
/// new range).
async fn plan(
    db: &tokio_postgres::Client,
    dataset: Dataset,
    format: ExportFormat,
    max_rows: u64,
) -> Result<Option<Vec<Part>>, ExportError> {
    let current = watermark(db, dataset, format).await?;
    // Without a starting watermark this cannot be refused.
    let start = etl::plan_start(current, None).unwrap_or_else(|a| a.watermark);
    let high = visible_high(db, dataset).await?;
    let mut planner = PartPlanner::new(dataset, format, start, high, max_rows);
    let nth_sql = sql::nth_seq(dataset);
    while let Some((after, offset)) = planner.next_lookup() {
        let nth = db
            .query_opt(&nth_sql, &[&after, &offset])
            .await?
            .map(|r| r.get::<_, i64>(0));
        planner.found(nth);
    }
    let parts = planner.into_parts();
    if parts.is_empty() {
        return Ok(Some(parts));
    }
    db.batch_execute("BEGIN").await?;
    let swapped = async {
        let (d, f) = (dataset.name(), format.name());
        let done = match current {
            None => db.execute(sql::INSERT_WATERMARK, &[&d, &f, &high]).await?,
            Some(old) => {
                db.execute(sql::SWAP_WATERMARK, &[&d, &f, &high, &old])
                    .await?
            }
        };
        if done != 1 {
            return Ok(false);
        }
        for p in &parts {
            db.execute(sql::INSERT_PART, &[&d, &f, &p.from, &p.to])
                .await?;
        }
        Ok::<_, tokio_postgres::Error>(true)
    }
    .await;
    match swapped {
        Ok(true) => {
            db.batch_execute("COMMIT").await?;
            Ok(Some(parts))
        }
        Ok(false) => {
            db.batch_execute("ROLLBACK").await?;
            Ok(None)
        }
        Err(e) => {
            let _ = db.batch_execute("ROLLBACK").await;
            Err(e.into())
        }
    }
}

/// The highest `seq` below which every row is committed and final (see
/// `stores/src/exports.rs`: `SHARE` waits for the inserting transactions).
async fn visible_high(
    db: &tokio_postgres::Client,
    dataset: Dataset,
) -> Result<i64, tokio_postgres::Error> {
    db.batch_execute("BEGIN").await?;
    let max = async {
        db.batch_execute(&sql::lock_share(dataset)).await?;
        db.query_one(&sql::max_seq(dataset), &[])
            .await
            .map(|r| r.get::<_, i64>(0))
    }
    .await;
    let max = match max {
        Ok(m) => {
            db.batch_execute("COMMIT").await?;
            m
        }
        Err(e) => {
            let _ = db.batch_execute("ROLLBACK").await;
            return Err(e);
        }
    };
    let Some(unsettled) = sql::first_unsettled(dataset) else {
        return Ok(max);
    };
    let first: Option<i64> = db.query_one(unsettled, &[]).await?.get(0);
    Ok(etl::visible_high(max, first))
}

/// Encodes the part's files (rows streamed in Arrow batches), puts them, then records them and
/// completes the part in one transaction.
async fn write_part(
    db: &tokio_postgres::Client,
    bucket: &Bucket,
    part: &Part,
    report: &mut Report,
) -> Result<(), ExportError> {
    let mut files = PartFiles::new(part.format, rows::arrow_schema(part.dataset));
    let mut days = Days::new(part.dataset, BATCH_ROWS);
    let scan = rows::scan_sql(part.dataset, Dialect::Postgres);
    let stream = db.query_raw(&scan, [&part.from, &part.to]).await?;
    futures::pin_mut!(stream);
    while let Some(row) = stream.try_next().await? {
        if let Some(full) = days.push(&PgCells(&row))? {
            files.write(full.day, &full.batch)?;
        }
    }
    for rest in days.finish()? {
        files.write(rest.day, &rest.batch)?;
    }
    let mut written = Vec::new();
    for file in files.finish()? {
        let key = part
            .dataset
            .part_key(&file.dt, part.from, part.to, part.format);
        let rows = i64::try_from(file.rows).unwrap_or(i64::MAX);
        let bytes = i64::try_from(file.bytes.len()).unwrap_or(i64::MAX);
        let meta = HashMap::from([("sha256".to_owned(), file.sha256.clone())]);
        crate::r2::put(
            bucket,
            &key,
            file.bytes,
            part.format.content_type(),
            Some(meta),
        )
        .await
        .map_err(|e| ExportError::Objects(format!("put {key}: {e}")))?;
        report.files += 1;
        report.rows += file.rows;
        written.push((key, file.dt, rows, bytes, file.sha256));
    }
    let (d, f) = (part.dataset.name(), part.format.name());
    db.batch_execute("BEGIN").await?;
    let recorded = async {
        for (key, dt, rows, bytes, sha256) in &written {
            db.execute(
                sql::INSERT_FILE,
                &[key, &d, &f, &part.from, &part.to, dt, rows, bytes, sha256],
            )
            .await?;
        }
        db.execute(sql::COMPLETE_PART, &[&d, &f, &part.from]).await
    }
    .await;
    if let Err(e) = recorded {
        let _ = db.batch_execute("ROLLBACK").await;
        return Err(e.into());
    }
    db.batch_execute("COMMIT").await?;
    report.parts += 1;
    Ok(())
}

/// Every recorded file of `dataset`: its manifest's content.
async fn files(
    db: &tokio_postgres::Client,
    dataset: Dataset,
) -> Result<Vec<ManifestPart>, tokio_postgres::Error> {
    Ok(db
        .query(sql::FILES, &[&dataset.name()])
        .await?
        .iter()
        .map(manifest_part)
        .collect())
}

fn manifest_part(r: &tokio_postgres::Row) -> ManifestPart {
    ManifestPart {
        key: r.get(0),
        // Only the exporters write the column, from `ExportFormat::name`.
        format: r.get::<_, String>(1).parse().unwrap_or_default(),
        dt: r.get(2),
        from: r.get(3),
        to: r.get(4),
        rows: r.get(5),
        bytes: r.get(6),
        sha256: r.get(7),
    }
}

/// Rewrites `_manifest.json` until what it wrote is still what the database holds (a run
/// completing a part meanwhile rewrites it after its own write), as natively.
async fn write_manifest(
    db: &tokio_postgres::Client,
    bucket: &Bucket,
    dataset: Dataset,
) -> Result<(), ExportError> {
    let key = dataset.manifest_key();
    let mut parts = files(db, dataset).await?;
    for _ in 0..10 {
        let body = Manifest {
            dataset,
            parts: parts.clone(),
        }
        .to_json()
        .map_err(|e| ExportError::Rows(e.to_string()))?;
        crate::r2::put(bucket, &key, body, "application/json", None)
            .await
            .map_err(|e| ExportError::Objects(format!("put {key}: {e}")))?;
        let now = files(db, dataset).await?;
        if now == parts {
            return Ok(());
        }
        parts = now;
    }
    worker::console_warn!(
        "{dataset}: the manifest kept changing under concurrent exports; the next run rewrites it"
    );
    Ok(())
}

/// A timestamp as microseconds since the Unix epoch, read straight from the binary protocol
/// (PostgreSQL counts microseconds from 2000-01-01).
struct Micros(i64);

const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

impl<'a> FromSql<'a> for Micros {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        let be: [u8; 8] = raw.try_into()?;
        Ok(Micros(
            i64::from_be_bytes(be).saturating_add(PG_EPOCH_MICROS),
        ))
    }

    fn accepts(ty: &Type) -> bool {
        matches!(*ty, Type::TIMESTAMPTZ | Type::TIMESTAMP)
    }
}

/// A tokio-postgres row as the export's [`Cells`].
struct PgCells<'a>(&'a tokio_postgres::Row);

impl Cells for PgCells<'_> {
    type Error = ExportError;
    fn int(&self, i: usize) -> Result<Option<i64>, ExportError> {
        Ok(self.0.try_get(i)?)
    }
    fn micros(&self, i: usize) -> Result<Option<i64>, ExportError> {
        Ok(self.0.try_get::<_, Option<Micros>>(i)?.map(|m| m.0))
    }
    fn float(&self, i: usize) -> Result<Option<f64>, ExportError> {
        Ok(self.0.try_get(i)?)
    }
    fn boolean(&self, i: usize) -> Result<Option<bool>, ExportError> {
        Ok(self.0.try_get(i)?)
    }
    fn text(&self, i: usize) -> Result<Option<&str>, ExportError> {
        Ok(self.0.try_get(i)?)
    }
}

/// `GET /exports`: every dataset's manifest, each file with a signed `/files/…` link (served
/// by the files Worker from R2, as the native local-folder mode serves them).
pub async fn list(env: &Env, caller: &Caller) -> ApiResult {
    caller.require_admin()?;
    let secret = crate::config::link_secret(env).ok_or_else(|| {
        ApiError::unavailable("COGNOMEGA_LINK_SECRET is not set on this deployment")
    })?;
    let exp = worker::Date::now().as_millis() as i64 / 1000 + LINK_TTL_SECS;
    let db = crate::db::connect(env).await?;
    let mut datasets = Vec::with_capacity(Dataset::ALL.len());
    for dataset in Dataset::ALL {
        let parts = files(&db, dataset)
            .await?
            .into_iter()
            .map(|part| {
                let url = format!(
                    "/files/{}?exp={exp}&sig={}",
                    part.key,
                    sign_download(secret.as_bytes(), &part.key, exp)
                );
                ListedPart { part, url }
            })
            .collect();
        datasets.push(ListedDataset {
            dataset,
            manifest_key: dataset.manifest_key(),
            parts,
        });
    }
    http::json(200, &serde_json::json!({ "datasets": datasets }))
}

/// `POST /admin/exports`: one `etl` message per dataset ⇒ 202 `{"queued":[…]}`. Cloudflare
/// assigns message ids at delivery, so `message_id` is `null` (as for an injected message).
pub async fn enqueue(req: &mut Request, env: &Env, caller: &Caller) -> ApiResult {
    caller.require_admin()?;
    let body = req.bytes().await?;
    let messages = export_request(&body).map_err(|e| ApiError::bad_request(e.code, e.message))?;
    let mut queued = Vec::with_capacity(messages.len());
    for message in messages {
        crate::consumers::send_json(env, "ETL", &message, &caller.request_id, 0)
            .await
            .map_err(|e| ApiError::unavailable(format!("cannot enqueue right now ({e}); retry")))?;
        queued.push(serde_json::json!({
            "message_id": null,
            "dataset": message.dataset,
            "format": message.format,
        }));
    }
    http::json(202, &serde_json::json!({ "queued": queued }))
}

/// The periodic export (the native `etl-export` schedule's message: every dataset, Parquet).
pub async fn schedule(env: &Env) -> Result<(), String> {
    crate::consumers::send_json(env, "ETL", &EtlMessage::default(), "", 0)
        .await
        .map_err(|e| format!("etl send: {e}"))
}

/// `GET /files/exports/…` after its link was verified: the recorded file's bytes from R2.
pub async fn file(env: &Env, key: &str) -> ApiResult {
    let not_found = || {
        ApiError::not_found(
            "export_not_found",
            "no complete export file under that key; see GET /exports",
        )
    };
    let db = crate::db::connect(env).await?;
    let record = db
        .query_opt(sql::FILE, &[&key])
        .await?
        .map(|r| manifest_part(&r))
        .ok_or_else(not_found)?;
    let Some(bytes) = crate::r2::get_bytes(&env.bucket("OBJECTS")?, &record.key).await? else {
        return Err(not_found());
    };
    let resp = Response::from_bytes(bytes)?;
    let h = resp.headers();
    h.set("content-type", record.format.content_type())?;
    let name = record.key.rsplit('/').next().unwrap_or(&record.key);
    h.set(
        "content-disposition",
        &format!("attachment; filename=\"{name}\""),
    )?;
    h.set("etag", &format!("\"{}\"", record.sha256))?;
    Ok(resp)
}
