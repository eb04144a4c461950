//! The ai service: `POST /api/si/ask`. Everything a request decides comes from the shared
//! code the native server runs: the body (`cognomega_core::ai::parse_ask`), the tier's levers
//! and budget, the routing with fallback and circuit breakers (`cognomega_providers::Router`),
//! the providers' protocols (request bodies, answers, SSE events, error classification:
//! `cognomega_providers::protocol`), token estimates, the usage events and their keys
//! (`cognomega_core::ai::ask_charge`) and the answer's shape (`cognomega_providers::answer`).
//! This module only carries the calls: `fetch` for the REST providers, the Workers AI binding
//! (`AI`) when the Worker has one, and the `usage` queue for billing.
//!
//! Circuit breakers live in the isolate's memory: each isolate learns on its own that a
//! provider is down (at most `threshold` failed calls each), and a new isolate starts closed.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use cognomega_core::ai::replay::{self, Recorded};
use cognomega_core::ai::{
    ask_charge, check_budget, parse_ask, AskPolicy, Failure, Message, ProviderId, Verdict,
};
use cognomega_providers::protocol::{self, ChunkDecoder, Protocol};
use cognomega_providers::{
    answer, Answered, Call, Chunk, Completion, ProviderSettings, ProvidersConfig, Router, Usage,
};
use futures::channel::{mpsc, oneshot};
use futures::future::Either;
use futures::{SinkExt as _, StreamExt as _};
use serde::Serialize;
use worker::{ByteStream, Context, Env, Fetch, Headers, Method, Request, RequestInit, Response};

use crate::http::{self, ApiError, ApiResult, Caller};

/// Largest body (as natively): the longest prompt, JSON-escaped, and headroom.
const ASK_BODY_LIMIT: usize = 1024 * 1024;
/// The Workers AI binding's name in the deploy config (`[ai] binding = "AI"`).
const AI_BINDING: &str = "AI";

pub async fn route(req: &mut Request, env: &Env, ctx: &Context, caller: &Caller) -> ApiResult {
    match (req.method(), req.path().as_str()) {
        (Method::Post, "/api/si/ask") => ask(req, env, ctx, caller).await,
        (_, "/api/si/ask") => Err(http::no_route(true)),
        _ => Err(http::no_route(false)),
    }
}

/// The providers of this isolate: built from the first request's environment (a Worker's
/// variables and bindings do not change while it runs), with their breakers.
struct Providers {
    config: ProvidersConfig,
    /// cfai goes through the AI binding instead of REST.
    bound: bool,
    router: Router,
}

thread_local! {
    static PROVIDERS: RefCell<Option<Rc<Providers>>> = const { RefCell::new(None) };
}

fn providers(env: &Env) -> Result<Rc<Providers>, ApiError> {
    if let Some(p) = PROVIDERS.with(|p| p.borrow().clone()) {
        return Ok(p);
    }
    let bound = env.ai(AI_BINDING).is_ok();
    let order = crate::config::var(env, "COGNOMEGA_PROVIDER_ORDER");
    let mut config = ProvidersConfig::from_vars_bound(
        |name| crate::config::var(env, name),
        order.as_deref(),
        if bound { &[ProviderId::Cfai] } else { &[] },
    )
    .map_err(|e| ApiError::internal(format!("model providers: {e}")))?;
    if let Some(secs) =
        crate::config::var(env, "COGNOMEGA_PROVIDER_TIMEOUT").and_then(|v| v.parse::<u64>().ok())
    {
        config.timeout = Duration::from_secs(secs.max(1));
    }
    let router = Router::new(
        config.providers.iter().map(|p| p.id).collect(),
        config.models.clone(),
        config.breaker_threshold,
        config.breaker_cooldown,
    );
    let p = Rc::new(Providers {
        config,
        bound,
        router,
    });
    PROVIDERS.with(|slot| *slot.borrow_mut() = Some(p.clone()));
    Ok(p)
}

