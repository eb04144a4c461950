//! The queue contract, modeled on Cloudflare Queues so the edge host maps onto it one to one.
//!
//! - [`QueueDriver`] is the seam every backend implements (SQLite, PostgreSQL natively;
//!   Cloudflare Queues on the edge maps its push model onto [`BatchHandler`] directly).
//! - [`BatchHandler`] is what a consumer implements; it decides per message with
//!   [`MessageBatch::ack`] / [`MessageBatch::retry`] (first call wins).
//! - [`settle_batch`] turns a finished batch into [`Settlement`]s using the queue's
//!   [`QueueSettings`]: retries with exponential backoff and jitter, dead-lettering after
//!   `max_retries`.
//!
//! Delivery is at-least-once; exactly-once *effects* come from idempotent consumers that record
//! the message's key in the same transaction as their effect.

pub mod admin;
mod backoff;
mod batch;
pub mod catalog;
mod counters;
mod driver;
mod message;
mod names;
mod settings;
mod stats;

pub use backoff::backoff_delay;
pub use batch::{
    settle_batch, settle_batch_with, BatchHandler, Decision, HandlerError, MaybeSendSync,
    MessageBatch,
};
pub use counters::{ConsumerMetrics, QueueCounters, BATCH_BUCKETS_MS};
pub use driver::{
    Claim, DeadMessage, PruneReport, QueueDriver, QueueError, SettleReport, Settlement,
};
pub use message::{OutgoingMessage, ReceivedMessage, SendOptions, SendReceipt};
pub use names::{IdempotencyKey, LeaseToken, MessageId, ParseError, QueueName};
pub use settings::{QueueSettings, SettingsError};
pub use stats::{DrainHistogram, QueueStats, DRAIN_BUCKETS_MS};
