//! `/admin/*` routes.

use axum::extract::State;
use axum::Json;
use cognomega_stores::billing;
use serde_json::{json, Value};

use super::openapi::{schemas as s, *};
use crate::auth::Admin;
use crate::{ApiError, AppState};

/// Recomputes every derived balance from the ledger.
#[utoipa::path(
    post,
    path = "/admin/rebuild-balance-cache",
    operation_id = "rebuild_balance_cache",
    tag = "admin",
    security(("admin_key" = [])),
    responses(
        (status = 200, description = "Balances recomputed", body = s::Rebuilt),
        (status = 401, response = Unauthorized),
        (status = 500, response = Internal),
    ),
)]
pub(crate) async fn rebuild_balance_cache(
    State(state): State<AppState>,
    _admin: Admin,
) -> Result<Json<Value>, ApiError> {
    let (tenants, changed) = billing::rebuild_balances(&state.db)
        .await
        .map_err(ApiError::internal)?;
    state.balances.clear();
    if changed > 0 {
        tracing::warn!(
            changed,
            "rebuild corrected cached balances that had drifted from the ledger"
        );
    }
    Ok(Json(json!({ "tenants": tenants, "changed": changed })))
}