/// The `ai` part of `GET /admin/env-snapshot`, keys redacted (as natively).
pub fn snapshot(env: &Env) -> serde_json::Value {
    match providers(env) {
        Ok(p) => serde_json::json!({
            "providers": p.config.providers.iter().map(|s| serde_json::json!({
                "id": s.id.as_str(),
                "base_url": if p.bound && s.id == ProviderId::Cfai {
                    "binding:AI".to_owned()
                } else {
                    s.base_url.clone()
                },
                "api_key": "[redacted]",
            })).collect::<Vec<_>>(),
            "timeout_s": p.config.timeout.as_secs_f64(),
            "models": p.config.models,
            "policy": AskPolicy::default(),
        }),
        Err(e) => serde_json::json!({ "error": e.message }),
    }
}

fn now() -> Duration {
    Duration::from_millis(worker::Date::now().as_millis())
}

fn refusal(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(status, code, message)
}

async fn ask(req: &mut Request, env: &Env, ctx: &Context, caller: &Caller) -> ApiResult {
    let claims = caller.claims()?;
    let key_header = req.headers().get("idempotency-key")?;
    let key = replay::parse_key(key_header.as_deref().map(str::as_bytes))
        .map_err(|m| ApiError::bad_request("invalid_idempotency_key", m))?;
    let body = req.bytes().await?;
    if body.len() > ASK_BODY_LIMIT {
        return Err(ApiError::new(
            413,
            "body_too_large",
            format!("the body is larger than {ASK_BODY_LIMIT} bytes"),
        ));
    }
    let ask = parse_ask(&body).map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?;
    let policy = AskPolicy::default();
    let tier = policy.tier(claims.tier);
    let verdict = tier.judge(&ask);
    if let Some((status, code, message)) = verdict.refusal() {
        return Err(refusal(status, code, message));
    }
    let Verdict::Allow { max_tokens } = verdict else {
        return Err(ApiError::internal("a refused verdict has a refusal"));
    };
    let providers = providers(env)?;
    if !providers.router.any() {
        let (status, code, message) = cognomega_providers::no_provider();
        return Err(refusal(status, code, message));
    }
    // A repeated key is answered here, before the credit check: its answer was paid for.
    let held = match &key {
        None => None,
        Some(k) => match claim(env, &claims.tenant, k, &body).await? {
            Ok(held) => Some(held),
            Err(replayed) => return Ok(replayed),
        },
    };
    let billing_id = replay::billing_id(&claims.tenant, key.as_deref(), || {
        uuid::Uuid::now_v7().to_string()
    });
    let asked = Asked {
        env: env.clone(),
        tenant: claims.tenant.clone(),
        billing_id,
        request_id: caller.request_id.clone(),
        messages: ask.messages,
        balance: 0,
        held,
    };
    let answered = answer_ask(
        ctx,
        asked,
        &providers,
        ask.model.as_deref(),
        ask.stream,
        max_tokens,
        tier.daily_tokens,
    )
    .await;
    match answered {
        Ok((resp, Some((held, recorded)))) => {
            held.finish(env, &recorded).await;
            Ok(resp)
        }
        Ok((resp, None)) => Ok(resp),
        Err((e, held)) => {
            // Nothing was billed: a retry with the key asks afresh.
            if let Some(held) = held {
                held.release(env).await;
            }
            Err(e)
        }
    }
}

