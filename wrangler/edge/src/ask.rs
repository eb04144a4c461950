//! The ai service: `POST /api/si/ask`, the workflow the native server runs
//! (`cognomega_workflows::ask`: the body and the tier's levers, the `Idempotency-Key` replays,
//! the standing check, the routing with fallback and circuit breakers, billing, the answer in
//! both shapes). This module is its host: `fetch` for the REST providers, the Workers AI
//! binding (`AI`) when the Worker has one, the outbox for the usage, KV for the balance.
//!
//! Circuit breakers live in the isolate's memory: each isolate learns on its own that a
//! provider is down (at most `threshold` failed calls each), and a new isolate starts closed.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::rc::Rc;
use std::time::Duration;

use cognomega_core::ai::{AskPolicy, Failure, Message, ProviderId};
use cognomega_core::sql::{Executor, Outbound};
use cognomega_providers::protocol::{self, ChunkDecoder, Protocol};
use cognomega_providers::{
    AskFailure, Call, Chunk, Completion, ProviderSettings, ProvidersConfig, Router,
};
use cognomega_workflows::ask::{AskHost, AskRequest, AskSettings, Chunks, Reply, Routed};
use futures::future::Either;
use futures::StreamExt as _;
use serde::Serialize;
use worker::{ByteStream, Context, Env, Fetch, Headers, Method, Request, RequestInit, Response};

use crate::http::{self, ApiError, ApiResult, Caller};

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
    /// The tiers' levers (the config file's `[ai.policy]`).
    policy: AskPolicy,
}

thread_local! {
    static PROVIDERS: RefCell<Option<Rc<Providers>>> = const { RefCell::new(None) };
}

fn providers(env: &Env) -> Result<Rc<Providers>, ApiError> {
    if let Some(p) = PROVIDERS.with(|p| p.borrow().clone()) {
        return Ok(p);
    }
    let bound = env.ai(AI_BINDING).is_ok();
    let file = crate::config::file(env).map_err(ApiError::internal)?;
    let order = file.provider_order(crate::config::var(env, "COGNOMEGA_PROVIDER_ORDER").as_deref());
    let mut config = ProvidersConfig::from_vars_bound(
        |name| crate::config::var(env, name),
        order.as_deref(),
        if bound { &[ProviderId::Cfai] } else { &[] },
    )
    .map_err(|e| ApiError::internal(format!("model providers: {e}")))?;
    let timeout = crate::config::var(env, "COGNOMEGA_PROVIDER_TIMEOUT")
        .map(|v| v.trim().parse::<u64>())
        .transpose()
        .map_err(|e| ApiError::internal(format!("COGNOMEGA_PROVIDER_TIMEOUT: {e}")))?;
    if let Some(timeout) = file.provider_timeout(timeout).map_err(ApiError::internal)? {
        config.timeout = timeout;
    }
    config.models = file.ai.models.clone();
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
        policy: file.ai.policy.clone(),
    });
    PROVIDERS.with(|slot| *slot.borrow_mut() = Some(p.clone()));
    Ok(p)
}

/// Workers AI's REST settings of this deployment (the ones asks use), when it has them.
pub(crate) fn cfai_settings(env: &Env) -> Result<Option<ProviderSettings>, ApiError> {
    let p = providers(env)?;
    let cfai = p.config.providers.iter().find(|s| s.id == ProviderId::Cfai);
    Ok(cfai.cloned())
}

/// How long a provider gets to answer (`COGNOMEGA_PROVIDER_TIMEOUT`, `[ai] timeout_s`).
pub(crate) fn timeout(env: &Env) -> Result<Duration, ApiError> {
    providers(env).map(|p| p.config.timeout)
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
            "policy": p.policy,
        }),
        Err(e) => serde_json::json!({ "error": e.message }),
    }
}

fn now() -> Duration {
    Duration::from_millis(worker::Date::now().as_millis())
}

async fn ask(req: &mut Request, env: &Env, ctx: &Context, caller: &Caller) -> ApiResult {
    let claims = caller.claims()?;
    let key = req.headers().get("idempotency-key")?;
    let body = req.bytes().await?;
    let billing = crate::config::billing(env).map_err(ApiError::internal)?;
    let providers = providers(env)?;
    let settings = AskSettings {
        policy: &providers.policy,
        prices: &billing.prices,
        floor: billing.guest_floor,
    };
    let request = AskRequest {
        tenant: &claims.tenant,
        tier: claims.tier,
        key: key.as_deref().map(str::as_bytes),
        body: &body,
        request_id: &caller.request_id,
    };
    // Refused before a database connection is opened when the request alone decides it.
    let admitted = cognomega_workflows::ask::admit(&settings, &request)?;
    let host = EdgeAsk {
        env: env.clone(),
        providers: providers.clone(),
        db: Rc::new(crate::db::connect(env).await?),
        request_id: caller.request_id.clone(),
    };
    let reply = cognomega_workflows::ask::run(&host, settings, request, admitted)
        .await
        .map_err(ApiError::from)?;
    match reply {
        Reply::Json { headers, body } => {
            let mut resp = http::json(200, &body)?;
            for (name, value) in &headers {
                resp.headers_mut().set(name, value)?;
            }
            Ok(resp)
        }
        Reply::Replayed(recorded) => {
            let mut resp = Response::from_bytes(recorded.body.clone().into_bytes())?
                .with_status(recorded.status);
            for (name, value) in Reply::replay_headers(&recorded) {
                resp.headers_mut().set(name, value)?;
            }
            Ok(resp)
        }
        Reply::Stream {
            provider,
            model,
            events,
            driver,
        } => {
            // Its own invocation scope: the fetch handler returns long before it ends.
            ctx.wait_until(crate::db::scoped(driver));
            let body = events.map(|f| Ok::<_, worker::Error>(f.wire().into_bytes()));
            let mut resp = Response::from_stream(body)?;
            let headers = resp.headers_mut();
            headers.set("content-type", "text/event-stream")?;
            headers.set("x-provider", provider.as_str())?;
            headers.set("x-model", &model)?;
            Ok(resp)
        }
    }
}

