//! `GET /healthz`: is the process up and its database reachable.

use axum::extract::State;
use axum::Json;
use serde_json::{json, Value};

use crate::{ApiError, AppState};

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
