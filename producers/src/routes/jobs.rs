//! Jobs: submit, list, poll, cancel, download artifacts.

use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use cognomega_core::limits::CostMetric;
use cognomega_core::objects::ObjectStore;
use cognomega_core::queue::{OutgoingMessage, QueueName};
use cognomega_core::sql::{Executor, Outbound, SqlError, Transaction};
use cognomega_r2_lifecycle::codec::decode;
use cognomega_stores::objects::ObjectKey;
use cognomega_stores::sql::Reader;
use cognomega_workflows::jobs_api::{self, Download};
use cognomega_workflows::submit::{self as wf, SubmitRequest, SubmitSettings, WriteHost};
use serde::Deserialize;
use serde_json::{json, Value};

use super::openapi::{schemas as s, *};
use crate::auth::Authenticated;
use crate::query::Query;
use crate::{current_request_id, ApiError, AppState};

/// The answer to a submit: the job's id, status and status URL, and `Location`.
pub(crate) fn submitted_response(status: StatusCode, id: &str) -> Response {
    let location = format!("/jobs/{id}");
    let mut resp = (
        status,
        Json(json!({"id": id, "status": "queued", "status_url": location})),
    )
        .into_response();
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// Submits a job: validated now, run by its queue's consumer.
#[utoipa::path(
    post,
    path = "/jobs",
    operation_id = "submit_job",
    tag = "jobs",
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 128,
        description = "A repeated key returns the job it created (200)")),
    request_body(content = SubmitRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The job an earlier request with this Idempotency-Key created",
            body = s::JobSubmitted, headers(("Location" = String, description = "The job's status URL")),
            links(
                ("GetJob" = (operation_id = "get_job", parameters(("id" = "$response.body#/id")))),
                ("CancelJob" = (operation_id = "cancel_job",
                    parameters(("id" = "$response.body#/id")))),
            )),
        (status = 202, description = "The job is queued", body = s::JobSubmitted,
            headers(("Location" = String, description = "The job's status URL")),
            links(
                ("GetJob" = (operation_id = "get_job", parameters(("id" = "$response.body#/id")))),
                ("CancelJob" = (operation_id = "cancel_job",
                    parameters(("id" = "$response.body#/id")))),
            )),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 402, response = PaymentRequired),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    ),
)]
pub(crate) async fn submit(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    // The key is judged before the body, as on every route that takes one.
    wf::parse_key(headers.get("idempotency-key").map(HeaderValue::as_bytes))?;
    let req = SubmitRequest::parse(&body)?;
    let request_id = current_request_id();
    let settings = submit_settings(&state, claims.tier);
    let key = headers.get("idempotency-key").map(HeaderValue::as_bytes);
    let submitted = wf::submit(
        &state,
        settings,
        req.submit(&claims.tenant, key, &request_id),
    )
    .await?;
    let status = StatusCode::from_u16(submitted.status()).unwrap_or(StatusCode::ACCEPTED);
    Ok(submitted_response(status, submitted.id()))
}

/// What a submit by a caller of `tier` is held to.
pub(crate) fn submit_settings(
    state: &AppState,
    tier: cognomega_core::auth::Tier,
) -> SubmitSettings<'_> {
    SubmitSettings {
        registry: &state.job_types,
        floor: state.config.billing.guest_floor,
        runs_per_hour: state
            .config
            .cost_guards
            .for_tier(tier)
            .cap(CostMetric::JobRunsPerHour),
    }
}

/// The native host of the submit workflow: the database (its reads on the reader pool), the
/// queue driver inside the job row's transaction, object storage and the balance cache.
#[async_trait::async_trait]
impl WriteHost for AppState {
    fn objects(&self) -> &dyn ObjectStore {
        &self.objects
    }

    fn db(&self) -> Box<dyn Executor + '_> {
        Box::new(cognomega_stores::sql::Reader(&self.db))
    }

    async fn begin(&self) -> Result<Box<dyn Transaction + '_>, SqlError> {
        self.db.transaction().await
    }

    async fn send(&self, messages: Vec<Outbound<'_>>) -> Result<(), String> {
        let Some(first) = messages.first() else {
            return Ok(());
        };
        let queue = QueueName::parse(first.queue).map_err(|e| e.to_string())?;
        let out = messages
            .into_iter()
            .map(OutgoingMessage::outbound)
            .collect();
        self.queues
            .send_batch(&queue, out)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    async fn balance(&self, tenant: &str) -> Result<i64, String> {
        self.cached_balance(tenant).await
    }

    fn now_ms(&self) -> i64 {
        Utc::now().timestamp_millis()
    }

    fn fresh_id(&self) -> String {
        uuid::Uuid::now_v7().to_string()
    }
}

/// A job of this tenant, with its artifacts.
#[utoipa::path(
    get,
    path = "/jobs/{id}",
    operation_id = "get_job",
    tag = "jobs",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The job id")),
    responses(
        (status = 200, description = "The job", body = s::Job),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
    ),
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let mut db = Reader(&state.db);
    Ok(Json(jobs_api::get(&mut db, &claims.tenant, &id).await?))
}

