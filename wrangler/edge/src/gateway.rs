//! The gateway Worker: the only public one. It gives every request an id, authenticates it
//! (bearer token or admin key), applies the rate limits, and forwards it over a Service Binding
//! to the internal service owning the route. Answers come back with `X-Request-Id`,
//! `Cache-Control: no-store` and the `RateLimit-*` headers, exactly as the native server sends.

use cognomega_core::auth::{constant_time_eq, Tier};
use cognomega_core::limits::RouteClass;
use worker::{Env, Headers, Method, Request, RequestInit, Response};

use crate::http::{self, ApiError, ADMIN, CLAIMS, CLIENT_IP, REQUEST_ID};

/// How a route is reached: the service binding, who may call it, and its rate-limit class.
struct RouteSpec {
    binding: &'static str,
    gate: Gate,
    class: Option<RouteClass>,
}

#[derive(PartialEq, Eq)]
enum Gate {
    Open,
    Bearer,
    Admin,
}

fn spec(method: &Method, path: &str) -> Option<RouteSpec> {
    let get = matches!(method, Method::Get | Method::Head);
    let post = matches!(method, Method::Post);
    let r = |binding, gate, class| {
        Some(RouteSpec {
            binding,
            gate,
            class,
        })
    };
    match path {
        "/healthz" | "/openapi.json" | "/metrics" => r("ADMIN", Gate::Open, None),
        // Rate-limited by the auth service, per email or address (only it reads the body).
        "/auth/guest" if post => r("AUTH", Gate::Open, None),
        "/.well-known/jwks.json" => r("AUTH", Gate::Open, None),
        "/credits" if get => r("BILLING", Gate::Bearer, Some(RouteClass::Read)),
        "/credits/adjust" => r("BILLING", Gate::Admin, Some(RouteClass::Admin)),
        p if p.starts_with("/credits/adjustments/") => {
            r("BILLING", Gate::Admin, Some(RouteClass::Admin))
        }
        "/admin/rebuild-balance-cache" => r("BILLING", Gate::Admin, Some(RouteClass::Admin)),
        "/exports" => r("ADMIN", Gate::Admin, Some(RouteClass::Admin)),
        "/usage" => r(
            "USAGE",
            Gate::Bearer,
            Some(if post {
                RouteClass::Usage
            } else {
                RouteClass::Read
            }),
        ),
        p if p == "/jobs" || p.starts_with("/jobs/") => r(
            "JOBS",
            Gate::Bearer,
            Some(if post {
                RouteClass::Jobs
            } else {
                RouteClass::Read
            }),
        ),
        "/upload/direct" => r("FILES", Gate::Bearer, Some(RouteClass::Upload)),
        // Billed like usage (natively the same class).
        "/api/si/ask" if post => r("ASK", Gate::Bearer, Some(RouteClass::Usage)),
        // The voice service runs in the `ai` Worker (its AI binding and provider settings).
        "/voice/tts" | "/voice/stt" if post => r("ASK", Gate::Bearer, Some(RouteClass::Usage)),
        "/voice/voices" | "/voice/sessions" if get => {
            r("ASK", Gate::Bearer, Some(RouteClass::Read))
        }
        p if p.starts_with("/uploads/") => r("FILES", Gate::Bearer, Some(RouteClass::Read)),
        // Signed links: the signature is the gate.
        p if p.starts_with("/files/") => r("FILES", Gate::Open, None),
        p if p.starts_with("/admin/") => r("ADMIN", Gate::Admin, Some(RouteClass::Admin)),
        _ => None,
    }
}

pub async fn handle(req: Request, env: &Env) -> worker::Result<Response> {
    let request_id = http::request_id(&req);
    let origin = req.headers().get("origin")?.filter(|o| !o.is_empty());
    let preflight = req.method() == Method::Options
        && origin.is_some()
        && req.headers().has("access-control-request-method")?;
    let resp = if preflight {
        http::finish(Response::empty()?.with_status(200), &request_id)
    } else {
        match route(req, env, &request_id).await {
            Ok(resp) => http::finish(resp, &request_id),
            Err(e) => e.render(&request_id),
        }
    };
    cors(resp, env, origin.as_deref(), preflight)
}