/// Asks: the standing check, the provider, billing. A JSON answer comes back with its
/// recording for a held key (a stream records itself and finishes the key when it ends); an
/// error comes back with the key to release (nothing was billed).
#[allow(clippy::type_complexity)]
async fn answer_ask(
    ctx: &Context,
    mut asked: Asked,
    providers: &Rc<Providers>,
    model: Option<&str>,
    stream: bool,
    max_tokens: u32,
    daily_tokens: Option<u64>,
) -> Result<(Response, Option<(Held, Recorded)>), (ApiError, Option<Held>)> {
    let started = worker::Date::now().as_millis();
    asked.balance = match standing(&asked.env, &asked.tenant, daily_tokens).await {
        Ok(b) => b,
        Err(e) => return Err((e, asked.held)),
    };
    let standing_done = worker::Date::now().as_millis();
    if stream {
        let opened = route_ask(providers, &asked, model, max_tokens, |p, id, call| {
            open_stream(p, &asked.env, id, call)
        })
        .await;
        return match opened {
            Ok(opened) => match streamed(ctx, asked, opened) {
                Ok(resp) => Ok((resp, None)),
                Err(e) => Err((e, None)),
            },
            Err(e) => Err((e, asked.held)),
        };
    }
    let answered = route_ask(providers, &asked, model, max_tokens, |p, id, call| {
        complete(p, &asked.env, id, call)
    })
    .await;
    let answered = match answered {
        Ok(a) => a,
        Err(e) => return Err((e, asked.held)),
    };
    let completion = answered.value;
    let provider_done = worker::Date::now().as_millis();
    let billable = answer::billable(completion.usage, true, &asked.messages, &completion.output);
    let (credits, balance) = match bill(&asked, billable.usage).await {
        Ok(b) => b,
        Err(e) => return Err((e, asked.held)),
    };
    let billed = worker::Date::now().as_millis();
    // Milliseconds as the isolate's clock gives them (it advances with I/O, in whole ms).
    #[allow(clippy::cast_precision_loss)]
    let timing = cognomega_core::ai::server_timing(&[
        ("standing", standing_done.saturating_sub(started) as f64),
        (
            "provider",
            provider_done.saturating_sub(standing_done) as f64,
        ),
        ("bill", billed.saturating_sub(provider_done) as f64),
    ]);
    let body = answer::body(
        &asked.request_id,
        answered.provider,
        &completion.model,
        &completion.output,
        billable,
        credits,
    );
    let answer_headers = answer::headers(
        answered.provider,
        &completion.model,
        billable,
        credits,
        balance,
    );
    let built = (|| {
        let mut resp = http::json(200, &body)?;
        let headers = resp.headers_mut();
        for (name, value) in &answer_headers {
            headers.set(name, value)?;
        }
        headers.set("server-timing", &timing)?;
        Ok::<_, ApiError>(resp)
    })();
    let resp = built.map_err(|e| (e, None))?;
    let recorded = asked.held.map(|held| {
        (
            held,
            Recorded::json_answer(&answer_headers, body.to_string()),
        )
    });
    Ok((resp, recorded))
}

/// One request's context, kept for billing after the answer (a stream outlives the handler).
struct Asked {
    env: Env,
    tenant: String,
    /// The id the request is billed under (`replay::billing_id`).
    billing_id: String,
    request_id: String,
    messages: Vec<Message>,
    /// The balance before this request.
    balance: i64,
    /// The `Idempotency-Key` this request holds.
    held: Option<Held>,
}

/// A claimed `Idempotency-Key`: finished with the answer, or released when nothing was billed.
struct Held {
    tenant: String,
    key: String,
    claimed_at: i64,
}

impl Held {
    async fn finish(&self, env: &Env, recorded: &Recorded) {
        let json = recorded.to_json();
        let done = async {
            let db = crate::db::connect(env).await?;
            db.execute(
                replay::FINISH,
                &[&self.tenant, &self.key, &self.claimed_at, &json],
            )
            .await
            .map_err(|e| worker::Error::RustError(e.to_string()))?;
            Ok::<_, worker::Error>(())
        };
        if let Err(e) = done.await {
            // The answer still goes out; a retry meets a pending key until it is abandoned,
            // then asks again, billed under the same id (once).
            worker::console_warn!("could not store an ask's answer for replays: {e}");
        }
    }

    async fn release(&self, env: &Env) {
        let done = async {
            let db = crate::db::connect(env).await?;
            db.execute(
                replay::RELEASE,
                &[&self.tenant, &self.key, &self.claimed_at],
            )
            .await
            .map_err(|e| worker::Error::RustError(e.to_string()))?;
            Ok::<_, worker::Error>(())
        };
        if let Err(e) = done.await {
            worker::console_warn!("could not release an ask's Idempotency-Key: {e}");
        }
    }
}

