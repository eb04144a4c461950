//! The jobs API's reads and cancel, written once: `GET /jobs/{id}`, `GET /jobs` (newest first,
//! by cursor), `POST /jobs/{id}/cancel` (a queued job at once, a running one at its next stage
//! boundary), and what `GET /jobs/{id}/artifacts/{name}` answers (`ETag`/`If-None-Match`, an
//! expired artifact, which encoding to send); the host streams the bytes.

use cognomega_core::api::Refusal;
use cognomega_core::jobs::{self, ArtifactRow, CancelOutcome, Job};
use cognomega_core::sql::Executor;
use cognomega_r2_lifecycle::codec::Compression;
use serde_json::{json, Value};

use crate::billing::rfc3339;
use crate::ports::WriteHost;

/// The statuses a job can have.
pub const STATUSES: [&str; 6] = [
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "dead",
];

fn not_found(id: &str) -> Refusal {
    Refusal::new(404, "job_not_found", format!("no job {id}"))
}

/// 410: the lifecycle policy deleted the artifact's bytes (its row stays, saying `expired`).
#[must_use]
pub fn expired() -> Refusal {
    Refusal::new(
        410,
        "artifact_expired",
        "the artifact's storage has expired",
    )
}

/// A job as the API shows it, with its artifacts.
#[must_use]
pub fn job_json(job: &Job, artifacts: &[ArtifactRow]) -> Value {
    let artifacts: Vec<Value> = artifacts
        .iter()
        .map(|a| {
            // An artifact the lifecycle policy deleted keeps its row (and says `expired`), but
            // has nothing to download.
            let url =
                (a.tier != "expired").then(|| format!("/jobs/{}/artifacts/{}", job.id, a.name));
            json!({
                "name": a.name,
                "content_type": a.content_type,
                "size": a.size,
                "stored_size": a.stored_size,
                "compression": a.compression,
                "sha256": a.sha256,
                "tier": a.tier,
                "url": url,
            })
        })
        .collect();
    let at = |ms: Option<i64>| ms.map(rfc3339);
    let mut v = json!({
        "id": job.id,
        "type": job.job_type,
        "status": job.status,
        "progress": job.progress,
        "stage": job.stage,
        "attempts": job.attempts,
        "created_at": rfc3339(job.created_at_ms),
        "started_at": at(job.started_at_ms),
        "finished_at": at(job.finished_at_ms),
        "credits_charged": job.credits_charged,
        "artifacts": artifacts,
    });
    if let Some(error) = &job.error {
        v["error"] = Value::String(error.clone());
    }
    // A cancel asked for while it runs: it stops at its next stage boundary.
    if job.cancel_requested && job.status == "running" {
        v["cancel_requested"] = Value::Bool(true);
    }
    v
}

async fn owned(db: &mut dyn Executor, tenant: &str, id: &str) -> Result<Job, Refusal> {
    jobs::get(db, id, Some(tenant))
        .await
        .map_err(Refusal::internal)?
        .ok_or_else(|| not_found(id))
}

/// `GET /jobs/{id}`: a job of the tenant's.
pub async fn get(db: &mut dyn Executor, tenant: &str, id: &str) -> Result<Value, Refusal> {
    let job = owned(db, tenant, id).await?;
    let artifacts = jobs::artifacts(db, &job.id)
        .await
        .map_err(Refusal::internal)?;
    Ok(job_json(&job, &artifacts))
}

/// The query of `GET /jobs`, as sent.
#[derive(Debug, Clone, Copy, Default)]
pub struct ListQuery<'a> {
    /// Only jobs with this status.
    pub status: Option<&'a str>,
    /// Only jobs of this type.
    pub job_type: Option<&'a str>,
    /// Page size, 1..=100 (default 20).
    pub limit: Option<&'a str>,
    /// The `next_cursor` of the previous page.
    pub cursor: Option<&'a str>,
}

