//! Messages decoded once, by the runtime, into their queue's type.
//!
//! A consumer implements [`TypedHandler`] for its queue's message type and is registered with
//! [`Runtime::consume`](crate::Runtime::consume): the runtime decodes every message of a batch
//! once, settles the ones that are not of the type by the consumer's [`Unreadable`] policy,
//! and hands the handler the decoded rest, each with its id, delivery count and request id.

use cognomega_core::queue::{BatchHandler, HandlerError, MessageBatch, MessageId, ReceivedMessage};
use serde::de::DeserializeOwned;

/// What becomes of a message that is not of the queue's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unreadable {
    /// Retried with the queue's backoff, a warning logged each time, then dead-lettered after
    /// `max_retries` (as Cloudflare Queues do): a producer of a newer version may be
    /// mid-deploy.
    Retry,
    /// Dead-lettered at once, with why: a queue only this build produces, where a body that
    /// does not decode never will.
    DeadLetter,
}

/// One message, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decoded<T> {
    /// The message's id.
    pub id: MessageId,
    /// Deliveries so far, this one included.
    pub attempts: u32,
    /// The producing request.
    pub request_id: Option<String>,
    /// The body, as the queue's message type.
    pub body: T,
}

/// A consumer of one queue's message type.
#[async_trait::async_trait]
pub trait TypedHandler: Send + Sync {
    /// The queue's message type.
    type Message: DeserializeOwned + Send + Sync;
    /// What the queue carries, for a dead letter's reason: `not a {WHAT} message: …`.
    const WHAT: &'static str;
    /// What becomes of a message that does not decode.
    const UNREADABLE: Unreadable;

    /// Handles the decoded messages of `batch` (the unreadable ones are already decided).
    /// Returning `Ok` acks every message not decided otherwise; an error applies to every
    /// message not decided yet.
    async fn handle(
        &self,
        batch: &mut MessageBatch,
        messages: Vec<Decoded<Self::Message>>,
    ) -> Result<(), HandlerError>;

    /// Messages a claim moved to the dead-letter queue without delivering them (see
    /// [`BatchHandler::dead_lettered`]); unreadable ones are left out.
    async fn dead_lettered(&self, _messages: Vec<Decoded<Self::Message>>) {}
}

fn decode<T: DeserializeOwned>(m: &ReceivedMessage) -> Result<Decoded<T>, serde_json::Error> {
    Ok(Decoded {
        id: m.id,
        attempts: m.attempts,
        request_id: m.request_id.clone(),
        body: serde_json::from_slice(&m.body)?,
    })
}

/// A [`TypedHandler`] as the runtime's [`BatchHandler`].
#[derive(Debug, Clone)]
pub struct Typed<H>(pub H);

#[async_trait::async_trait]
impl<H: TypedHandler> BatchHandler for Typed<H> {
    async fn handle(&self, batch: &mut MessageBatch) -> Result<(), HandlerError> {
        let mut decoded = Vec::with_capacity(batch.messages().len());
        let mut unreadable = Vec::new();
        for m in batch.messages() {
            match decode::<H::Message>(m) {
                Ok(d) => decoded.push(d),
                Err(e) => unreadable.push((m.id, m.attempts, m.request_id.clone(), e)),
            }
        }
        for (id, attempts, request_id, e) in unreadable {
            let why = format!("not a {} message: {e}", H::WHAT);
            match H::UNREADABLE {
                Unreadable::Retry => {
                    tracing::warn!(
                        queue = %batch.queue(),
                        message_id = id.0,
                        attempts,
                        request_id = request_id.as_deref().unwrap_or(""),
                        "{why}; retrying, then dead-lettered"
                    );
                    batch.retry(id, None);
                }
                Unreadable::DeadLetter => {
                    batch.fail(id, why);
                }
            }
        }
        self.0.handle(batch, decoded).await
    }

    async fn dead_lettered(&self, messages: &[ReceivedMessage]) {
        let decoded = messages.iter().filter_map(|m| decode(m).ok()).collect();
        self.0.dead_lettered(decoded).await;
    }
}
