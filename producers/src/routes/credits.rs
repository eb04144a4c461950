//! `GET /credits` (cached balance), `POST /credits/adjust` and `GET /credits/adjustments/{id}`
//! (admin).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cognomega_workflows::billing::{self, AdjustRequest};
use serde_json::Value;

use super::openapi::{schemas as s, *};
use crate::auth::{Admin, Authenticated};
use crate::{current_request_id, ApiError, AppState};

/// The tenant's balance, from the balance cache.
#[utoipa::path(
    get,
    path = "/credits",
    operation_id = "get_credits",
    tag = "billing",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The balance", body = s::Balance,
            headers(("X-Credits-Balance" = i64, description = "The balance, in credits"))),
        (status = 401, response = Unauthorized),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
    ),
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
) -> Result<Response, ApiError> {
    let cached = state
        .balances
        .get(&claims.tenant)
        .await
        .map_err(ApiError::internal)?;
    let mut resp = Json(billing::credits(
        &claims.tenant,
        cached.balance,
        cached.as_of_ms,
    ))
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&cached.balance.to_string()) {
        resp.headers_mut().insert("x-credits-balance", v);
    }
    Ok(resp)
}

/// Adjusts a tenant's credits through the ledger, once per `Idempotency-Key`.
#[utoipa::path(
    post,
    path = "/credits/adjust",
    operation_id = "adjust_credits",
    tag = "admin",
    security(("admin_key" = [])),
    params(("Idempotency-Key" = String, Header, min_length = 1, max_length = 128,
        description = "Retries with the same key apply once")),
    request_body(content = AdjustRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Recorded; settles asynchronously", body = s::AdjustmentAccepted,
            links(("GetAdjustment" = (operation_id = "get_adjustment",
                parameters(("id" = "$response.body#/adjustment_id")))))),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 409, response = Conflict),
        (status = 500, response = Internal),
    ),
)]
pub(crate) async fn adjust(
    State(state): State<AppState>,
    _admin: Admin,
    headers: HeaderMap,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let key = billing::adjust_key(headers.get("idempotency-key").map(HeaderValue::as_bytes))?;
    let req: AdjustRequest = crate::body::json(&body)?;
    let request_id = current_request_id();
    let adjusted = billing::adjust(&state, key, &req, &request_id).await?;
    Ok((StatusCode::ACCEPTED, Json(adjusted)))
}

/// An adjustment and its status.
#[utoipa::path(
    get,
    path = "/credits/adjustments/{id}",
    operation_id = "get_adjustment",
    tag = "admin",
    security(("admin_key" = [])),
    params(("id" = String, Path, description = "The adjustment id")),
    responses(
        (status = 200, description = "The adjustment", body = s::Adjustment),
        (status = 401, response = Unauthorized),
        (status = 404, response = NotFound),
        (status = 500, response = Internal),
    ),
)]
pub(crate) async fn adjustment(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(billing::adjustment(&state, &id).await?))
}