/// The native server's CORS policy (`cognomega_core::api::cors`, origins from
/// `COGNOMEGA_CORS_ORIGINS`, default `*`): a preflight is answered here, every answer to an
/// allowed origin carries `Access-Control-Allow-Origin` and the exposed headers, and an origin
/// off the list gets no CORS header at all.
fn cors(
    mut resp: Response,
    env: &Env,
    origin: Option<&str>,
    preflight: bool,
) -> worker::Result<Response> {
    use cognomega_core::api::cors;
    let allowed = crate::config::cors_origins(env);
    let any = allowed.iter().any(|o| o == "*");
    let h = resp.headers_mut();
    h.append("vary", "origin")?;
    if preflight {
        h.append("vary", "access-control-request-method")?;
        h.append("vary", "access-control-request-headers")?;
    }
    let Some(origin) = origin else {
        return Ok(resp);
    };
    if !cors::allows(&allowed, origin) {
        return Ok(resp);
    }
    h.set(
        "access-control-allow-origin",
        if any { "*" } else { origin },
    )?;
    if preflight {
        h.set(
            "access-control-allow-methods",
            &cors::ALLOWED_METHODS.join(","),
        )?;
        h.set(
            "access-control-allow-headers",
            &cors::ALLOWED_HEADERS.join(","),
        )?;
        h.set("access-control-max-age", &cors::MAX_AGE_SECS.to_string())?;
    } else {
        h.set(
            "access-control-expose-headers",
            &cors::EXPOSED_HEADERS.join(","),
        )?;
    }
    Ok(resp)
}

async fn route(req: Request, env: &Env, request_id: &str) -> http::ApiResult {
    let method = req.method();
    let path = req.path();
    let Some(spec) = spec(&method, &path) else {
        let known = spec(&Method::Get, &path).is_some() || spec(&Method::Post, &path).is_some();
        return Err(http::no_route(known));
    };
    let client_ip = req
        .headers()
        .get("cf-connecting-ip")?
        .unwrap_or_else(|| "unknown".into());
    let mut claims_json = None;
    let mut admin = false;
    let mut bucket = None;
    match spec.gate {
        Gate::Open => {}
        Gate::Bearer => {
            let claims = crate::auth::authenticate(&req, env).await?;
            bucket = Some((claims.tier, claims.tenant.clone()));
            claims_json = Some(serde_json::to_string(&claims).map_err(ApiError::internal)?);
        }
        Gate::Admin => {
            let given = req.headers().get("x-admin-key")?.unwrap_or_default();
            let expected = crate::config::admin_key(env).unwrap_or_default();
            if given.is_empty()
                || expected.is_empty()
                || !constant_time_eq(given.as_bytes(), expected.as_bytes())
            {
                return Err(ApiError::new(
                    401,
                    "invalid_admin_key",
                    "this route needs the X-Admin-Key header with the deployment's admin key",
                ));
            }
            admin = true;
            bucket = Some((Tier::Guest, format!("ip:{client_ip}")));
        }
    }
    let decision = match (spec.class, bucket) {
        (Some(class), Some((tier, key))) => {
            let d = crate::limiter::check(env, tier, class, &key).await;
            if let Some(d) = &d {
                if !d.allowed {
                    let mut resp = crate::limiter::refused(class, d).render(request_id);
                    crate::limiter::stamp(&mut resp, d);
                    return Ok(resp);
                }
            }
            d
        }
        _ => None,
    };

    // The forwarded request: the client's headers minus anything claiming to be internal,
    // plus the id, the verified claims and the admin flag.
    let headers = Headers::new();
    for (k, v) in req.headers().entries() {
        if !k.starts_with("x-cognomega-") && k != REQUEST_ID {
            headers.append(&k, &v)?;
        }
    }
    headers.set(REQUEST_ID, request_id)?;
    headers.set(CLIENT_IP, &client_ip)?;
    if let Some(c) = &claims_json {
        headers.set(CLAIMS, c)?;
    }
    if admin {
        headers.set(ADMIN, "1")?;
    }
    let mut init = RequestInit::new();
    init.with_method(method.clone()).with_headers(headers);
    if !matches!(method, Method::Get | Method::Head) {
        if let Some(body) = req.inner().body() {
            init.with_body(Some(body.into()));
        }
    }
    let url = req.url()?;
    let forwarded = Request::new_with_init(url.as_str(), &init)?;
    let resp = env.service(spec.binding)?.fetch_request(forwarded).await?;
    if resp.status_code() == 101 {
        // A WebSocket (a voice session): handed on as it is, with the gateway's headers.
        let headers = resp.headers().clone();
        let Some(socket) = resp.websocket() else {
            return Err(ApiError::internal("101 without a WebSocket"));
        };
        let mut resp = Response::builder()
            .with_status(101)
            .with_headers(headers)
            .with_websocket(socket)
            .empty();
        if let Some(d) = &decision {
            crate::limiter::stamp(&mut resp, d);
        }
        return Ok(resp);
    }
    // A response from another Worker has immutable headers: answer with a copy, so the
    // gateway's own headers (request id, cache policy, rate limits) can be set.
    let mut resp = Response::builder()
        .with_status(resp.status_code())
        .with_headers(resp.headers().clone())
        .body(resp.body().clone());
    if let Some(d) = &decision {
        crate::limiter::stamp(&mut resp, d);
    }
    Ok(resp)
}
