//! The jobs service (`POST /jobs`, `GET /jobs/{id}`, `POST /jobs/{id}/cancel`,
//! `GET /jobs/{id}/artifacts/{name}`) and the `jobs.<type>` consumers, which host the job
//! workflow the native workers run (`cognomega-workflows`): every registered job type, progress
//! stage by stage, cancel at the next stage boundary; artifacts stored in R2 under the native
//! key layout (`inputs/…`, `artifacts/<tenant>/<job>/<name>`).

use cognomega_core::billing::UsageKind;
use cognomega_core::limits::CostMetric;
use cognomega_core::sql::{Executor, SqlError, Transaction};
use cognomega_pipelines::{Artifact, JobError};
use cognomega_r2_lifecycle::codec::{self, CodecPolicy, Compression};
use cognomega_workflows::jobs::{Delivery, Outcome};
use cognomega_workflows::ports::{JobHost, ObjectStore, PipelineRun};
use cognomega_workflows::submit::{Input, Submit, SubmitSettings};
use serde::Deserialize;
use worker::{Env, MessageExt, Method, Request, Response};

use crate::consumers::EdgeQueue;
use crate::host::Writes;
use crate::http::{self, ApiError, ApiResult, Caller};
use crate::sql::{Pg, PgTx};

/// The message on `jobs.<type>`.
pub use cognomega_core::queue::catalog::jobs::JobMessage;

use cognomega_workflows::submit::BODY_LIMIT as JOBS_BODY_LIMIT;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitRequest {
    #[serde(rename = "type")]
    job_type: String,
    input: SubmitInput,
    params: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SubmitInput {
    image_base64: Option<String>,
    upload_key: Option<String>,
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found("job_not_found", format!("no job {id}"))
}

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
    let request: SubmitRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid JSON body: {e}")))?;
    let input = match (&request.input.image_base64, &request.input.upload_key) {
        (Some(b64), None) => Input::Base64(b64),
        (None, Some(k)) => Input::Upload(k),
        _ => Input::Ambiguous,
    };
    // Only the job types with a queue on this deployment.
    let registry = cognomega_pipelines::Registry::new(
        (cognomega_pipelines::registry().iter())
            .filter(|t| crate::consumers::by_native(&format!("jobs.{}", t.name())).is_some())
            .cloned()
            .collect(),
    );
    let billing = crate::config::billing(env).map_err(ApiError::internal)?;
    let settings = SubmitSettings {
        registry: &registry,
        floor: billing.guest_floor,
        runs_per_hour: crate::usage::cost_cap(env, claims.tier, CostMetric::JobRunsPerHour),
    };
    let db = crate::db::connect(env).await?;
    let host = Writes::new(env, &db)?;
    let submitted = cognomega_workflows::submit::submit(
        &host,
        settings,
        Submit {
            tenant: &claims.tenant,
            key: key.as_deref().map(str::as_bytes),
            job_type: &request.job_type,
            params: request.params.as_ref(),
            input,
            request_id: &caller.request_id,
        },
    )
    .await?;
    host.relay(&format!("job {}", submitted.id())).await;
    let mut resp = http::json(submitted.status(), &submitted.body())?;
    resp.headers_mut()
        .set("location", &format!("/jobs/{}", submitted.id()))?;
    Ok(resp)
}

const JOB_COLUMNS: &str = "id, type, status, progress::float8, stage, attempts, error, credits_charged,
    (extract(epoch FROM created_at) * 1000)::bigint, (extract(epoch FROM started_at) * 1000)::bigint,
    (extract(epoch FROM finished_at) * 1000)::bigint, cancel_requested";

const STATUSES: &[&str] = &[
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelled",
    "dead",
];

/// A job row and its artifacts as the API shows them (the native `job_json`).
async fn job_json(
    db: &tokio_postgres::Client,
    job: &tokio_postgres::Row,
) -> Result<serde_json::Value, ApiError> {
    let id: String = job.get(0);
    let artifacts = db
        .query(
            "SELECT name, content_type, size, stored_size, compression, sha256, tier
             FROM job_artifacts WHERE job_id = $1 ORDER BY name",
            &[&id],
        )
        .await?;
    let artifacts: Vec<serde_json::Value> = artifacts
        .iter()
        .map(|a| {
            let name: String = a.get(0);
            let tier: String = a.get(6);
            let url = (tier != "expired").then(|| format!("/jobs/{id}/artifacts/{name}"));
            serde_json::json!({
                "name": name,
                "content_type": a.get::<_, String>(1),
                "size": a.get::<_, i64>(2),
                "stored_size": a.get::<_, i64>(3),
                "compression": a.get::<_, String>(4),
                "sha256": a.get::<_, String>(5),
                "tier": tier,
                "url": url,
            })
        })
        .collect();
    let ms = |i: usize| crate::billing::rfc3339(job.get::<_, Option<i64>>(i));
    let mut v = serde_json::json!({
        "id": id,
        "type": job.get::<_, String>(1),
        "status": job.get::<_, String>(2),
        "progress": job.get::<_, f64>(3),
        "stage": job.get::<_, Option<String>>(4),
        "attempts": job.get::<_, i32>(5),
        "created_at": ms(8),
        "started_at": ms(9),
        "finished_at": ms(10),
        "credits_charged": job.get::<_, i64>(7),
        "artifacts": artifacts,
    });
    if let Some(error) = job.get::<_, Option<String>>(6) {
        v["error"] = serde_json::Value::String(error);
    }
    // A cancel asked for while it runs, as natively: it stops at its next stage boundary.
    if job.get::<_, bool>(11) && v["status"] == "running" {
        v["cancel_requested"] = serde_json::Value::Bool(true);
    }
    Ok(v)
}

