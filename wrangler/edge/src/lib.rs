//! Cognomega on Cloudflare Workers.
//!
//! One wasm module, many Workers: every Worker in `wrangler/workers/` runs this module and its
//! `COGNOMEGA_ROLE` variable says which part of the platform it is:
//!
//! - `gateway`: the public HTTP API. Request ids, bearer verification, rate limits (a Durable
//!   Object per tenant), then a Service Binding call to the internal service owning the route.
//! - `auth`, `billing`, `usage`, `jobs`, `files`, `admin`, `ai` (`POST /api/si/ask`, `/voice/*`;
//!   a Durable Object per realtime voice session): the internal services, reachable only
//!   through those bindings.
//! - `usage-writer`, `settlement`, `jobs-sketch-to-app`, `av-scan`, `etl`, `dlq`: queue
//!   consumers.
//!
//! The rules (token format, usage validation, prices, rate-limit buckets, the job pipeline,
//! signed links, the error envelope, the model providers' protocols and routing) come from
//! `cognomega-core`, `cognomega-pipelines` and `cognomega-providers`, and the workflows (ask,
//! submit and run a job, accept and scan an upload) from `cognomega-workflows`: the same code
//! the native server runs. This crate binds them to Queues, KV, R2, Hyperdrive
//! (PostgreSQL, the same schema as `migrations/postgres`), Durable Objects, Cron Triggers,
//! `fetch` and the Workers AI binding.

mod admin;
mod ask;
mod auth;
mod billing;
mod cleanup;
mod config;
mod consumers;
mod db;
mod etl;
mod files;
mod gateway;
mod host;
mod http;
mod jobs;
mod limiter;
mod outbox;
mod r2;
mod sql;
mod usage;
mod voice;

use worker::{
    event, Context, Env, MessageBatch, Request, Response, ScheduleContext, ScheduledEvent,
};

pub use limiter::RateLimiter;
pub use voice::VoiceSession;

/// The HTTP entry point of every Worker.
#[event(fetch)]
async fn fetch(req: Request, env: Env, ctx: Context) -> worker::Result<Response> {
    db::scoped(handle(req, env, ctx)).await
}

async fn handle(req: Request, env: Env, ctx: Context) -> worker::Result<Response> {
    let role = config::role(&env);
    let resp = match role.as_str() {
        "gateway" => gateway::handle(req, &env).await,
        "auth" | "billing" | "usage" | "jobs" | "files" | "admin" | "ai" => {
            http::service(&role, req, &env, &ctx).await
        }
        // Consumers have no HTTP surface.
        _ => Ok(http::error(
            404,
            "not_found",
            "this Worker has no HTTP routes",
            &http::request_id(&req),
        )),
    };
    let resp = resp.unwrap_or_else(|e| {
        worker::console_error!("{role}: {e}");
        http::error(500, "internal", "internal error", "")
    });
    Ok(resp)
}

/// The queue entry point of every consumer Worker. Messages are acked or retried one by one;
/// the handler never returns an error (an error here resets the Wasm instance).
#[event(queue)]
async fn queue(
    batch: MessageBatch<serde_json::Value>,
    env: Env,
    _ctx: Context,
) -> worker::Result<()> {
    db::scoped(consumers::dispatch(batch, &env)).await;
    Ok(())
}

/// Cron Triggers: the periodic schedules.
#[event(scheduled)]
async fn scheduled(event: ScheduledEvent, env: Env, _ctx: ScheduleContext) {
    if let Err(e) = db::scoped(consumers::scheduled(&event.cron(), &env)).await {
        worker::console_error!("scheduled {}: {e}", event.cron());
    }
}
