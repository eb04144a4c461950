//! `POST /upload/direct`, `GET /uploads/{key}`, `GET /files/{key}` (signed; uploads, and the
//! export files listed by `GET /exports`).
//!
//! The body is streamed to object storage while it is counted and hashed: memory stays bounded
//! whatever the size, the size limit is enforced on the stream itself (so a chunked body with no
//! Content-Length is caught), and a refused upload leaves nothing in storage.

use std::sync::{Arc, Mutex};

use axum::body::{Body, Bytes};
use axum::extract::{FromRequest, Multipart, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{SecondsFormat, TimeZone, Utc};
use cognomega_core::api::Refusal;
use cognomega_core::files::{content_disposition, essence, sanitize_filename, SNIFF_BYTES};
use cognomega_stores::objects::{ObjectKey, PutMeta};
use cognomega_stores::sql::Reader;
use cognomega_workflows::accept::{self, Accepted, Room};
use futures::stream::{self, BoxStream, StreamExt};
use serde::Deserialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::openapi::{schemas as s, *};
use crate::auth::Authenticated;
use crate::query::Query;
use crate::{current_request_id, ApiError, AppState};

fn rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn signed_url(state: &AppState, key: &str) -> String {
    let ttl = i64::try_from(state.config.uploads.link_ttl.as_secs()).unwrap_or(900);
    cognomega_core::files::signed_url(&state.url_secret, key, Utc::now().timestamp(), ttl)
}

/// The file's name for a raw upload.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct FilenameQuery {
    /// The file's name (sanitized); also `X-Filename`.
    filename: Option<String>,
}

type ByteStream = BoxStream<'static, Result<Bytes, std::io::Error>>;

/// Streams an upload to object storage; a virus scan is queued when a scanner is configured.
#[utoipa::path(
    post,
    path = "/upload/direct",
    operation_id = "upload_direct",
    tag = "uploads",
    security(("bearer" = [])),
    params(
        FilenameQuery,
        ("X-Filename" = Option<String>, Header, description = "The file's name (raw body)"),
    ),
    request_body(description = "The raw file with its real `Content-Type`, or a form with one \
        file part", content(
        (String = "text/plain"),
        (s::Binary = "application/octet-stream"),
        (s::UploadForm = "multipart/form-data"),
    )),
    responses(
        (status = 201, description = "Stored", body = s::UploadCreated, links(
            ("GetUpload" = (operation_id = "get_upload",
                parameters(("key" = "$response.body#/key")))),
        )),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 402, response = PaymentRequired),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    ),
)]
pub(crate) async fn direct(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    Query(q): Query<FilenameQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let cfg = &state.config.uploads;
    cfg.check_scanning()?;
    let headers = request.headers().clone();
    let declared_len = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let content_type_header = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let is_multipart = essence(&content_type_header) == "multipart/form-data";
    let room = accept::admit(
        &state,
        &claims.tenant,
        state.config.billing.guest_floor,
        cfg.max_bytes_for(claims.tier.as_str()),
        cfg.quota_bytes,
        declared_len,
        is_multipart,
    )
    .await?;

    if is_multipart {
        let mut form = Multipart::from_request(request, &state)
            .await
            .map_err(|e| {
                ApiError::bad_request("invalid_multipart", format!("multipart body: {e}"))
            })?;
        let mut field = loop {
            match form.next_field().await {
                Ok(Some(f)) if f.file_name().is_some() => break f,
                Ok(Some(_)) => continue,
                Ok(None) => {
                    return Err(ApiError::bad_request(
                        "missing_file",
                        "the form has no file part",
                    ))
                }
                Err(e) => {
                    return Err(ApiError::bad_request(
                        "invalid_multipart",
                        format!("multipart body: {e}"),
                    ))
                }
            }
        };
        let ct = field
            .content_type()
            .unwrap_or("application/octet-stream")
            .to_owned();
        let name = field.file_name().map(str::to_owned);
        // The field borrows the form, so its chunks are pumped through a channel while the
        // upload consumes them; returning early drops the receiver and stops the pump.
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let pump = async move {
            loop {
                let next = match field.chunk().await {
                    Ok(Some(chunk)) => Ok(chunk),
                    Ok(None) => break,
                    Err(e) => Err(std::io::Error::other(e.to_string())),
                };
                let failed = next.is_err();
                if tx.send(next).await.is_err() || failed {
                    break;
                }
            }
        };
        let body = stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        })
        .boxed();
        let (stored, ()) = tokio::join!(store(&state, &claims.tenant, &ct, name, body, room), pump);
        return stored;
    }
    let name = q.filename.or_else(|| {
        headers
            .get("x-filename")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    let body = request
        .into_body()
        .into_data_stream()
        .map(|r| r.map_err(|e| std::io::Error::other(e.to_string())))
        .boxed();
    store(
        &state,
        &claims.tenant,
        &content_type_header,
        name,
        body,
        room,
    )
    .await
}

/// Validates, streams and records one upload.
async fn store(
    state: &AppState,
    tenant: &str,
    declared_type: &str,
    raw_name: Option<String>,
    body: ByteStream,
    room: Room,
) -> Result<Response, ApiError> {
    let cfg = &state.config.uploads;
    // Fused: the sniffing loop may see the end of the body before the upload re-polls it.
    let mut body = body.fuse();
    // A type that is not allowed is refused before a byte is read.
    if !cfg.allowed_types.contains(&essence(declared_type)) {
        accept::check_head(&cfg.allowed_types, declared_type, &[])?;
    }
    let filename = sanitize_filename(raw_name.as_deref().unwrap_or("file"));

    // Sniff the first bytes before storing anything.
    let mut head: Vec<u8> = Vec::with_capacity(SNIFF_BYTES);
    while head.len() < SNIFF_BYTES {
        match body.next().await {
            Some(Ok(chunk)) => head.extend_from_slice(&chunk),
            Some(Err(e)) => {
                return Err(ApiError::bad_request(
                    "body_read_failed",
                    format!("reading the body failed: {e}"),
                ))
            }
            None => break,
        }
    }
    let declared = accept::check_head(&cfg.allowed_types, declared_type, &head)?;

    let tripped: Arc<Mutex<Option<Refusal>>> = Arc::new(Mutex::new(None));
    let progress = Arc::new(Mutex::new((0u64, Sha256::new())));
    let counted = {
        let (tripped, progress) = (tripped.clone(), progress.clone());
        stream::once(async move { Ok(Bytes::from(head)) })
            .chain(body)
            .map(move |chunk| {
                let chunk = chunk?;
                let mut p = progress
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                p.0 += chunk.len() as u64;
                match room.check(p.0) {
                    Ok(()) => {
                        p.1.update(&chunk);
                        Ok(chunk)
                    }
                    Err(over) => {
                        *tripped
                            .lock()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(over);
                        Err(std::io::Error::other("upload limit exceeded"))
                    }
                }
            })
    };
    let key_text = format!("uploads/{tenant}/{}", uuid::Uuid::new_v4());
    let key = ObjectKey::parse(&key_text).map_err(ApiError::internal)?;
    let stored = state
        .objects
        .put_stream(&key, counted, &PutMeta::content_type(declared.clone()))
        .await;
    if let Err(e) = stored {
        // Nothing half-written: put_stream aborts its upload; make sure no object remains.
        let _ = state.objects.delete(&key).await;
        let over = tripped
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        return Err(match over {
            Some(over) => over.into(),
            None => ApiError::bad_request(
                "body_read_failed",
                format!("the upload did not complete: {e}"),
            ),
        });
    }
    let (size, sha256) = {
        let p = progress
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        (
            p.0,
            p.1.clone()
                .finalize()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
        )
    };
    let request_id = current_request_id();
    let accepted = Accepted {
        key: &key_text,
        tenant,
        filename: &filename,
        content_type: &declared,
        size,
        sha256: &sha256,
        scanning: cfg.scanning,
        request_id: &request_id,
    };
    let created_at_ms = accept::record(state, &accepted).await?;
    let body = accepted.body(&rfc3339(created_at_ms), &signed_url(state, &key_text));
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

/// An upload's metadata and scan status.
#[utoipa::path(
    get,
    path = "/uploads/{key}",
    operation_id = "get_upload",
    tag = "uploads",
    security(("bearer" = [])),
    params(("key" = String, Path, description = "The upload's key (it contains `/`)")),
    responses(
        (status = 200, description = "The upload", body = s::Upload),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
    ),
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    Path(key): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let upload = accept::get(&mut Reader(&state.db), &claims.tenant, &key).await?;
    Ok(Json(accept::upload_json(
        &upload,
        &signed_url(&state, &key),
    )))
}

/// The signature of a download link.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct LinkQuery {
    /// Expiry, Unix seconds.
    #[param(required = true, value_type = i64)]
    exp: Option<String>,
    /// The link's signature.
    #[param(required = true, value_type = String)]
    sig: Option<String>,
}