/// Claims `key`: `Ok(held)` to ask, or `Err(response)`: the replayed first answer, or a 409.
async fn claim(
    env: &Env,
    tenant: &str,
    key: &str,
    body: &[u8],
) -> Result<Result<Held, Response>, ApiError> {
    let hash = replay::request_hash(body);
    let (now, expired, abandoned) =
        replay::claim_times(i64::try_from(worker::Date::now().as_millis()).unwrap_or(i64::MAX));
    let db = crate::db::connect(env).await?;
    let mut existing = None;
    // A live row can vanish between the claim and the look-up (released): then claim again.
    for _ in 0..3 {
        if let Some(row) = db
            .query_opt(
                replay::CLAIM,
                &[&tenant, &key, &hash, &now, &expired, &abandoned],
            )
            .await?
        {
            return Ok(Ok(Held {
                tenant: tenant.to_owned(),
                key: key.to_owned(),
                claimed_at: row.get(0),
            }));
        }
        if let Some(row) = db.query_opt(replay::LOOKUP, &[&tenant, &key]).await? {
            existing = Some(replay::Existing {
                request_hash: row.get(0),
                state: row.get(1),
                claimed_at: row.get(2),
                response: row.get(3),
            });
            break;
        }
    }
    drop(db);
    let existing = existing.ok_or_else(|| {
        ApiError::unavailable("the Idempotency-Key changed hands during the claim; retry")
    })?;
    let decision = replay::decide(&existing, &hash);
    if let Some((status, code, message)) = replay::refusal(&decision) {
        let mut e = refusal(status, code, message);
        if let replay::Decision::InFlight { retry_after_secs } = decision {
            e.retry_after = Some(retry_after_secs);
        }
        return Err(e);
    }
    let replay::Decision::Replay(recorded) = decision else {
        return Err(ApiError::internal(
            "a decision that refuses nothing replays",
        ));
    };
    let mut resp = Response::from_bytes(recorded.body.into_bytes())?.with_status(recorded.status);
    let headers = resp.headers_mut();
    for (name, value) in &recorded.headers {
        headers.set(name, value)?;
    }
    headers.set("content-type", &recorded.content_type)?;
    headers.set(replay::REPLAYED_HEADER, "true")?;
    Ok(Err(resp))
}

/// Routes across the providers with the shared router; failures are logged and answered as
/// natively (502 naming each provider's failure, 400 for a refused request, …).
async fn route_ask<T, F, Fut>(
    providers: &Rc<Providers>,
    asked: &Asked,
    model: Option<&str>,
    max_tokens: u32,
    call: F,
) -> Result<Answered<T>, ApiError>
where
    F: Fn(Rc<Providers>, ProviderId, Call) -> Fut,
    Fut: std::future::Future<Output = Result<T, Failure>>,
{
    let routed = providers
        .router
        .route(now, &asked.messages, model, max_tokens, |id, c| {
            call(providers.clone(), id, c)
        })
        .await;
    match routed {
        Ok(a) => {
            for f in &a.fallbacks {
                worker::console_warn!(
                    "ask {}: {} failed ({}); answered by {}",
                    asked.request_id,
                    f.provider,
                    f.failure,
                    a.provider
                );
            }
            Ok(a)
        }
        Err(e) => {
            let (status, code, message) = e.refusal();
            worker::console_warn!("ask {}: {message}", asked.request_id);
            Err(refusal(status, code, message))
        }
    }
}

