//! `GET /uploads/{key}`, `GET /files/{key}` (the link check and what may be served) and
//! `POST /upload/direct`, written once around the host's byte handling (natively the body is
//! streamed into storage; on the edge it is read whole): [`admit`] before a byte is read (the
//! credit check, the tier's size limit, the tenant's quota against a declared length),
//! [`check_head`] on the first bytes (the content type's allow-list and magic), then —
//! once the object is stored — [`record`]: the row, its scan message and its storage charge in
//! one transaction (natively sent on the database-backed queue inside it, on the edge staged
//! in the outbox), so an upload is never left `pending` without its scan on the way, nor
//! stored without its charge. A refusal or failure after the object was stored deletes it.

use cognomega_core::api::Refusal;
use cognomega_core::billing::{UsageBatchMessage, UsageEvent, UsageKey, UsageKind};
use cognomega_core::files::sql::Upload;
use cognomega_core::files::{essence, matches_magic, servable, verify_download, SNIFF_BYTES};
use cognomega_core::queue::catalog;
use cognomega_core::sql::{Executor, Outbound, Value};

use crate::ports::WriteHost;

/// The most a multipart body's framing may add to its file's length.
pub const MULTIPART_FRAMING: u64 = 64 * 1024;

/// 413 `upload_too_large`.
#[must_use]
pub fn too_large(max: u64) -> Refusal {
    Refusal::new(
        413,
        "upload_too_large",
        format!("uploads are at most {max} bytes"),
    )
}

/// 413 `quota_exceeded`.
#[must_use]
pub fn quota_exceeded(remaining: u64) -> Refusal {
    Refusal::new(
        413,
        "quota_exceeded",
        format!("the tenant's upload quota has {remaining} bytes left; delete files or ask for a larger quota"),
    )
}

/// The room an upload has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    /// The tier's largest upload.
    pub max_bytes: u64,
    /// What is left of the tenant's quota.
    pub remaining: u64,
}

impl Room {
    /// Judges the bytes read so far: too large for the tier, or for the quota.
    pub fn check(&self, size: u64) -> Result<(), Refusal> {
        if size > self.max_bytes {
            Err(too_large(self.max_bytes))
        } else if size > self.remaining {
            Err(quota_exceeded(self.remaining))
        } else {
            Ok(())
        }
    }
}

/// Before a byte is read: 402 when the tenant cannot pay, then the room the upload has; a
/// declared `Content-Length` over it is refused at once (for multipart the length includes the
/// form's framing, so only the size limit is checked this early).
pub async fn admit<H: WriteHost + ?Sized>(
    host: &H,
    tenant: &str,
    floor: i64,
    max_bytes: u64,
    quota_bytes: u64,
    declared_len: Option<u64>,
    multipart: bool,
) -> Result<Room, Refusal> {
    crate::submit::require_credits(host, tenant, floor).await?;
    let used = host
        .db()
        .query_opt(cognomega_core::files::sql::USED_BYTES, &[tenant.into()])
        .await
        .map_err(Refusal::internal)?
        .map(|r| r.int(0))
        .transpose()
        .map_err(Refusal::internal)?
        .unwrap_or(0);
    let room = Room {
        max_bytes,
        remaining: quota_bytes.saturating_sub(u64::try_from(used).unwrap_or(0)),
    };
    if let Some(len) = declared_len {
        if len > max_bytes + if multipart { MULTIPART_FRAMING } else { 0 } {
            return Err(too_large(max_bytes));
        }
        if !multipart && len > room.remaining {
            return Err(quota_exceeded(room.remaining));
        }
    }
    Ok(room)
}

/// The declared content type (its essence), when it is allowed and the first bytes `head` are
/// what it says.
pub fn check_head(allowed: &[String], declared: &str, head: &[u8]) -> Result<String, Refusal> {
    let declared = essence(declared);
    if declared.is_empty() || !allowed.contains(&declared) {
        return Err(Refusal::new(
            415,
            "unsupported_media_type",
            format!(
                "content type {declared:?} is not accepted; allowed: {}",
                allowed.join(", ")
            ),
        ));
    }
    if head.is_empty() {
        return Err(Refusal::new(400, "empty_body", "the upload is empty"));
    }
    if !matches_magic(&declared, &head[..head.len().min(SNIFF_BYTES)]) {
        return Err(Refusal::new(
            415,
            "content_type_mismatch",
            format!("the bytes are not {declared}; declare the file's real type"),
        ));
    }
    Ok(declared)
}

/// A stored upload, to record.
#[derive(Debug, Clone, Copy)]
pub struct Accepted<'a> {
    /// Its key (also its object's key): `uploads/<tenant>/<uuid>`.
    pub key: &'a str,
    /// Its tenant.
    pub tenant: &'a str,
    /// Its sanitized filename.
    pub filename: &'a str,
    /// Its checked content type.
    pub content_type: &'a str,
    /// Its size in bytes.
    pub size: u64,
    /// Its SHA-256, hex.
    pub sha256: &'a str,
    /// Whether a scanner is configured (`pending` and a scan message) or not (`skipped`).
    pub scanning: bool,
    /// The request id.
    pub request_id: &'a str,
}

