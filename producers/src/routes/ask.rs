//! `POST /api/si/ask`: route a request to a model provider (with fallback), count its tokens,
//! and produce `tokens_in`/`tokens_out` usage through the queue — never writing billing state
//! here. Every request is billed under an id of its own; a retry with the same
//! `Idempotency-Key` is answered from the stored first answer (JSON or the recorded stream)
//! without calling the provider, billed once (`cognomega_core::ai::replay`).

use std::convert::Infallible;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use cognomega_core::ai::replay::{self, Recorded};
use cognomega_core::ai::{ask_charge, check_budget, parse_ask, AskRequest, Verdict};
use cognomega_core::queue::OutgoingMessage;
use cognomega_providers::{answer, AskFailure, Chunk, RoutedStream, Usage};
use cognomega_stores::ask_replays::{self, Claim};
use futures::StreamExt as _;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};

use super::openapi::{schemas as s, *};
use crate::auth::Authenticated;
use crate::{current_request_id, ApiError, AppState};

#[utoipa::path(
    post,
    path = "/api/si/ask",
    operation_id = "ask",
    tag = "ai",
    security(("bearer" = [])),
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 128,
        description = "A retry with the same key (within 24 h) gets the first answer again \
            (JSON, or the recorded event stream) without asking the provider, billed once, \
            marked `Idempotent-Replayed: true`; the same key with another body ⇒ 409 \
            `idempotency_key_reused`; while the first is still being answered ⇒ 409 \
            `idempotency_key_in_flight`. Without a key every request is asked and billed")),
    request_body(content = s::AskRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The answer (JSON), or with `stream: true` Server-Sent \
            Events: `token` events `{\"text\"}`, then one `done` event with `usage`, \
            `credits_used`, `credits_balance` and `finish`",
            content(
                (s::AskAnswer = "application/json"),
                (s::AskEvent = "text/event-stream"),
            ),
            headers(
                ("X-Provider" = String, description = "The provider that answered"),
                ("X-Model" = String, description = "The model that answered"),
                ("X-Tokens-In" = u64, description = "Prompt tokens billed (JSON answers)"),
                ("X-Tokens-Out" = u64, description = "Output tokens billed (JSON answers)"),
                ("X-Credits-Used" = i64, description = "Credits charged (JSON answers)"),
                ("X-Credits-Balance" = i64, description = "Cached balance minus this charge (JSON answers)"),
                ("Server-Timing" = String, description = "Milliseconds per stage of the answer (JSON answers): `standing` (credit and budget check), `provider` (the model call, with any fallback), `bill` (the durable usage enqueue)"),
                ("Idempotent-Replayed" = String, description = "`true` on an answer replayed for a repeated Idempotency-Key"),
            )),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 402, response = PaymentRequired),
        (status = 403, response = Forbidden),
        (status = 409, response = Conflict),
        (status = 413, response = PayloadTooLarge),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 502, response = BadGateway),
        (status = 503, response = Unavailable),
    ),
)]
pub(crate) async fn ask(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let key = replay::parse_key(headers.get("idempotency-key").map(HeaderValue::as_bytes))
        .map_err(|m| ApiError::bad_request("invalid_idempotency_key", m))?;
    let req = parse_ask(&body).map_err(|e| ApiError::bad_request("invalid_body", e.to_string()))?;
    let policy = state.config.ask.tier(claims.tier);
    let verdict = policy.judge(&req);
    if let Some((status, code, message)) = verdict.refusal() {
        return Err(api_error(status, code, message));
    }
    let Verdict::Allow { max_tokens } = verdict else {
        return Err(ApiError::internal("a refused verdict has a refusal"));
    };
    if !state.ai.any() {
        return Err(no_provider());
    }
    // A repeated key is answered here, before the credit check: its answer was paid for.
    let held = match &key {
        None => None,
        Some(k) => match claim(&state, &claims.tenant, k, &body).await? {
            Ok(held) => Some(held),
            Err(replayed) => return Ok(replayed),
        },
    };
    let billing_id = replay::billing_id(&claims.tenant, key.as_deref(), || {
        uuid::Uuid::now_v7().to_string()
    });
    let asked = Asked {
        tenant: claims.tenant,
        billing_id,
        request_id: current_request_id(),
        held,
    };
    let answered = answer_ask(&state, &asked, req, max_tokens, policy.daily_tokens).await;
    match (answered, &asked.held) {
        (Ok(Answer::Json(response, recorded)), Some(held)) => {
            held.finish(&state, &recorded).await;
            Ok(response)
        }
        (Ok(Answer::Json(response, _)) | Ok(Answer::Stream(response)), _) => Ok(response),
        (Err(refused), held) => {
            // Nothing was billed: a retry with the key asks afresh.
            if let Some(held) = held {
                held.release(&state).await;
            }
            Ok(refused)
        }
    }
}