/// `GET /jobs`: the tenant's jobs, newest first, a page at a time.
pub async fn list(db: &mut dyn Executor, tenant: &str, q: ListQuery<'_>) -> Result<Value, Refusal> {
    if let Some(s) = q.status {
        if !STATUSES.contains(&s) {
            return Err(Refusal::new(
                400,
                "invalid_status",
                format!("status must be one of {}", STATUSES.join(", ")),
            ));
        }
    }
    let limit = match q.limit {
        None => 20,
        Some(raw) => raw
            .parse::<u32>()
            .ok()
            .filter(|l| (1..=100).contains(l))
            .ok_or_else(|| {
                Refusal::new(400, "invalid_limit", "limit must be an integer 1..=100")
            })?,
    };
    let page = jobs::list(db, tenant, q.status, q.job_type, limit + 1, q.cursor)
        .await
        .map_err(Refusal::internal)?;
    let more = page.len() > limit as usize;
    let page = &page[..page.len().min(limit as usize)];
    let mut items = Vec::with_capacity(page.len());
    for job in page {
        let artifacts = jobs::artifacts(db, &job.id)
            .await
            .map_err(Refusal::internal)?;
        items.push(job_json(job, &artifacts));
    }
    let next = if more {
        page.last().map(|j| j.id.clone())
    } else {
        None
    };
    Ok(json!({ "jobs": items, "next_cursor": next }))
}

/// `POST /jobs/{id}/cancel`: `(200, cancelled)` for a queued job, `(202, cancel requested)` for
/// a running one; 409 when it already finished.
pub async fn cancel<H: WriteHost + ?Sized>(
    host: &H,
    tenant: &str,
    id: &str,
) -> Result<(u16, Value), Refusal> {
    let mut tx = host.begin().await.map_err(Refusal::internal)?;
    let outcome = jobs::cancel(&mut *tx, tenant, id, host.now_ms())
        .await
        .map_err(Refusal::internal)?;
    tx.commit().await.map_err(Refusal::internal)?;
    match outcome {
        CancelOutcome::Cancelled => Ok((200, json!({"id": id, "status": "cancelled"}))),
        CancelOutcome::Requested => Ok((
            202,
            json!({"id": id, "status": "running", "cancel_requested": true}),
        )),
        CancelOutcome::Finished(status) => Err(Refusal::new(
            409,
            "job_finished",
            format!("the job already finished ({status}); nothing to cancel"),
        )),
        CancelOutcome::NotFound => Err(not_found(id)),
    }
}

/// How to send an artifact's stored bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Send {
    /// As stored, uncompressed.
    Plain,
    /// As stored, with this `Content-Encoding` (the client accepts it).
    Encoded(Compression),
    /// Decoded here (the client does not accept the stored encoding).
    Decoded(Compression),
}

/// What `GET /jobs/{id}/artifacts/{name}` answers.
#[derive(Debug, Clone)]
pub enum Download {
    /// 304: the client's `If-None-Match` holds this `ETag`.
    NotModified {
        /// The quoted SHA-256 of the original bytes.
        etag: String,
    },
    /// 200: the artifact, to read from its object and send as `send` says.
    Serve {
        /// The artifact.
        artifact: ArtifactRow,
        /// The quoted SHA-256 of the original bytes.
        etag: String,
        /// How.
        send: Send,
    },
}

/// Whether an `Accept-Encoding` value accepts `encoding`.
fn accepts(header: Option<&str>, encoding: &str) -> bool {
    header.is_some_and(|v| {
        v.split(',').any(|e| {
            e.split(';')
                .next()
                .is_some_and(|e| e.trim().eq_ignore_ascii_case(encoding))
        })
    })
}

/// `GET /jobs/{id}/artifacts/{name}`: the tenant's artifact, 304 for a matching
/// `If-None-Match`, 410 once expired.
pub async fn download(
    db: &mut dyn Executor,
    tenant: &str,
    id: &str,
    name: &str,
    if_none_match: Option<&str>,
    accept_encoding: Option<&str>,
) -> Result<Download, Refusal> {
    let job = owned(db, tenant, id).await?;
    let artifacts = jobs::artifacts(db, &job.id)
        .await
        .map_err(Refusal::internal)?;
    let Some(artifact) = artifacts.into_iter().find(|a| a.name == name) else {
        return Err(Refusal::new(
            404,
            "artifact_not_found",
            format!("job {id} has no artifact {name}"),
        ));
    };
    let etag = format!("\"{}\"", artifact.sha256);
    if if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*")) {
        return Ok(Download::NotModified { etag });
    }
    if artifact.tier == "expired" {
        return Err(expired());
    }
    let compression: Compression = artifact.compression.parse().unwrap_or(Compression::None);
    let send = if compression == Compression::None {
        Send::Plain
    } else if accepts(accept_encoding, compression.as_str()) {
        Send::Encoded(compression)
    } else {
        Send::Decoded(compression)
    };
    Ok(Download::Serve {
        artifact,
        etag,
        send,
    })
}
