//! OpenAI-compatible chat completions (`POST {base}/chat/completions`): OpenAI, Groq, and any
//! compatible server (llama.cpp, Ollama, vLLM). Streams with `stream_options.include_usage`, so
//! the last chunk carries the token counts (Groq also sends them as `x_groq.usage`).

use std::time::Duration;

use cognomega_core::ai::{Failure, ProviderId};
use serde_json::{json, Value};

use crate::{
    status_failure, transport, Call, ChunkStream, Completion, ModelProvider, ProviderSettings,
    Usage,
};

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
        let response = tokio::time::timeout(self.timeout, request.send())
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
}

/// `usage` (or Groq's `x_groq.usage`) of a response or chunk.
fn usage_of(v: &Value) -> Option<Usage> {
    let u = v
        .get("usage")
        .filter(|u| !u.is_null())
        .or_else(|| v.pointer("/x_groq/usage"))?;
    Some(Usage {
        tokens_in: u.get("prompt_tokens")?.as_u64()?,
        tokens_out: u.get("completion_tokens")?.as_u64()?,
    })
}

#[async_trait::async_trait]
impl ModelProvider for OpenAiCompatible {
    fn id(&self) -> ProviderId {
        self.id
    }

    async fn complete(&self, call: &Call) -> Result<Completion, Failure> {
        let response = self.send(call, false).await?;
        let body: Value = tokio::time::timeout(self.timeout, response.json())
            .await
            .map_err(|_| Failure::Timeout)?
            .map_err(|e| transport(&e))?;
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