/// What the handler answers: a JSON answer (with its recording, for a held key) or a stream
/// (which records itself and finishes the key when it ends).
enum Answer {
    Json(Response, Recorded),
    Stream(Response),
}

/// One ask's identity: its tenant, the id it is billed under, the request id it is traced by,
/// and the `Idempotency-Key` it holds, if any.
#[derive(Debug, Clone)]
struct Asked {
    tenant: String,
    billing_id: String,
    request_id: String,
    held: Option<Held>,
}

/// A claimed `Idempotency-Key`: finished with the answer, or released when nothing was billed.
#[derive(Debug, Clone)]
struct Held {
    tenant: String,
    key: String,
    claimed_at: i64,
}

impl Held {
    async fn finish(&self, state: &AppState, recorded: &Recorded) {
        if let Err(e) = ask_replays::finish(
            &state.db,
            &self.tenant,
            &self.key,
            self.claimed_at,
            recorded,
        )
        .await
        {
            // The answer still goes out; a retry meets a pending key until it is abandoned,
            // then asks again, billed under the same id (once).
            tracing::warn!(error = %e, key = %self.key, "could not store an ask's answer for replays");
        }
    }

    async fn release(&self, state: &AppState) {
        if let Err(e) =
            ask_replays::release(&state.db, &self.tenant, &self.key, self.claimed_at).await
        {
            tracing::warn!(error = %e, key = %self.key, "could not release an ask's Idempotency-Key");
        }
    }
}

/// Claims `key`: `Ok(held)` to ask, or `Err(response)`: the replayed first answer, or a 409.
async fn claim(
    state: &AppState,
    tenant: &str,
    key: &str,
    body: &[u8],
) -> Result<Result<Held, Response>, ApiError> {
    let hash = replay::request_hash(body);
    let now = Utc::now().timestamp_millis();
    let claimed = ask_replays::claim(&state.db, tenant, key, &hash, now)
        .await
        .map_err(ApiError::internal)?;
    let existing = match claimed {
        Claim::Claimed(claimed_at) => {
            return Ok(Ok(Held {
                tenant: tenant.to_owned(),
                key: key.to_owned(),
                claimed_at,
            }))
        }
        Claim::Live(existing) => existing,
    };
    let decision = replay::decide(&existing, &hash);
    if let Some((status, code, message)) = replay::refusal(&decision) {
        let mut refused = api_error(status, code, message).into_response();
        if let replay::Decision::InFlight { retry_after_secs } = decision {
            refused.headers_mut().insert(
                http::header::RETRY_AFTER,
                HeaderValue::from(retry_after_secs),
            );
        }
        return Ok(Err(refused));
    }
    let replay::Decision::Replay(recorded) = decision else {
        return Err(ApiError::internal(
            "a decision that refuses nothing replays",
        ));
    };
    Ok(Err(replayed(&recorded)))
}

/// A recorded answer, sent again.
fn replayed(recorded: &Recorded) -> Response {
    let mut response = recorded.body.clone().into_response();
    *response.status_mut() = StatusCode::from_u16(recorded.status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    for (name, value) in recorded
        .headers
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .chain([
            ("content-type", recorded.content_type.as_str()),
            (replay::REPLAYED_HEADER, "true"),
        ])
    {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.insert(n, v);
        }
    }
    response
}

