//! The usage service: `POST /usage` validates with the native parser
//! (`cognomega_core::billing::parse_usage_request`) and produces to the `usage` queue. Cloudflare
//! Queues carry at most 128 KB per message, so a large batch travels as several messages; each
//! event keeps its idempotency key, so how the batch is cut changes nothing downstream.

use cognomega_core::billing::{parse_usage_request, UsageBatchMessage, UsageEvent};
use worker::{Env, Method, Request};

use crate::http::{self, ApiError, ApiResult, Caller};

/// Largest `POST /usage` body (as native).
const USAGE_BODY_LIMIT: usize = 8 * 1024 * 1024;
/// Target size of one queue message, well under the 128 KB limit.
const MESSAGE_BUDGET: usize = 96 * 1024;

pub async fn route(req: &mut Request, env: &Env, caller: &Caller) -> ApiResult {
    match (req.method(), req.path().as_str()) {
        (Method::Post, "/usage") => post(req, env, caller).await,
        (_, "/usage") => Err(http::no_route(true)),
        _ => Err(http::no_route(false)),
    }
}

async fn post(req: &mut Request, env: &Env, caller: &Caller) -> ApiResult {
    let claims = caller.claims()?;
    let body = req.bytes().await?;
    if body.len() > USAGE_BODY_LIMIT {
        return Err(ApiError::new(
            413,
            "body_too_large",
            format!("the body is larger than {USAGE_BODY_LIMIT} bytes"),
        ));
    }
    let events = parse_usage_request(&body)
        .map_err(|e| ApiError::bad_request("invalid_usage", e.to_string()))?;
    let accepted = events.len();
    let received_at_ms = worker::Date::now().as_millis() as i64;
    let mut chunks: Vec<Vec<UsageEvent>> = vec![Vec::new()];
    let mut size = 0;
    for e in events {
        let len = serde_json::to_vec(&e)
            .map(|v| v.len())
            .unwrap_or(MESSAGE_BUDGET);
        if size + len > MESSAGE_BUDGET && !chunks.last().is_none_or(Vec::is_empty) {
            chunks.push(Vec::new());
            size = 0;
        }
        size += len;
        if let Some(last) = chunks.last_mut() {
            last.push(e);
        }
    }
    let messages: Vec<UsageBatchMessage> = chunks
        .into_iter()
        .filter(|c| !c.is_empty())
        .map(|events| UsageBatchMessage {
            tenant_id: claims.tenant.clone(),
            events,
            received_at_ms,
        })
        .collect();
    crate::consumers::send_all(env, "USAGE", &messages, &caller.request_id)
        .await
        .map_err(|e| {
            ApiError::unavailable(format!(
                "cannot enqueue usage right now ({e}); retry with the same idempotency keys"
            ))
        })?;
    http::json(202, &serde_json::json!({ "accepted": accepted }))
}
