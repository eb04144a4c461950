//! The `etl` consumer, `GET /exports` and `POST /admin/exports` on the edge: the native export
//! (`consumers/src/etl.rs`, `stores/src/exports.rs`) bound to Hyperdrive and R2.
//!
//! The export is the shared workflow (`cognomega_workflows::export`: plan with the watermark
//! compare-and-swap, write each part, record its files and complete it in one transaction,
//! rewrite `_manifest.json`); this host streams a part's rows from PostgreSQL in Arrow batches
//! into the files of that part only. Memory holds one part at a time.

use cognomega_core::etl::{export_request, Dataset, EtlMessage, ListedDataset, ListedPart};
use cognomega_core::files::sign_download;
use cognomega_core::objects::ObjectStore;
use cognomega_core::sql::{Executor, SqlError, Transaction};
use cognomega_pipelines::export::rows::{self, BatchError, Cells, Days, Dialect, BATCH_ROWS};
use cognomega_pipelines::export::{FinishedFile, PartFiles};
use cognomega_workflows::export::{self, ExportError, ExportHost, Part};
use futures::TryStreamExt;
use tokio_postgres::types::{FromSql, Type};
use worker::{Env, MessageExt, Request, Response};

use crate::consumers::{decode_all, retry, EdgeQueue};
use crate::http::{self, ApiError, ApiResult, Caller};
use crate::sql::{Pg, PgTx};

/// Rows per part at most on the edge (natively 1,000,000): a Worker has 128 MB, and a part's
/// files are built in memory. Parts are the same kind of range, only shorter; the keys, the
/// files' layout and the manifest are the native ones. `COGNOMEGA_EXPORT_MAX_ROWS` overrides it.
pub const EDGE_MAX_ROWS_PER_PART: u64 = 250_000;

/// The `etl` consumer: each message exports its dataset(s); a failed export retries the
/// message (the next delivery finishes what this one planned), and after `max_retries` it is
/// dead-lettered.
pub async fn run_batch(
    db: &tokio_postgres::Client,
    env: &Env,
    queue: &EdgeQueue,
    messages: &[worker::Message<serde_json::Value>],
) -> Result<(), String> {
    let host = EdgeExport {
        db,
        objects: crate::r2::Objects::of(env),
    };
    let max_rows = crate::config::var(env, "COGNOMEGA_EXPORT_MAX_ROWS")
        .and_then(|v| v.parse::<u64>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(EDGE_MAX_ROWS_PER_PART);
    for (m, message, _) in decode_all::<EtlMessage>(queue, messages) {
        let mut failed = None;
        for dataset in message.datasets() {
            match export::export(&host, dataset, message.format, None, max_rows).await {
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

/// The export workflow's host: the invocation's connection, R2, and the part's rows streamed
/// from PostgreSQL into its files in the invocation itself, one part at a time.
struct EdgeExport<'a> {
    db: &'a tokio_postgres::Client,
    objects: crate::r2::Objects,
}

#[async_trait::async_trait(?Send)]
impl ExportHost for EdgeExport<'_> {
    fn objects(&self) -> &dyn ObjectStore {
        &self.objects
    }

    fn db(&self) -> Box<dyn Executor + '_> {
        Box::new(Pg(self.db))
    }

    async fn begin(&self) -> Result<Box<dyn Transaction + '_>, SqlError> {
        Ok(Box::new(PgTx::begin(self.db).await?))
    }

    async fn encode(&self, part: &Part) -> Result<Vec<FinishedFile>, ExportError> {
        let mut files = PartFiles::new(part.format, rows::arrow_schema(part.dataset));
        let mut days = Days::new(part.dataset, BATCH_ROWS);
        let scan = rows::scan_sql(part.dataset, Dialect::Postgres);
        let stream = (self.db.query_raw(&scan, [&part.from, &part.to]).await).map_err(encode)?;
        futures::pin_mut!(stream);
        while let Some(row) = stream.try_next().await.map_err(encode)? {
            if let Some(full) = days.push(&PgCells(&row)).map_err(encode)? {
                files.write(full.day, &full.batch).map_err(encode)?;
            }
        }
        for rest in days.finish().map_err(encode)? {
            files.write(rest.day, &rest.batch).map_err(encode)?;
        }
        files.finish().map_err(encode)
    }
}

fn encode(e: impl std::fmt::Display) -> ExportError {
    ExportError::Encode(e.to_string())
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

/// A row that did not read or did not fit its column.
struct RowError(String);

impl std::fmt::Display for RowError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<tokio_postgres::Error> for RowError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self(e.to_string())
    }
}

impl From<BatchError> for RowError {
    fn from(e: BatchError) -> Self {
        Self(e.to_string())
    }
}

/// A tokio-postgres row as the export's [`Cells`].
struct PgCells<'a>(&'a tokio_postgres::Row);

impl Cells for PgCells<'_> {
    type Error = RowError;
    fn int(&self, i: usize) -> Result<Option<i64>, RowError> {
        Ok(self.0.try_get(i)?)
    }
    fn micros(&self, i: usize) -> Result<Option<i64>, RowError> {
        Ok(self.0.try_get::<_, Option<Micros>>(i)?.map(|m| m.0))
    }
    fn float(&self, i: usize) -> Result<Option<f64>, RowError> {
        Ok(self.0.try_get(i)?)
    }
    fn boolean(&self, i: usize) -> Result<Option<bool>, RowError> {
        Ok(self.0.try_get(i)?)
    }
    fn text(&self, i: usize) -> Result<Option<&str>, RowError> {
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
    // Links live as long as `GET /uploads/{key}`'s (`COGNOMEGA_LINK_TTL`).
    let ttl = crate::config::uploads(env)
        .map_err(ApiError::internal)?
        .link_ttl;
    let exp = worker::Date::now().as_millis() as i64 / 1000 + ttl.as_secs() as i64;
    let db = crate::db::connect(env).await?;
    let mut datasets = Vec::with_capacity(Dataset::ALL.len());
    for dataset in Dataset::ALL {
        let parts = export::files(&mut Pg(&db), dataset)
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
    let record = export::file(&mut Pg(&db), key)
        .await?
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
