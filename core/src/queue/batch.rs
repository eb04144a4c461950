//! What a consumer sees: a batch of messages and per-message decisions.

use std::time::Duration;

use super::{
    backoff_delay, LeaseToken, MessageId, QueueName, QueueSettings, ReceivedMessage, Settlement,
};

/// What the handler decided for one message. The first decision for a message wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Done: remove the message.
    Ack,
    /// Deliver again after `delay` (or the queue's backoff when `None`).
    Retry {
        /// Explicit delay; `None` uses exponential backoff from the queue settings.
        delay: Option<Duration>,
    },
    /// The message can never succeed: dead-letter it now, whatever its attempts.
    Fatal {
        /// Why, kept with the dead message.
        reason: String,
    },
}

/// A handler's error. The whole batch (every message not yet decided) follows it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Transient: retry with backoff, dead-letter after `max_retries`.
    #[error("retryable: {0}")]
    Retryable(String),
    /// Permanent: dead-letter without further attempts.
    #[error("fatal: {0}")]
    Fatal(String),
}

impl HandlerError {
    /// A retryable error from anything displayable.
    pub fn retryable(err: impl std::fmt::Display) -> Self {
        Self::Retryable(err.to_string())
    }

    /// A fatal error from anything displayable.
    pub fn fatal(err: impl std::fmt::Display) -> Self {
        Self::Fatal(err.to_string())
    }
}

/// A batch handed to a handler.
#[derive(Debug)]
pub struct MessageBatch {
    queue: QueueName,
    messages: Vec<ReceivedMessage>,
    decisions: Vec<Option<Decision>>,
}

impl MessageBatch {
    /// Wraps delivered messages.
    #[must_use]
    pub fn new(queue: QueueName, messages: Vec<ReceivedMessage>) -> Self {
        let decisions = vec![None; messages.len()];
        Self {
            queue,
            messages,
            decisions,
        }
    }

    /// The queue the batch came from.
    #[must_use]
    pub fn queue(&self) -> &QueueName {
        &self.queue
    }

    /// The messages, in delivery order.
    #[must_use]
    pub fn messages(&self) -> &[ReceivedMessage] {
        &self.messages
    }

    /// Acks one message. Returns false if it already had a decision (first call wins) or is
    /// not in the batch.
    pub fn ack(&mut self, id: MessageId) -> bool {
        self.decide(id, Decision::Ack)
    }

    /// Asks for redelivery of one message after `delay` (`None`: the queue's backoff).
    pub fn retry(&mut self, id: MessageId, delay: Option<Duration>) -> bool {
        self.decide(id, Decision::Retry { delay })
    }

    /// Dead-letters one message now.
    pub fn fail(&mut self, id: MessageId, reason: impl Into<String>) -> bool {
        self.decide(
            id,
            Decision::Fatal {
                reason: reason.into(),
            },
        )
    }

    /// Acks every message without a decision yet.
    pub fn ack_all(&mut self) {
        self.decide_rest(&Decision::Ack);
    }

    /// Retries every message without a decision yet.
    pub fn retry_all(&mut self, delay: Option<Duration>) {
        self.decide_rest(&Decision::Retry { delay });
    }

    /// The decision taken for a message so far.
    #[must_use]
    pub fn decision(&self, id: MessageId) -> Option<&Decision> {
        let i = self.messages.iter().position(|m| m.id == id)?;
        self.decisions[i].as_ref()
    }

    fn decide(&mut self, id: MessageId, decision: Decision) -> bool {
        match self.messages.iter().position(|m| m.id == id) {
            Some(i) if self.decisions[i].is_none() => {
                self.decisions[i] = Some(decision);
                true
            }
            _ => false,
        }
    }

    fn decide_rest(&mut self, decision: &Decision) {
        for d in self.decisions.iter_mut().filter(|d| d.is_none()) {
            *d = Some(decision.clone());
        }
    }
}

/// Handles batches from one queue. Handlers must be idempotent: delivery is at-least-once, so
/// record the message's key with the effect in one transaction.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait BatchHandler: MaybeSendSync {
    /// Processes a batch. Returning `Ok` acks every message not decided otherwise; returning
    /// an error applies it to every message not decided yet.
    async fn handle(&self, batch: &mut MessageBatch) -> Result<(), HandlerError>;

    /// Called with messages a claim moved to the dead-letter queue without delivering them:
    /// their lease expired after their last allowed delivery (the handler never finished: a
    /// crash, a hang). Nothing calls [`handle`](Self::handle) for them again, so a consumer that
    /// tracks work per message (a job's status) records the outcome here. Best effort and
    /// possibly repeated: it runs after the claim committed, so it must be idempotent, and a
    /// crash in between skips it. The default does nothing.
    async fn dead_lettered(&self, _messages: &[ReceivedMessage]) {}
}

/// `Send + Sync` on native targets, nothing on wasm32 (where Workers futures are `!Send`).
#[cfg(not(target_arch = "wasm32"))]
pub trait MaybeSendSync: Send + Sync {}
#[cfg(not(target_arch = "wasm32"))]
impl<T: Send + Sync> MaybeSendSync for T {}
/// `Send + Sync` on native targets, nothing on wasm32 (where Workers futures are `!Send`).
#[cfg(target_arch = "wasm32")]
pub trait MaybeSendSync {}
#[cfg(target_arch = "wasm32")]
impl<T> MaybeSendSync for T {}