async fn get(env: &Env, caller: &Caller, id: &str) -> ApiResult {
    let claims = caller.claims()?;
    let db = crate::db::connect(env).await?;
    let Some(job) = db
        .query_opt(
            &format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = $1 AND tenant_id = $2"),
            &[&id, &claims.tenant],
        )
        .await?
    else {
        return Err(not_found(id));
    };
    http::json(200, &job_json(&db, &job).await?)
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
    if let Some(s) = status.as_deref() {
        if !STATUSES.contains(&s) {
            return Err(ApiError::bad_request(
                "invalid_status",
                format!("status must be one of {}", STATUSES.join(", ")),
            ));
        }
    }
    let limit: i64 = match limit.as_deref() {
        None => 20,
        Some(raw) => raw
            .parse::<i64>()
            .ok()
            .filter(|l| (1..=100).contains(l))
            .ok_or_else(|| {
                ApiError::bad_request("invalid_limit", "limit must be an integer 1..=100")
            })?,
    };
    let db = crate::db::connect(env).await?;
    let rows = db
        .query(
            &format!(
                "SELECT {JOB_COLUMNS} FROM jobs WHERE tenant_id = $1 AND ($2::text IS NULL OR status = $2)
                 AND ($3::text IS NULL OR type = $3) AND ($4::text IS NULL OR id < $4) ORDER BY id DESC LIMIT $5"
            ),
            &[&claims.tenant, &status, &job_type, &cursor, &(limit + 1)],
        )
        .await?;
    let more = rows.len() > usize::try_from(limit).unwrap_or(usize::MAX);
    let page = &rows[..rows.len().min(usize::try_from(limit).unwrap_or(usize::MAX))];
    let mut items = Vec::with_capacity(page.len());
    for job in page {
        items.push(job_json(&db, job).await?);
    }
    let next = if more {
        page.last().map(|j| serde_json::Value::String(j.get(0)))
    } else {
        None
    };
    http::json(
        200,
        &serde_json::json!({ "jobs": items, "next_cursor": next.unwrap_or(serde_json::Value::Null) }),
    )
}

/// `POST /jobs/{id}/cancel`: a queued job at once, a running one at its next stage boundary.
async fn cancel(env: &Env, caller: &Caller, id: &str) -> ApiResult {
    use cognomega_core::jobs::CancelOutcome;
    let claims = caller.claims()?;
    let db = crate::db::connect(env).await?;
    let mut tx = Box::new(PgTx::begin(&db).await.map_err(ApiError::internal)?);
    let outcome = cognomega_core::jobs::cancel(&mut *tx, &claims.tenant, id, now_ms())
        .await
        .map_err(ApiError::internal)?;
    tx.commit().await.map_err(ApiError::internal)?;
    match outcome {
        CancelOutcome::NotFound => Err(not_found(id)),
        CancelOutcome::Cancelled => {
            http::json(200, &serde_json::json!({"id": id, "status": "cancelled"}))
        }
        CancelOutcome::Requested => http::json(
            202,
            &serde_json::json!({"id": id, "status": "running", "cancel_requested": true}),
        ),
        CancelOutcome::Finished(other) => Err(ApiError::new(
            409,
            "job_finished",
            format!("the job already finished ({other}); nothing to cancel"),
        )),
    }
}

