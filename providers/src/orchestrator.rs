//! Routing a request across providers: order, model mapping, fallback and circuit breakers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cognomega_core::ai::{Breaker, Failure, Message, ModelMap, ProviderId};

use crate::metrics::AiMetrics;
use crate::{
    cfai::WorkersAi, openai::OpenAiCompatible, Call, ChunkStream, Completion, ModelProvider,
    ProvidersConfig,
};

/// One provider that was tried and did not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Which provider.
    pub provider: ProviderId,
    /// Why it did not answer.
    pub failure: Failure,
}

/// Why no answer came back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AskFailure {
    /// No provider is configured (or none serves the requested model).
    NoProvider,
    /// A provider refused the request itself (4xx other than 429): not retried elsewhere.
    Rejected {
        /// The provider that refused.
        provider: ProviderId,
        /// Its status.
        status: u16,
        /// Its message.
        message: String,
    },
    /// Every provider failed; each one's failure, in the order tried.
    AllFailed(Vec<Attempt>),
}

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
    breakers: Mutex<HashMap<ProviderId, Breaker>>,
    models: ModelMap,
    threshold: u32,
    cooldown: Duration,
    epoch: Instant,
    metrics: Arc<AiMetrics>,
}

impl Orchestrator {
    /// The configured providers as real HTTP clients.
    pub fn from_config(config: &ProvidersConfig) -> Result<Self, String> {
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
        Self {
            providers,
            breakers: Mutex::new(HashMap::new()),
            models,
            threshold,
            cooldown,
            epoch: Instant::now(),
            metrics: Arc::new(AiMetrics::default()),
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
        !self.providers.is_empty()
    }

    /// The providers in the order they are tried.
    #[must_use]
    pub fn order(&self) -> Vec<ProviderId> {
        self.providers.iter().map(|p| p.id()).collect()
    }

    /// Per provider/model counters.
    #[must_use]
    pub fn metrics(&self) -> &Arc<AiMetrics> {
        &self.metrics
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn with_breaker<T>(&self, id: ProviderId, f: impl FnOnce(&mut Breaker) -> T) -> T {
        let mut breakers = self
            .breakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let breaker = breakers
            .entry(id)
            .or_insert_with(|| Breaker::new(self.threshold, duration_ms(self.cooldown)));
        f(breaker)
    }

    fn settle(&self, id: ProviderId, model: &str, result: Result<(), &Failure>, took: Duration) {
        match result {
            Ok(()) => self.with_breaker(id, Breaker::success),
            Err(f) => {
                if f.trips() {
                    let now = self.now_ms();
                    self.with_breaker(id, |b| b.failure(now));
                }
                self.metrics.error(id, model, f.label());
                tracing::warn!(provider = %id, model, failure = %f, "provider call failed");
            }
        }
        self.metrics.latency(id, model, took);
    }

    /// The calls to try, in order: each provider with its model for `requested`.
    fn plan(&self, requested: Option<&str>) -> Vec<(Arc<dyn ModelProvider>, String)> {
        self.providers
            .iter()
            .filter_map(|p| Some((p.clone(), self.models.resolve(requested, p.id())?)))
            .collect()
    }

    /// Tries the plan's providers in order with `call` until one answers: the answer, who gave
    /// it, with which model, after which failed attempts, and how long it took.
    async fn route<T, F, Fut>(
        &self,
        messages: &[Message],
        requested_model: Option<&str>,
        max_tokens: u32,
        call: F,
    ) -> Result<(ProviderId, String, T, Vec<Attempt>, Duration), AskFailure>
    where
        F: Fn(Arc<dyn ModelProvider>, Call) -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let plan = self.plan(requested_model);
        if plan.is_empty() {
            return Err(AskFailure::NoProvider);
        }
        let mut attempts = Vec::new();
        for (provider, model) in plan {
            let id = provider.id();
            if !self.with_breaker(id, |b| b.allow(self.now_ms())) {
                attempts.push(Attempt {
                    provider: id,
                    failure: Failure::CircuitOpen,
                });
                self.metrics.error(id, &model, Failure::CircuitOpen.label());
                continue;
            }
            let request = Call {
                model: model.clone(),
                messages: messages.to_vec(),
                max_tokens,
            };
            let started = Instant::now();
            match call(provider, request).await {
                Ok(answer) => {
                    let took = started.elapsed();
                    self.settle(id, &model, Ok(()), took);
                    self.metrics.fallbacks(id, attempts.len());
                    return Ok((id, model, answer, attempts, took));
                }
                Err(failure) => {
                    self.settle(id, &model, Err(&failure), started.elapsed());
                    if let Failure::Rejected(status, message) = failure {
                        // The request is wrong; the breaker's trial (if this was one) ends.
                        self.with_breaker(id, Breaker::success);
                        return Err(AskFailure::Rejected {
                            provider: id,
                            status,
                            message,
                        });
                    }
                    attempts.push(Attempt {
                        provider: id,
                        failure,
                    });
                }
            }
        }
        Err(AskFailure::AllFailed(attempts))
    }

    /// One whole answer, falling back across providers.
    pub async fn complete(
        &self,
        messages: &[Message],
        requested_model: Option<&str>,
        max_tokens: u32,
    ) -> Result<Routed, AskFailure> {
        let (provider, _, completion, fallbacks, latency) = self
            .route(
                messages,
                requested_model,
                max_tokens,
                |p, call| async move { p.complete(&call).await },
            )
            .await?;
        Ok(Routed {
            provider,
            completion,
            fallbacks,
            latency,
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
        let (provider, model, chunks, fallbacks, _) = self
            .route(
                messages,
                requested_model,
                max_tokens,
                |p, call| async move { p.stream(&call).await },
            )
            .await?;
        Ok(RoutedStream {
            provider,
            model,
            chunks,
            fallbacks,
        })
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
