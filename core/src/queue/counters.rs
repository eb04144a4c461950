//! In-process counters of what the consumers did, rendered by `/metrics`: kept by the consumer
//! runtime, read by the HTTP API's metrics page (which does not depend on the consumers).

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::queue::{QueueName, SettleReport};

/// Upper bounds (ms) of the batch-duration histogram buckets.
pub const BATCH_BUCKETS_MS: [u64; 12] =
    [1, 2, 5, 10, 25, 50, 100, 250, 1_000, 5_000, 30_000, 120_000];

/// Counters of one queue.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QueueCounters {
    /// Batches handled.
    pub batches: u64,
    /// Messages acked.
    pub acked: u64,
    /// Messages scheduled for retry.
    pub retried: u64,
    /// Messages moved to the dead-letter queue.
    pub dead_lettered: u64,
    /// Messages dropped (no dead-letter queue).
    pub dropped: u64,
    /// Messages released at shutdown.
    pub released: u64,
    /// Settlements refused for a stale lease.
    pub refused: u64,
    /// Handler calls that returned an error or panicked.
    pub handler_errors: u64,
    /// Batch durations, non-cumulative per `BATCH_BUCKETS_MS` bucket plus overflow.
    pub batch_duration_buckets: Vec<u64>,
    /// Sum of batch durations in milliseconds.
    pub batch_duration_sum_ms: u64,
}

/// Counters of every queue this process consumes.
#[derive(Debug, Default)]
pub struct ConsumerMetrics {
    queues: Mutex<BTreeMap<QueueName, QueueCounters>>,
}

impl ConsumerMetrics {
    fn with(&self, queue: &QueueName, f: impl FnOnce(&mut QueueCounters)) {
        let mut map = self
            .queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(map.entry(queue.clone()).or_default());
    }

    /// Records a handled batch: how long it took and whether the handler failed.
    pub fn batch_done(&self, queue: &QueueName, took: Duration, failed: bool) {
        let ms = u64::try_from(took.as_millis()).unwrap_or(u64::MAX);
        self.with(queue, |c| {
            c.batches += 1;
            c.handler_errors += u64::from(failed);
            if c.batch_duration_buckets.len() != BATCH_BUCKETS_MS.len() + 1 {
                c.batch_duration_buckets = vec![0; BATCH_BUCKETS_MS.len() + 1];
            }
            c.batch_duration_buckets[BATCH_BUCKETS_MS.partition_point(|&b| b < ms)] += 1;
            c.batch_duration_sum_ms += ms;
        });
    }

    /// Records a batch's settlement (and messages dead-lettered by its claim).
    pub fn settled(&self, queue: &QueueName, report: &SettleReport, dead_on_claim: u64) {
        self.with(queue, |c| {
            c.acked += report.acked;
            c.retried += report.retried;
            c.dead_lettered += report.dead_lettered + dead_on_claim;
            c.dropped += report.dropped;
            c.released += report.released;
            c.refused += report.refused.len() as u64;
        });
    }

    /// A snapshot of every queue's counters.
    #[must_use]
    pub fn snapshot(&self) -> BTreeMap<QueueName, QueueCounters> {
        self.queues
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}