impl Accepted<'_> {
    /// Its scan state as recorded.
    #[must_use]
    pub fn scan(&self) -> &'static str {
        if self.scanning {
            "pending"
        } else {
            "skipped"
        }
    }

    /// The `201` body: the upload, its `created_at` and its signed download `url`.
    #[must_use]
    pub fn body(&self, created_at: &str, url: &str) -> serde_json::Value {
        serde_json::json!({
            "key": self.key,
            "filename": self.filename,
            "size": self.size,
            "sha256": self.sha256,
            "content_type": self.content_type,
            "scan": self.scan(),
            "created_at": created_at,
            "url": url,
        })
    }
}

/// Records a stored upload: the row, its scan message (when scanning) and its storage charge
/// commit together; returns its `created_at` (epoch ms). On a failure the object is deleted.
pub async fn record<H: WriteHost + ?Sized>(
    host: &H,
    upload: &Accepted<'_>,
) -> Result<i64, Refusal> {
    let written = write(host, upload).await;
    if written.is_err() {
        let _ = host.objects().delete(upload.key).await;
    }
    written
}

async fn write<H: WriteHost + ?Sized>(host: &H, u: &Accepted<'_>) -> Result<i64, Refusal> {
    let now = host.now_ms();
    let usage = UsageBatchMessage {
        tenant_id: u.tenant.to_owned(),
        events: vec![UsageEvent {
            idempotency_key: UsageKey::parse(&format!("upload-{}", u.key))
                .map_err(Refusal::internal)?,
            kind: UsageKind::StorageBytes,
            quantity: u.size,
            occurred_at: None,
            meta: None,
        }],
        received_at_ms: now,
    };
    let mut tx = host.begin().await.map_err(Refusal::internal)?;
    let args: Vec<Value> = vec![
        u.key.into(),
        u.tenant.into(),
        u.filename.into(),
        u.content_type.into(),
        i64::try_from(u.size).unwrap_or(i64::MAX).into(),
        u.sha256.into(),
        u.scan().into(),
        u.request_id.into(),
    ];
    let (sql, args) = cognomega_core::files::sql::INSERT.stamped(tx.dialect(), args, now);
    let row = tx.query_opt(sql, &args).await.map_err(Refusal::internal)?;
    let created_at = row
        .map(|r| r.int(0))
        .transpose()
        .map_err(Refusal::internal)?
        .unwrap_or(now);
    if u.scanning {
        let scan = catalog::av_scan::ScanMessage {
            key: u.key.to_owned(),
        };
        tx.send(Outbound {
            queue: catalog::av_scan::QUEUE,
            body: serde_json::to_string(&scan).map_err(Refusal::internal)?,
            request_id: Some(u.request_id),
        })
        .await
        .map_err(Refusal::internal)?;
    }
    tx.send(Outbound {
        queue: catalog::usage::QUEUE,
        body: serde_json::to_string(&usage).map_err(Refusal::internal)?,
        request_id: Some(u.request_id),
    })
    .await
    .map_err(Refusal::internal)?;
    tx.commit().await.map_err(Refusal::internal)?;
    Ok(created_at)
}

/// 404 `upload_not_found`.
#[must_use]
pub fn not_found(key: &str) -> Refusal {
    Refusal::new(404, "upload_not_found", format!("no upload {key}"))
}

/// 410 `file_expired`: the lifecycle policy deleted the file's bytes.
#[must_use]
pub fn file_expired() -> Refusal {
    Refusal::new(410, "file_expired", "the file's storage has expired")
}

/// An upload as the API shows it, with its signed download `url`.
#[must_use]
pub fn upload_json(u: &Upload, url: &str) -> serde_json::Value {
    let mut v = serde_json::json!({
        "key": u.key,
        "filename": u.filename,
        "size": u.size,
        "sha256": u.sha256,
        "content_type": u.content_type,
        "scan": u.scan,
        "created_at": crate::billing::rfc3339(u.created_at_ms),
        "url": url,
    });
    if let Some(sig) = &u.signature {
        v["signature"] = serde_json::Value::String(sig.clone());
    }
    v
}

/// `GET /uploads/{key}`: an upload of the tenant's.
pub async fn get(db: &mut dyn Executor, tenant: &str, key: &str) -> Result<Upload, Refusal> {
    cognomega_core::files::sql::get(db, key, Some(tenant))
        .await
        .map_err(Refusal::internal)?
        .ok_or_else(|| not_found(key))
}

/// `GET /files/{key}`: the link's `exp` and `sig` (403 `link_invalid` / `link_expired`).
pub fn check_link(
    secret: &[u8],
    key: &str,
    exp: Option<&str>,
    sig: Option<&str>,
    now_secs: i64,
) -> Result<(), Refusal> {
    let exp = exp.and_then(|e| e.parse::<i64>().ok());
    let (Some(exp), Some(sig)) = (exp, sig) else {
        return Err(Refusal::new(
            403,
            "link_invalid",
            "a download link needs exp and sig; get one from GET /uploads/{key}",
        ));
    };
    verify_download(secret, key, exp, sig, now_secs)
        .map_err(|e| Refusal::new(403, e.code(), e.to_string()))
}

/// The upload behind a checked link, when it may be served (clean, or unscanned where no
/// scanner is configured).
pub async fn servable_upload(db: &mut dyn Executor, key: &str) -> Result<Upload, Refusal> {
    let upload = cognomega_core::files::sql::get(db, key, None)
        .await
        .map_err(Refusal::internal)?
        .ok_or_else(|| not_found(key))?;
    servable(&upload.scan, upload.signature.as_deref())
        .map_err(|n| Refusal::new(n.status, n.code, n.message))?;
    Ok(upload)
}
