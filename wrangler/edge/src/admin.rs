//! The admin service: `GET /healthz`, dead-letter inspection
//! (`GET /admin/queues/{queue}/dlq`), raw injection (`POST /admin/queues/{queue}/messages`) and
//! the exports (`GET /exports`, `POST /admin/exports`, in `etl.rs`), with the native answers'
//! shapes.

use worker::{Env, Method, Request};

use crate::http::{self, ApiError, ApiResult, Caller};

pub async fn route(req: &mut Request, env: &Env, caller: &Caller) -> ApiResult {
    let path = req.path();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method(), parts.as_slice()) {
        (Method::Get | Method::Head, ["healthz"]) => healthz(env).await,
        (Method::Get | Method::Head, ["admin", "queues", queue, "dlq"]) => {
            caller.require_admin()?;
            let url = req.url()?;
            let limit = url
                .query_pairs()
                .find(|(k, _)| k == "limit")
                .map(|(_, v)| v.into_owned());
            dead_letters(env, queue, limit.as_deref()).await
        }
        (Method::Post, ["admin", "queues", queue, "messages"]) => {
            caller.require_admin()?;
            inject(req, env, caller, queue).await
        }
        (Method::Get | Method::Head, ["exports"]) => crate::etl::list(env, caller).await,
        (Method::Post, ["admin", "exports"]) => crate::etl::enqueue(req, env, caller).await,
        (
            _,
            ["healthz"]
            | ["exports"]
            | ["admin", "exports"]
            | ["admin", "queues", _, "dlq" | "messages"],
        ) => Err(http::no_route(true)),
        _ => Err(http::no_route(false)),
    }
}

async fn healthz(env: &Env) -> ApiResult {
    let reachable = match crate::db::connect(env).await {
        Ok(db) => db.simple_query("SELECT 1").await.is_ok(),
        Err(_) => false,
    };
    if !reachable {
        return Err(ApiError::unavailable(
            "the database is unreachable; check the Hyperdrive binding DB",
        ));
    }
    http::json(
        200,
        &serde_json::json!({
            "status": "ok",
            "version": env!("CARGO_PKG_VERSION"),
            "backend": "postgres",
            "uptime_s": 0,
        }),
    )
}

fn queue_of(raw: &str) -> Result<&'static crate::consumers::EdgeQueue, ApiError> {
    let name = cognomega_core::queue::QueueName::parse(raw).map_err(|e| {
        ApiError::bad_request("invalid_queue", format!("invalid queue name {raw:?}: {e}"))
    })?;
    crate::consumers::by_native(name.as_str()).ok_or_else(|| {
        ApiError::not_found(
            "unknown_queue",
            format!("no queue {raw} on this deployment"),
        )
    })
}

async fn dead_letters(env: &Env, raw: &str, limit: Option<&str>) -> ApiResult {
    let queue = queue_of(raw)?;
    let limit: i64 = match limit {
        None => 100,
        Some(raw) => match raw.parse::<i64>() {
            Ok(n @ 1..=1000) => n,
            _ => {
                return Err(ApiError::bad_request(
                    "invalid_limit",
                    format!("limit must be an integer 1..=1000, got {raw:?}"),
                ))
            }
        },
    };
    let dlq = format!("{}.dlq", queue.native);
    let db = crate::db::connect(env).await?;
    let rows = db
        .query(
            "SELECT id, original_queue, COALESCE(failed_attempts, attempts)::bigint, last_error,
                    (extract(epoch FROM enqueued_at) * 1000)::bigint,
                    (extract(epoch FROM dead_at) * 1000)::bigint,
                    substring(body FROM 1 FOR 512)
             FROM queue_messages WHERE queue = $1 AND state < 2 ORDER BY id LIMIT $2",
            &[&dlq, &limit],
        )
        .await?;
    let messages: Vec<serde_json::Value> = rows
        .iter()
        .map(|r| {
            serde_json::json!({
                "id": r.get::<_, i64>(0),
                "original_queue": r.get::<_, Option<String>>(1),
                "attempts": r.get::<_, i64>(2),
                "error": r.get::<_, Option<String>>(3),
                "enqueued_at": r.get::<_, i64>(4),
                "dead_at": r.get::<_, Option<i64>>(5),
                "body_preview": String::from_utf8_lossy(&r.get::<_, Vec<u8>>(6)),
            })
        })
        .collect();
    http::json(
        200,
        &serde_json::json!({
            "queue": queue.native,
            "dead_letter_queue": dlq,
            "messages": messages,
        }),
    )
}

async fn inject(req: &mut Request, env: &Env, caller: &Caller, raw: &str) -> ApiResult {
    let queue = queue_of(raw)?;
    let body = req.bytes().await?;
    if body.is_empty() {
        return Err(ApiError::bad_request(
            "empty_message",
            "the message body is empty",
        ));
    }
    if body.len() > 64 * 1024 {
        return Err(ApiError::new(
            413,
            "body_too_large",
            "the body is larger than 65536 bytes",
        ));
    }
    crate::consumers::send_raw(
        env,
        queue.binding,
        String::from_utf8_lossy(&body).into_owned(),
        &caller.request_id,
    )
    .await
    .map_err(|e| ApiError::unavailable(format!("cannot enqueue right now ({e}); retry")))?;
    // Cloudflare assigns message ids at delivery, not at send: the answer carries none.
    http::json(
        202,
        &serde_json::json!({ "queue": queue.native, "id": null }),
    )
}
