//! Routing a request across providers, whatever carries the calls: the order, the model each
//! provider runs, the fallback rule (connect errors, timeouts, 429 and 5xx move on; another
//! 4xx stops: the request itself is wrong) and a circuit breaker per provider. No clock and no
//! runtime of its own: the host passes the time and the call, so the native server (reqwest)
//! and the edge (fetch, the AI binding) route with the same code.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cognomega_core::ai::{Breaker, Failure, Message, ModelMap, ProviderId};

use crate::metrics::AiMetrics;
use crate::Call;

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

impl AskFailure {
    /// The answer to the client: status, error code and message.
    #[must_use]
    pub fn refusal(&self) -> (u16, &'static str, String) {
        match self {
            Self::NoProvider => (
                503,
                "no_provider_for_model",
                "no configured provider serves the requested model; omit model or use a mapped alias".into(),
            ),
            Self::Rejected {
                provider,
                status,
                message,
            } => (
                // The request is wrong (or the provider's key is): not retried elsewhere.
                if matches!(status, 401 | 403) { 502 } else { 400 },
                "provider_rejected",
                format!("{provider} refused the request (HTTP {status}): {message}"),
            ),
            Self::AllFailed(attempts) => {
                let each: Vec<String> = attempts
                    .iter()
                    .map(|a| format!("{}: {}", a.provider, a.failure))
                    .collect();
                (
                    502,
                    "all_providers_failed",
                    format!("every provider failed — {}; retry later", each.join("; ")),
                )
            }
        }
    }
}

/// 503 `no_provider_configured`: status, code and message.
#[must_use]
pub fn no_provider() -> (u16, &'static str, &'static str) {
    (
        503,
        "no_provider_configured",
        "no model provider is configured; set CF_ACCOUNT_ID and CF_API_TOKEN, GROQ_API_KEY or OPENAI_API_KEY",
    )
}

/// What answered: the provider, the model it ran, the answer, the failed attempts before it
/// and how long the answering call took.
#[derive(Debug)]
pub struct Answered<T> {
    /// The provider that answered.
    pub provider: ProviderId,
    /// The model it was asked to run.
    pub model: String,
    /// Its answer.
    pub value: T,
    /// Providers tried before it.
    pub fallbacks: Vec<Attempt>,
    /// How long the answering call took.
    pub latency: Duration,
}

/// The providers' order and model aliases, with a circuit breaker each.
#[derive(Debug)]
pub struct Router {
    order: Vec<ProviderId>,
    models: ModelMap,
    breakers: Mutex<HashMap<ProviderId, Breaker>>,
    threshold: u32,
    cooldown: Duration,
    metrics: Arc<AiMetrics>,
}

impl Router {
    /// Providers tried in `order`; `threshold` consecutive failures open a circuit for
    /// `cooldown`.
    #[must_use]
    pub fn new(
        order: Vec<ProviderId>,
        models: ModelMap,
        threshold: u32,
        cooldown: Duration,
    ) -> Self {
        Self {
            order,
            models,
            breakers: Mutex::new(HashMap::new()),
            threshold,
            cooldown,
            metrics: Arc::new(AiMetrics::default()),
        }
    }

    /// Whether any provider is configured.
    #[must_use]
    pub fn any(&self) -> bool {
        !self.order.is_empty()
    }

    /// The providers in the order they are tried.
    #[must_use]
    pub fn order(&self) -> &[ProviderId] {
        &self.order
    }

    /// Per provider/model counters.
    #[must_use]
    pub fn metrics(&self) -> &Arc<AiMetrics> {
        &self.metrics
    }

    fn with_breaker<T>(&self, id: ProviderId, f: impl FnOnce(&mut Breaker) -> T) -> T {
        let mut breakers = self
            .breakers
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let breaker = breakers
            .entry(id)
            .or_insert_with(|| Breaker::new(self.threshold, millis(self.cooldown)));
        f(breaker)
    }

    fn settle(
        &self,
        id: ProviderId,
        model: &str,
        result: Result<(), &Failure>,
        now: Duration,
        took: Duration,
    ) {
        match result {
            Ok(()) => self.with_breaker(id, Breaker::success),
            Err(f) => {
                if f.trips() {
                    self.with_breaker(id, |b| b.failure(millis(now)));
                }
                self.metrics.error(id, model, f.label());
                tracing::warn!(provider = %id, model, failure = %f, "provider call failed");
            }
        }
        self.metrics.latency(id, model, took);
    }

