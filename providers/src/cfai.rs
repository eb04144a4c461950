//! Cloudflare Workers AI over REST: `POST {base}/accounts/{account}/ai/run/{model}` with
//! `{"messages","max_tokens","stream"}`; the answer is `{"result":{"response","usage"},
//! "success"}`, a stream is SSE of `{"response":"…"}` events (the last with `usage`) and
//! `[DONE]`. On the edge host the AI binding plays this role.

use std::time::Duration;

use cognomega_core::ai::{Failure, ProviderId};
use serde_json::{json, Value};

use crate::{Call, ChunkStream, Completion, ModelProvider, ProviderSettings, Usage};

/// The Workers AI REST client.
#[derive(Debug, Clone)]
pub struct WorkersAi {
    base: String,
    token: String,
    timeout: Duration,
    client: reqwest::Client,
}

impl WorkersAi {
    /// A client of `settings`' account.
    #[must_use]
    pub fn new(settings: &ProviderSettings, timeout: Duration, client: reqwest::Client) -> Self {
        Self {
            base: format!(
                "{}/accounts/{}/ai/run",
                settings.base_url,
                settings.account_id.as_deref().unwrap_or_default()
            ),
            token: settings.api_key.clone(),
            timeout,
            client,
        }
    }

    async fn send(&self, call: &Call, stream: bool) -> Result<reqwest::Response, Failure> {
        // Model names contain `@` and `/`, which the REST path takes as they are.
        let url = format!("{}/{}", self.base, call.model);
        let request = self.client.post(url).bearer_auth(&self.token).json(&json!({
            "messages": call.messages,
            "max_tokens": call.max_tokens,
            "stream": stream,
        }));
        crate::send(request, self.timeout).await
    }
}

fn usage_of(v: Option<&Value>) -> Option<Usage> {
    crate::usage_from(v?)
}

#[async_trait::async_trait]
impl ModelProvider for WorkersAi {
    fn id(&self) -> ProviderId {
        ProviderId::Cfai
    }

    async fn complete(&self, call: &Call) -> Result<Completion, Failure> {
        let response = self.send(call, false).await?;
        let body = crate::read_json(response, self.timeout).await?;
        if body.get("success").and_then(Value::as_bool) == Some(false) {
            let message = body
                .pointer("/errors/0/message")
                .and_then(Value::as_str)
                .unwrap_or("success: false");
            return Err(Failure::Server(200, crate::short(message)));
        }
        let output = body
            .pointer("/result/response")
            .and_then(Value::as_str)
            .ok_or_else(|| Failure::Protocol("no result.response".into()))?
            .to_owned();
        Ok(Completion {
            output,
            model: call.model.clone(),
            usage: usage_of(body.pointer("/result/usage")),
        })
    }

    async fn stream(&self, call: &Call) -> Result<ChunkStream, Failure> {
        let response = self.send(call, true).await?;
        Ok(crate::sse::json_chunks(
            response,
            self.timeout,
            |v| v.get("response").and_then(Value::as_str),
            |v| usage_of(v.get("usage")),
        ))
    }
}
