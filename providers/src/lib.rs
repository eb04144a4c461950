//! Model providers behind one port. Each adapter is a real HTTP client of its provider's API:
//! Cloudflare Workers AI ([`cfai`]) and OpenAI-compatible chat completions ([`openai`]: Groq,
//! OpenAI, or any compatible server such as llama.cpp or Ollama). The [`Orchestrator`] tries them
//! in the configured order, falling back on connect errors, timeouts, 429 and 5xx (never on
//! another 4xx: the request itself is wrong), and skips a provider whose circuit is open.
#![forbid(unsafe_code)]

pub mod cfai;
mod config;
#[cfg(feature = "fake")]
pub mod fake;
pub mod metrics;
pub mod openai;
mod orchestrator;
mod sse;
pub mod tokens;

use std::fmt;

use cognomega_core::ai::{Failure, Message, ProviderId};
use futures::stream::BoxStream;

pub use config::{ProviderSettings, ProvidersConfig};
pub use orchestrator::{AskFailure, Attempt, Orchestrator, Routed, RoutedStream};

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
pub type ChunkStream = BoxStream<'static, Result<Chunk, Failure>>;

/// The port every provider adapter implements.
#[async_trait::async_trait]
pub trait ModelProvider: Send + Sync + fmt::Debug {
    /// Which provider this is.
    fn id(&self) -> ProviderId;

    /// One whole answer.
    async fn complete(&self, call: &Call) -> Result<Completion, Failure>;

    /// A streamed answer; fails before the first chunk when the provider refuses or is down.
    async fn stream(&self, call: &Call) -> Result<ChunkStream, Failure>;
}

/// Sends a provider request within `timeout`; a non-2xx answer becomes its [`Failure`].
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
        return Err(status_failure(status, &text));
    }
    Ok(response)
}

/// A whole JSON answer, within `timeout`.
pub(crate) async fn read_json(
    response: reqwest::Response,
    timeout: std::time::Duration,
) -> Result<serde_json::Value, Failure> {
    tokio::time::timeout(timeout, response.json())
        .await
        .map_err(|_| Failure::Timeout)?
        .map_err(|e| transport(&e))
}

/// `{"prompt_tokens","completion_tokens"}`, the usage shape both protocols report.
pub(crate) fn usage_from(u: &serde_json::Value) -> Option<Usage> {
    Some(Usage {
        tokens_in: u.get("prompt_tokens")?.as_u64()?,
        tokens_out: u.get("completion_tokens")?.as_u64()?,
    })
}

/// Maps a transport error to a [`Failure`].
pub(crate) fn transport(e: &reqwest::Error) -> Failure {
    if e.is_timeout() {
        Failure::Timeout
    } else if e.is_connect() {
        Failure::Connect(short(&e.to_string()))
    } else if e.is_decode() || e.is_body() {
        Failure::Protocol(short(&e.to_string()))
    } else {
        Failure::Connect(short(&e.to_string()))
    }
}

/// Maps a non-2xx status and its body to a [`Failure`].
pub(crate) fn status_failure(status: u16, body: &str) -> Failure {
    let message = provider_message(body);
    match status {
        429 => Failure::RateLimited,
        500..=599 => Failure::Server(status, message),
        _ => Failure::Rejected(status, message),
    }
}

/// The error message inside a provider's error body (`{"error":{"message"}}` for OpenAI,
/// `{"errors":[{"message"}]}` for Cloudflare), else the body's start.
fn provider_message(body: &str) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let found = parsed.as_ref().and_then(|v| {
        v.pointer("/error/message")
            .or_else(|| v.pointer("/errors/0/message"))
            .or_else(|| v.get("error"))
            .and_then(|m| m.as_str().map(str::to_owned))
    });
    short(&found.unwrap_or_else(|| body.to_owned()))
}

/// At most 300 characters, on one line.
pub(crate) fn short(s: &str) -> String {
    let one_line: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    one_line.trim().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_classify() {
        assert_eq!(status_failure(429, ""), Failure::RateLimited);
        assert!(
            matches!(status_failure(503, r#"{"error":{"message":"busy"}}"#), Failure::Server(503, m) if m == "busy")
        );
        assert!(
            matches!(status_failure(400, r#"{"errors":[{"message":"bad model"}]}"#), Failure::Rejected(400, m) if m == "bad model")
        );
        assert!(
            matches!(status_failure(401, "nope\nnope"), Failure::Rejected(401, m) if m == "nope nope")
        );
    }
}
