//! The admin service, with the native answers' shapes: `GET /healthz`, `GET /metrics`,
//! `GET /openapi.json`, the queues (`GET /admin/queues`, dead letters
//! `GET /admin/queues/{queue}/dlq`, `POST /admin/queues/{queue}/dlq/replay`, raw injection
//! `POST /admin/queues/{queue}/messages`), `GET /admin/env-snapshot`, `POST /admin/cleanup` (in
//! `cleanup.rs`), and the exports (`GET /exports`, `POST /admin/exports`, in `etl.rs`).

use cognomega_core::queue::admin;
use cognomega_core::sql::{Executor as _, SqlError};
use worker::{Env, Method, Request};

use crate::http::{self, ApiError, ApiResult, Caller};
use crate::sql::Pg;

pub async fn route(req: &mut Request, env: &Env, caller: &Caller) -> ApiResult {
    let path = req.path();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method(), parts.as_slice()) {
        (Method::Get | Method::Head, ["healthz"]) => healthz(env).await,
        (Method::Get | Method::Head, ["openapi.json"]) => openapi(),
        (Method::Get | Method::Head, ["metrics"]) => metrics(env).await,
        (Method::Get | Method::Head, ["admin", "queues"]) => {
            caller.require_admin()?;
            queues(env).await
        }
        (Method::Post, ["admin", "queues", queue, "dlq", "replay"]) => {
            caller.require_admin()?;
            replay(req, env, caller, queue).await
        }
        (Method::Get | Method::Head, ["admin", "env-snapshot"]) => {
            caller.require_admin()?;
            env_snapshot(env)
        }
        (Method::Post, ["admin", "cleanup"]) => {
            caller.require_admin()?;
            crate::cleanup::cleanup(req, env).await
        }
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
        (Method::Get | Method::Head, ["admin", "outbox"]) => {
            caller.require_admin()?;
            outbox(env).await
        }
        (Method::Post, ["admin", "outbox", "relay"]) => {
            caller.require_admin()?;
            let report = crate::outbox::relay_all(env)
                .await
                .map_err(|e| ApiError::unavailable(format!("{e}; retry")))?;
            http::json(200, &serde_json::json!({ "relayed": report }))
        }
        (Method::Get | Method::Head, ["exports"]) => crate::etl::list(env, caller).await,
        (Method::Post, ["admin", "exports"]) => crate::etl::enqueue(req, env, caller).await,
        (
            _,
            ["healthz" | "openapi.json" | "metrics" | "exports"]
            | ["admin", "exports" | "queues" | "env-snapshot" | "cleanup" | "outbox"]
            | ["admin", "outbox", "relay"]
            | ["admin", "queues", _, "dlq" | "messages"]
            | ["admin", "queues", _, "dlq", "replay"],
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

/// The native server's OpenAPI document (`docs/openapi.json`, kept equal to what the native
/// server serves by its tests): the edge answers the same contract.
fn openapi() -> ApiResult {
    const DOCUMENT: &str = include_str!("../../../docs/openapi.json");
    let mut resp = worker::Response::ok(DOCUMENT)?;
    resp.headers_mut().set("content-type", "application/json")?;
    Ok(resp)
}

/// Dead letters per edge queue, from where the dlq Worker records them.
async fn dead_letter_depths(db: &tokio_postgres::Client) -> Result<Vec<(String, u64)>, ApiError> {
    let rows = db
        .query(
            "SELECT queue, count(*) FROM queue_messages
             WHERE queue LIKE '%.dlq' AND state < 2 GROUP BY queue",
            &[],
        )
        .await?;
    Ok(crate::consumers::queues()
        .iter()
        .map(|q| {
            let dlq = format!("{}.dlq", q.native);
            let n = rows
                .iter()
                .find(|r| r.get::<_, String>(0) == dlq)
                .map_or(0, |r| u64::try_from(r.get::<_, i64>(1)).unwrap_or(0));
            (q.native.to_owned(), n)
        })
        .collect())
}

/// `GET /metrics`: the figures every shape reads from the database (money and scans, exports,
/// lifecycle), rendered by the native server's renderer, and each queue's dead-letter depth.
/// A Worker cannot see Cloudflare Queues' backlog: that, and requests and CPU per Worker, are
/// in the Cloudflare dashboard (Queues and Workers analytics).
async fn metrics(env: &Env) -> ApiResult {
    let db = crate::db::connect(env).await?;
    let mut text = cognomega_core::metrics::render_dlq_depths(&dead_letter_depths(&db).await?);
    text.push_str(&cognomega_workflows::metrics::render(&mut crate::sql::Pg(&db)).await?);
    let mut resp = worker::Response::ok(text)?;
    (resp.headers_mut()).set("content-type", cognomega_core::metrics::CONTENT_TYPE)?;
    Ok(resp)
}

/// `GET /admin/queues`: every edge queue, as natively one entry per queue. The dead-letter depth is
/// exact (the dlq Worker records dead letters in the database); the backlog of a Cloudflare
/// Queue is not visible from a Worker, so `depth`, `in_flight`, `delayed` and
/// `oldest_age_ms` of the live queues are `null` (see the Cloudflare dashboard), and each
/// entry carries the queue's Cloudflare name and delivery settings.
async fn queues(env: &Env) -> ApiResult {
    let db = crate::db::connect(env).await?;
    let depths = dead_letter_depths(&db).await?;
    let mut list = Vec::new();
    for q in crate::consumers::queues() {
        let dlq_depth = depths
            .iter()
            .find(|(name, _)| *name == q.native)
            .map_or(0, |(_, n)| *n);
        list.push(serde_json::json!({
            "queue": q.native,
            "depth": null,
            "in_flight": null,
            "delayed": null,
            "dlq_depth": dlq_depth,
            "oldest_age_ms": null,
            "cloudflare": {
                "queue": q.cloudflare,
                "dead_letter_queue": format!("{}-dlq", q.cloudflare),
                "max_retries": q.max_retries,
                "retry_delay_s": q.retry_delay_secs,
            },
        }));
    }
    http::json(200, &serde_json::json!({ "queues": list }))
}

/// `POST /admin/queues/{queue}/dlq/replay` (`{"ids": [..]}`, or no body for all): sends the
/// recorded dead letters back to their Cloudflare Queue and removes the records. A crash
/// between the send and the delete replays a message twice, which the idempotent consumers
/// absorb; it never loses one.
async fn replay(req: &mut Request, env: &Env, caller: &Caller, raw: &str) -> ApiResult {
    let queue = queue_of(raw.trim_end_matches(".dlq"))?;
    let ids = admin::replay_ids(&req.bytes().await?)?;
    let dlq = format!("{}.dlq", queue.native);
    let db = crate::db::connect(env).await?;
    let rows = db
        .query(
            "SELECT id, body, request_id FROM queue_messages
             WHERE queue = $1 AND original_queue IS NOT NULL AND state < 2
               AND ($2::bigint[] IS NULL OR id = ANY($2::bigint[]))
             ORDER BY id",
            &[&dlq, &ids],
        )
        .await?;
    let mut replayed: Vec<i64> = Vec::with_capacity(rows.len());
    for r in &rows {
        let text = String::from_utf8_lossy(&r.get::<_, Vec<u8>>(1)).into_owned();
        let request_id = r
            .get::<_, Option<String>>(2)
            .unwrap_or_else(|| caller.request_id.clone());
        if let Err(e) = crate::consumers::send_raw(env, &queue.binding, text, &request_id).await {
            // What went out is removed; the rest stays dead for the next replay.
            if !replayed.is_empty() {
                db.execute(
                    "DELETE FROM queue_messages WHERE id = ANY($1::bigint[])",
                    &[&replayed],
                )
                .await?;
            }
            return Err(ApiError::unavailable(format!(
                "replayed {} of {} dead messages, then the queue refused ({e}); retry",
                replayed.len(),
                rows.len()
            )));
        }
        replayed.push(r.get(0));
    }
    if !replayed.is_empty() {
        db.execute(
            "DELETE FROM queue_messages WHERE id = ANY($1::bigint[])",
            &[&replayed],
        )
        .await?;
    }
    http::json(
        200,
        &serde_json::json!({
            "queue": queue.native,
            "dead_letter_queue": dlq,
            "replayed": replayed.len(),
        }),
    )
}

/// `GET /admin/env-snapshot`: the running configuration as this Worker sees it, built from an
/// allow-list of fields like the native one (no secret can appear). Each Worker reads its own
/// variables: the deploy steps set the shared ones on every Worker.
fn env_snapshot(env: &Env) -> ApiResult {
    let billing = crate::config::billing(env).map_err(ApiError::internal)?;
    let limits = crate::config::rate_limits(env).map_err(ApiError::internal)?;
    let mut queues = serde_json::Map::new();
    for q in crate::consumers::queues() {
        queues.insert(
            q.native.to_owned(),
            serde_json::json!({
                "cloudflare": q.cloudflare,
                "dead_letter_queue": format!("{}-dlq", q.cloudflare),
                "max_retries": q.max_retries,
                "retry_delay_s": q.retry_delay_secs,
            }),
        );
    }
    let cors = crate::config::cors_origins(env);
    let uploads = crate::files::settings(env)?;
    let guards = crate::config::cost_guards(env).map_err(ApiError::internal)?;
    let shared = cognomega_core::settings::Snapshot {
        issuer: &crate::config::issuer(env),
        audience: &crate::config::audience(env),
        token_ttl_s: crate::config::token_ttl_secs(env),
        billing: &billing,
        cors: &cors,
        uploads: &uploads,
        rate_limits: &limits,
        buckets: "durable-object",
        cost_guards: &guards,
    };
    let mut snapshot = shared.sections();
    let own = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "build": {
            "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
            "target_arch": std::env::consts::ARCH,
            "target_os": "cloudflare-workers",
        },
        "uptime_s": null,
        "backends": {
            "database": "postgres (Hyperdrive)",
            "objects": "r2",
            "consumers_in_process": false,
        },
        "ai": crate::ask::snapshot(env),
        "job_types": crate::voice::job_type_names(),
        "queues": queues,
    });
    if let serde_json::Value::Object(own) = own {
        snapshot.extend(own);
    }
    http::json(200, &snapshot)
}