/// The edge as the ask workflow's host: one connection for the request (kept by a stream's
/// driver until it ends), the balance in KV, the outbox for the usage, `fetch` and the AI
/// binding for the providers.
#[derive(Clone)]
struct EdgeAsk {
    env: Env,
    providers: Rc<Providers>,
    db: Rc<crate::db::Db>,
    request_id: String,
}

impl EdgeAsk {
    /// Routes across the providers with the shared router, logging each fallback.
    async fn route<T, F, Fut>(
        &self,
        messages: &[Message],
        model: Option<&str>,
        max_tokens: u32,
        call: F,
    ) -> Result<Routed<T>, AskFailure>
    where
        F: Fn(Rc<Providers>, ProviderId, Call) -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let routed = self
            .providers
            .router
            .route(now, messages, model, max_tokens, |id, c| {
                call(self.providers.clone(), id, c)
            })
            .await;
        match routed {
            Ok(a) => {
                for f in &a.fallbacks {
                    worker::console_warn!(
                        "ask {}: {} failed ({}); answered by {}",
                        self.request_id,
                        f.provider,
                        f.failure,
                        a.provider
                    );
                }
                Ok(Routed {
                    provider: a.provider,
                    model: a.model,
                    value: a.value,
                })
            }
            Err(e) => {
                worker::console_warn!("ask {}: {}", self.request_id, e.refusal().2);
                Err(e)
            }
        }
    }
}

#[async_trait::async_trait(?Send)]
impl AskHost for EdgeAsk {
    fn db(&self) -> Box<dyn Executor + '_> {
        Box::new(crate::sql::Pg(&self.db))
    }

    async fn balance(&self, tenant: &str) -> Result<i64, String> {
        crate::billing::balance(&self.env, tenant)
            .await
            .map(|b| b.balance)
            .map_err(|e| e.message)
    }

    /// Staged in the outbox first (one committed row), then sent: a failed send or an isolate
    /// evicted before it is the relay cron's to finish, never unbilled tokens.
    async fn send(&self, message: Outbound<'_>) -> Result<(), String> {
        let batch = crate::outbox::batch_id();
        let request_id = message.request_id.unwrap_or_default().to_owned();
        crate::outbox::stage_text(&self.db, &batch, message.queue, message.body, &request_id)
            .await?;
        if let Err(e) = crate::outbox::relay_on(&self.db, &self.env, Some(&batch)).await {
            worker::console_warn!("ask {request_id}: relay: {e}; the relay cron sends it");
        }
        Ok(())
    }

    fn any_provider(&self) -> bool {
        self.providers.router.any()
    }

    async fn complete(
        &self,
        messages: &[Message],
        model: Option<&str>,
        max_tokens: u32,
    ) -> Result<Routed<Completion>, AskFailure> {
        self.route(messages, model, max_tokens, |p, id, call| {
            complete(p, &self.env, id, call)
        })
        .await
    }

    async fn open(
        &self,
        messages: &[Message],
        model: Option<&str>,
        max_tokens: u32,
    ) -> Result<Routed<Chunks>, AskFailure> {
        self.route(messages, model, max_tokens, |p, id, call| {
            open_stream(p, &self.env, id, call)
        })
        .await
    }

    fn warn(&self, message: &str) {
        worker::console_warn!("ask {}: {message}", self.request_id);
    }

    fn now_ms(&self) -> i64 {
        worker::Date::now().as_millis() as i64
    }

    /// The isolate's clock (it advances with I/O, in whole milliseconds).
    #[allow(clippy::cast_precision_loss)]
    fn clock_ms(&self) -> f64 {
        worker::Date::now().as_millis() as f64
    }

    fn fresh_id(&self) -> String {
        uuid::Uuid::now_v7().to_string()
    }
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
pub(crate) async fn within<T>(
    limit: Duration,
    f: impl std::future::Future<Output = T>,
) -> Result<T, Failure> {
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

async fn open_stream(
    p: Rc<Providers>,
    env: &Env,
    id: ProviderId,
    call: Call,
) -> Result<Chunks, Failure> {
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
    Ok(chunks(bytes, Protocol::of(id), p.config.timeout))
}

/// The provider's SSE bytes as chunks, each read within `timeout`.
fn chunks(bytes: ByteStream, protocol: Protocol, timeout: Duration) -> Chunks {
    let decoder = ChunkDecoder::new(protocol);
    let state = (bytes, decoder, VecDeque::<Chunk>::new(), false);
    futures::stream::unfold(
        state,
        move |(mut bytes, mut decoder, mut ready, mut ended)| async move {
            loop {
                if let Some(c) = ready.pop_front() {
                    return Some((Ok(c), (bytes, decoder, ready, ended)));
                }
                if ended || decoder.is_done() {
                    return None;
                }
                let read = match within(timeout, bytes.next()).await {
                    Err(f) => Err(f),
                    Ok(None) => {
                        ended = true;
                        decoder.finish()
                    }
                    Ok(Some(Err(e))) => Err(Failure::Protocol(protocol::short(&e.to_string()))),
                    Ok(Some(Ok(b))) => decoder.push(&b),
                };
                match read {
                    Ok(c) => ready.extend(c),
                    Err(f) => return Some((Err(f), (bytes, decoder, ready, true))),
                }
            }
        },
    )
    .boxed_local()
}
