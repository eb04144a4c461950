//! The files service (`POST /upload/direct`, raw or `multipart/form-data`; `GET /uploads/{key}`;
//! `GET /files/{key}` signed) and the `av-scan` consumer, which hosts the scan workflow the
//! native scanner runs, sending each upload to clamd over a Workers TCP socket (INSTREAM). Upload
//! settings are the native server's, read by the same code (`cognomega_core::settings`), each
//! limit capped at what a Worker holds in memory.

use cognomega_core::files::{content_disposition, essence, sanitize_filename};
use cognomega_core::settings::UploadConfig;
use cognomega_core::sql::Executor;
use cognomega_workflows::accept::{self, Accepted};
use cognomega_workflows::uploads::{ScanHost, ScanOutcome, Scanned};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use wasm_bindgen::JsCast;
use worker::{Env, MessageExt, Method, Request, Response, Socket};

use crate::consumers::EdgeQueue;
use crate::host::Writes;
use crate::http::{self, ApiError, ApiResult, Caller};
use crate::sql::Pg;

/// A Worker holds the whole body in its 128 MB of memory, so the edge accepts smaller uploads
/// than the native server's streamed 100 MiB: a tier's limit is capped at this.
const EDGE_MAX_BYTES: u64 = 32 << 20;

/// The message on `av-scan`.
pub use cognomega_core::queue::catalog::av_scan::ScanMessage;

fn link_secret(env: &Env) -> Result<String, ApiError> {
    crate::config::link_secret(env)
        .ok_or_else(|| ApiError::unavailable("COGNOMEGA_LINK_SECRET is not set on this deployment"))
}

fn signed_url(cfg: &UploadConfig, secret: &str, key: &str) -> String {
    let now = worker::Date::now().as_millis() as i64 / 1000;
    let ttl = cfg.link_ttl.as_secs() as i64;
    cognomega_core::files::signed_url(secret.as_bytes(), key, now, ttl)
}

pub async fn route(req: &mut Request, env: &Env, caller: &Caller) -> ApiResult {
    let path = req.path();
    match req.method() {
        Method::Post if path == "/upload/direct" => direct(req, env, caller).await,
        Method::Get | Method::Head if path.starts_with("/uploads/") => {
            get(env, caller, &path["/uploads/".len()..]).await
        }
        Method::Get | Method::Head if path.starts_with("/files/") => {
            file(req, env, &path["/files/".len()..]).await
        }
        _ if path == "/upload/direct"
            || path.starts_with("/uploads/")
            || path.starts_with("/files/") =>
        {
            Err(http::no_route(true))
        }
        _ => Err(http::no_route(false)),
    }
}

/// The upload settings by the native names (`cognomega_core::settings::UploadConfig`), every
/// limit capped at what a Worker holds in memory.
pub fn settings(env: &Env) -> Result<UploadConfig, ApiError> {
    let mut cfg = crate::config::uploads(env).map_err(ApiError::internal)?;
    cfg.max_bytes = cfg.max_bytes.min(EDGE_MAX_BYTES);
    for bytes in cfg.max_bytes_by_tier.values_mut() {
        *bytes = (*bytes).min(EDGE_MAX_BYTES);
    }
    Ok(cfg)
}

fn invalid_multipart(e: impl std::fmt::Display) -> ApiError {
    ApiError::bad_request("invalid_multipart", format!("multipart body: {e}"))
}

/// The first part of a form that is a file (has a filename), as natively.
fn first_file(form: worker::FormData) -> Result<Option<worker::File>, ApiError> {
    let form = wasm_bindgen::JsValue::from(form);
    let entries = worker::js_sys::try_iter(&form)
        .map_err(|e| invalid_multipart(format!("{e:?}")))?
        .ok_or_else(|| invalid_multipart("the form cannot be read"))?;
    for entry in entries {
        let entry = entry.map_err(|e| invalid_multipart(format!("{e:?}")))?;
        // Each entry is a `[name, value]` pair; the value is a File for a part with a filename.
        let value = entry.unchecked_ref::<worker::js_sys::Array>().get(1);
        if let Ok(file) = value.dyn_into::<worker::web_sys::File>() {
            return Ok(Some(worker::File::from(file)));
        }
    }
    Ok(None)
}