/// The filters and page of `GET /jobs`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only jobs with this status.
    #[param(value_type = Option<s::JobStatus>)]
    status: Option<String>,
    /// Only jobs of this type.
    #[serde(rename = "type")]
    job_type: Option<String>,
    /// 1..=100, default 20.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    limit: Option<String>,
    /// `next_cursor` of the previous page.
    cursor: Option<String>,
}

/// The tenant's jobs, newest first.
#[utoipa::path(
    get,
    path = "/jobs",
    operation_id = "list_jobs",
    tag = "jobs",
    security(("bearer" = [])),
    params(ListQuery),
    responses(
        (status = 200, description = "A page of jobs", body = s::JobPage),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
    ),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let query = jobs_api::ListQuery {
        status: q.status.as_deref(),
        job_type: q.job_type.as_deref(),
        limit: q.limit.as_deref(),
        cursor: q.cursor.as_deref(),
    };
    let mut db = Reader(&state.db);
    Ok(Json(jobs_api::list(&mut db, &claims.tenant, query).await?))
}

/// Cancels a job: a queued one at once, a running one at its next stage boundary.
#[utoipa::path(
    post,
    path = "/jobs/{id}/cancel",
    operation_id = "cancel_job",
    tag = "jobs",
    security(("bearer" = [])),
    params(("id" = String, Path, description = "The job id")),
    responses(
        (status = 200, description = "The queued job is cancelled", body = s::Cancelled),
        (status = 202, description = "The running job stops at its next stage boundary",
            body = s::Cancelled),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
    ),
)]
pub(crate) async fn cancel(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (status, body) = jobs_api::cancel(&state, &claims.tenant, &id).await?;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    Ok((status, Json(body)).into_response())
}

/// An artifact's bytes: decompressed, or as stored when the client accepts its encoding.
#[utoipa::path(
    get,
    path = "/jobs/{id}/artifacts/{name}",
    operation_id = "get_artifact",
    tag = "jobs",
    security(("bearer" = [])),
    params(
        ("id" = String, Path, description = "The job id"),
        ("name" = String, Path, description = "The artifact's name, e.g. `index.html`"),
        ("If-None-Match" = Option<String>, Header, description = "A previous `ETag`"),
        ("Accept-Encoding" = Option<String>, Header,
            description = "`zstd` gets the stored zstd bytes as they are"),
    ),
    responses(
        (status = 200, description = "The artifact, in its own content type", content((
            "*/*")), headers(
            ("ETag" = String, description = "The quoted SHA-256 of the original bytes"),
            ("Content-Encoding" = Option<String>, description = "`zstd` or `gzip` when sent as stored"),
        )),
        (status = 304, description = "Not modified (`If-None-Match` matched)",
            headers(("ETag" = String, description = "The quoted SHA-256 of the original bytes"))),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 410, response = Gone),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
    ),
)]
pub(crate) async fn artifact(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    Path((id, name)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let header = |name| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let (if_none_match, accept_encoding) = (
        header(header::IF_NONE_MATCH),
        header(header::ACCEPT_ENCODING),
    );
    let mut db = Reader(&state.db);
    let download = jobs_api::download(
        &mut db,
        &claims.tenant,
        &id,
        &name,
        if_none_match,
        accept_encoding,
    )
    .await?;
    let (artifact, etag, send) = match download {
        Download::NotModified { etag } => {
            let mut resp = StatusCode::NOT_MODIFIED.into_response();
            let etag = HeaderValue::from_str(&etag).map_err(ApiError::internal)?;
            resp.headers_mut().insert(header::ETAG, etag);
            return Ok(resp);
        }
        Download::Serve {
            artifact,
            etag,
            send,
        } => (artifact, etag, send),
    };
    let key = ObjectKey::parse(&artifact.object_key).map_err(ApiError::internal)?;
    let object = match state.objects.get(&key).await {
        Ok(o) => o,
        Err(e) if e.is_not_found() => return Err(jobs_api::expired().into()),
        Err(e) => return Err(ApiError::internal(e)),
    };
    let mut resp = match send {
        jobs_api::Send::Plain => Response::new(Body::from_stream(object.stream)),
        jobs_api::Send::Encoded(compression) => {
            // The stored bytes are already what the client asked for.
            let mut r = Response::new(Body::from_stream(object.stream));
            r.headers_mut().insert(
                header::CONTENT_ENCODING,
                HeaderValue::from_static(compression.as_str()),
            );
            r
        }
        jobs_api::Send::Decoded(compression) => {
            let stored = object.bytes().await.map_err(ApiError::internal)?;
            let max = u64::try_from(artifact.size).unwrap_or(0);
            let plain = decode(&stored, compression, max).map_err(ApiError::internal)?;
            Response::new(Body::from(plain))
        }
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&artifact.content_type).map_err(ApiError::internal)?,
    );
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).map_err(ApiError::internal)?,
    );
    h.insert(header::VARY, HeaderValue::from_static("accept-encoding"));
    Ok(resp)
}
