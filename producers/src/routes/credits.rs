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

use crate::auth::{Admin, Authenticated};
use crate::{current_request_id, ApiError, AppState};

fn rfc3339(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

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

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AdjustRequest {
    tenant_id: String,
    delta: i64,
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
    if req.delta == 0 {
        return Err(ApiError::bad_request(
            "invalid_delta",
            "delta must be a non-zero integer number of credits",
        ));
    }
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
        tx.send(&cognomega_consumers::settlement::queue(), out)
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
