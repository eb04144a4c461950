//! The native orchestrator: the shared [`Router`] over the reqwest adapters.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cognomega_core::ai::{Message, ModelMap, ProviderId};

use crate::metrics::AiMetrics;
use crate::{
    cfai::WorkersAi, openai::OpenAiCompatible, AskFailure, Attempt, ChunkStream, Completion,
    ModelProvider, ProvidersConfig, Router,
};

/// An answer and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed {
    /// The provider that answered.
    pub provider: ProviderId,
    /// The answer.
    pub completion: Completion,
    /// Providers tried before it.
    pub fallbacks: Vec<Attempt>,
    /// How long the answering provider took.
    pub latency: Duration,
}

/// An open stream and where it comes from.
pub struct RoutedStream {
    /// The provider streaming.
    pub provider: ProviderId,
    /// Its model name.
    pub model: String,
    /// The chunks.
    pub chunks: ChunkStream,
    /// Providers tried before it.
    pub fallbacks: Vec<Attempt>,
}

impl std::fmt::Debug for RoutedStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoutedStream")
            .field("provider", &self.provider)
            .field("model", &self.model)
            .field("fallbacks", &self.fallbacks)
            .finish_non_exhaustive()
    }
}

/// The providers, in order, with a circuit breaker each.
#[derive(Debug)]
pub struct Orchestrator {
    providers: Vec<Arc<dyn ModelProvider>>,
    router: Router,
    epoch: Instant,
}

impl Orchestrator {
    /// The configured providers as real HTTP clients.
    pub fn from_config(config: &ProvidersConfig) -> Result<Self, String> {
        cognomega_core::tls::install();
        let client = reqwest::Client::builder()
            .connect_timeout(config.timeout.min(Duration::from_secs(10)))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(|e| format!("cannot build the provider HTTP client: {e}"))?;
        let providers = config
            .providers
            .iter()
            .map(|p| -> Arc<dyn ModelProvider> {
                match p.id {
                    ProviderId::Cfai => Arc::new(WorkersAi::new(p, config.timeout, client.clone())),
                    ProviderId::Groq | ProviderId::Openai => {
                        Arc::new(OpenAiCompatible::new(p, config.timeout, client.clone()))
                    }
                }
            })
            .collect();
        Ok(Self::new(
            providers,
            config.models.clone(),
            config.breaker_threshold,
            config.breaker_cooldown,
        ))
    }

    /// Over any adapters (tests, other hosts).
    #[must_use]
    pub fn new(
        providers: Vec<Arc<dyn ModelProvider>>,
        models: ModelMap,
        threshold: u32,
        cooldown: Duration,
    ) -> Self {
        let order = providers.iter().map(|p| p.id()).collect();
        Self {
            providers,
            router: Router::new(order, models, threshold, cooldown),
            epoch: Instant::now(),
        }
    }

    /// No providers: every ask gets 503.
    #[must_use]
    pub fn empty() -> Self {
        Self::new(Vec::new(), ModelMap::default(), 3, Duration::from_secs(30))
    }

    /// Whether any provider is configured.
    #[must_use]
    pub fn any(&self) -> bool {
        self.router.any()
    }

    /// The providers in the order they are tried.
    #[must_use]
    pub fn order(&self) -> Vec<ProviderId> {
        self.router.order().to_vec()
    }

    /// Per provider/model counters.
    #[must_use]
    pub fn metrics(&self) -> &Arc<AiMetrics> {
        self.router.metrics()
    }

    fn adapter(&self, id: ProviderId) -> Option<Arc<dyn ModelProvider>> {
        self.providers.iter().find(|p| p.id() == id).cloned()
    }

    /// One whole answer, falling back across providers.
    pub async fn complete(
        &self,
        messages: &[Message],
        requested_model: Option<&str>,
        max_tokens: u32,
    ) -> Result<Routed, AskFailure> {
        let a = self
            .router
            .route(
                || self.epoch.elapsed(),
                messages,
                requested_model,
                max_tokens,
                |id, call| {
                    let p = self.adapter(id);
                    async move {
                        match p {
                            Some(p) => p.complete(&call).await,
                            None => Err(unconfigured(id)),
                        }
                    }
                },
            )
            .await?;
        Ok(Routed {
            provider: a.provider,
            completion: a.value,
            fallbacks: a.fallbacks,
            latency: a.latency,
        })
    }

    /// Opens a stream, falling back across providers until one starts answering. Failures
    /// after that are the caller's (tokens already went to the client).
    pub async fn stream(
        &self,
        messages: &[Message],
        requested_model: Option<&str>,
        max_tokens: u32,
    ) -> Result<RoutedStream, AskFailure> {
        let a = self
            .router
            .route(
                || self.epoch.elapsed(),
                messages,
                requested_model,
                max_tokens,
                |id, call| {
                    let p = self.adapter(id);
                    async move {
                        match p {
                            Some(p) => p.stream(&call).await,
                            None => Err(unconfigured(id)),
                        }
                    }
                },
            )
            .await?;
        Ok(RoutedStream {
            provider: a.provider,
            model: a.model,
            chunks: a.value,
            fallbacks: a.fallbacks,
        })
    }
}

/// The router's order comes from the adapters, so every id has one; kept total anyway.
fn unconfigured(id: ProviderId) -> cognomega_core::ai::Failure {
    cognomega_core::ai::Failure::Connect(format!("{id} has no adapter"))
}
