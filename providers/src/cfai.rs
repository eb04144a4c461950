//! Cloudflare Workers AI over REST (the protocol is [`Protocol::WorkersAi`]). On the edge host
//! the AI binding plays this role, reading answers with the same protocol code.

use std::time::Duration;

use cognomega_core::ai::{Failure, ProviderId};

use crate::protocol::Protocol;
use crate::{Call, ChunkStream, Completion, ModelProvider, ProviderSettings};

/// The Workers AI REST client.
#[derive(Debug, Clone)]
pub struct WorkersAi {
    settings: ProviderSettings,
    timeout: Duration,
    client: reqwest::Client,
}

impl WorkersAi {
    /// A client of `settings`' account.
    #[must_use]
    pub fn new(settings: &ProviderSettings, timeout: Duration, client: reqwest::Client) -> Self {
        Self {
            settings: settings.clone(),
            timeout,
            client,
        }
    }

    async fn send(&self, call: &Call, stream: bool) -> Result<reqwest::Response, Failure> {
        let p = Protocol::WorkersAi;
        let request = self
            .client
            .post(p.url(&self.settings, &call.model))
            .bearer_auth(&self.settings.api_key)
            .json(&p.body(call, stream));
        crate::send(request, self.timeout).await
    }
}

#[async_trait::async_trait]
impl ModelProvider for WorkersAi {
    fn id(&self) -> ProviderId {
        ProviderId::Cfai
    }

    async fn complete(&self, call: &Call) -> Result<Completion, Failure> {
        let response = self.send(call, false).await?;
        let body = crate::read_json(response, self.timeout).await?;
        Protocol::WorkersAi.completion(call, &body)
    }

    async fn stream(&self, call: &Call) -> Result<ChunkStream, Failure> {
        let response = self.send(call, true).await?;
        Ok(crate::stream::chunks(
            response,
            Protocol::WorkersAi,
            self.timeout,
        ))
    }
}