/// A file behind a signed, expiring link (an upload, or an export file).
#[utoipa::path(
    get,
    path = "/files/{key}",
    operation_id = "get_file",
    tag = "uploads",
    params(("key" = String, Path, description = "The object key (it contains `/`)"), LinkQuery),
    responses(
        (status = 200, description = "The file, as an attachment", content(("*/*")), headers(
            ("Content-Disposition" = String, description = "`attachment` with the sanitized name"),
        )),
        (status = 400, response = BadRequest),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 410, response = Gone),
        (status = 500, response = Internal),
    ),
)]
pub(crate) async fn file(
    State(state): State<AppState>,
    Path(key): Path<String>,
    Query(q): Query<LinkQuery>,
    _headers: HeaderMap,
) -> Result<Response, ApiError> {
    let (exp, sig) = (q.exp.as_deref(), q.sig.as_deref());
    accept::check_link(&state.url_secret, &key, exp, sig, Utc::now().timestamp())?;
    if key.starts_with("exports/") {
        return super::exports::file(&state, &key).await;
    }
    let upload = accept::servable_upload(&mut Reader(&state.db), &key).await?;
    let object_key = ObjectKey::parse(&upload.object_key).map_err(ApiError::internal)?;
    let object = state.objects.get(&object_key).await.map_err(|e| {
        if e.is_not_found() {
            accept::file_expired().into()
        } else {
            ApiError::internal(e)
        }
    })?;
    let mut resp = Response::new(Body::from_stream(object.stream));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&upload.content_type).map_err(ApiError::internal)?,
    );
    h.insert(
        header::CONTENT_LENGTH,
        HeaderValue::from(u64::try_from(upload.size).unwrap_or(0)),
    );
    let disposition = content_disposition(&upload.filename);
    h.insert(
        header::CONTENT_DISPOSITION,
        HeaderValue::from_str(&disposition).unwrap_or(HeaderValue::from_static("attachment")),
    );
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    Ok(resp)
}
