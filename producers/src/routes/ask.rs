//! `POST /api/si/ask`: route a request to a model provider (with fallback), count its tokens,
//! and produce `tokens_in`/`tokens_out` usage through the queue — never writing billing state
//! here. Every request is billed under an id of its own; a retry with the same
//! `Idempotency-Key` is answered from the stored first answer (JSON or the recorded stream)
//! without calling the provider, billed once (`cognomega_core::ai::replay`).

use std::convert::Infallible;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use cognomega_core::ai::{Message, ProviderId};
use cognomega_core::api::Refusal;
use cognomega_core::sql::{Executor, Outbound};
use cognomega_providers::{AskFailure, Completion, Usage};
use cognomega_workflows::ask::{self, AskHost, AskRequest, AskSettings, Chunks, Reply, Routed};
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
    let request_id = current_request_id();
    let settings = AskSettings {
        policy: &state.config.ask,
        prices: &state.config.billing.prices,
        floor: state.config.billing.guest_floor,
    };
    let req = AskRequest {
        tenant: &claims.tenant,
        tier: claims.tier,
        key: headers.get("idempotency-key").map(HeaderValue::as_bytes),
        body: &body,
        request_id: &request_id,
    };
    match ask::ask(&state, settings, req).await? {
        Reply::Json { headers, body } => {
            let mut response = Json(body).into_response();
            set_headers(&mut response, headers.iter().map(|(n, v)| (*n, v.as_str())));
            Ok(response)
        }
        Reply::Replayed(recorded) => {
            let mut response = recorded.body.clone().into_response();
            *response.status_mut() =
                StatusCode::from_u16(recorded.status).unwrap_or(StatusCode::OK);
            set_headers(&mut response, Reply::replay_headers(&recorded).into_iter());
            Ok(response)
        }
        Reply::Stream {
            provider,
            model,
            events,
            driver,
        } => {
            // The provider is read by a task of its own, so a client hanging up still ends
            // in exactly one billing of what was produced.
            tokio::spawn(driver);
            let events =
                events.map(|f| Ok::<_, Infallible>(Event::default().event(f.event).data(f.data)));
            let mut response = Sse::new(events)
                .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
                .into_response();
            set_headers(
                &mut response,
                [
                    ("x-provider", provider.as_str()),
                    ("x-model", model.as_str()),
                ]
                .into_iter(),
            );
            Ok(response)
        }
    }
}

fn set_headers<'a>(response: &mut Response, headers: impl Iterator<Item = (&'a str, &'a str)>) {
    let map = response.headers_mut();
    for (name, value) in headers {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            map.insert(n, v);
        }
    }
}

/// The native host of the ask workflow: the database, the queue driver, the balance cache and
/// the provider orchestrator (reqwest) of the server.
#[async_trait::async_trait]
impl AskHost for AppState {
    fn db(&self) -> Box<dyn Executor + '_> {
        Box::new(self.db.clone())
    }

    fn reader(&self) -> Box<dyn Executor + '_> {
        Box::new(cognomega_stores::sql::Reader(&self.db))
    }

    async fn balance(&self, tenant: &str) -> Result<i64, String> {
        self.cached_balance(tenant).await
    }

    async fn send(&self, message: Outbound<'_>) -> Result<(), String> {
        self.send_outbound(message).await
    }

    fn any_provider(&self) -> bool {
        self.ai.any()
    }

    async fn complete(
        &self,
        messages: &[Message],
        model: Option<&str>,
        max_tokens: u32,
    ) -> Result<Routed<Completion>, AskFailure> {
        let r = self.ai.complete(messages, model, max_tokens).await?;
        Ok(Routed {
            provider: r.provider,
            model: r.completion.model.clone(),
            value: r.completion,
        })
    }

    async fn open(
        &self,
        messages: &[Message],
        model: Option<&str>,
        max_tokens: u32,
    ) -> Result<Routed<Chunks>, AskFailure> {
        let r = self.ai.stream(messages, model, max_tokens).await?;
        Ok(Routed {
            provider: r.provider,
            model: r.model,
            value: r.chunks,
        })
    }

    fn answered(&self, provider: ProviderId, model: &str, usage: Usage, credits: i64) {
        self.ai
            .metrics()
            .answered(provider, model, usage.tokens_in, usage.tokens_out, credits);
    }

    fn warn(&self, message: &str) {
        tracing::warn!(request_id = %current_request_id(), "{message}");
    }

    fn now_ms(&self) -> i64 {
        Utc::now().timestamp_millis()
    }

    fn clock_ms(&self) -> f64 {
        self.started.elapsed().as_secs_f64() * 1000.0
    }

    fn fresh_id(&self) -> String {
        uuid::Uuid::now_v7().to_string()
    }
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        if r.status == 500 {
            return Self::internal(r.message);
        }
        let e = Self::new(
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            r.code,
            r.message,
        );
        match r.retry_after {
            Some(secs) => e.retry_after(secs),
            None => e,
        }
    }
}