/// Turns a handled batch into settlements for the driver.
///
/// `jitter` yields numbers in `[0, 1)` for the backoff. A retry of a message that has had
/// `max_retries + 1` deliveries becomes a dead-letter.
pub fn settle_batch(
    batch: MessageBatch,
    outcome: &Result<(), HandlerError>,
    settings: &QueueSettings,
    token: LeaseToken,
    jitter: impl FnMut() -> f64,
) -> Vec<Settlement> {
    settle_batch_with(batch, outcome, settings, |_| token, jitter)
}

/// [`settle_batch`] for a batch gathered from several claims: `token_of` names each message's
/// lease token.
pub fn settle_batch_with(
    batch: MessageBatch,
    outcome: &Result<(), HandlerError>,
    settings: &QueueSettings,
    token_of: impl Fn(MessageId) -> LeaseToken,
    mut jitter: impl FnMut() -> f64,
) -> Vec<Settlement> {
    let fallback = match outcome {
        Ok(()) => Decision::Ack,
        Err(HandlerError::Retryable(_)) => Decision::Retry { delay: None },
        Err(HandlerError::Fatal(reason)) => Decision::Fatal {
            reason: reason.clone(),
        },
    };
    let error_text = outcome.as_ref().err().map(ToString::to_string);
    batch
        .messages
        .into_iter()
        .zip(batch.decisions)
        .map(|(msg, decision)| {
            let id = msg.id;
            let token = token_of(id);
            match decision.unwrap_or_else(|| fallback.clone()) {
                Decision::Ack => Settlement::Ack { id, token },
                Decision::Fatal { reason } => Settlement::DeadLetter {
                    id,
                    token,
                    error: reason,
                },
                Decision::Retry { delay } => {
                    let error = error_text.clone();
                    if msg.attempts >= settings.max_deliveries() {
                        Settlement::DeadLetter {
                            id,
                            token,
                            error: error.unwrap_or_else(|| {
                                format!("retried {} times without success", settings.max_retries)
                            }),
                        }
                    } else {
                        let delay = delay.unwrap_or_else(|| {
                            backoff_delay(
                                settings.retry_delay,
                                settings.max_retry_delay,
                                msg.attempts,
                                jitter(),
                            )
                        });
                        Settlement::Retry {
                            id,
                            token,
                            delay,
                            error,
                        }
                    }
                }
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::time::UnixMillis;

    fn msg(id: i64, attempts: u32) -> ReceivedMessage {
        ReceivedMessage {
            id: MessageId(id),
            body: vec![],
            content_type: None,
            attempts,
            enqueued_at: UnixMillis(0),
            request_id: None,
        }
    }

    fn batch(msgs: Vec<ReceivedMessage>) -> MessageBatch {
        MessageBatch::new(QueueName::parse("q").expect("valid"), msgs)
    }

    const T: LeaseToken = LeaseToken(7);

    #[test]
    fn first_call_wins() {
        let mut b = batch(vec![msg(1, 1), msg(2, 1)]);
        assert!(b.ack(MessageId(1)));
        assert!(!b.retry(MessageId(1), None));
        assert!(!b.ack(MessageId(99)));
        b.retry_all(Some(Duration::from_secs(5)));
        assert_eq!(b.decision(MessageId(1)), Some(&Decision::Ack));
        let out = settle_batch(b, &Ok(()), &QueueSettings::default(), T, || 0.5);
        assert_eq!(
            out,
            vec![
                Settlement::Ack {
                    id: MessageId(1),
                    token: T
                },
                Settlement::Retry {
                    id: MessageId(2),
                    token: T,
                    delay: Duration::from_secs(5),
                    error: None
                },
            ]
        );
    }

    #[test]
    fn handler_error_retries_undecided_and_dead_letters_exhausted() {
        let settings = QueueSettings {
            max_retries: 2,
            ..Default::default()
        };
        let mut b = batch(vec![msg(1, 1), msg(2, 3), msg(3, 1)]);
        b.ack(MessageId(3));
        let err = Err(HandlerError::retryable("db down"));
        let out = settle_batch(b, &err, &settings, T, || 1.0);
        assert_eq!(out.len(), 3);
        assert!(matches!(
            &out[0],
            Settlement::Retry { id: MessageId(1), delay, error: Some(e), .. }
                if *delay == Duration::from_secs(1) && e.contains("db down")
        ));
        assert!(
            matches!(&out[1], Settlement::DeadLetter { id: MessageId(2), error, .. } if error.contains("db down"))
        );
        assert_eq!(
            out[2],
            Settlement::Ack {
                id: MessageId(3),
                token: T
            }
        );
    }

    #[test]
    fn fatal_dead_letters_at_once() {
        let b = batch(vec![msg(1, 1)]);
        let out = settle_batch(
            b,
            &Err(HandlerError::fatal("bad input")),
            &QueueSettings::default(),
            T,
            || 0.0,
        );
        assert_eq!(
            out,
            vec![Settlement::DeadLetter {
                id: MessageId(1),
                token: T,
                error: "bad input".into()
            }]
        );
    }
}
