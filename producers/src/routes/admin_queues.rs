//! `/admin/queues*` and `/admin/env-snapshot`: the operator's view of the queues and of the
//! running configuration (with every secret left out).

use axum::extract::{Path, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use cognomega_core::queue::{admin, IdempotencyKey, MessageId, OutgoingMessage, QueueName};
use serde::Deserialize;
use serde_json::{json, Value};

use super::openapi::{schemas as s, *};
use crate::auth::Admin;
use crate::query::Query;
use crate::{current_request_id, ApiError, AppState};

fn queue_name(raw: &str) -> Result<QueueName, ApiError> {
    Ok(admin::queue_name(raw)?)
}

/// The dead-letter queue of `queue`: its declared one, or `queue` itself when it is a
/// dead-letter queue (`….dlq`).
async fn dlq_of(state: &AppState, queue: &QueueName) -> Result<QueueName, ApiError> {
    if let Some(dlq) = cognomega_stores::queue::declared_dead_letter_queue(&state.db, queue)
        .await
        .map_err(ApiError::internal)?
    {
        return Ok(dlq);
    }
    if queue.as_str().ends_with(".dlq") {
        return Ok(queue.clone());
    }
    Err(ApiError::new(
        StatusCode::NOT_FOUND,
        "no_dead_letter_queue",
        format!("queue {queue} has no dead-letter queue; GET /admin/queues lists the queues"),
    ))
}

/// `GET /admin/queues`: the statistics of every queue.
#[utoipa::path(
    get,
    path = "/admin/queues",
    operation_id = "list_queues",
    tag = "admin",
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Every queue's statistics", body = s::QueueList),
        (status = 401, response = Unauthorized),
        (status = 500, response = Internal),
    ),
)]
pub(crate) async fn list(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<Value>, ApiError> {
    let queues = all_stats(&state).await?;
    Ok(Json(json!({ "queues": queues })))
}

/// The statistics of every queue (also what `GET /metrics` renders).
pub(crate) async fn all_stats(
    state: &AppState,
) -> Result<Vec<cognomega_core::queue::QueueStats>, ApiError> {
    let names = state.queues.queues().await.map_err(ApiError::internal)?;
    let mut stats = Vec::with_capacity(names.len());
    for q in &names {
        stats.push(state.queues.stats(q).await.map_err(ApiError::internal)?);
    }
    Ok(stats)
}

/// The page size of `GET /admin/queues/{queue}/dlq`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct DlqQuery {
    /// 1..=1000, default 100.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 1000)]
    limit: Option<String>,
}

/// `GET /admin/queues/{q}/dlq?limit=`: dead messages (oldest first) with error and attempts.
#[utoipa::path(
    get,
    path = "/admin/queues/{queue}/dlq",
    operation_id = "list_dead_letters",
    tag = "admin",
    security(("admin_key" = [])),
    params(
        ("queue" = String, Path, description = "A queue, or a dead-letter queue (`….dlq`)"),
        DlqQuery,
    ),
    responses(
        (status = 200, description = "Dead messages, oldest first", body = s::DeadLetters),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
    ),
)]
pub(crate) async fn dead_letters(
    State(state): State<AppState>,
    _admin: Admin,
    Path(queue): Path<String>,
    Query(query): Query<DlqQuery>,
) -> Result<Json<Value>, ApiError> {
    let queue = queue_name(&queue)?;
    let limit = admin::dlq_limit(query.limit.as_deref())?;
    let dlq = dlq_of(&state, &queue).await?;
    let messages = state
        .queues
        .dead_letters(&dlq, limit)
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(json!({
        "queue": queue.as_str(),
        "dead_letter_queue": dlq.as_str(),
        "messages": messages,
    })))
}

// The body is read by `cognomega_core::queue::admin::replay_ids` (the edge reads it with the
// same function); this type only documents it.
/// `POST /admin/queues/{queue}/dlq/replay`; no body replays every dead message.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
pub(crate) struct ReplayBody {
    /// The dead messages to replay (not empty).
    #[schema(min_items = 1)]
    ids: Option<Vec<i64>>,
}

/// `POST /admin/queues/{q}/dlq/replay` (body optional: `{"ids": [..]}`; none = all): moves dead
/// messages back to the queue they failed in, with fresh attempts.
#[utoipa::path(
    post,
    path = "/admin/queues/{queue}/dlq/replay",
    operation_id = "replay_dead_letters",
    tag = "admin",
    security(("admin_key" = [])),
    params(("queue" = String, Path, description = "A queue, or a dead-letter queue (`….dlq`)")),
    request_body(content = Option<ReplayBody>, content_type = "application/json"),
    responses(
        (status = 200, description = "The dead messages went back to their queue", body = s::Replayed),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
    ),
)]
pub(crate) async fn replay(
    State(state): State<AppState>,
    _admin: Admin,
    Path(queue): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let queue = queue_name(&queue)?;
    let ids = admin::replay_ids(&body)?;
    let dlq = dlq_of(&state, &queue).await?;
    let ids: Option<Vec<MessageId>> = ids.map(|ids| ids.into_iter().map(MessageId).collect());
    let replayed = state
        .queues
        .replay(&dlq, ids.as_deref())
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(queue = %queue, dlq = %dlq, replayed, "dead messages replayed");
    Ok((
        StatusCode::OK,
        Json(json!({
            "queue": queue.as_str(),
            "dead_letter_queue": dlq.as_str(),
            "replayed": replayed,
        })),
    ))
}

