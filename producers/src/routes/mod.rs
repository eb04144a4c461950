//! Routes, one module per area.

mod health;
mod metrics;

use axum::routing::get;
use axum::Router;

use crate::AppState;

/// Every route of the API.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(metrics::metrics))
}
