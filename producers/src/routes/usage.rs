//! `POST /usage` (validate everything, then produce to `usage`) and `GET /usage` (totals).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Duration as ChronoDuration, SecondsFormat, Utc};
use cognomega_core::billing::{parse_usage_request, UsageBatchMessage, UsageKind};
use cognomega_core::limits::CostMetric;
use cognomega_core::queue::OutgoingMessage;
use cognomega_stores::billing;
use serde::Deserialize;
use serde_json::{json, Value};

use super::openapi::{schemas as s, *};
use crate::auth::Authenticated;
use crate::limits;
use crate::query::Query;
use crate::{current_request_id, ApiError, AppState};

/// Accepts usage events for the tenant (all validated before any is queued).
#[utoipa::path(
    post,
    path = "/usage",
    operation_id = "post_usage",
    tag = "billing",
    security(("bearer" = [])),
    request_body(content = s::UsageRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Every event was queued", body = s::UsageAccepted),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 413, response = PayloadTooLarge),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    ),
)]
pub(crate) async fn post(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let events = parse_usage_request(&body)
        .map_err(|e| ApiError::bad_request("invalid_usage", e.to_string()))?;
    let accepted = events.len();
    let tokens: u64 = events
        .iter()
        .filter(|e| matches!(e.kind, UsageKind::TokensIn | UsageKind::TokensOut))
        .map(|e| e.quantity)
        .fold(0, u64::saturating_add);
    let (tier, tenant) = (claims.tier, claims.tenant.clone());
    let msg = UsageBatchMessage {
        tenant_id: claims.tenant,
        events,
        received_at_ms: Utc::now().timestamp_millis(),
    };
    let out = OutgoingMessage::json(&msg)
        .map_err(ApiError::internal)?
        .request_id(current_request_id());
    let queue = cognomega_core::queue::catalog::usage::queue();
    let unavailable = |e: &dyn std::fmt::Display| {
        ApiError::unavailable(format!(
            "cannot enqueue usage right now ({e}); retry with the same idempotency keys"
        ))
    };
    if tokens > 0 && limits::is_capped(&state, tier, CostMetric::TokensPerDay) {
        // The tokens are counted in the transaction that enqueues them: a refused or failed
        // enqueue counts nothing.
        let mut tx = state.db.begin().await.map_err(|e| unavailable(&e))?;
        limits::charge_cost(
            &state,
            &mut tx,
            tier,
            &tenant,
            CostMetric::TokensPerDay,
            tokens,
        )
        .await?;
        tx.send(&queue, out).await.map_err(|e| unavailable(&e))?;
        tx.commit().await.map_err(|e| unavailable(&e))?;
    } else {
        // Uncapped: a plain send, which shares its commit with concurrent ones.
        state
            .queues
            .send(&queue, out)
            .await
            .map_err(|e| unavailable(&e))?;
    }
    Ok((StatusCode::ACCEPTED, Json(json!({ "accepted": accepted }))))
}

/// The window of `GET /usage`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct Window {
    /// Start, inclusive (RFC 3339; default `to` minus 30 days).
    #[param(format = DateTime)]
    from: Option<String>,
    /// End, exclusive (RFC 3339; default now).
    #[param(format = DateTime)]
    to: Option<String>,
}

fn parse_time(
    name: &str,
    raw: Option<&str>,
    default: DateTime<Utc>,
) -> Result<DateTime<Utc>, ApiError> {
    match raw {
        None => Ok(default),
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                ApiError::bad_request(
                    "invalid_window",
                    format!("{name} must be RFC 3339, e.g. 2026-01-31T00:00:00Z: {e}"),
                )
            }),
    }
}

/// The tenant's usage totals per kind in a window.
#[utoipa::path(
    get,
    path = "/usage",
    operation_id = "get_usage",
    tag = "billing",
    security(("bearer" = [])),
    params(Window),
    responses(
        (status = 200, description = "Totals per kind", body = s::UsageSummary),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
    ),
)]
pub(crate) async fn get(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    Query(window): Query<Window>,
) -> Result<Json<Value>, ApiError> {
    let now = Utc::now();
    let to = parse_time("to", window.to.as_deref(), now)?;
    let from = parse_time(
        "from",
        window.from.as_deref(),
        to - ChronoDuration::days(30),
    )?;
    if from > to {
        return Err(ApiError::bad_request(
            "invalid_window",
            "from must not be after to",
        ));
    }
    let totals = billing::usage_totals(
        &state.db,
        &claims.tenant,
        from.timestamp_millis(),
        to.timestamp_millis(),
    )
    .await
    .map_err(ApiError::internal)?;
    // Each total saturates at i64::MAX, so their sum must too.
    let charged = totals
        .values()
        .fold(0i64, |sum, t| sum.saturating_add(t.credits));
    let totals: BTreeMap<&str, _> = totals.iter().map(|(k, v)| (k.as_str(), v)).collect();
    Ok(Json(json!({
        "tenant_id": claims.tenant,
        "from": from.to_rfc3339_opts(SecondsFormat::Millis, true),
        "to": to.to_rfc3339_opts(SecondsFormat::Millis, true),
        "totals": totals,
        "credits_charged": charged,
    })))
}
