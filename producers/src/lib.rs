//! The synchronous HTTP API. Each route validates its input, authorizes, and produces to a
//! queue; the work itself happens in consumers. The same [`axum::Router`] serves the native
//! server and (through workers-rs) the edge host; only the state's ports differ.
#![forbid(unsafe_code)]

pub mod auth;
mod body;
pub mod error;
pub mod gateway;
pub mod http_metrics;
pub mod limits;
pub mod metrics_text;
mod query;
mod request_id;
pub mod routes;
mod state;

pub use error::ApiError;
pub use request_id::current_request_id;
pub use routes::voice::job_types;
pub use state::{ApiConfig, AppState, CorsOrigins, Secret, UploadConfig};

/// Builds the whole router with the cross-cutting layers (request metrics, request id,
/// `Cache-Control`, CORS, stalled-body cut-off, the error envelope for panics, unknown routes,
/// wrong methods and every plain-text rejection).
pub fn router(state: AppState) -> axum::Router {
    let state_cors = state.config.cors.clone();
    let body_idle = state.config.timeouts.body_idle;
    let request_metrics = state.http_metrics.clone();
    // A route layer: it runs only for matched routes, so it can classify by the matched path.
    let limits = axum::middleware::from_fn_with_state(state.clone(), limits::layer);
    routes::router()
        .route_layer(limits)
        .route_layer(axum::middleware::from_fn(http_metrics::matched))
        .fallback(error::not_found)
        .method_not_allowed_fallback(error::method_not_allowed)
        .with_state(state)
        .layer(tower_http::catch_panic::CatchPanicLayer::custom(
            error::panic_response,
        ))
        .layer(axum::middleware::from_fn_with_state(
            body_idle,
            gateway::layer,
        ))
        .layer(cors(&state_cors))
        .layer(axum::middleware::from_fn_with_state(
            state_cors,
            strict_cors,
        ))
        .layer(axum::middleware::from_fn(request_id::layer))
        // Outermost, so the latency covers every other layer.
        .layer(axum::middleware::from_fn_with_state(
            request_metrics,
            http_metrics::layer,
        ))
}

/// Headers a browser client may read (the policy every shape applies).
pub use cognomega_core::api::cors::EXPOSED_HEADERS;

/// tower-http answers a preflight from any origin with its allowed methods and headers (only
/// `Access-Control-Allow-Origin` is withheld); an origin off the allow-list gets no CORS header
/// at all, so nothing about the policy leaks to it.
async fn strict_cors(
    axum::extract::State(origins): axum::extract::State<CorsOrigins>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let listed = match (&origins, req.headers().get(http::header::ORIGIN)) {
        (CorsOrigins::Any, _) | (_, None) => true,
        (CorsOrigins::List(list), Some(origin)) => {
            list.iter().any(|o| o.as_bytes() == origin.as_bytes())
        }
    };
    let mut response = next.run(req).await;
    if !listed {
        let names: Vec<_> = response
            .headers()
            .keys()
            .filter(|k| k.as_str().starts_with("access-control-"))
            .cloned()
            .collect();
        for name in names {
            response.headers_mut().remove(name);
        }
    }
    response
}

fn cors(origins: &CorsOrigins) -> tower_http::cors::CorsLayer {
    use http::{HeaderName, HeaderValue, Method};
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
        .allow_headers(cognomega_core::api::cors::ALLOWED_HEADERS.map(HeaderName::from_static))
        .expose_headers(EXPOSED_HEADERS.map(HeaderName::from_static))
        .max_age(std::time::Duration::from_secs(
            cognomega_core::api::cors::MAX_AGE_SECS,
        ))
}
