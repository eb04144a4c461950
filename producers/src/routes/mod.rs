//! Routes, one module per area.

mod admin;
mod admin_queues;
mod ask;
mod auth;
mod cleanup;
mod credits;
mod exports;
mod health;
mod jobs;
mod metrics;
mod openapi;
pub mod uploads;
mod usage;
pub mod voice;

pub use voice::settle_stale_sessions as settle_stale_voice_sessions;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;

use crate::AppState;

/// Largest `POST /usage` body: 1,000 events with 4 KiB of meta each, and headroom.
const USAGE_BODY_LIMIT: usize = cognomega_workflows::billing::USAGE_BODY_LIMIT;
/// Largest `POST /jobs` body: a 20 MiB image in base64, and headroom.
const JOBS_BODY_LIMIT: usize = cognomega_workflows::submit::BODY_LIMIT;
/// Largest `POST /api/si/ask` body: the longest prompt, JSON-escaped, and headroom.
const ASK_BODY_LIMIT: usize = cognomega_workflows::ask::BODY_LIMIT;
/// Largest body of the small JSON routes.
const SMALL_BODY_LIMIT: usize = 64 * 1024;

/// Every route of the API.
pub fn router() -> Router<AppState> {
    let small = Router::new()
        .route("/auth/guest", post(auth::guest))
        .route("/.well-known/jwks.json", get(auth::jwks))
        .route("/credits", get(credits::get))
        .route("/credits/adjust", post(credits::adjust))
        .route("/credits/adjustments/{id}", get(credits::adjustment))
        .route(
            "/admin/rebuild-balance-cache",
            post(admin::rebuild_balance_cache),
        )
        .route("/admin/exports", post(exports::enqueue))
        .route("/admin/queues", get(admin_queues::list))
        .route("/admin/queues/{queue}/dlq", get(admin_queues::dead_letters))
        .route(
            "/admin/queues/{queue}/messages",
            post(admin_queues::send_message),
        )
        .route(
            "/admin/queues/{queue}/dlq/replay",
            post(admin_queues::replay),
        )
        .route("/admin/env-snapshot", get(admin_queues::env_snapshot))
        .route("/admin/cleanup", post(cleanup::cleanup))
        .route("/exports", get(exports::list))
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(metrics::metrics))
        .route("/openapi.json", get(openapi::serve))
        .layer(DefaultBodyLimit::max(SMALL_BODY_LIMIT));
    let ask = Router::new()
        .route("/api/si/ask", post(ask::ask))
        .layer(DefaultBodyLimit::max(ASK_BODY_LIMIT));
    let usage = Router::new()
        .route("/usage", post(usage::post).get(usage::get))
        .layer(DefaultBodyLimit::max(USAGE_BODY_LIMIT));
    let jobs = Router::new()
        .route("/jobs", post(jobs::submit).get(jobs::list))
        .route("/jobs/{id}", get(jobs::get))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route("/jobs/{id}/artifacts/{name}", get(jobs::artifact))
        .layer(DefaultBodyLimit::max(JOBS_BODY_LIMIT));
    // The upload body is streamed and limited by the handler itself, per tier and quota.
    let uploads = Router::new()
        .route("/upload/direct", post(uploads::direct))
        .layer(DefaultBodyLimit::disable())
        .route("/uploads/{*key}", get(uploads::get))
        .route("/files/{*key}", get(uploads::file));
    let voice = Router::new()
        .route("/voice/tts", post(voice::tts))
        .route("/voice/voices", get(voice::voices))
        .route("/voice/sessions", get(voice::session))
        .layer(DefaultBodyLimit::max(cognomega_core::voice::TTS_BODY_LIMIT))
        .merge(
            Router::new()
                .route("/voice/stt", post(voice::stt))
                .layer(DefaultBodyLimit::max(cognomega_core::voice::STT_BODY_LIMIT)),
        );
    small
        .merge(ask)
        .merge(usage)
        .merge(jobs)
        .merge(uploads)
        .merge(voice)
}