    /// Tries the providers in order with `call` until one answers. `now` is the host's
    /// monotonic clock (any epoch).
    pub async fn route<T, C, F, Fut>(
        &self,
        now: C,
        messages: &[Message],
        requested_model: Option<&str>,
        max_tokens: u32,
        mut call: F,
    ) -> Result<Answered<T>, AskFailure>
    where
        C: Fn() -> Duration,
        F: FnMut(ProviderId, Call) -> Fut,
        Fut: std::future::Future<Output = Result<T, Failure>>,
    {
        let plan: Vec<(ProviderId, String)> = self
            .order
            .iter()
            .filter_map(|id| Some((*id, self.models.resolve(requested_model, *id)?)))
            .collect();
        if plan.is_empty() {
            return Err(AskFailure::NoProvider);
        }
        let mut attempts = Vec::new();
        for (id, model) in plan {
            if !self.with_breaker(id, |b| b.allow(millis(now()))) {
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
            let started = now();
            let result = call(id, request).await;
            let ended = now();
            let took = ended.saturating_sub(started);
            match result {
                Ok(value) => {
                    self.settle(id, &model, Ok(()), ended, took);
                    self.metrics.fallbacks(id, attempts.len());
                    return Ok(Answered {
                        provider: id,
                        model,
                        value,
                        fallbacks: attempts,
                        latency: took,
                    });
                }
                Err(failure) => {
                    self.settle(id, &model, Err(&failure), ended, took);
                    if !failure.falls_back() {
                        // The request is wrong; the breaker's trial (if this was one) ends.
                        self.with_breaker(id, Breaker::success);
                        let (status, message) = match failure {
                            Failure::Rejected(status, message) => (status, message),
                            other => (400, other.to_string()),
                        };
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
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        futures::executor::block_on(f)
    }

    #[test]
    fn falls_back_stops_on_rejection_and_breaks_circuits() {
        let router = Router::new(
            vec![ProviderId::Cfai, ProviderId::Openai],
            ModelMap::default(),
            2,
            Duration::from_secs(10),
        );
        let clock = Cell::new(Duration::ZERO);
        let msgs = [Message {
            role: "user".into(),
            content: "hi".into(),
        }];
        let failing_first = |id: ProviderId, call: Call| async move {
            match id {
                ProviderId::Cfai => Err(Failure::Server(503, "down".into())),
                _ => Ok(call.model),
            }
        };
        for _ in 0..2 {
            let a = block_on(router.route(|| clock.get(), &msgs, None, 5, failing_first));
            let a = a.unwrap_or_else(|e| panic!("{e:?}"));
            assert_eq!(
                (a.provider, a.model.as_str()),
                (ProviderId::Openai, "gpt-4o-mini")
            );
            assert_eq!(a.fallbacks.len(), 1);
        }
        // Two failures opened cfai's circuit: skipped without a call.
        let calls = Cell::new(0);
        let a = block_on(router.route(
            || clock.get(),
            &msgs,
            None,
            5,
            |id, _| {
                calls.set(calls.get() + 1);
                async move { Ok::<_, Failure>(id) }
            },
        ));
        assert_eq!(calls.get(), 1);
        assert!(matches!(a, Ok(ref a) if a.fallbacks[0].failure == Failure::CircuitOpen));
        // After the cooldown, one trial; a 400 stops the routing there.
        clock.set(Duration::from_secs(11));
        let r = block_on(router.route(
            || clock.get(),
            &msgs,
            None,
            5,
            |_, _| async { Err::<(), _>(Failure::Rejected(400, "bad".into())) },
        ));
        assert!(matches!(
            r,
            Err(AskFailure::Rejected {
                provider: ProviderId::Cfai,
                status: 400,
                ..
            })
        ));
        assert_eq!(r.err().map(|e| e.refusal().0), Some(400));
        let all = block_on(router.route(
            || clock.get(),
            &msgs,
            None,
            5,
            |_, _| async { Err::<(), _>(Failure::Timeout) },
        ));
        assert_eq!(
            all.err().map(|e| e.refusal().1),
            Some("all_providers_failed")
        );
    }
}
