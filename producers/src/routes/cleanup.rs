//! `POST /admin/cleanup?dry_run=&grace_secs=`: deletes what retention allows and reports
//! counts (see `cognomega_stores::cleanup`).

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use cognomega_stores::cleanup::{self, CleanupOptions, CleanupReport};

use super::openapi::{schemas as s, *};
use crate::auth::Admin;
use crate::{ApiError, AppState};

/// The query (the shared rules: `cognomega_core::cleanup::query_options`).
fn options(state: &AppState, query: &HashMap<String, String>) -> Result<CleanupOptions, ApiError> {
    let (dry_run, grace) =
        cognomega_core::cleanup::query_options(query.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .map_err(|(code, message)| ApiError::bad_request(code, message))?;
    Ok(CleanupOptions {
        dry_run,
        token_ttl: state.config.token_ttl,
        grace,
    })
}

/// `POST /admin/cleanup`.
#[utoipa::path(
    post,
    path = "/admin/cleanup",
    operation_id = "cleanup",
    tag = "admin",
    security(("admin_key" = [])),
    params(
        ("dry_run" = Option<bool>, Query, description = "Only count what would be deleted"),
        ("grace_secs" = Option<u64>, Query, maximum = 31_536_000,
            description = "Leave objects and rows younger than this alone (default 3600)"),
    ),
    responses(
        (status = 200, description = "What was deleted (or, dry, would be)", body = s::CleanupReport),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 503, response = Unavailable),
    ),
)]
pub(crate) async fn cleanup(
    State(state): State<AppState>,
    _admin: Admin,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<CleanupReport>, ApiError> {
    let Query(query) = query.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    let opts = options(&state, &query)?;
    let report = cleanup::run(&state.db, &state.objects, opts)
        .await
        .map_err(ApiError::internal)?;
    for tenant in &report.removed_tenants {
        state.balances.invalidate(tenant);
    }
    tracing::info!(
        dry_run = report.dry_run,
        acked = report.messages.acked,
        dead = report.messages.dead,
        dedup_keys = report.messages.dedup_keys,
        guest_tenants = report.guest_tenants,
        orphaned_objects = report.orphaned_objects,
        rows_missing_objects = report.rows_missing_objects,
        "cleanup done"
    );
    Ok(Json(report))
}
