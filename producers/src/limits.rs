//! Rate limits and cost guards at the gateway.
//!
//! One middleware ([`layer`]) classifies every matched route ([`classify`]), finds the
//! caller's bucket (tenant for authenticated classes, client IP for admin routes) and either
//! refuses with 429 `rate_limited` or passes the request on; both answers carry
//! `RateLimit-Limit`, `RateLimit-Remaining` and `RateLimit-Reset`, so a client can pace
//! itself. Guest issuance is keyed by the request's email, which only its handler parses, so
//! it calls [`check`] itself.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, FromRequestParts, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cognomega_core::auth::Tier;
use cognomega_core::limits::{CostMetric, Decision, RouteClass};
use cognomega_stores::limits::OverCap;
use cognomega_stores::Tx;
use http::request::Parts;
use http::{HeaderValue, Method, StatusCode};

use crate::auth::{bearer_token, Authenticated};
use crate::{ApiError, AppState};

/// `RateLimit-Limit`: the bucket size.
pub const RATELIMIT_LIMIT: &str = "ratelimit-limit";
/// `RateLimit-Remaining`: whole requests left in the bucket.
pub const RATELIMIT_REMAINING: &str = "ratelimit-remaining";
/// `RateLimit-Reset`: seconds until the bucket is full again.
pub const RATELIMIT_RESET: &str = "ratelimit-reset";

/// The rate-limit class of a matched route; `None` for routes that are not limited
/// (health, metrics, the JWKS, and signed file links, whose signature is the gate).
#[must_use]
pub fn classify(method: &Method, path: &str) -> Option<RouteClass> {
    if path.starts_with("/admin/") || path == "/exports" || path.starts_with("/credits/adjust") {
        return Some(RouteClass::Admin);
    }
    match (method.as_str(), path) {
        ("POST", "/auth/guest") => Some(RouteClass::Guest),
        // Both produce billable usage; an ask is also held back by its tier's token budget.
        ("POST", "/usage" | "/api/si/ask" | "/voice/tts" | "/voice/stt") => Some(RouteClass::Usage),
        ("POST", "/jobs" | "/jobs/{id}/cancel") => Some(RouteClass::Jobs),
        ("POST", "/upload/direct") => Some(RouteClass::Upload),
        (
            "GET" | "HEAD",
            "/credits"
            | "/usage"
            | "/jobs"
            | "/jobs/{id}"
            | "/jobs/{id}/artifacts/{name}"
            | "/uploads/{*key}"
            | "/voice/voices"
            | "/voice/sessions",
        ) => Some(RouteClass::Read),
        _ => None,
    }
}

/// The client's address, when the server provides it (the native server does; a host that
/// does not gets `None`, and such callers share one bucket per class).
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub Option<IpAddr>);

impl ClientIp {
    fn of(extensions: &http::Extensions) -> Self {
        Self(
            extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|c| c.0.ip()),
        )
    }

    fn key(self) -> String {
        self.0
            .map_or_else(|| "unknown".to_owned(), |ip| ip.to_string())
    }
}

impl<S: Send + Sync> FromRequestParts<S> for ClientIp {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Self::of(&parts.extensions))
    }
}

/// The middleware: see the module's documentation.
pub(crate) async fn layer(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    if !state.config.rate_limits.enabled {
        return next.run(req).await;
    }
    let Some(class) = req
        .extensions()
        .get::<MatchedPath>()
        .and_then(|p| classify(req.method(), p.as_str()))
    else {
        return next.run(req).await;
    };
    let (tier, key) = match class {
        // Keyed by the body's email: the handler checks.
        RouteClass::Guest => return next.run(req).await,
        RouteClass::Admin => (
            Tier::Guest,
            format!("admin:{}", ClientIp::of(req.extensions()).key()),
        ),
        _ => {
            // A missing or bad token is left to the handler's 401; a good one is kept for its
            // extractor, which then does not verify it again.
            let Some(token) = bearer_token(req.headers()) else {
                return next.run(req).await;
            };
            let Ok(claims) = state.auth.verify(token).await else {
                return next.run(req).await;
            };
            let key = format!("{class}:{}", claims.tenant);
            let tier = claims.tier;
            req.extensions_mut().insert(Authenticated(claims));
            (tier, key)
        }
    };
    match check(&state, tier, class, &key).await {
        Ok(decision) => with_headers(next.run(req).await, decision),
        Err(refused) => refused,
    }
}

