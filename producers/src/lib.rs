//! The synchronous HTTP API. Each route validates its input, authorizes, and produces to a
//! queue; the work itself happens in consumers. The same [`axum::Router`] serves the native
//! server and (through workers-rs) the edge host; only the state's ports differ.
#![forbid(unsafe_code)]

pub mod auth;
mod body;
pub mod error;
pub mod http_metrics;
pub mod metrics_text;
mod request_id;
pub mod routes;
mod state;

pub use error::ApiError;
pub use request_id::current_request_id;
pub use state::{ApiConfig, AppState, CorsOrigins, Secret, UploadConfig};

/// Builds the whole router with the cross-cutting layers (request metrics, request id,
/// `Cache-Control`, error envelope for panics, unknown routes and wrong methods).
pub fn router(state: AppState) -> axum::Router {
    let state_cors = state.config.cors.clone();
    let request_metrics = state.http_metrics.clone();
    routes::router()
        .route_layer(axum::middleware::from_fn(http_metrics::matched))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            error::panic_response,
        ))
        .layer(cors(&state_cors))
        .layer(axum::middleware::from_fn(request_id::layer))
        // Outermost, so the latency covers every other layer.
        .layer(axum::middleware::from_fn_with_state(
            request_metrics,
            http_metrics::layer,
        ))
}

/// Headers a browser client may read: billing figures and the request id.
pub const EXPOSED_HEADERS: [&str; 7] = [
    "x-request-id",
    "x-credits-used",
    "x-credits-balance",
    "x-provider",
    "x-model",
    "x-tokens-in",
    "x-tokens-out",
];

fn cors(origins: &CorsOrigins) -> tower_http::cors::CorsLayer {
    use http::{header, HeaderName, HeaderValue, Method};
    use tower_http::cors::{AllowOrigin, CorsLayer};
    let allow = match origins {
        CorsOrigins::Any => AllowOrigin::any(),
        CorsOrigins::List(list) => {
            AllowOrigin::list(list.iter().filter_map(|o| HeaderValue::from_str(o).ok()))
        }
    };
    CorsLayer::new()
        .allow_origin(allow)
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([
            header::AUTHORIZATION,
            header::CONTENT_TYPE,
            HeaderName::from_static("idempotency-key"),
            HeaderName::from_static("x-request-id"),
            HeaderName::from_static("x-admin-key"),
        ])
        .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
        .max_age(std::time::Duration::from_secs(600))
}
