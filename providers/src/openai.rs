//! OpenAI-compatible chat completions (`POST {base}/chat/completions`): OpenAI, Groq, and any
//! compatible server (llama.cpp, Ollama, vLLM). Streams with `stream_options.include_usage`, so
//! the last chunk carries the token counts (Groq also sends them as `x_groq.usage`).

use std::time::Duration;

use cognomega_core::ai::{Failure, ProviderId};
use serde_json::{json, Value};

use crate::{Call, ChunkStream, Completion, ModelProvider, ProviderSettings, Usage};

/// An OpenAI-compatible provider.
#[derive(Debug, Clone)]
pub struct OpenAiCompatible {
    id: ProviderId,
    url: String,
    key: String,
    timeout: Duration,
    client: reqwest::Client,
}

impl OpenAiCompatible {
    /// A client of `settings`' server.
    #[must_use]
    pub fn new(settings: &ProviderSettings, timeout: Duration, client: reqwest::Client) -> Self {
        Self {
            id: settings.id,
            url: format!("{}/chat/completions", settings.base_url),
            key: settings.api_key.clone(),
            timeout,
            client,
        }
    }

    fn body(call: &Call, stream: bool) -> Value {
        let mut body = json!({
            "model": call.model,
            "messages": call.messages,
            "max_tokens": call.max_tokens,
            "stream": stream,
        });
        if stream {
            body["stream_options"] = json!({ "include_usage": true });
        }
        body
    }

    async fn send(&self, call: &Call, stream: bool) -> Result<reqwest::Response, Failure> {
        let request = self
            .client
            .post(&self.url)
            .bearer_auth(&self.key)
            .json(&Self::body(call, stream));
        crate::send(request, self.timeout).await
    }
}

/// `usage` (or Groq's `x_groq.usage`) of a response or chunk.
fn usage_of(v: &Value) -> Option<Usage> {
    let u = v
        .get("usage")
        .filter(|u| !u.is_null())
        .or_else(|| v.pointer("/x_groq/usage"))?;
    crate::usage_from(u)
}

#[async_trait::async_trait]
impl ModelProvider for OpenAiCompatible {
    fn id(&self) -> ProviderId {
        self.id
    }

    async fn complete(&self, call: &Call) -> Result<Completion, Failure> {
        let response = self.send(call, false).await?;
        let body = crate::read_json(response, self.timeout).await?;
        let output = body
            .pointer("/choices/0/message/content")
            .and_then(Value::as_str)
            .ok_or_else(|| Failure::Protocol("no choices[0].message.content".into()))?
            .to_owned();
        Ok(Completion {
            output,
            model: body
                .get("model")
                .and_then(Value::as_str)
                .unwrap_or(&call.model)
                .to_owned(),
            usage: usage_of(&body),
        })
    }

    async fn stream(&self, call: &Call) -> Result<ChunkStream, Failure> {
        let response = self.send(call, true).await?;
        Ok(crate::sse::json_chunks(
            response,
            self.timeout,
            |v| {
                v.pointer("/choices/0/delta/content")
                    .and_then(Value::as_str)
            },
            usage_of,
        ))
    }
}
