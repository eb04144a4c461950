//! `POST /usage` (validate everything, then produce to `usage`) and `GET /usage` (totals).

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use cognomega_core::limits::CostMetric;
use cognomega_workflows::billing;
use serde::Deserialize;
use serde_json::{json, Value};

use super::openapi::{schemas as s, *};
use crate::auth::Authenticated;
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
    let cap = (state.config.cost_guards.for_tier(claims.tier)).cap(CostMetric::TokensPerDay);
    let request_id = current_request_id();
    let accepted = billing::accept_usage(&state, &claims.tenant, cap, &body, &request_id).await?;
    Ok((StatusCode::ACCEPTED, Json(json!({ "accepted": accepted }))))
}

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
    let (from, to) = (window.from.as_deref(), window.to.as_deref());
    Ok(Json(
        billing::usage_totals(&state, &claims.tenant, from, to).await?,
    ))
}
