//! `POST /auth/guest` and `GET /.well-known/jwks.json`.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use cognomega_core::auth::{valid_email, Tier};
use cognomega_core::limits::{Decision, RouteClass};
use cognomega_workflows::settle::create_guest;
use serde::Deserialize;
use serde_json::{json, Value};

use super::openapi::{schemas as s, *};
use crate::limits::{self, ClientIp};
use crate::{ApiError, AppState};

/// `POST /auth/guest`; the body is optional.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct GuestRequest {
    /// Must look like name@example.com (at most 254 characters).
    #[schema(max_length = 254)]
    email: Option<String>,
}

/// Issues a guest token for a new guest tenant, which gets its starting grant.
#[utoipa::path(
    post,
    path = "/auth/guest",
    operation_id = "create_guest",
    tag = "auth",
    request_body(content = Option<GuestRequest>, content_type = "application/json",
        description = "Optional; an empty body is a guest without email"),
    responses(
        (status = 200, description = "A new guest and its token", body = s::GuestToken),
        (status = 400, response = BadRequest),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
    ),
)]
pub(crate) async fn guest(
    State(state): State<AppState>,
    client: ClientIp,
    body: Bytes,
) -> Result<Response, Response> {
    let (decision, body) = issue_guest(&state, client, &body)
        .await
        .map_err(IntoResponse::into_response)?;
    Ok(limits::with_headers(body.into_response(), decision))
}

/// Why issuing a guest stopped early: a plain API error or a rate-limit refusal.
enum Refused {
    Error(ApiError),
    Limited(Response),
}

impl From<ApiError> for Refused {
    fn from(e: ApiError) -> Self {
        Self::Error(e)
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        match self {
            Self::Error(e) => e.into_response(),
            Self::Limited(r) => r,
        }
    }
}

async fn issue_guest(
    state: &AppState,
    client: ClientIp,
    body: &Bytes,
) -> Result<(Option<Decision>, Json<Value>), Refused> {
    let request: GuestRequest = if body.iter().all(u8::is_ascii_whitespace) {
        GuestRequest { email: None }
    } else {
        crate::body::json(body)?
    };
    if let Some(email) = request.email.as_deref() {
        if !valid_email(email) {
            return Err(ApiError::bad_request(
                "invalid_email",
                "email must look like name@example.com (≤ 254 characters)",
            )
            .into());
        }
    }
    // Per email (lower-cased: one mailbox, one bucket), else per client address.
    let key = match request.email.as_deref() {
        Some(email) => format!("guest:email:{}", email.to_lowercase()),
        None => format!(
            "guest:ip:{}",
            client
                .0
                .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
        ),
    };
    let decision = limits::check(state, Tier::Guest, RouteClass::Guest, &key)
        .await
        .map_err(Refused::Limited)?;
    let tenant_id = uuid::Uuid::now_v7().to_string();
    let user_id = uuid::Uuid::now_v7().to_string();
    let grant = state.config.billing.guest_grant;
    // The tenant and its starting grant (its ledger entry and balance) commit together: the
    // guest's first billable request, however soon, sees the grant.
    let mut tx = state.db.begin().await.map_err(ApiError::internal)?;
    let (floor, now) = (
        state.config.billing.guest_floor,
        Utc::now().timestamp_millis(),
    );
    let email = request.email.as_deref();
    create_guest(&mut tx, &tenant_id, &user_id, email, grant, floor, now)
        .await
        .map_err(ApiError::internal)?;
    tx.commit().await.map_err(ApiError::internal)?;
    let (token, claims) = state.auth.issue(&user_id, &tenant_id, Tier::Guest)?;
    Ok((
        decision,
        Json(json!({
            "token": token,
            "token_type": "Bearer",
            "expires_in": state.auth.ttl_secs(&claims),
            "tenant_id": tenant_id,
            "user_id": user_id,
        })),
    ))
}

/// The public signing keys, current and previous.
#[utoipa::path(
    get,
    path = "/.well-known/jwks.json",
    operation_id = "get_jwks",
    tag = "auth",
    responses((status = 200, description = "The JWK Set", body = s::Jwks)),
)]
pub(crate) async fn jwks(State(state): State<AppState>) -> Json<Value> {
    Json(serde_json::to_value(&*state.auth.jwks()).unwrap_or_else(|_| json!({"keys": []})))
}