async fn direct(req: &mut Request, env: &Env, caller: &Caller) -> ApiResult {
    let claims = caller.claims()?;
    let cfg = settings(env)?;
    cfg.check_scanning()?;
    let db = crate::db::connect(env).await?;
    let host = Writes::new(env, &db);
    let content_type = req.headers().get("content-type")?.unwrap_or_default();
    let is_multipart = essence(&content_type) == "multipart/form-data";
    let declared_len = (req.headers().get("content-length")?).and_then(|v| v.parse::<u64>().ok());
    let billing = crate::config::billing(env).map_err(ApiError::internal)?;
    let room = accept::admit(
        &host,
        &claims.tenant,
        billing.guest_floor,
        cfg.max_bytes_for(claims.tier.as_str()),
        cfg.quota_bytes,
        declared_len,
        is_multipart,
    )
    .await?;
    let (declared, raw_name, bytes) = if is_multipart {
        let form = req.form_data().await.map_err(invalid_multipart)?;
        let Some(file) = first_file(form)? else {
            return Err(ApiError::bad_request(
                "missing_file",
                "the form has no file part",
            ));
        };
        let declared = Some(file.type_())
            .filter(|t| !t.is_empty())
            .unwrap_or_else(|| "application/octet-stream".to_owned());
        let name = file.name();
        (
            declared,
            Some(name),
            file.bytes().await.map_err(invalid_multipart)?,
        )
    } else {
        let url = req.url()?;
        let name = url
            .query_pairs()
            .find(|(k, _)| k == "filename")
            .map(|(_, v)| v.into_owned())
            .or(req.headers().get("x-filename")?);
        (content_type, name, req.bytes().await?)
    };
    let declared = accept::check_head(&cfg.allowed_types, &declared, &bytes)?;
    let filename = sanitize_filename(raw_name.as_deref().unwrap_or("file"));
    let size = bytes.len() as u64;
    room.check(size)?;
    let secret = link_secret(env)?;
    let sha256: String = Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let key = format!("uploads/{}/{}", claims.tenant, uuid::Uuid::new_v4());
    crate::r2::put(&env.bucket("OBJECTS")?, &key, bytes, &declared, None)
        .await
        .map_err(|e| {
            ApiError::unavailable(format!("cannot store the upload right now ({e}); retry"))
        })?;
    let accepted = Accepted {
        key: &key,
        tenant: &claims.tenant,
        filename: &filename,
        content_type: &declared,
        size,
        sha256: &sha256,
        scanning: cfg.scanning,
        request_id: &caller.request_id,
    };
    let created_at_ms = accept::record(&host, &accepted).await?;
    host.relay(&format!("upload {key}")).await;
    let created_at = cognomega_workflows::billing::rfc3339(created_at_ms);
    http::json(
        201,
        &accepted.body(&created_at, &signed_url(&cfg, &secret, &key)),
    )
}

async fn get(env: &Env, caller: &Caller, key: &str) -> ApiResult {
    let claims = caller.claims()?;
    let db = crate::db::connect(env).await?;
    let upload = accept::get(&mut Pg(&db), &claims.tenant, key).await?;
    let (secret, cfg) = (link_secret(env)?, settings(env)?);
    http::json(
        200,
        &accept::upload_json(&upload, &signed_url(&cfg, &secret, key)),
    )
}

async fn file(req: &Request, env: &Env, key: &str) -> ApiResult {
    let url = req.url()?;
    let query = |name: &str| {
        url.query_pairs()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    };
    let secret = link_secret(env)?;
    let now = worker::Date::now().as_millis() as i64 / 1000;
    let (exp, sig) = (query("exp"), query("sig"));
    accept::check_link(secret.as_bytes(), key, exp.as_deref(), sig.as_deref(), now)?;
    if key.starts_with("exports/") {
        return crate::etl::file(env, key).await;
    }
    let db = crate::db::connect(env).await?;
    let upload = accept::servable_upload(&mut Pg(&db), key).await?;
    let Some(bytes) = crate::r2::get_bytes(&env.bucket("OBJECTS")?, &upload.object_key).await?
    else {
        return Err(accept::file_expired().into());
    };
    let resp = Response::from_bytes(bytes)?;
    resp.headers().set("content-type", &upload.content_type)?;
    let disposition = content_disposition(&upload.filename);
    resp.headers().set("content-disposition", &disposition)?;
    resp.headers().set("x-content-type-options", "nosniff")?;
    Ok(resp)
}