/// Asks: the standing check, the provider, billing. `Err` is a refusal sent before anything
/// was billed.
async fn answer_ask(
    state: &AppState,
    asked: &Asked,
    req: AskRequest,
    max_tokens: u32,
    daily_tokens: Option<u64>,
) -> Result<Answer, Response> {
    let started = Instant::now();
    check_standing(state, &asked.tenant, daily_tokens).await?;
    let standing_done = Instant::now();
    if req.stream {
        let routed = state
            .ai
            .stream(&req.messages, req.model.as_deref(), max_tokens)
            .await
            .map_err(|e| routing_error(e).into_response())?;
        return Ok(Answer::Stream(stream(
            state.clone(),
            asked.clone(),
            req,
            routed,
        )));
    }
    let routed = state
        .ai
        .complete(&req.messages, req.model.as_deref(), max_tokens)
        .await
        .map_err(|e| routing_error(e).into_response())?;
    let provider_done = Instant::now();
    let billable = answer::billable(
        routed.completion.usage,
        true,
        &req.messages,
        &routed.completion.output,
    );
    let usage = billable.usage;
    let billed = bill(state, asked, usage)
        .await
        .map_err(IntoResponse::into_response)?;
    let timing = server_timing(&[
        ("standing", started, standing_done),
        ("provider", standing_done, provider_done),
        ("bill", provider_done, Instant::now()),
    ]);
    state.ai.metrics().answered(
        routed.provider,
        &routed.completion.model,
        usage.tokens_in,
        usage.tokens_out,
        billed.credits,
    );
    let body = answer::body(
        &asked.request_id,
        routed.provider,
        &routed.completion.model,
        &routed.completion.output,
        billable,
        billed.credits,
    );
    let answer_headers = answer::headers(
        routed.provider,
        &routed.completion.model,
        billable,
        billed.credits,
        billed.balance,
    );
    let recorded = Recorded::json_answer(&answer_headers, body.to_string());
    let mut response = Json(body).into_response();
    let headers = response.headers_mut();
    for (name, value) in answer_headers
        .into_iter()
        .chain([("server-timing", timing)])
    {
        if let Ok(v) = HeaderValue::from_str(&value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    Ok(Answer::Json(response, recorded))
}

/// A `Server-Timing` value (milliseconds): where the handler spent an answer's time — the
/// standing check (flag, balance, today's tokens), the provider call (with any fallback), and
/// billing (the durable usage enqueue and the cached balance read). What the client measures
/// beyond their sum is HTTP, authentication and the JSON body.
fn server_timing(stages: &[(&str, Instant, Instant)]) -> String {
    let ms: Vec<(&str, f64)> = stages
        .iter()
        .map(|(name, from, to)| {
            (
                *name,
                to.saturating_duration_since(*from).as_secs_f64() * 1000.0,
            )
        })
        .collect();
    cognomega_core::ai::server_timing(&ms)
}

fn api_error(status: u16, code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(
        StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
        code,
        message,
    )
}

fn no_provider() -> ApiError {
    let (status, code, message) = cognomega_providers::no_provider();
    api_error(status, code, message)
}

fn routing_error(e: AskFailure) -> ApiError {
    let (status, code, message) = e.refusal();
    api_error(status, code, message)
}

/// The checks before any provider is called, on one read of the tenant's flag, stored
/// balance and tokens recorded today: 402 when it is flagged or at the floor (as for every
/// billable route), then 429 (with `Retry-After`) when its tokens today (UTC) reached its
/// tier's budget. Today's tokens come from a counter the usage-writer keeps with the events,
/// so the check costs the same however much was used.
async fn check_standing(
    state: &AppState,
    tenant: &str,
    budget: Option<u64>,
) -> Result<(), Response> {
    let now = Utc::now().timestamp();
    let standing = cognomega_stores::billing::ask_standing(&state.db, tenant, now)
        .await
        .map_err(|e| ApiError::internal(e).into_response())?;
    let flagged = standing.is_some_and(|s| s.flagged);
    // No `balances` row yet: the cache, which falls back to the ledger.
    let balance = match standing.and_then(|s| s.balance) {
        Some(b) => b,
        None => {
            state
                .balances
                .get(tenant)
                .await
                .map_err(|e| ApiError::internal(e).into_response())?
                .balance
        }
    };
    if flagged || balance <= state.config.billing.guest_floor {
        return Err(crate::routes::jobs::insufficient_credits(balance).into_response());
    }
    let used = standing.map_or(0, |s| s.tokens_today);
    if let Err(over) = check_budget(used, budget, now) {
        let mut e = api_error(429, "token_budget_exceeded", over.message).into_response();
        if let Ok(v) = HeaderValue::from_str(&over.retry_after_secs.to_string()) {
            e.headers_mut().insert(http::header::RETRY_AFTER, v);
        }
        return Err(e);
    }
    Ok(())
}

/// What a request was charged.
#[derive(Debug, Clone, Copy)]
struct Billed {
    credits: i64,
    balance: i64,
}

/// Produces the request's usage events (settled by the usage-writer and the ledger) and
/// returns the charge and the cached balance minus it.
async fn bill(state: &AppState, asked: &Asked, usage: Usage) -> Result<Billed, ApiError> {
    let tenant = asked.tenant.as_str();
    let charge = ask_charge(
        tenant,
        &asked.billing_id,
        usage.tokens_in,
        usage.tokens_out,
        &state.config.billing.prices,
        Utc::now(),
    )
    .map_err(ApiError::internal)?;
    let credits = charge.credits;
    let out = match charge.message {
        None => None,
        Some(msg) => Some(
            OutgoingMessage::json(&msg)
                .map_err(ApiError::internal)?
                .request_id(&asked.request_id),
        ),
    };
    let send = async {
        let Some(out) = out else {
            return Ok(());
        };
        state
            .queues
            .send(&cognomega_core::queue::catalog::usage::queue(), out)
            .await
            .map(drop)
            .map_err(|e| {
                ApiError::unavailable(format!(
                    "the answer could not be billed ({e}); retry (an Idempotency-Key makes a retry billed once)"
                ))
            })
    };
    // The balance is read while the enqueue waits for its commit (it cannot include this
    // request's charge either way: that settles only after the commit).
    let (sent, cached) = tokio::join!(send, state.balances.get(tenant));
    sent?;
    let balance = cached.map_err(ApiError::internal)?.balance;
    Ok(Billed {
        credits,
        balance: balance - credits,
    })
}

/// Server-Sent Events: `token` events as the provider sends text, then one `done` event with
/// the usage and credits (or `error` then `done` when the provider fails mid-stream). The
/// provider is read by a task of its own, so a client hanging up still ends in exactly one
/// billing of what was produced.
fn stream(state: AppState, asked: Asked, req: AskRequest, routed: RoutedStream) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Event>(64);
    let provider = routed.provider;
    let model = routed.model.clone();
    tokio::spawn(drive(state, asked, req, routed, tx));
    let events = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|e| (Ok::<_, Infallible>(e), rx))
    });
    let mut response = Sse::new(events)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response();
    let headers = response.headers_mut();
    for (name, value) in [
        ("x-provider", provider.as_str()),
        ("x-model", model.as_str()),
    ] {
        if let Ok(v) = HeaderValue::from_str(value) {
            headers.insert(HeaderName::from_static(name), v);
        }
    }
    response
}

