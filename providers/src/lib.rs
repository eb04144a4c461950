//! Model providers behind one port. Each adapter is a real HTTP client of its provider's API:
//! Cloudflare Workers AI (`cfai`) and OpenAI-compatible chat completions (`openai`: Groq,
//! OpenAI, or any compatible server such as llama.cpp or Ollama). The orchestrator tries them
//! in the configured order, falling back on connect errors, timeouts, 429 and 5xx (never on
//! another 4xx: the request itself is wrong), and skips a provider whose circuit is open.
//!
//! The protocol side (request bodies, answers, streamed events, error classification, routing
//! with circuit breakers, token counting, the answer's shape) has no transport and no async
//! runtime and builds for wasm32: the edge (`wrangler/edge`) routes with it over `fetch` and
//! the Workers AI binding. The reqwest adapters and the `Orchestrator` are the feature `http`
//! (default).
#![forbid(unsafe_code)]

pub mod answer;
#[cfg(feature = "http")]
pub mod cartesia;
#[cfg(feature = "http")]
pub mod cfai;
#[cfg(feature = "http")]
pub mod cfai_voice;
mod config;
#[cfg(feature = "fake")]
pub mod fake;
pub mod metrics;
#[cfg(feature = "http")]
pub mod openai;
#[cfg(feature = "http")]
mod orchestrator;
pub mod protocol;
mod routing;
pub mod sse;
#[cfg(feature = "http")]
mod stream;
pub mod tokens;
#[cfg(feature = "http")]
pub mod voice;
pub mod voice_protocol;

use cognomega_core::ai::Message;
#[cfg(feature = "http")]
use cognomega_core::ai::{Failure, ProviderId};

pub use config::{ProviderSettings, ProvidersConfig};
#[cfg(feature = "http")]
pub use orchestrator::{Orchestrator, Routed, RoutedStream};
pub use routing::{no_provider, Answered, AskFailure, Attempt, Router};

/// One call to a provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    /// The provider's model name.
    pub model: String,
    /// The conversation.
    pub messages: Vec<Message>,
    /// Output cap.
    pub max_tokens: u32,
}

/// Token counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// Prompt tokens.
    pub tokens_in: u64,
    /// Output tokens.
    pub tokens_out: u64,
}

/// A whole answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// The text.
    pub output: String,
    /// The model that answered (as the provider names it).
    pub model: String,
    /// What the provider reported, if it did.
    pub usage: Option<Usage>,
}

/// A piece of a streamed answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Chunk {
    /// More text.
    Text(String),
    /// The provider's token counts (usually last).
    Usage(Usage),
}

/// A streamed answer: chunks until the provider ends it (or fails).
#[cfg(feature = "http")]
pub type ChunkStream = futures::stream::BoxStream<'static, Result<Chunk, Failure>>;

/// The port every provider adapter implements.
#[cfg(feature = "http")]
#[async_trait::async_trait]
pub trait ModelProvider: Send + Sync + std::fmt::Debug {
    /// Which provider this is.
    fn id(&self) -> ProviderId;

    /// One whole answer.
    async fn complete(&self, call: &Call) -> Result<Completion, Failure>;

    /// A streamed answer; fails before the first chunk when the provider refuses or is down.
    async fn stream(&self, call: &Call) -> Result<ChunkStream, Failure>;
}

/// Sends a provider request within `timeout`; a non-2xx answer becomes its [`Failure`].
#[cfg(feature = "http")]
pub(crate) async fn send(
    request: reqwest::RequestBuilder,
    timeout: std::time::Duration,
) -> Result<reqwest::Response, Failure> {
    let response = tokio::time::timeout(timeout, request.send())
        .await
        .map_err(|_| Failure::Timeout)?
        .map_err(|e| transport(&e))?;
    let status = response.status().as_u16();
    if !(200..300).contains(&status) {
        let text = response.text().await.unwrap_or_default();
        return Err(protocol::status_failure(status, &text));
    }
    Ok(response)
}

/// A whole JSON answer, within `timeout`.
#[cfg(feature = "http")]
pub(crate) async fn read_json(
    response: reqwest::Response,
    timeout: std::time::Duration,
) -> Result<serde_json::Value, Failure> {
    tokio::time::timeout(timeout, response.json())
        .await
        .map_err(|_| Failure::Timeout)?
        .map_err(|e| transport(&e))
}

/// Maps a transport error to a [`Failure`].
#[cfg(feature = "http")]
pub(crate) fn transport(e: &reqwest::Error) -> Failure {
    let text = protocol::short(&e.to_string());
    if e.is_timeout() {
        Failure::Timeout
    } else if e.is_decode() || e.is_body() {
        Failure::Protocol(text)
    } else {
        Failure::Connect(text)
    }
}