/// Takes a token from `key`'s bucket of `class`: `Ok(Some(decision))` to pass (headers to add
/// with [`with_headers`]), `Ok(None)` when limits are off or the store failed (logged; the
/// request passes), `Err(429)` to refuse.
pub async fn check(
    state: &AppState,
    tier: Tier,
    class: RouteClass,
    key: &str,
) -> Result<Option<Decision>, Response> {
    let limits = &state.config.rate_limits;
    if !limits.enabled {
        return Ok(None);
    }
    let rate = limits.rate(tier, class);
    match state.limiter.check(key, rate).await {
        Ok(d) if d.allowed => Ok(Some(d)),
        Ok(d) => Err(rate_limited(class, d)),
        Err(e) => {
            tracing::warn!(error = %e, class = %class, "rate limit check failed; letting the request through");
            Ok(None)
        }
    }
}

/// Adds the `RateLimit-*` headers of `decision` (if any) to a response.
pub fn with_headers(mut resp: Response, decision: impl Into<Option<Decision>>) -> Response {
    if let Some(d) = decision.into() {
        let h = resp.headers_mut();
        h.insert(RATELIMIT_LIMIT, HeaderValue::from(d.limit));
        h.insert(RATELIMIT_REMAINING, HeaderValue::from(d.remaining));
        h.insert(RATELIMIT_RESET, HeaderValue::from(d.reset_secs));
    }
    resp
}

fn rate_limited(class: RouteClass, d: Decision) -> Response {
    let resp = ApiError::from(d.refusal(class)).into_response();
    with_headers(resp, d)
}

/// Charges `quantity` of `metric` to the tenant inside `tx` when its tier has a cap: 429
/// `cost_cap_exceeded` (naming the cap and window, `Retry-After` = seconds to the window's
/// end) when it would pass the cap. The caller then drops `tx`, so nothing is enqueued.
pub async fn charge_cost(
    state: &AppState,
    tx: &mut Tx,
    tier: Tier,
    tenant: &str,
    metric: CostMetric,
    quantity: u64,
) -> Result<(), ApiError> {
    let Some(cap) = state.config.cost_guards.for_tier(tier).cap(metric) else {
        return Ok(());
    };
    if quantity == 0 {
        return Ok(());
    }
    let now = chrono::Utc::now().timestamp();
    match cognomega_stores::limits::charge(tx, tenant, metric, quantity, cap, now)
        .await
        .map_err(ApiError::internal)?
    {
        Ok(_) => Ok(()),
        Err(over) => Err(cost_cap_exceeded(metric, quantity, over, now)),
    }
}

/// Whether `tier` has a cap on `metric` (so the route must charge it in a transaction).
#[must_use]
pub fn is_capped(state: &AppState, tier: Tier, metric: CostMetric) -> bool {
    state
        .config
        .cost_guards
        .for_tier(tier)
        .cap(metric)
        .is_some()
}

fn cost_cap_exceeded(metric: CostMetric, quantity: u64, over: OverCap, now: i64) -> ApiError {
    let (message, retry) = cognomega_core::limits::cost_cap_exceeded_message(
        metric,
        quantity,
        over.used,
        over.cap,
        over.window_end,
        now,
    );
    ApiError::new(StatusCode::TOO_MANY_REQUESTS, "cost_cap_exceeded", message).retry_after(retry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_class_has_its_routes() {
        assert_eq!(classify(&Method::GET, "/credits"), Some(RouteClass::Read));
        assert_eq!(classify(&Method::GET, "/usage"), Some(RouteClass::Read));
        assert_eq!(classify(&Method::POST, "/usage"), Some(RouteClass::Usage));
        assert_eq!(
            classify(&Method::POST, "/jobs/{id}/cancel"),
            Some(RouteClass::Jobs)
        );
        assert_eq!(
            classify(&Method::POST, "/upload/direct"),
            Some(RouteClass::Upload)
        );
        assert_eq!(
            classify(&Method::POST, "/credits/adjust"),
            Some(RouteClass::Admin)
        );
        assert_eq!(
            classify(&Method::GET, "/admin/queues"),
            Some(RouteClass::Admin)
        );
        assert_eq!(
            classify(&Method::POST, "/auth/guest"),
            Some(RouteClass::Guest)
        );
        for free in [
            "/healthz",
            "/metrics",
            "/.well-known/jwks.json",
            "/files/{*key}",
        ] {
            assert_eq!(classify(&Method::GET, free), None, "{free}");
        }
    }
}
