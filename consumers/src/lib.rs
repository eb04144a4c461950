//! The consumer runtime and one module per queue.
//!
//! [`Runtime`] runs a batch loop per registered queue: it claims as many messages as it has free
//! handler slots (`max_concurrency × max_batch_size`, one statement), hands batches to the
//! queue's [`BatchHandler`](cognomega_core::queue::BatchHandler), heartbeats their leases, and
//! settles the outcomes through a per-queue acker that batches acks into few statements.
//! Shutdown stops claiming, lets in-flight batches finish within a grace period, and releases
//! whatever is still running after it.
#![forbid(unsafe_code)]

mod acker;
pub mod av_scan;
pub mod etl;
pub mod jobs;
pub mod lifecycle;
pub mod maintenance;
pub mod probe;
mod runtime;
pub mod scheduler;
pub mod settlement;
pub mod typed;
pub mod usage_writer;

pub use cognomega_core::queue::{ConsumerMetrics, QueueCounters, BATCH_BUCKETS_MS};
pub use runtime::{RunReport, RunningRuntime, Runtime, RuntimeOptions};
pub use typed::{Decoded, Typed, TypedHandler, Unreadable};
