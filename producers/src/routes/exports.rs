//! `GET /exports` (admin): every dataset's manifest with a download URL per file;
//! `POST /admin/exports`: enqueue an export now. The files themselves are served by
//! `GET /files/{key}` (signed links) on the local folder, or straight from S3/R2 (presigned).

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use cognomega_core::etl::{export_request, Dataset, ListedDataset, ListedPart};
use cognomega_core::files::sign_download;
use cognomega_core::queue::catalog::etl;
use cognomega_core::queue::OutgoingMessage;
use cognomega_stores::objects::ObjectKey;
use cognomega_stores::sql::Reader;
use cognomega_workflows::export;
use serde::Deserialize;
use serde_json::{json, Value};

use super::openapi::{schemas as s, *};
use crate::auth::Admin;
use crate::{ApiError, AppState};

/// Every dataset's manifest, with a download URL per file.
#[utoipa::path(
    get,
    path = "/exports",
    operation_id = "list_exports",
    tag = "admin",
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Every dataset's manifest", body = s::ExportList),
        (status = 401, response = Unauthorized),
        (status = 500, response = Internal),
    ),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<Value>, ApiError> {
    let mut datasets = Vec::with_capacity(Dataset::ALL.len());
    for dataset in Dataset::ALL {
        let files = export::files(&mut Reader(&state.db), dataset)
            .await
            .map_err(ApiError::internal)?;
        let mut parts = Vec::with_capacity(files.len());
        for part in files {
            let url = download_url(&state, &part.key).await?;
            parts.push(ListedPart { part, url });
        }
        datasets.push(ListedDataset {
            dataset,
            manifest_key: dataset.manifest_key(),
            parts,
        });
    }
    Ok(Json(json!({ "datasets": datasets })))
}

/// A presigned GET on S3/R2; on the local folder a signed `/files/{key}` link.
async fn download_url(state: &AppState, key: &str) -> Result<String, ApiError> {
    let ttl = state.config.uploads.link_ttl;
    let object_key = ObjectKey::parse(key).map_err(ApiError::internal)?;
    if let Some(url) = state
        .objects
        .presign_get(&object_key, ttl)
        .await
        .map_err(ApiError::internal)?
    {
        return Ok(url.to_string());
    }
    let exp = Utc::now().timestamp() + i64::try_from(ttl.as_secs()).unwrap_or(900);
    Ok(format!(
        "/files/{key}?exp={exp}&sig={}",
        sign_download(&state.url_secret, key, exp)
    ))
}

// The body is read by `cognomega_core::etl::export_request` (the edge reads it with the same
// function); this type only documents it.
/// `POST /admin/exports`; no body exports every dataset as Parquet.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
struct ExportRequest {
    /// One dataset (default: all).
    #[schema(value_type = Option<s::Dataset>)]
    dataset: Option<String>,
    /// The file format (default `parquet`).
    #[schema(value_type = Option<s::ExportFormat>)]
    format: Option<String>,
}

/// Queues an export of one dataset, or of all.
#[utoipa::path(
    post,
    path = "/admin/exports",
    operation_id = "enqueue_exports",
    tag = "admin",
    security(("admin_key" = [])),
    request_body(content = Option<ExportRequest>, content_type = "application/json"),
    responses(
        (status = 202, description = "The exports are queued", body = s::ExportsQueued),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 500, response = Internal),
    ),
)]
pub(crate) async fn enqueue(
    State(state): State<AppState>,
    _admin: Admin,
    body: Bytes,
) -> Result<Response, ApiError> {
    let messages = export_request(&body).map_err(|e| ApiError::bad_request(e.code, e.message))?;
    let mut queued = Vec::with_capacity(messages.len());
    for message in messages {
        let outgoing = OutgoingMessage::json(&message).map_err(ApiError::internal)?;
        let receipt = state
            .queues
            .send(&etl::queue(), outgoing)
            .await
            .map_err(ApiError::internal)?;
        queued.push(json!({
            "message_id": receipt.id,
            "dataset": message.dataset,
            "format": message.format,
        }));
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "queued": queued }))).into_response())
}

/// The bytes of a recorded export file, for a link already verified by `GET /files/{key}`.
pub(crate) async fn file(state: &AppState, key: &str) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "export_not_found",
            "no complete export file under that key; see GET /exports",
        )
    };
    let record = export::file(&mut Reader(&state.db), key)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(not_found)?;
    let object_key = ObjectKey::parse(&record.key).map_err(ApiError::internal)?;
    let object = state.objects.get(&object_key).await.map_err(|e| {
        if e.is_not_found() {
            not_found()
        } else {
            ApiError::internal(e)
        }
    })?;
    let mut resp = Response::new(Body::from_stream(object.stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(record.format.content_type()),
    );
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(u64::try_from(record.bytes).unwrap_or(0)),
    );
    let name = object_key.file_name().to_owned();
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{name}\"")) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    if let Ok(v) = HeaderValue::from_str(&format!("\"{}\"", record.sha256)) {
        h.insert(header::ETAG, v);
    }
    Ok(resp)
}
