//! Messages going in and coming out.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{IdempotencyKey, MessageId};
use crate::time::UnixMillis;

/// Per-send options.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendOptions {
    /// Delivery is held back at least this long.
    pub delay: Duration,
    /// A second send with the same key inside the queue's dedup window is a no-op that returns
    /// the first message's id.
    pub idempotency_key: Option<IdempotencyKey>,
    /// MIME type of the body, for consumers that accept several encodings.
    pub content_type: Option<String>,
    /// The request id of the HTTP call that produced the message, carried into consumer logs.
    pub request_id: Option<String>,
}

/// A message to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingMessage {
    /// Opaque payload (JSON by convention).
    pub body: Vec<u8>,
    /// Delay, idempotency key, content type.
    pub options: SendOptions,
}

impl OutgoingMessage {
    /// A message with default options.
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Self {
            body: body.into(),
            options: SendOptions::default(),
        }
    }

    /// A JSON message.
    pub fn json<T: Serialize>(value: &T) -> Result<Self, serde_json::Error> {
        let mut msg = Self::new(serde_json::to_vec(value)?);
        msg.options.content_type = Some("application/json".to_owned());
        Ok(msg)
    }

    /// A workflow's message (its JSON text and request id) as the queue drivers send it.
    #[must_use]
    pub fn outbound(message: crate::sql::Outbound<'_>) -> Self {
        let mut msg = Self::new(message.body.into_bytes());
        msg.options.content_type = Some("application/json".to_owned());
        msg.options.request_id = message.request_id.map(str::to_owned);
        msg
    }

    /// Sets the delay.
    #[must_use]
    pub fn delay(mut self, delay: Duration) -> Self {
        self.options.delay = delay;
        self
    }

    /// Sets the idempotency key.
    #[must_use]
    pub fn idempotency_key(mut self, key: IdempotencyKey) -> Self {
        self.options.idempotency_key = Some(key);
        self
    }

    /// Sets the originating request id.
    #[must_use]
    pub fn request_id(mut self, id: impl Into<String>) -> Self {
        self.options.request_id = Some(id.into());
        self
    }
}

/// What a send returns per message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendReceipt {
    /// The message id; for a deduplicated send, the id of the first message with that key.
    pub id: MessageId,
    /// True when the idempotency key was already used inside the dedup window.
    pub duplicate: bool,
}

/// A delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedMessage {
    /// Stable id.
    pub id: MessageId,
    /// Payload as sent.
    pub body: Vec<u8>,
    /// MIME type given at send time.
    pub content_type: Option<String>,
    /// Deliveries so far, this one included (1 on first delivery).
    pub attempts: u32,
    /// When it was first enqueued.
    pub enqueued_at: UnixMillis,
    /// The producing request's id, if any.
    pub request_id: Option<String>,
}

impl ReceivedMessage {
    /// Decodes a JSON body.
    pub fn json<'a, T: Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.body)
    }
}
