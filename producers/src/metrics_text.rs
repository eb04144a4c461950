//! Prometheus text format (version 0.0.4): the shared figures (`cognomega_core::metrics`,
//! which the edge renders too) and this process's consumer counters.

use std::collections::BTreeMap;
use std::fmt::Write as _;

pub use cognomega_core::metrics::render_queues;
use cognomega_core::metrics::{header, histogram};
use cognomega_core::queue::QueueName;
use cognomega_core::queue::{QueueCounters, BATCH_BUCKETS_MS};

/// Counters of the consumers in this process.
#[must_use]
pub fn render_consumers(counters: &BTreeMap<QueueName, QueueCounters>) -> String {
    let mut out = String::new();
    let name = "cognomega_consumer_messages_total";
    header(
        &mut out,
        name,
        "counter",
        "Messages settled by this process's consumers, by outcome.",
    );
    for (q, c) in counters {
        for (outcome, v) in [
            ("acked", c.acked),
            ("retried", c.retried),
            ("dead_lettered", c.dead_lettered),
            ("dropped", c.dropped),
            ("released", c.released),
            ("refused", c.refused),
        ] {
            let _ = writeln!(out, "{name}{{queue=\"{q}\",outcome=\"{outcome}\"}} {v}");
        }
    }
    let name = "cognomega_consumer_handler_errors_total";
    header(
        &mut out,
        name,
        "counter",
        "Batches whose handler failed or panicked.",
    );
    for (q, c) in counters {
        let _ = writeln!(out, "{name}{{queue=\"{q}\"}} {}", c.handler_errors);
    }
    let name = "cognomega_consumer_batch_duration_seconds";
    header(
        &mut out,
        name,
        "histogram",
        "Time a handler took per batch.",
    );
    for (q, c) in counters {
        histogram(
            &mut out,
            name,
            &format!("queue=\"{q}\""),
            &BATCH_BUCKETS_MS,
            &c.batch_duration_buckets,
            c.batch_duration_sum_ms,
        );
    }
    out
}
