//! The usage service: `POST /usage` and `GET /usage`, the workflows the native server runs
//! (`cognomega_workflows::billing`; Cloudflare Queues carry at most 128 KB per message, so a
//! large batch travels as several messages, each event keeping its idempotency key).

use cognomega_core::auth::Tier;
use cognomega_core::limits::CostMetric;
use worker::{Env, Method, Request};

use cognomega_workflows::billing;

use crate::host::Writes;
use crate::http::{self, ApiError, ApiResult, Caller};

pub async fn route(req: &mut Request, env: &Env, caller: &Caller) -> ApiResult {
    match (req.method(), req.path().as_str()) {
        (Method::Post, "/usage") => post(req, env, caller).await,
        (Method::Get | Method::Head, "/usage") => totals(req, env, caller).await,
        (_, "/usage") => Err(http::no_route(true)),
        _ => Err(http::no_route(false)),
    }
}

async fn post(req: &mut Request, env: &Env, caller: &Caller) -> ApiResult {
    let claims = caller.claims()?;
    let body = req.bytes().await?;
    let db = crate::db::connect(env).await?;
    let host = Writes::new(env, &db);
    let cap = cost_cap(env, claims.tier, CostMetric::TokensPerDay)?;
    let request_id = &caller.request_id;
    let accepted = billing::accept_usage(&host, &claims.tenant, cap, &body, request_id).await?;
    host.relay("usage").await;
    http::json(202, &serde_json::json!({ "accepted": accepted }))
}

/// `GET /usage?from=&to=`: the tenant's usage totals per kind in a window.
async fn totals(req: &Request, env: &Env, caller: &Caller) -> ApiResult {
    let claims = caller.claims()?;
    let url = req.url()?;
    let mut from = None;
    let mut to = None;
    for (k, v) in url.query_pairs() {
        let slot = match k.as_ref() {
            "from" => &mut from,
            "to" => &mut to,
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("unknown query parameter {other:?}; this route takes from and to"),
                ))
            }
        };
        if slot.replace(v.into_owned()).is_some() {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("query parameter {k:?} is given more than once"),
            ));
        }
    }
    let db = crate::db::connect(env).await?;
    let host = Writes::new(env, &db);
    let totals =
        billing::usage_totals(&host, &claims.tenant, from.as_deref(), to.as_deref()).await?;
    http::json(200, &totals)
}

/// The cap of `metric` for `tier`, if it has one.
pub fn cost_cap(env: &Env, tier: Tier, metric: CostMetric) -> Result<Option<u64>, ApiError> {
    let guards = crate::config::cost_guards(env).map_err(ApiError::internal)?;
    Ok(guards.for_tier(tier).cap(metric))
}