async fn clamd_scan(addr: &str, bytes: &[u8]) -> Result<Scanned, String> {
    let (host, port) = addr
        .rsplit_once(':')
        .and_then(|(h, p)| p.parse::<u16>().ok().map(|p| (h.to_owned(), p)))
        .ok_or_else(|| format!("COGNOMEGA_CLAMD must be host:port, got {addr:?}"))?;
    let mut socket = Socket::builder()
        .connect(host, port)
        .map_err(|e| format!("clamd connect: {e}"))?;
    let io = async {
        socket.write_all(b"zINSTREAM\0").await?;
        for chunk in bytes.chunks(64 * 1024) {
            let len = u32::try_from(chunk.len()).unwrap_or(u32::MAX);
            socket.write_all(&len.to_be_bytes()).await?;
            socket.write_all(chunk).await?;
        }
        socket.write_all(&[0, 0, 0, 0]).await?;
        socket.flush().await?;
        let mut reply = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            let n = socket.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            reply.extend_from_slice(&buf[..n]);
            if reply.contains(&0) || reply.len() > 4096 {
                break;
            }
        }
        Ok::<_, std::io::Error>(reply)
    };
    let reply = io.await.map_err(|e| format!("clamd: {e}"))?;
    let _ = socket.close().await;
    let text = String::from_utf8_lossy(&reply);
    let text = text.trim_end_matches(['\0', '\n']).trim();
    let verdict = text.strip_prefix("stream:").map(str::trim).unwrap_or(text);
    if verdict == "OK" {
        Ok(Scanned::Clean)
    } else if let Some(sig) = verdict.strip_suffix("FOUND") {
        Ok(Scanned::Infected(sig.trim().to_owned()))
    } else {
        Err(format!("clamd answered {text:?}"))
    }
}

/// The edge as the scan workflow's host: the request's connection, R2 and clamd over a TCP
/// socket.
struct EdgeScan<'a> {
    db: &'a tokio_postgres::Client,
    bucket: worker::Bucket,
    clamd: String,
}

#[async_trait::async_trait(?Send)]
impl ScanHost for EdgeScan<'_> {
    fn db(&self) -> Box<dyn Executor + '_> {
        Box::new(crate::sql::Pg(self.db))
    }

    fn now_ms(&self) -> i64 {
        worker::Date::now().as_millis() as i64
    }

    async fn scan(&self, object_key: &str) -> Result<Scanned, String> {
        match crate::r2::get_bytes(&self.bucket, object_key).await {
            Ok(Some(bytes)) => clamd_scan(&self.clamd, &bytes).await,
            Ok(None) => Ok(Scanned::Missing),
            Err(e) => Err(e.to_string()),
        }
    }

    async fn quarantine(&self, from: &str, to: &str) -> Result<(), String> {
        let moved = async {
            let Some(bytes) = crate::r2::get_bytes(&self.bucket, from).await? else {
                return Err(worker::Error::RustError(format!("{from} is gone")));
            };
            self.bucket.put(to, bytes).execute().await?;
            self.bucket.delete(from).await
        };
        moved.await.map_err(|e| e.to_string())
    }
}

/// The `av-scan` consumer: the scan workflow (`cognomega_workflows::uploads`) the native
/// scanner runs. Clamd trouble ⇒ retried, and after `max_retries` the dead-letter consumer
/// records `scan_failed` with why (the upload is never served unscanned).
pub async fn scan_batch(
    db: &tokio_postgres::Client,
    env: &Env,
    queue: &EdgeQueue,
    messages: &[worker::Message<serde_json::Value>],
) -> Result<(), String> {
    let Some(clamd) = crate::config::clamd(env) else {
        return Err("COGNOMEGA_CLAMD is not set on the av-scan Worker".into());
    };
    let host = EdgeScan {
        db,
        bucket: env.bucket("OBJECTS").map_err(|e| e.to_string())?,
        clamd,
    };
    let max_deliveries = queue.max_retries + 1;
    for (msg, scan, _) in crate::consumers::decode_all::<ScanMessage>(queue, messages) {
        let key = &scan.key;
        match cognomega_workflows::uploads::scan(&host, key, None, max_deliveries).await {
            Ok(ScanOutcome::Retry { reason, .. }) => {
                worker::console_warn!("av-scan {key}: {reason}; retrying");
                crate::consumers::retry(msg, queue);
            }
            Ok(outcome) => {
                if let ScanOutcome::Infected {
                    not_moved: Some(e), ..
                } = &outcome
                {
                    worker::console_error!("av-scan {key}: infected, recorded, not moved: {e}");
                }
                msg.ack();
            }
            Err(e) => {
                worker::console_warn!("av-scan {key}: {e}; retrying");
                crate::consumers::retry(msg, queue);
            }
        }
    }
    Ok(())
}
