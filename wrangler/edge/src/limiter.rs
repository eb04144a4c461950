//! Rate limiting on the edge: a Durable Object per bucket (tenant × route class, or client
//! address × class for anonymous routes). A Durable Object runs one request at a time, so the
//! token bucket needs no locking; the bucket arithmetic is `cognomega_core::limits::Rate`, the
//! same the native limiters use, and so are the headers and the 429 answer.

use std::cell::Cell;

use cognomega_core::auth::Tier;
use cognomega_core::limits::{Decision, Rate, RouteClass};
use worker::{durable_object, DurableObject, Env, Request, Response, State};

use crate::http::ApiError;

/// One bucket. Its tokens live in memory: a Durable Object evicted after a quiet spell comes
/// back full, which is what an idle bucket would have refilled to anyway.
#[durable_object]
pub struct RateLimiter {
    tokens: Cell<f64>,
    last_ms: Cell<f64>,
    fresh: Cell<bool>,
}

impl DurableObject for RateLimiter {
    fn new(_state: State, _env: Env) -> Self {
        Self {
            tokens: Cell::new(0.0),
            last_ms: Cell::new(0.0),
            fresh: Cell::new(true),
        }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        let url = req.url()?;
        let mut rate = None;
        let mut burst = None;
        for (k, v) in url.query_pairs() {
            match k.as_ref() {
                "rate" => rate = v.parse::<f64>().ok(),
                "burst" => burst = v.parse::<u32>().ok(),
                _ => {}
            }
        }
        let Some(shape) = rate.zip(burst).and_then(|(r, b)| Rate::new(r, b)) else {
            return Response::error("rate and burst are required", 400);
        };
        let now = worker::Date::now().as_millis() as f64;
        if self.fresh.replace(false) {
            self.tokens.set(f64::from(shape.burst));
            self.last_ms.set(now);
        }
        let elapsed = (now - self.last_ms.get()).max(0.0) / 1000.0;
        let (left, allowed) = shape.take(self.tokens.get(), elapsed);
        self.tokens.set(left);
        self.last_ms.set(now);
        Response::from_json(&shape.decision(left, allowed))
    }
}

/// Takes one token from `key`'s bucket of `class` for a caller of `tier`. `None` when rate
/// limits are off. A limiter that cannot be reached lets the request through (logged), as the
/// native gateway does.
pub async fn check(env: &Env, tier: Tier, class: RouteClass, key: &str) -> Option<Decision> {
    let limits = match crate::config::rate_limits(env) {
        Ok(l) => l,
        Err(e) => {
            worker::console_error!("rate limits: {e}");
            return None;
        }
    };
    if !limits.enabled {
        return None;
    }
    let shape = limits.rate(tier, class);
    match take(env, &format!("{}:{key}", class.as_str()), shape).await {
        Ok(d) => Some(d),
        Err(e) => {
            worker::console_error!("rate limiter unreachable, letting the request through: {e}");
            None
        }
    }
}

async fn take(env: &Env, name: &str, shape: Rate) -> worker::Result<Decision> {
    let stub = env.durable_object("RATE_LIMITER")?.get_by_name(name)?;
    let url = format!(
        "https://limiter/take?rate={}&burst={}",
        shape.rate, shape.burst
    );
    let mut resp = stub.fetch_with_str(&url).await?;
    if resp.status_code() != 200 {
        return Err(worker::Error::RustError(format!(
            "limiter answered {}",
            resp.status_code()
        )));
    }
    resp.json::<Decision>().await
}

/// `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset` on an answer.
pub fn stamp(resp: &mut Response, d: &Decision) {
    let h = resp.headers_mut();
    let _ = h.set("ratelimit-limit", &d.limit.to_string());
    let _ = h.set("ratelimit-remaining", &d.remaining.to_string());
    let _ = h.set("ratelimit-reset", &d.reset_secs.to_string());
}

/// The 429 answer, worded as the native gateway words it.
pub fn refused(class: RouteClass, d: &Decision) -> ApiError {
    d.refusal(class).into()
}