fn queue_of(raw: &str) -> Result<&'static crate::consumers::EdgeQueue, ApiError> {
    let name = admin::queue_name(raw)?;
    crate::consumers::by_native(name.as_str()).ok_or_else(|| {
        ApiError::not_found(
            "unknown_queue",
            format!("no queue {raw} on this deployment"),
        )
    })
}

async fn dead_letters(env: &Env, raw: &str, limit: Option<&str>) -> ApiResult {
    let queue = queue_of(raw)?;
    let limit = i64::try_from(admin::dlq_limit(limit)?).unwrap_or(100);
    let dlq = format!("{}.dlq", queue.native);
    let db = crate::db::connect(env).await?;
    let rows = (Pg(&db).query(
        admin::DEAD_LETTERS_POSTGRES,
        &[dlq.as_str().into(), limit.into()],
    ))
    .await?;
    let messages = (rows.iter())
        .map(|r| {
            let original = r.opt_text(1)?;
            let body = r.opt_bytes(6)?.unwrap_or_default();
            let (attempts, error, at, dead_at) =
                (r.int(2)?, r.opt_text(3)?, r.int(4)?, r.opt_int(5)?);
            Ok(admin::dead_message(
                r.int(0)?,
                original.as_deref(),
                attempts,
                error,
                at,
                dead_at,
                &body,
            ))
        })
        .collect::<Result<Vec<_>, SqlError>>()?;
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
    admin::check_injected(&body)?;
    crate::consumers::send_raw(
        env,
        &queue.binding,
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

/// `GET /admin/outbox`: messages staged by writes and not yet sent (the edge's transactional
/// outbox): how many, the oldest one's age, and the last send errors.
async fn outbox(env: &Env) -> ApiResult {
    let db = crate::db::connect(env).await?;
    let (pending, oldest) = cognomega_core::outbox::pending(&mut crate::sql::Pg(&db))
        .await
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let now = worker::Date::now().as_millis() as i64;
    let failing = db
        .query(
            "SELECT queue, attempts, last_error FROM outbox
             WHERE sent_at IS NULL AND last_error IS NOT NULL ORDER BY id LIMIT 20",
            &[],
        )
        .await?;
    let failing: Vec<serde_json::Value> = failing
        .iter()
        .map(|r| {
            serde_json::json!({
                "queue": r.get::<_, String>(0),
                "attempts": r.get::<_, i32>(1),
                "last_error": r.get::<_, Option<String>>(2),
            })
        })
        .collect();
    http::json(
        200,
        &serde_json::json!({
            "pending": pending,
            "oldest_age_ms": oldest.map(|t| (now - t).max(0)),
            "failing": failing,
        }),
    )
}
