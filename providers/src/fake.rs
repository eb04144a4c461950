//! A stand-in model provider for tests and benchmarks: a real HTTP server on loopback speaking
//! both OpenAI chat completions (`POST /v1/chat/completions`, JSON or SSE with usage) and
//! Workers AI REST (`POST /client/v4/accounts/{account}/ai/run/{model}`, JSON or SSE). Its
//! behaviour can be switched at run time (fail with a status, hang, stream slowly, omit usage)
//! and it records every call it receives.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// What the fake answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Answer `text` (split on spaces when streaming), with usage when `usage`.
    Answer {
        /// The answer.
        text: String,
        /// Report token counts.
        usage: bool,
        /// Pause between streamed chunks.
        chunk_delay: Duration,
    },
    /// Answer with this status and an error body in the provider's format.
    Status(u16),
    /// Say nothing for this long, then answer normally.
    Hang(Duration),
}

impl Default for Behaviour {
    fn default() -> Self {
        Self::Answer {
            text: "hello from the fake provider".into(),
            usage: true,
            chunk_delay: Duration::ZERO,
        }
    }
}

/// A call the fake received.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// `openai` or `cfai` (which protocol).
    pub protocol: &'static str,
    /// The model asked for.
    pub model: String,
    /// `max_tokens` sent.
    pub max_tokens: Option<u64>,
    /// Whether it asked to stream.
    pub stream: bool,
    /// The `Authorization` header.
    pub authorization: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    behaviour: Mutex<Behaviour>,
    calls: Mutex<Vec<Received>>,
}

/// A running fake provider.
#[derive(Debug, Clone)]
pub struct FakeProvider {
    addr: SocketAddr,
    inner: Arc<Inner>,
}

/// Prompt tokens the fake reports: one per 4 bytes of content, at least 1.
#[must_use]
pub fn reported_tokens_in(body: &Value) -> u64 {
    let bytes: usize = body["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m["content"].as_str())
                .map(str::len)
                .sum()
        })
        .unwrap_or(0);
    (bytes as u64).div_ceil(4).max(1)
}

impl FakeProvider {
    /// Starts one on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(openai))
            .route("/client/v4/accounts/{account}/ai/run/{*model}", post(cfai))
            .with_state(inner.clone());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { addr, inner })
    }

    /// `http://127.0.0.1:PORT/v1` (an OpenAI/Groq base URL).
    #[must_use]
    pub fn openai_base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://127.0.0.1:PORT/client/v4` (a Workers AI base URL).
    #[must_use]
    pub fn cfai_base(&self) -> String {
        format!("http://{}/client/v4", self.addr)
    }

    /// Switches what it answers.
    pub fn set(&self, behaviour: Behaviour) {
        *self
            .inner
            .behaviour
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = behaviour;
    }

    /// The calls received so far.
    #[must_use]
    pub fn calls(&self) -> Vec<Received> {
        self.inner
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn record(
    inner: &Inner,
    protocol: &'static str,
    model: String,
    body: &Value,
    auth: Option<String>,
) -> Behaviour {
    inner
        .calls
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(Received {
            protocol,
            model,
            max_tokens: body["max_tokens"].as_u64(),
            stream: body["stream"].as_bool().unwrap_or(false),
            authorization: auth,
        });
    inner
        .behaviour
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

fn auth(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The answer after any hang.
async fn settle(behaviour: Behaviour) -> Result<(String, bool, Duration), u16> {
    match behaviour {
        Behaviour::Answer {
            text,
            usage,
            chunk_delay,
        } => Ok((text, usage, chunk_delay)),
        Behaviour::Status(s) => Err(s),
        Behaviour::Hang(d) => {
            tokio::time::sleep(d).await;
            let Behaviour::Answer {
                text,
                usage,
                chunk_delay,
            } = Behaviour::default()
            else {
                return Err(500);
            };
            Ok((text, usage, chunk_delay))
        }
    }
}

fn words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = text.split(' ').map(|w| format!("{w} ")).collect();
    if let Some(last) = out.last_mut() {
        last.pop();
    }
    out
}

fn sse(events: Vec<Value>, delay: Duration) -> Response {
    let stream = futures::stream::unfold(
        (events.into_iter(), true),
        move |(mut it, first)| async move {
            if !first && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let data = match it.next() {
                Some(v) => v.to_string(),
                None => return None,
            };
            Some((
                Ok::<_, Infallible>(Event::default().data(data)),
                (it, false),
            ))
        },
    );
    let done =
        futures::stream::once(async { Ok::<_, Infallible>(Event::default().data("[DONE]")) });
    Sse::new(futures::StreamExt::chain(stream, done)).into_response()
}

async fn openai(
    State(inner): State<Arc<Inner>>,
    headers: http::HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let behaviour = record(&inner, "openai", model.clone(), &body, auth(&headers));
    let (text, usage, delay) = match settle(behaviour).await {
        Ok(a) => a,
        Err(status) => {
            let code = http::StatusCode::from_u16(status)
                .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
            return (
                code,
                Json(
                    json!({"error": {"message": format!("fake failure {status}"), "type": "fake"}}),
                ),
            )
                .into_response();
        }
    };
    let tokens_in = reported_tokens_in(&body);
    let tokens_out = words(&text).len() as u64;
    let usage_json = json!({"prompt_tokens": tokens_in, "completion_tokens": tokens_out, "total_tokens": tokens_in + tokens_out});
    if body["stream"].as_bool().unwrap_or(false) {
        let mut events: Vec<Value> = words(&text)
            .into_iter()
            .map(|w| json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model, "choices": [{"index": 0, "delta": {"content": w}}]}))
            .collect();
        if usage {
            events.push(json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage_json}));
        }
        return sse(events, delay);
    }
    let mut answer = json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    });
    if usage {
        answer["usage"] = usage_json;
    }
    Json(answer).into_response()
}

async fn cfai(
    State(inner): State<Arc<Inner>>,
    Path((_account, model)): Path<(String, String)>,
    headers: http::HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let behaviour = record(&inner, "cfai", model, &body, auth(&headers));
    let (text, usage, delay) = match settle(behaviour).await {
        Ok(a) => a,
        Err(status) => {
            let code = http::StatusCode::from_u16(status)
                .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
            return (code, Json(json!({"success": false, "errors": [{"code": 7000, "message": format!("fake failure {status}")}], "messages": [], "result": null}))).into_response();
        }
    };
    let tokens_in = reported_tokens_in(&body);
    let tokens_out = words(&text).len() as u64;
    let usage_json = json!({"prompt_tokens": tokens_in, "completion_tokens": tokens_out, "total_tokens": tokens_in + tokens_out});
    if body["stream"].as_bool().unwrap_or(false) {
        let mut events: Vec<Value> = words(&text)
            .into_iter()
            .map(|w| json!({"response": w}))
            .collect();
        if usage {
            events.push(json!({"response": "", "usage": usage_json}));
        }
        return sse(events, delay);
    }
    let mut result = json!({"response": text});
    if usage {
        result["usage"] = usage_json;
    }
    Json(json!({"result": result, "success": true, "errors": [], "messages": []})).into_response()
}