/// The checks before any provider is called, as natively, on one read of the tenant's flag,
/// stored balance and tokens recorded today (the counter the usage-writer keeps): 402 when it
/// is flagged or at the floor, 429 `token_budget_exceeded` when today's tokens reached the
/// tier's budget. Returns the balance.
async fn standing(env: &Env, tenant: &str, budget: Option<u64>) -> Result<i64, ApiError> {
    let now_secs = i64::try_from(worker::Date::now().as_millis() / 1000).unwrap_or(i64::MAX);
    let day_start = now_secs - now_secs.rem_euclid(86_400);
    let db = crate::db::connect(env).await?;
    let row = db
        .query_opt(
            cognomega_core::billing::sql::ASK_STANDING,
            &[&tenant, &day_start],
        )
        .await?;
    drop(db);
    let (flagged, stored, tokens) = match row {
        Some(r) => (
            r.get::<_, bool>(0),
            r.get::<_, Option<i64>>(1),
            r.get::<_, Option<i64>>(2),
        ),
        None => (false, None, None),
    };
    // No `balances` row yet: the cache, which falls back to the ledger's settled balance.
    let balance = match stored {
        Some(b) => b,
        None => crate::billing::balance(env, tenant).await?.balance,
    };
    let floor = crate::config::billing(env)
        .map_err(ApiError::internal)?
        .guest_floor;
    if flagged || balance <= floor {
        return Err(crate::billing::insufficient_credits(balance));
    }
    let used = tokens.map_or(0, |t| u64::try_from(t).unwrap_or(0));
    if let Err(over) = check_budget(used, budget, now_secs) {
        let mut e = refusal(429, "token_budget_exceeded", over.message);
        e.retry_after = u64::try_from(over.retry_after_secs).ok();
        return Err(e);
    }
    Ok(balance)
}

/// Produces the request's usage events to the `usage` queue (settled by the usage-writer and
/// the ledger, keyed by the request's billing id) and returns the charge and the balance
/// minus it.
async fn bill(asked: &Asked, usage: Usage) -> Result<(i64, i64), ApiError> {
    let charge = ask_charge(
        &asked.tenant,
        &asked.billing_id,
        usage.tokens_in,
        usage.tokens_out,
        &crate::config::billing(&asked.env)
            .map_err(ApiError::internal)?
            .prices,
        chrono::DateTime::from_timestamp_millis(worker::Date::now().as_millis() as i64)
            .unwrap_or_default(),
    )
    .map_err(ApiError::internal)?;
    if let Some(msg) = &charge.message {
        // Staged in the outbox first (one committed row), then sent: a failed send or an
        // isolate evicted before it is the relay cron's to finish, never unbilled tokens.
        let unbilled = |e: String| {
            ApiError::unavailable(format!(
                "the answer could not be billed ({e}); retry (an Idempotency-Key makes a retry billed once)"
            ))
        };
        let batch = crate::outbox::batch_id();
        let db = crate::db::connect(&asked.env)
            .await
            .map_err(|e| unbilled(e.to_string()))?;
        crate::outbox::stage(&db, &batch, "usage", msg, &asked.request_id)
            .await
            .map_err(unbilled)?;
        drop(db);
        if let Err(e) = crate::outbox::relay(&asked.env, Some(&batch)).await {
            worker::console_warn!(
                "ask {}: usage relay: {e}; the relay cron sends it",
                asked.request_id
            );
        }
    }
    Ok((charge.credits, asked.balance - charge.credits))
}

// ---------------------------------------------------------------------------------------------
// Transport: fetch and the AI binding
// ---------------------------------------------------------------------------------------------

fn settings(p: &Providers, id: ProviderId) -> Result<&ProviderSettings, Failure> {
    p.config
        .providers
        .iter()
        .find(|s| s.id == id)
        .ok_or_else(|| Failure::Connect(format!("{id} is not configured")))
}

/// `f`, or [`Failure::Timeout`] after `limit`.
async fn within<T>(limit: Duration, f: impl std::future::Future<Output = T>) -> Result<T, Failure> {
    let delay = worker::Delay::from(limit);
    futures::pin_mut!(f);
    futures::pin_mut!(delay);
    match futures::future::select(f, delay).await {
        Either::Left((v, _)) => Ok(v),
        Either::Right(_) => Err(Failure::Timeout),
    }
}

