//! `GET /credits` (cached balance), `POST /credits/adjust` and `GET /credits/adjustments/{id}`
//! (admin).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{SecondsFormat, TimeZone, Utc};
use cognomega_core::billing::{SettlementKind, SettlementMessage};
use cognomega_core::queue::OutgoingMessage;
use cognomega_stores::billing::{self, Adjustment};
use serde::Deserialize;
use serde_json::{json, Value};

use super::openapi::{schemas as s, *};
use crate::auth::{Admin, Authenticated};
use crate::{current_request_id, ApiError, AppState};

fn rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

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
    let mut resp = Json(json!({
        "tenant_id": claims.tenant,
        "balance": cached.balance,
        "as_of": rfc3339(cached.as_of_ms),
    }))
    .into_response();
    if let Ok(v) = HeaderValue::from_str(&cached.balance.to_string()) {
        resp.headers_mut().insert("x-credits-balance", v);
    }
    Ok(resp)
}

/// `POST /credits/adjust`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct AdjustRequest {
    /// An existing tenant.
    tenant_id: String,
    /// Credits to add (positive) or take (negative); never 0, at most 10^12 either way.
    #[schema(minimum = -1_000_000_000_000_i64, maximum = 1_000_000_000_000_i64)]
    delta: i64,
    /// Why, 1..=500 characters (trimmed).
    #[schema(min_length = 1, max_length = 500)]
    reason: String,
}

fn adjustment_json(a: &Adjustment) -> Value {
    json!({
        "adjustment_id": a.adjustment_id,
        "tenant_id": a.tenant_id,
        "delta": a.delta,
        "reason": a.reason,
        "status": a.status,
        "created_at": rfc3339(a.created_at_ms),
        "applied_at": a.applied_at_ms.map(rfc3339),
    })
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
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|k| (1..=128).contains(&k.len()))
        .ok_or_else(|| {
            ApiError::bad_request(
                "missing_idempotency_key",
                "send an Idempotency-Key header (1..=128 characters): retries with the same key apply once",
            )
        })?
        .to_owned();
    let req: AdjustRequest = crate::body::json(&body)?;
    cognomega_core::billing::check_adjustment_delta(req.delta)
        .map_err(|m| ApiError::bad_request("invalid_delta", m))?;
    let reason = req.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(ApiError::bad_request(
            "invalid_reason",
            "reason must be 1..=500 characters",
        ));
    }
    if billing::tenant_status(&state.db, &req.tenant_id)
        .await
        .map_err(ApiError::internal)?
        .is_none()
    {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "tenant_not_found",
            format!("no tenant {}", req.tenant_id),
        ));
    }
    let mut tx = state.db.begin().await.map_err(ApiError::internal)?;
    let (id, created) =
        billing::create_adjustment(&mut tx, &key, &req.tenant_id, req.delta, reason)
            .await
            .map_err(ApiError::internal)?;
    if created {
        let msg = SettlementMessage {
            id: format!("adjust-{id}"),
            tenant_id: req.tenant_id.clone(),
            delta: req.delta,
            kind: SettlementKind::Adjustment,
            reference: Some(id.clone()),
        };
        let out = OutgoingMessage::json(&msg)
            .map_err(ApiError::internal)?
            .request_id(current_request_id());
        tx.send(&cognomega_core::queue::catalog::settlement::queue(), out)
            .await
            .map_err(ApiError::internal)?;
    }
    tx.commit().await.map_err(ApiError::internal)?;
    let existing = billing::get_adjustment(&state.db, &id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::internal("adjustment vanished after commit"))?;
    if !created
        && (existing.tenant_id != req.tenant_id
            || existing.delta != req.delta
            || existing.reason != reason)
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different adjustment; use a new key",
        ));
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "adjustment_id": id, "status": existing.status })),
    ))
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
    match billing::get_adjustment(&state.db, &id)
        .await
        .map_err(ApiError::internal)?
    {
        Some(a) => Ok(Json(adjustment_json(&a))),
        None => Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "adjustment_not_found",
            format!("no adjustment {id}"),
        )),
    }
}
