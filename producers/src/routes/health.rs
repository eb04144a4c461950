//! `GET /healthz`: is the process up and its database reachable.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use super::openapi::{schemas as s, *};
use crate::{ApiError, AppState};

/// Liveness and database reachability.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "ops",
    responses(
        (status = 200, description = "Up, and the database is reachable", body = s::Health),
        (status = 503, response = Unavailable),
    ),
)]
pub(crate) async fn healthz(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let reachable = match &state.db {
        cognomega_stores::Database::Sqlite(db) => {
            sqlx::query("SELECT 1").execute(&db.read).await.is_ok()
        }
        cognomega_stores::Database::Postgres(pg) => {
            sqlx::query("SELECT 1").execute(&pg.pool).await.is_ok()
        }
    };
    if !reachable {
        return Err(ApiError::unavailable(
            "the database is unreachable; check --database-url and the server",
        ));
    }
    Ok(Json(json!({
        "status": "ok",
        "version": env!("CARGO_PKG_VERSION"),
        "backend": state.db.backend(),
        "uptime_s": state.started.elapsed().as_secs(),
    })))
}