/// What the AI binding takes (a plain object: a `serde_json::Value` would cross as a JS Map).
#[derive(Serialize)]
struct AiInput<'a> {
    messages: &'a [Message],
    max_tokens: u32,
    stream: bool,
}

fn binding_failure(e: &worker::Error) -> Failure {
    // The binding reports errors as exceptions without an HTTP status: treated as the
    // provider's failure, so the next provider is tried.
    Failure::Server(500, protocol::short(&e.to_string()))
}

/// A REST call: the protocol's URL and body, the key as a bearer token; a non-2xx answer is
/// classified by the protocol.
async fn post(
    p: &Providers,
    id: ProviderId,
    call: &Call,
    stream: bool,
) -> Result<Response, Failure> {
    let s = settings(p, id)?;
    let proto = Protocol::of(id);
    let headers = Headers::new();
    let connect = |e: worker::Error| Failure::Connect(protocol::short(&e.to_string()));
    headers
        .set("authorization", &format!("Bearer {}", s.api_key))
        .map_err(connect)?;
    headers
        .set("content-type", "application/json")
        .map_err(connect)?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(proto.body(call, stream).to_string().into()));
    let request = Request::new_with_init(&proto.url(s, &call.model), &init).map_err(connect)?;
    let mut resp = within(p.config.timeout, Fetch::Request(request).send())
        .await?
        .map_err(connect)?;
    let status = resp.status_code();
    if !(200..300).contains(&status) {
        let text = within(p.config.timeout, resp.text())
            .await?
            .unwrap_or_default();
        return Err(protocol::status_failure(status, &text));
    }
    Ok(resp)
}

async fn complete(
    p: Rc<Providers>,
    env: &Env,
    id: ProviderId,
    call: Call,
) -> Result<Completion, Failure> {
    if id == ProviderId::Cfai && p.bound {
        let ai = env.ai(AI_BINDING).map_err(|e| binding_failure(&e))?;
        let input = AiInput {
            messages: &call.messages,
            max_tokens: call.max_tokens,
            stream: false,
        };
        let result: serde_json::Value = within(p.config.timeout, ai.run(&call.model, input))
            .await?
            .map_err(|e| binding_failure(&e))?;
        return protocol::workers_ai_result(&call, &result);
    }
    let mut resp = post(&p, id, &call, false).await?;
    let text = within(p.config.timeout, resp.text())
        .await?
        .map_err(|e| Failure::Protocol(protocol::short(&e.to_string())))?;
    let body: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Failure::Protocol(format!("the answer is not JSON: {e}")))?;
    Protocol::of(id).completion(&call, &body)
}

/// An opened stream: the provider's SSE bytes and how to read them.
struct Opened {
    bytes: ByteStream,
    protocol: Protocol,
    timeout: Duration,
}

async fn open_stream(
    p: Rc<Providers>,
    env: &Env,
    id: ProviderId,
    call: Call,
) -> Result<Opened, Failure> {
    let bytes = if id == ProviderId::Cfai && p.bound {
        let ai = env.ai(AI_BINDING).map_err(|e| binding_failure(&e))?;
        let input = AiInput {
            messages: &call.messages,
            max_tokens: call.max_tokens,
            stream: true,
        };
        within(p.config.timeout, ai.run_bytes(&call.model, input))
            .await?
            .map_err(|e| binding_failure(&e))?
    } else {
        post(&p, id, &call, true)
            .await?
            .stream()
            .map_err(|e| Failure::Protocol(protocol::short(&e.to_string())))?
    };
    Ok(Opened {
        bytes,
        protocol: Protocol::of(id),
        timeout: p.config.timeout,
    })
}

// ---------------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------------

