//! The synchronous HTTP API. Each route validates its input, authorizes, and produces to a
//! queue; the work itself happens in consumers. The same [`axum::Router`] serves the native
//! server and (through workers-rs) the edge host; only the state's ports differ.
#![forbid(unsafe_code)]

pub mod error;
pub mod metrics_text;
mod request_id;
pub mod routes;
mod state;

pub use error::ApiError;
pub use request_id::current_request_id;
pub use state::AppState;

/// Builds the whole router with the cross-cutting layers (request id, `Cache-Control`, error
/// envelope for panics, unknown routes and wrong methods).
pub fn router(state: AppState) -> axum::Router {
    routes::router()
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            error::panic_response,
        ))
        .layer(axum::middleware::from_fn(request_id::layer))
}
