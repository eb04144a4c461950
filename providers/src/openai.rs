//! OpenAI-compatible chat completions over HTTP (the protocol is
//! [`Protocol::OpenAiCompatible`]): OpenAI, Groq, and any compatible server (llama.cpp,
//! Ollama, vLLM).

use std::time::Duration;

use cognomega_core::ai::{Failure, ProviderId};

use crate::protocol::Protocol;
use crate::{Call, ChunkStream, Completion, ModelProvider, ProviderSettings};

/// An OpenAI-compatible provider.
#[derive(Debug, Clone)]
pub struct OpenAiCompatible {
    settings: ProviderSettings,
    timeout: Duration,
    client: reqwest::Client,
}

impl OpenAiCompatible {
    /// A client of `settings`' server.
    #[must_use]
    pub fn new(settings: &ProviderSettings, timeout: Duration, client: reqwest::Client) -> Self {
        Self {
            settings: settings.clone(),
            timeout,
            client,
        }
    }

    async fn send(&self, call: &Call, stream: bool) -> Result<reqwest::Response, Failure> {
        let p = Protocol::OpenAiCompatible;
        let request = self
            .client
            .post(p.url(&self.settings, &call.model))
            .bearer_auth(&self.settings.api_key)
            .json(&p.body(call, stream));
        crate::send(request, self.timeout).await
    }
}

#[async_trait::async_trait]
impl ModelProvider for OpenAiCompatible {
    fn id(&self) -> ProviderId {
        self.settings.id
    }

    async fn complete(&self, call: &Call) -> Result<Completion, Failure> {
        let response = self.send(call, false).await?;
        let body = crate::read_json(response, self.timeout).await?;
        Protocol::OpenAiCompatible.completion(call, &body)
    }

    async fn stream(&self, call: &Call) -> Result<ChunkStream, Failure> {
        let response = self.send(call, true).await?;
        Ok(crate::stream::chunks(
            response,
            Protocol::OpenAiCompatible,
            self.timeout,
        ))
    }
}
