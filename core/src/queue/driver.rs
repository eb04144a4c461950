//! The port every queue backend implements.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{
    LeaseToken, MessageId, OutgoingMessage, QueueName, QueueSettings, QueueStats, ReceivedMessage,
    SendReceipt,
};
use crate::time::UnixMillis;

/// A backend failure, already translated out of the driver's own error type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// The store cannot be reached or refused for a transient reason: try again later.
    #[error("queue store unavailable: {0}")]
    Unavailable(String),
    /// The request itself is wrong (bad queue name, unknown message, too large a batch).
    #[error("invalid queue request: {0}")]
    Invalid(String),
    /// Anything else the backend reported.
    #[error("queue store error: {0}")]
    Backend(String),
}

/// The result of one claim: messages leased together under one fencing token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claim {
    /// Token to present when settling or extending these messages.
    pub token: LeaseToken,
    /// The lease ends here unless extended.
    pub lease_until: UnixMillis,
    /// The leased messages, oldest first.
    pub messages: Vec<ReceivedMessage>,
    /// Messages found with an expired lease after their last allowed delivery, and moved to the
    /// dead-letter queue (or dropped) instead of being delivered again: as they were last
    /// delivered, so the consumer can record the outcome (see
    /// [`BatchHandler::dead_lettered`](super::BatchHandler::dead_lettered)).
    pub dead: Vec<ReceivedMessage>,
}

/// What to do with one claimed message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settlement {
    /// Remove it (or keep it as acked for `retain_acked`).
    Ack {
        /// Message.
        id: MessageId,
        /// Lease token of the claim that delivered it.
        token: LeaseToken,
    },
    /// Make it visible again after `delay`.
    Retry {
        /// Message.
        id: MessageId,
        /// Lease token.
        token: LeaseToken,
        /// Backoff before the next delivery.
        delay: Duration,
        /// The failure, kept on the message.
        error: Option<String>,
    },
    /// Move it to the queue's dead-letter queue, or drop it when there is none.
    DeadLetter {
        /// Message.
        id: MessageId,
        /// Lease token.
        token: LeaseToken,
        /// The failure, kept on the dead message.
        error: String,
    },
    /// Give it back unprocessed (graceful shutdown): visible now, the delivery not counted.
    Release {
        /// Message.
        id: MessageId,
        /// Lease token.
        token: LeaseToken,
    },
}

impl Settlement {
    /// The message this settles.
    #[must_use]
    pub fn id(&self) -> MessageId {
        match self {
            Self::Ack { id, .. }
            | Self::Retry { id, .. }
            | Self::DeadLetter { id, .. }
            | Self::Release { id, .. } => *id,
        }
    }
}

/// What a settle call did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SettleReport {
    /// Acks applied.
    pub acked: u64,
    /// Retries scheduled.
    pub retried: u64,
    /// Moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// Dead with no dead-letter queue configured, so dropped.
    pub dropped: u64,
    /// Released back unprocessed.
    pub released: u64,
    /// Refused because the lease token was stale (the message was re-claimed elsewhere or is
    /// already settled).
    pub refused: Vec<MessageId>,
}

impl SettleReport {
    /// Adds another report's counts to this one.
    pub fn merge(&mut self, other: SettleReport) {
        self.acked += other.acked;
        self.retried += other.retried;
        self.dead_lettered += other.dead_lettered;
        self.dropped += other.dropped;
        self.released += other.released;
        self.refused.extend(other.refused);
    }
}

/// A message in a dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadMessage {
    /// Stable id (the same it had in its original queue).
    pub id: MessageId,
    /// The queue it failed in.
    pub original_queue: Option<QueueName>,
    /// Deliveries it got there.
    pub attempts: u32,
    /// The last failure.
    pub error: Option<String>,
    /// When it was first enqueued.
    pub enqueued_at: UnixMillis,
    /// When it was dead-lettered.
    pub dead_at: Option<UnixMillis>,
    /// The body, lossily as UTF-8 for display.
    pub body_preview: String,
}

/// What a retention pass deleted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PruneReport {
    /// Acked messages past `retain_acked`.
    pub acked: u64,
    /// Dead messages past `dead_retention`.
    pub dead: u64,
    /// Expired idempotency keys.
    pub dedup_keys: u64,
}

/// A queue backend. All methods are safe to call from many processes at once.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait QueueDriver: super::batch::MaybeSendSync + std::fmt::Debug {
    /// Records a queue's settings so other processes (stats, pruning, admin) see them.
    async fn declare(&self, queue: &QueueName, settings: &QueueSettings) -> Result<(), QueueError>;

    /// Sends messages in one transaction; receipts come back in input order.
    async fn send_batch(
        &self,
        queue: &QueueName,
        messages: Vec<OutgoingMessage>,
    ) -> Result<Vec<SendReceipt>, QueueError>;

    /// Sends one message.
    async fn send(
        &self,
        queue: &QueueName,
        message: OutgoingMessage,
    ) -> Result<SendReceipt, QueueError> {
        let mut receipts = self.send_batch(queue, vec![message]).await?;
        receipts
            .pop()
            .ok_or_else(|| QueueError::Backend("send returned no receipt".into()))
    }

    /// Leases up to `max` visible messages (ready, or with an expired lease) in one statement.
    async fn claim(
        &self,
        queue: &QueueName,
        settings: &QueueSettings,
        max: usize,
    ) -> Result<Claim, QueueError>;

    /// Extends the lease of messages still held under `token`; returns how many were.
    async fn extend_lease(
        &self,
        token: LeaseToken,
        ids: &[MessageId],
        lease: Duration,
    ) -> Result<u64, QueueError>;

    /// Applies settlements in as few statements as possible; stale tokens are refused.
    async fn settle(
        &self,
        queue: &QueueName,
        settings: &QueueSettings,
        items: &[Settlement],
    ) -> Result<SettleReport, QueueError>;

    /// Waits until work may be available in `queue`: a wake-up hint, the next delayed message
    /// becoming visible, or `max_wait`, whichever comes first.
    async fn wait_for_work(&self, queue: &QueueName, max_wait: Duration);

    /// Every queue that is declared or holds messages.
    async fn queues(&self) -> Result<Vec<QueueName>, QueueError>;

    /// Statistics of one queue.
    async fn stats(&self, queue: &QueueName) -> Result<QueueStats, QueueError>;

    /// Up to `limit` messages of a dead-letter queue, oldest first.
    async fn dead_letters(
        &self,
        dlq: &QueueName,
        limit: usize,
    ) -> Result<Vec<DeadMessage>, QueueError>;

    /// Moves dead messages back to the queue they failed in, with fresh attempts: all of them,
    /// or only `ids`. Returns how many moved.
    async fn replay(&self, dlq: &QueueName, ids: Option<&[MessageId]>) -> Result<u64, QueueError>;

    /// Deletes what retention allows: acked messages past `retain_acked`, dead messages past
    /// `dead_retention` (per declared queue), and expired idempotency keys.
    async fn prune(&self) -> Result<PruneReport, QueueError>;
}