/// Server-Sent Events: `token` events as the provider sends text, then one `done` event with
/// usage and credits (`error` first when the provider fails mid-stream). The provider is read
/// by a future the runtime keeps alive after the response (`wait_until`), which bills exactly
/// once when the stream ends: normally, on a provider failure, or when the client hangs up
/// (the response stream is dropped; what was produced is billed, estimated).
fn streamed(ctx: &Context, asked: Asked, opened: Answered<Opened>) -> ApiResult {
    let (tx, rx) = mpsc::channel::<Vec<u8>>(64);
    // Dropped with the response stream: tells the reader the client is gone.
    let (here, gone) = oneshot::channel::<()>();
    let provider = opened.provider;
    let model = opened.model.clone();
    // Its own invocation scope: the fetch handler returns long before it ends.
    ctx.wait_until(crate::db::scoped(drive(asked, opened, tx, gone)));
    let body = rx.map(move |frame| {
        let _alive = &here;
        Ok::<_, worker::Error>(frame)
    });
    let mut resp = Response::from_stream(body)?;
    let headers = resp.headers_mut();
    headers.set("content-type", "text/event-stream")?;
    headers.set("x-provider", provider.as_str())?;
    headers.set("x-model", &model)?;
    Ok(resp)
}

async fn drive(
    asked: Asked,
    opened: Answered<Opened>,
    mut tx: mpsc::Sender<Vec<u8>>,
    mut gone: oneshot::Receiver<()>,
) {
    let provider = opened.provider;
    let model = opened.model;
    let Opened {
        mut bytes,
        protocol,
        timeout,
    } = opened.value;
    let mut decoder = ChunkDecoder::new(protocol);
    // The frames as sent, for a held key's replays.
    let mut recording = asked.held.as_ref().map(|_| String::new());
    let mut record = |frame: String| {
        if let Some(r) = &mut recording {
            r.push_str(&frame);
        }
        frame.into_bytes()
    };
    let mut output = String::new();
    let mut reported: Option<Usage> = None;
    let mut failure: Option<Failure> = None;
    let mut client_gone = false;
    'read: while !decoder.is_done() {
        let next = within(timeout, bytes.next());
        futures::pin_mut!(next);
        let read = match futures::future::select(next, &mut gone).await {
            Either::Right(_) => {
                client_gone = true;
                break;
            }
            Either::Left((read, _)) => read,
        };
        let chunks = match read {
            Err(f) => Err(f),
            Ok(None) => decoder.finish(),
            Ok(Some(Err(e))) => Err(Failure::Protocol(protocol::short(&e.to_string()))),
            Ok(Some(Ok(b))) => decoder.push(&b),
        };
        let chunks = match chunks {
            Ok(c) => c,
            Err(f) => {
                failure = Some(f);
                break;
            }
        };
        for chunk in chunks {
            match chunk {
                Chunk::Usage(u) => reported = Some(u),
                Chunk::Text(text) => {
                    let frame = record(answer::sse_frame("token", &answer::token_event(&text)));
                    output.push_str(&text);
                    if tx.send(frame).await.is_err() {
                        client_gone = true;
                        break 'read;
                    }
                }
            }
        }
    }
    // Stop reading the provider at once (it stops generating too).
    drop(bytes);
    let complete = !client_gone && failure.is_none();
    let billable = answer::billable(reported, complete, &asked.messages, &output);
    let billed = bill(&asked, billable.usage).await;
    let finish = answer::finish_label(client_gone, failure.is_some());
    if let Err(e) = &billed {
        worker::console_error!(
            "ask {}: the stream could not be billed: {}",
            asked.request_id,
            e.message
        );
    }
    if let Some(f) = &failure {
        let frame = record(answer::sse_frame(
            "error",
            &answer::error_event(provider, f),
        ));
        let _ = tx.send(frame).await;
    }
    let done = answer::done_event(
        &asked.request_id,
        provider,
        &model,
        billable,
        billed
            .as_ref()
            .copied()
            .map_err(|e| (e.code, e.message.as_str())),
        finish,
    );
    let _ = tx.send(record(answer::sse_frame("done", &done))).await;
    if let (Some(held), Some(body)) = (&asked.held, recording) {
        if billed.is_ok() {
            let recorded = Recorded::event_stream(provider.as_str(), &model, body);
            held.finish(&asked.env, &recorded).await;
        } else {
            held.release(&asked.env).await;
        }
    }
}
