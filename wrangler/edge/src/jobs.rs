//! The jobs service (`POST /jobs`, `GET /jobs/{id}`, `POST /jobs/{id}/cancel`,
//! `GET /jobs/{id}/artifacts/{name}`) and the `jobs.<type>` consumers, which host the job
//! workflow the native workers run (`cognomega-workflows`): every registered job type, progress
//! stage by stage, cancel at the next stage boundary; artifacts stored in R2 under the native
//! key layout (`inputs/…`, `artifacts/<tenant>/<job>/<name>`).

use cognomega_core::limits::CostMetric;
use cognomega_r2_lifecycle::codec::{self, CodecPolicy};
use cognomega_workflows::jobs::{Delivery, Outcome};
use cognomega_workflows::jobs_api::{self, Download, Send};
use cognomega_workflows::submit::{SubmitRequest, SubmitSettings};
use worker::{Env, MessageExt, Method, Request, Response};

use crate::consumers::EdgeQueue;
use crate::host::Writes;
use crate::http::{self, ApiError, ApiResult, Caller};
use crate::sql::Pg;

/// The message on `jobs.<type>`.
pub use cognomega_core::queue::catalog::jobs::JobMessage;

use cognomega_workflows::submit::BODY_LIMIT as JOBS_BODY_LIMIT;

pub async fn route(req: &mut Request, env: &Env, caller: &Caller) -> ApiResult {
    let path = req.path();
    let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match (req.method(), parts.as_slice()) {
        (Method::Post, ["jobs"]) => submit(req, env, caller).await,
        (Method::Get | Method::Head, ["jobs"]) => list(req, env, caller).await,
        (Method::Get | Method::Head, ["jobs", id]) => get(env, caller, id).await,
        (Method::Post, ["jobs", id, "cancel"]) => cancel(env, caller, id).await,
        (Method::Get | Method::Head, ["jobs", id, "artifacts", name]) => {
            artifact(req, env, caller, id, name).await
        }
        (_, ["jobs"] | ["jobs", _] | ["jobs", _, "cancel"] | ["jobs", _, "artifacts", _]) => {
            Err(http::no_route(true))
        }
        _ => Err(http::no_route(false)),
    }
}

async fn submit(req: &mut Request, env: &Env, caller: &Caller) -> ApiResult {
    let claims = caller.claims()?;
    let key = req.headers().get("idempotency-key")?;
    cognomega_workflows::submit::parse_key(key.as_deref().map(str::as_bytes))?;
    let body = req.bytes().await?;
    if body.len() > JOBS_BODY_LIMIT {
        return Err(ApiError::new(
            413,
            "body_too_large",
            format!("the body is larger than {JOBS_BODY_LIMIT} bytes"),
        ));
    }
    let request = SubmitRequest::parse(&body)?;
    // Only the job types with a queue on this deployment.
    let registry = cognomega_pipelines::Registry::new(
        (crate::voice::job_types(env).iter())
            .filter(|t| crate::consumers::by_native(&format!("jobs.{}", t.name())).is_some())
            .cloned()
            .collect(),
    );
    let billing = crate::config::billing(env).map_err(ApiError::internal)?;
    let settings = SubmitSettings {
        registry: &registry,
        floor: billing.guest_floor,
        runs_per_hour: crate::usage::cost_cap(env, claims.tier, CostMetric::JobRunsPerHour)?,
    };
    let db = crate::db::connect(env).await?;
    let host = Writes::new(env, &db);
    let key = key.as_deref().map(str::as_bytes);
    let submit = request.submit(&claims.tenant, key, &caller.request_id);
    let submitted = cognomega_workflows::submit::submit(&host, settings, submit).await?;
    host.relay(&format!("job {}", submitted.id())).await;
    answer(&submitted)
}

/// A submit's answer: 202 (or 200 for an `Idempotency-Key` replay), the job, and `Location`.
pub fn answer(submitted: &cognomega_workflows::submit::Submitted) -> ApiResult {
    let mut resp = http::json(submitted.status(), &submitted.body())?;
    resp.headers_mut()
        .set("location", &format!("/jobs/{}", submitted.id()))?;
    Ok(resp)
}

async fn get(env: &Env, caller: &Caller, id: &str) -> ApiResult {
    let claims = caller.claims()?;
    let db = crate::db::connect(env).await?;
    http::json(200, &jobs_api::get(&mut Pg(&db), &claims.tenant, id).await?)
}