/// The events a stream sent, on the wire as sent, for a held key's replays.
#[derive(Debug, Default)]
struct Recording(Option<String>);

impl Recording {
    fn event(&mut self, name: &str, data: &str) -> Event {
        if let Some(out) = &mut self.0 {
            out.push_str(&answer::sse_frame(name, data));
        }
        Event::default().event(name).data(data)
    }
}

async fn drive(
    state: AppState,
    asked: Asked,
    req: AskRequest,
    mut routed: RoutedStream,
    tx: tokio::sync::mpsc::Sender<Event>,
) {
    let mut recording = Recording(asked.held.as_ref().map(|_| String::new()));
    let mut output = String::new();
    let mut reported: Option<Usage> = None;
    let mut failure = None;
    let mut client_gone = false;
    loop {
        tokio::select! {
            chunk = routed.chunks.next() => match chunk {
                None => break,
                Some(Ok(Chunk::Usage(u))) => reported = Some(u),
                Some(Ok(Chunk::Text(text))) => {
                    output.push_str(&text);
                    let event = recording.event("token", &answer::token_event(&text));
                    if tx.send(event).await.is_err() {
                        client_gone = true;
                        break;
                    }
                }
                Some(Err(f)) => {
                    failure = Some(f);
                    break;
                }
            },
            () = tx.closed() => {
                client_gone = true;
                break;
            }
        }
    }
    // Stop reading the provider at once when the client left (it stops generating too).
    drop(routed.chunks);
    let complete = !client_gone && failure.is_none();
    let billable = answer::billable(reported, complete, &req.messages, &output);
    let usage = billable.usage;
    let billed = bill(&state, &asked, usage).await;
    let finish = answer::finish_label(client_gone, failure.is_some());
    tracing::info!(
        provider = %routed.provider,
        model = %routed.model,
        tokens_in = usage.tokens_in,
        tokens_out = usage.tokens_out,
        finish,
        "streamed ask ended"
    );
    if let Some(f) = &failure {
        let event = recording.event("error", &answer::error_event(routed.provider, f));
        let _ = tx.send(event).await;
    }
    let billed = match billed {
        Ok(b) => {
            state.ai.metrics().answered(
                routed.provider,
                &routed.model,
                usage.tokens_in,
                usage.tokens_out,
                b.credits,
            );
            Ok((b.credits, b.balance))
        }
        Err(e) => {
            tracing::error!(request_id = %asked.request_id, error = %e.message, "streamed ask could not be billed");
            Err(e)
        }
    };
    let done = answer::done_event(
        &asked.request_id,
        routed.provider,
        &routed.model,
        billable,
        billed
            .as_ref()
            .map(|b| *b)
            .map_err(|e| (e.code, e.message.as_str())),
        finish,
    );
    let done = recording.event("done", &done);
    let _ = tx.send(done).await;
    if let (Some(held), Some(body)) = (&asked.held, recording.0) {
        if billed.is_ok() {
            let recorded = Recorded::event_stream(routed.provider.as_str(), &routed.model, body);
            held.finish(&state, &recorded).await;
        } else {
            held.release(&state).await;
        }
    }
}
