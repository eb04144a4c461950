//! The HTTP contract shared by every Worker: request ids, JSON answers, the error envelope
//! (`cognomega_core::api::ErrorEnvelope`, the same type the native server renders) and the
//! dispatch of an internal service's routes.

use cognomega_core::api::ErrorEnvelope;
use cognomega_core::auth::Claims;
use serde::Serialize;
use worker::{Context, Env, Method, Request, Response};

/// The header carrying the request id, set by the gateway and passed to every service.
pub const REQUEST_ID: &str = "x-request-id";
/// The verified claims of the caller, as JSON, set by the gateway only (never by a client: the
/// gateway drops every incoming `x-cognomega-*` header, and services have no public route).
pub const CLAIMS: &str = "x-cognomega-claims";
/// Set by the gateway when the caller presented the admin key.
pub const ADMIN: &str = "x-cognomega-admin";
/// The caller's address, as the gateway saw it.
pub const CLIENT_IP: &str = "x-cognomega-client-ip";

/// A failed request: status, code, message. Rendered as the envelope.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }
    pub fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(400, code, message)
    }
    pub fn not_found(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(404, code, message)
    }
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "unavailable", message)
    }
    /// An internal failure: logged with its detail, answered without it.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        worker::console_error!("internal error: {detail}");
        Self::new(
            500,
            "internal",
            "internal error; retry, and report the request id if it persists",
        )
    }
    pub fn render(&self, request_id: &str) -> Response {
        let mut resp = error(self.status, self.code, &self.message, request_id);
        if let Some(secs) = self.retry_after {
            let _ = resp.headers_mut().set("retry-after", &secs.to_string());
        }
        resp
    }
}

impl From<cognomega_core::api::Refusal> for ApiError {
    fn from(r: cognomega_core::api::Refusal) -> Self {
        if r.status == 500 {
            return Self::internal(r.message);
        }
        Self {
            status: r.status,
            code: r.code,
            message: r.message,
            retry_after: r.retry_after,
        }
    }
}

impl From<worker::Error> for ApiError {
    fn from(e: worker::Error) -> Self {
        Self::internal(e)
    }
}

impl From<tokio_postgres::Error> for ApiError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::internal(format!("database: {e}"))
    }
}

impl From<cognomega_core::sql::SqlError> for ApiError {
    fn from(e: cognomega_core::sql::SqlError) -> Self {
        Self::internal(format!("database: {e}"))
    }
}

pub type ApiResult<T = Response> = Result<T, ApiError>;

/// The envelope as a response. Never fails: a response that cannot be built is a bare 500.
pub fn error(status: u16, code: &str, message: &str, request_id: &str) -> Response {
    let body = ErrorEnvelope::new(code, message, request_id);
    let resp = Response::from_json(&body)
        .map(|r| r.with_status(status))
        .unwrap_or_else(|_| {
            Response::empty()
                .map(|r| r.with_status(500))
                .unwrap_or_else(|_| unreachable_response())
        });
    finish(resp, request_id)
}

fn unreachable_response() -> Response {
    // `Response::empty` only fails when the JS runtime is broken; nothing better can be done.
    Response::builder().with_status(500).empty()
}

/// A JSON answer with a status.
pub fn json<T: Serialize>(status: u16, value: &T) -> ApiResult {
    Ok(Response::from_json(value)?.with_status(status))
}

/// Stamps the headers every answer carries: `X-Request-Id` and `Cache-Control: no-store`.
pub fn finish(mut resp: Response, request_id: &str) -> Response {
    let h = resp.headers_mut();
    if !request_id.is_empty() {
        let _ = h.set(REQUEST_ID, request_id);
    }
    if !h.has("cache-control").unwrap_or(false) {
        let _ = h.set("cache-control", "no-store");
    }
    resp
}

/// The request's id (set by the gateway), or a new one.
pub fn request_id(req: &Request) -> String {
    req.headers()
        .get(REQUEST_ID)
        .ok()
        .flatten()
        .filter(|v| valid_request_id(v))
        .unwrap_or_else(new_request_id)
}

/// Accepts a client's id when it is short and printable (as the native server does).
pub fn valid_request_id(v: &str) -> bool {
    !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic())
}

pub fn new_request_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// What a service knows about its caller.
#[derive(Debug, Clone)]
pub struct Caller {
    pub request_id: String,
    pub claims: Option<Claims>,
    pub admin: bool,
}

impl Caller {
    pub fn from_request(req: &Request) -> Self {
        let claims = req
            .headers()
            .get(CLAIMS)
            .ok()
            .flatten()
            .and_then(|raw| serde_json::from_str::<Claims>(&raw).ok());
        Self {
            request_id: request_id(req),
            claims,
            admin: req.headers().get(ADMIN).ok().flatten().as_deref() == Some("1"),
        }
    }

    /// The verified claims, or 401 as the native server answers a missing token.
    pub fn claims(&self) -> ApiResult<&Claims> {
        self.claims.as_ref().ok_or_else(|| {
            ApiError::new(
                401,
                "missing_token",
                cognomega_core::auth::missing_token(false),
            )
        })
    }

    pub fn require_admin(&self) -> ApiResult<()> {
        if self.admin {
            Ok(())
        } else {
            Err(ApiError::new(
                401,
                "invalid_admin_key",
                "this route needs the X-Admin-Key header with the deployment's admin key",
            ))
        }
    }
}

/// An internal service: its routes, rendered with the envelope on error.
pub async fn service(
    role: &str,
    mut req: Request,
    env: &Env,
    ctx: &Context,
) -> worker::Result<Response> {
    let caller = Caller::from_request(&req);
    // A write may have staged messages in the outbox: relay them after the response.
    let writes = !matches!(req.method(), Method::Get | Method::Head | Method::Options)
        && matches!(
            role,
            "auth" | "usage" | "jobs" | "files" | "billing" | "admin"
        )
        && req.path() != "/admin/outbox/relay";
    let result = match role {
        "auth" => crate::auth::route(&mut req, env, &caller).await,
        "billing" => crate::billing::route(&mut req, env, &caller).await,
        "usage" => crate::usage::route(&mut req, env, &caller).await,
        "jobs" => crate::jobs::route(&mut req, env, &caller).await,
        "files" => crate::files::route(&mut req, env, &caller).await,
        "admin" => crate::admin::route(&mut req, env, &caller).await,
        "ai" if req.path().starts_with("/voice/") => {
            crate::voice::route(&mut req, env, &caller).await
        }
        "ai" => crate::ask::route(&mut req, env, ctx, &caller).await,
        _ => Err(ApiError::not_found("not_found", "no such route")),
    };
    if writes {
        crate::outbox::drain_after(ctx, env, &caller.request_id);
    }
    Ok(match result {
        Ok(resp) => finish(resp, &caller.request_id),
        Err(e) => e.render(&caller.request_id),
    })
}

/// 404 for a path no route matches, 405 for a known path with another method.
pub fn no_route(method_known: bool) -> ApiError {
    if method_known {
        ApiError::new(
            405,
            "method_not_allowed",
            "this path does not accept that method",
        )
    } else {
        ApiError::not_found(
            "not_found",
            "no such route; see GET /openapi.json on the native server",
        )
    }
}