async fn artifact(req: &Request, env: &Env, caller: &Caller, id: &str, name: &str) -> ApiResult {
    let claims = caller.claims()?;
    let db = crate::db::connect(env).await?;
    if db
        .query_opt(
            "SELECT 1 FROM jobs WHERE id = $1 AND tenant_id = $2",
            &[&id, &claims.tenant],
        )
        .await?
        .is_none()
    {
        return Err(not_found(id));
    }
    let Some(a) = db
        .query_opt(
            "SELECT content_type, compression, sha256, tier, object_key FROM job_artifacts
             WHERE job_id = $1 AND name = $2",
            &[&id, &name],
        )
        .await?
    else {
        return Err(ApiError::not_found(
            "artifact_not_found",
            format!("job {id} has no artifact {name}"),
        ));
    };
    let (content_type, compression, sha256, tier, object_key): (
        String,
        String,
        String,
        String,
        String,
    ) = (a.get(0), a.get(1), a.get(2), a.get(3), a.get(4));
    let etag = format!("\"{sha256}\"");
    let if_none_match = req.headers().get("if-none-match")?.unwrap_or_default();
    if if_none_match
        .split(',')
        .any(|t| t.trim() == etag || t.trim() == "*")
    {
        let resp = Response::empty()?.with_status(304);
        resp.headers().set("etag", &etag)?;
        return Ok(resp);
    }
    let expired = || {
        ApiError::new(
            410,
            "artifact_expired",
            "the artifact's storage has expired",
        )
    };
    if tier == "expired" {
        return Err(expired());
    }
    let Some(object) = env.bucket("OBJECTS")?.get(&object_key).execute().await? else {
        return Err(expired());
    };
    let stored = object
        .body()
        .ok_or_else(|| ApiError::internal("an R2 object without a body"))?
        .bytes()
        .await?;
    let compression: Compression = compression.parse().unwrap_or(Compression::None);
    let accepts = req
        .headers()
        .get("accept-encoding")?
        .unwrap_or_default()
        .split(',')
        .any(|e| {
            e.split(';')
                .next()
                .is_some_and(|e| e.trim().eq_ignore_ascii_case(compression.as_str()))
        });
    let resp = if compression == Compression::None {
        Response::from_bytes(stored)?
    } else if accepts {
        let r = Response::from_bytes(stored)?;
        r.headers().set("content-encoding", compression.as_str())?;
        r
    } else {
        let plain = codec::decode(&stored, compression, 512 * 1024 * 1024)
            .map_err(|e| ApiError::internal(format!("artifact decode: {e}")))?;
        Response::from_bytes(plain)?
    };
    resp.headers().set("content-type", &content_type)?;
    resp.headers().set("etag", &etag)?;
    resp.headers().set("vary", "accept-encoding")?;
    Ok(resp)
}

/// The edge as the job workflow's host: the request's connection, R2 and the worker's clock;
/// the pipeline runs inside the invocation, its progress written stage by stage.
struct EdgeJobs<'a> {
    db: &'a tokio_postgres::Client,
    objects: crate::r2::Objects,
    /// The outbox batch of the last transaction (the success's usage event).
    batch: std::cell::RefCell<Option<String>>,
}

fn now_ms() -> i64 {
    worker::Date::now().as_millis() as i64
}

#[async_trait::async_trait(?Send)]
impl JobHost for EdgeJobs<'_> {
    fn objects(&self) -> &dyn ObjectStore {
        &self.objects
    }

    fn db(&self) -> Box<dyn Executor + '_> {
        Box::new(Pg(self.db))
    }

    async fn begin(&self) -> Result<Box<dyn Transaction + '_>, SqlError> {
        let tx = PgTx::begin(self.db).await?;
        *self.batch.borrow_mut() = Some(tx.batch.clone());
        Ok(Box::new(tx))
    }

    fn now_ms(&self) -> i64 {
        now_ms()
    }

    async fn run(&self, run: PipelineRun) -> Result<Vec<Artifact>, JobError> {
        run.execute(Pg(self.db), now_ms).await
    }
}

/// The `jobs.<type>` consumers (max_batch_size 1): each delivery runs the job workflow
/// (`cognomega_workflows::jobs`), the same code the native workers run.
pub async fn run_batch(
    db: &tokio_postgres::Client,
    env: &Env,
    queue: &EdgeQueue,
    messages: &[worker::Message<serde_json::Value>],
) -> Result<(), String> {
    let credits = crate::config::billing(env)?
        .prices
        .charge(UsageKind::Job, 1);
    let registry = cognomega_pipelines::registry();
    let resolve = |name: &str| registry.get(name);
    let host = EdgeJobs {
        db,
        objects: crate::r2::Objects::of(env).map_err(|e| e.to_string())?,
        batch: std::cell::RefCell::new(None),
    };
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
            credits,
            codec: CodecPolicy::default(),
        };
        let id = &job.job_id;
        match cognomega_workflows::jobs::run(&host, &resolve, &delivery).await {
            Ok(Outcome::Succeeded { artifacts, .. }) => {
                worker::console_log!("job {id} succeeded ({artifacts} artifacts)");
                msg.ack();
                // Its usage event goes out now; a failed send is the relay cron's.
                let batch = host.batch.borrow_mut().take();
                if let Err(e) = crate::outbox::relay(env, batch.as_deref()).await {
                    worker::console_warn!("job {id}: usage relay: {e}; the relay cron sends it");
                }
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
