//! `GET /metrics`: Prometheus text exposition of queue statistics, consumer counters,
//! lifecycle tiers, exports, money and scan totals, and per-route request metrics.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::header::CONTENT_TYPE;

use super::openapi::*;
use cognomega_stores::sql::Reader;

use crate::metrics_text::{render_consumers, render_queues};
use crate::{ApiError, AppState};

/// Prometheus text exposition.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "ops",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4", body = String,
            content_type = "text/plain"),
        (status = 500, response = Internal),
    ),
)]
pub(crate) async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let stats = super::admin_queues::all_stats(&state).await?;
    let mut text = render_queues(&stats);
    if let Some(m) = &state.consumer_metrics {
        text.push_str(&render_consumers(&m.snapshot()));
    }
    let stored = cognomega_workflows::metrics::render(&mut Reader(&state.db))
        .await
        .map_err(ApiError::internal)?;
    text.push_str(&stored);
    text.push_str(&state.http_metrics.render());
    text.push_str(&state.ai.metrics().render());
    text.push_str(&state.voice.metrics().render());
    Ok((
        [(CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        text,
    )
        .into_response())
}
