//! `POST /auth/guest` and `GET /.well-known/jwks.json`.

use axum::body::Bytes;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cognomega_core::auth::Tier;
use cognomega_core::limits::{Decision, RouteClass};
use cognomega_workflows::guest;
use serde::Deserialize;
use serde_json::{json, Value};

use super::openapi::{schemas as s, *};
use crate::limits::{self, ClientIp};
use crate::{ApiError, AppState};

// The body is read by `cognomega_workflows::guest::request` (on both hosts); this type only
// documents it.
/// `POST /auth/guest`; the body is optional.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)]
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

impl From<cognomega_core::api::Refusal> for Refused {
    fn from(r: cognomega_core::api::Refusal) -> Self {
        Self::Error(r.into())
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
    let email = guest::request(body)?;
    let client = client.0.map(|ip| ip.to_string());
    let key = guest::bucket(email.as_deref(), client.as_deref());
    let decision = limits::check(state, Tier::Guest, RouteClass::Guest, &key)
        .await
        .map_err(Refused::Limited)?;
    let new = guest::create(state, email.as_deref(), &state.config.billing).await?;
    let (token, claims) = state
        .auth
        .issue(&new.user_id, &new.tenant_id, Tier::Guest)?;
    Ok((decision, Json(guest::answer(&token, &claims))))
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
