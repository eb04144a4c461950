//! Queue statistics and the drain-latency histogram (enqueue → ack).

use serde::{Deserialize, Serialize};

use super::QueueName;

/// Upper bounds (inclusive, milliseconds) of the drain-latency buckets; a last, implicit
/// bucket holds everything slower. Index `i` of a histogram counts samples in
/// `(DRAIN_BUCKETS_MS[i-1], DRAIN_BUCKETS_MS[i]]`.
pub const DRAIN_BUCKETS_MS: [i64; 18] = [
    1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 30_000, 60_000, 300_000,
    900_000, 3_600_000,
];

/// Drain latencies, bucketed. `counts` has `DRAIN_BUCKETS_MS.len() + 1` entries.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct DrainHistogram {
    /// Non-cumulative count per bucket; the last is the overflow (`+Inf`) bucket.
    pub counts: Vec<u64>,
    /// Sum of all samples in milliseconds.
    pub sum_ms: u64,
}

impl DrainHistogram {
    /// An empty histogram.
    #[must_use]
    pub fn empty() -> Self {
        Self {
            counts: vec![0; DRAIN_BUCKETS_MS.len() + 1],
            sum_ms: 0,
        }
    }

    /// The bucket index a sample falls into.
    #[must_use]
    pub fn bucket_of(ms: i64) -> usize {
        DRAIN_BUCKETS_MS.partition_point(|&bound| bound < ms)
    }

    /// Adds `count` samples to bucket `index`.
    pub fn add(&mut self, index: usize, count: u64, sum_ms: u64) {
        if self.counts.len() != DRAIN_BUCKETS_MS.len() + 1 {
            self.counts.resize(DRAIN_BUCKETS_MS.len() + 1, 0);
        }
        let index = index.min(DRAIN_BUCKETS_MS.len());
        self.counts[index] += count;
        self.sum_ms += sum_ms;
    }

    /// Total samples.
    #[must_use]
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// Upper bound (ms) of the bucket holding quantile `q` (0..=1); `None` when empty or when
    /// it falls in the overflow bucket.
    #[must_use]
    pub fn quantile_upper_ms(&self, q: f64) -> Option<i64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        // Rank of the sample (1-based) that the quantile names.
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return DRAIN_BUCKETS_MS.get(i).copied();
            }
        }
        None
    }
}

/// A queue's state at one instant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueStats {
    /// The queue.
    pub queue: QueueName,
    /// Messages ready for delivery now.
    pub depth: u64,
    /// Messages claimed under a live lease.
    pub in_flight: u64,
    /// Messages waiting for their delay (or retry backoff) to pass.
    pub delayed: u64,
    /// Messages in this queue's dead-letter queue, if it has one.
    pub dlq_depth: u64,
    /// Age in milliseconds of the oldest message not yet acked (0 when empty).
    pub oldest_age_ms: i64,
    /// Messages acked and still retained (only with `retain_acked`).
    pub acked_retained: u64,
    /// Enqueue → ack latency of every ack so far.
    pub drain: DrainHistogram,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_inclusive_upper_bounds() {
        assert_eq!(DrainHistogram::bucket_of(0), 0);
        assert_eq!(DrainHistogram::bucket_of(1), 0);
        assert_eq!(DrainHistogram::bucket_of(2), 1);
        assert_eq!(DrainHistogram::bucket_of(3), 2);
        assert_eq!(DrainHistogram::bucket_of(3_600_000), 17);
        assert_eq!(DrainHistogram::bucket_of(3_600_001), 18);
    }

    #[test]
    fn quantiles() {
        let mut h = DrainHistogram::empty();
        assert_eq!(h.quantile_upper_ms(0.5), None);
        h.add(DrainHistogram::bucket_of(4), 90, 360);
        h.add(DrainHistogram::bucket_of(80), 10, 800);
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile_upper_ms(0.5), Some(5));
        assert_eq!(h.quantile_upper_ms(0.9), Some(5));
        assert_eq!(h.quantile_upper_ms(0.91), Some(100));
        assert_eq!(h.sum_ms, 1160);
    }
}