/// `POST /admin/queues/{q}/messages`: sends the raw body to a declared queue, as one message
/// (an operator re-injecting a corrected message, or a test poisoning a queue).
#[utoipa::path(
    post,
    path = "/admin/queues/{queue}/messages",
    operation_id = "send_queue_message",
    tag = "admin",
    security(("admin_key" = [])),
    params(
        ("queue" = String, Path, description = "A declared queue (GET /admin/queues lists them)"),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 128,
            description = "A repeated key inside the queue's dedup window sends nothing and \
                           returns the first message's id"),
    ),
    request_body(description = "The message body, as is (1 byte ..= 64 KiB), of any type; \
        `Content-Type` is kept as the message's content type", content(
        (Object = "application/json"),
        (String = "text/plain"),
        (s::Binary = "application/octet-stream"),
    )),
    responses(
        (status = 202, description = "The message is queued", body = s::MessageSent),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 413, response = PayloadTooLarge),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    ),
)]
pub(crate) async fn send_message(
    State(state): State<AppState>,
    _admin: Admin,
    Path(queue): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let queue = queue_name(&queue)?;
    admin::check_injected(&body)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .map(str::trim)
                .and_then(|k| IdempotencyKey::parse(k).ok())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_idempotency_key",
                        "Idempotency-Key must be 1..=128 visible ASCII characters",
                    )
                })?,
        ),
    };
    let content_type = match headers.get(CONTENT_TYPE) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .map(str::trim)
                .filter(|t| !t.is_empty())
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_content_type",
                        "Content-Type must be visible ASCII",
                    )
                })?
                .to_owned(),
        ),
    };
    let declared = cognomega_stores::queue::declared_settings(&state.db)
        .await
        .map_err(ApiError::internal)?
        .into_iter()
        .any(|(name, _)| name == queue.as_str());
    if !declared {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_queue",
            format!("no queue {queue} is declared; GET /admin/queues lists the queues"),
        ));
    }
    let mut message = OutgoingMessage::new(body.to_vec()).request_id(current_request_id());
    message.options.content_type = content_type;
    if let Some(key) = key {
        message = message.idempotency_key(key);
    }
    let receipt = state.queues.send(&queue, message).await.map_err(|e| {
        ApiError::unavailable(format!("cannot enqueue to {queue} right now ({e}); retry"))
    })?;
    tracing::info!(queue = %queue, message_id = receipt.id.0, duplicate = receipt.duplicate,
        bytes = body.len(), "message sent by an operator");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "queue": queue.as_str(), "id": receipt.id.0 })),
    ))
}

/// `GET /admin/env-snapshot`: version, build, backends, limits and queue settings. Built from
/// an allow-list of fields, so no secret (admin key, signing keys, link secret, database
/// password, S3 credentials) can appear in it.
#[utoipa::path(
    get,
    path = "/admin/env-snapshot",
    operation_id = "get_env_snapshot",
    tag = "admin",
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "The running configuration, without secrets", body = s::EnvSnapshot),
        (status = 401, response = Unauthorized),
        (status = 500, response = Internal),
    ),
)]
pub(crate) async fn env_snapshot(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<Value>, ApiError> {
    let config = &state.config;
    let mut queues = serde_json::Map::new();
    for (name, settings) in cognomega_stores::queue::declared_settings(&state.db)
        .await
        .map_err(ApiError::internal)?
    {
        queues.insert(name, settings);
    }
    let cors = match &config.cors {
        crate::CorsOrigins::Any => vec!["*".to_owned()],
        crate::CorsOrigins::List(list) => list.clone(),
    };
    let shared = cognomega_core::settings::Snapshot {
        issuer: &config.issuer,
        audience: &config.audience,
        token_ttl_s: config.token_ttl.as_secs(),
        billing: &config.billing,
        cors: &cors,
        uploads: &config.uploads,
        rate_limits: &config.rate_limits,
        buckets: state.limiter.location(),
        cost_guards: &config.cost_guards,
    };
    let mut snapshot = shared.sections();
    let own = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "build": {
            "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
            "target_arch": std::env::consts::ARCH,
            "target_os": std::env::consts::OS,
        },
        "uptime_s": state.started.elapsed().as_secs(),
        "backends": {
            "database": state.db.backend(),
            "objects": format!("{:?}", state.objects),
            "consumers_in_process": state.consumer_metrics.is_some(),
        },
        "timeouts": {
            "header_read_s": config.timeouts.header_read.as_secs_f64(),
            "body_idle_s": config.timeouts.body_idle.as_secs_f64(),
        },
        "ai": {
            "providers": config.providers.providers.iter().map(|p| json!({
                "id": p.id.as_str(),
                "base_url": p.base_url,
                "api_key": "[redacted]",
            })).collect::<Vec<_>>(),
            "timeout_s": config.providers.timeout.as_secs_f64(),
            "models": config.providers.models,
            "policy": config.ask,
        },
        "job_types": state.job_types.iter().map(|t| t.name().to_owned()).collect::<Vec<_>>(),
        "queues": queues,
    });
    if let Value::Object(own) = own {
        snapshot.extend(own);
    }
    Ok(Json(Value::Object(snapshot)))
}