/// `GET /jobs?status=&type=&limit=&cursor=`: newest first, `next_cursor` for the next page.
async fn list(req: &Request, env: &Env, caller: &Caller) -> ApiResult {
    let claims = caller.claims()?;
    let url = req.url()?;
    let (mut status, mut job_type, mut limit, mut cursor) = (None, None, None, None);
    for (k, v) in url.query_pairs() {
        let slot = match k.as_ref() {
            "status" => &mut status,
            "type" => &mut job_type,
            "limit" => &mut limit,
            "cursor" => &mut cursor,
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("unknown query parameter {other:?}; this route takes status, type, limit and cursor"),
                ))
            }
        };
        *slot = Some(v.into_owned());
    }
    let query = jobs_api::ListQuery {
        status: status.as_deref(),
        job_type: job_type.as_deref(),
        limit: limit.as_deref(),
        cursor: cursor.as_deref(),
    };
    let db = crate::db::connect(env).await?;
    http::json(
        200,
        &jobs_api::list(&mut Pg(&db), &claims.tenant, query).await?,
    )
}

/// `POST /jobs/{id}/cancel`: a queued job at once, a running one at its next stage boundary.
async fn cancel(env: &Env, caller: &Caller, id: &str) -> ApiResult {
    let claims = caller.claims()?;
    let db = crate::db::connect(env).await?;
    let (status, body) = jobs_api::cancel(&Writes::new(env, &db), &claims.tenant, id).await?;
    http::json(status, &body)
}

async fn artifact(req: &Request, env: &Env, caller: &Caller, id: &str, name: &str) -> ApiResult {
    let claims = caller.claims()?;
    let if_none_match = req.headers().get("if-none-match")?;
    let accept_encoding = req.headers().get("accept-encoding")?;
    let db = crate::db::connect(env).await?;
    let download = jobs_api::download(
        &mut Pg(&db),
        &claims.tenant,
        id,
        name,
        if_none_match.as_deref(),
        accept_encoding.as_deref(),
    )
    .await?;
    let (artifact, etag, send) = match download {
        Download::NotModified { etag } => {
            let resp = Response::empty()?.with_status(304);
            resp.headers().set("etag", &etag)?;
            return Ok(resp);
        }
        Download::Serve {
            artifact,
            etag,
            send,
        } => (artifact, etag, send),
    };
    let Some(stored) = crate::r2::get_bytes(&env.bucket("OBJECTS")?, &artifact.object_key).await?
    else {
        return Err(jobs_api::expired().into());
    };
    let resp = match send {
        Send::Plain => Response::from_bytes(stored)?,
        Send::Encoded(compression) => {
            let r = Response::from_bytes(stored)?;
            r.headers().set("content-encoding", compression.as_str())?;
            r
        }
        Send::Decoded(compression) => {
            let max = u64::try_from(artifact.size).unwrap_or(0);
            let plain = codec::decode(&stored, compression, max)
                .map_err(|e| ApiError::internal(format!("artifact decode: {e}")))?;
            Response::from_bytes(plain)?
        }
    };
    resp.headers().set("content-type", &artifact.content_type)?;
    resp.headers().set("etag", &etag)?;
    resp.headers().set("vary", "accept-encoding")?;
    Ok(resp)
}

/// The `jobs.<type>` consumers (max_batch_size 1): each delivery runs the job workflow
/// (`cognomega_workflows::jobs`), the same code the native workers run.
pub async fn run_batch(
    db: &tokio_postgres::Client,
    env: &Env,
    queue: &EdgeQueue,
    messages: &[worker::Message<serde_json::Value>],
) -> Result<(), String> {
    let prices = crate::config::billing(env)?.prices;
    let registry = crate::voice::job_types(env);
    let resolve = |name: &str| registry.get(name);
    let host = Writes::new(env, db);
    for (msg, job, _request_id) in crate::consumers::decode_all::<JobMessage>(queue, messages) {
        // The attempt fence: this delivery owns the job under its message id (stable across
        // Cloudflare's redeliveries of the same message).
        let owner = msg.id();
        let delivery = Delivery {
            job_id: &job.job_id,
            owner: &owner,
            attempts: None,
            max_deliveries: queue.max_retries + 1,
            lease_ms: cognomega_core::jobs::EDGE_LEASE_MS,
            prices: &prices,
            codec: CodecPolicy::default(),
        };
        let id = &job.job_id;
        match cognomega_workflows::jobs::run(&host, &resolve, &delivery).await {
            Ok(Outcome::Succeeded { artifacts, .. }) => {
                worker::console_log!("job {id} succeeded ({artifacts} artifacts)");
                msg.ack();
                // Its usage event goes out now; a failed send is the relay cron's.
                host.relay(&format!("job {id}: usage")).await;
            }
            Ok(Outcome::Retry { reason, dead }) => {
                worker::console_warn!("job {id}: {reason}; retrying (dead: {dead})");
                crate::consumers::retry(msg, queue);
            }
            Ok(outcome) => {
                worker::console_log!("job {id}: {outcome:?}");
                msg.ack();
            }
            Err(e) => {
                // A transaction the error left open ends here, so the next message's
                // statements do not run inside it.
                let _ = db.batch_execute("ROLLBACK").await;
                worker::console_warn!("job {id}: {e}; retrying");
                crate::consumers::retry(msg, queue);
            }
        }
    }
    Ok(())
}
