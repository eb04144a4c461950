//! Prometheus text format (version 0.0.4) for the queue statistics and consumer counters.
//!
//! The values come from the database at scrape time (so every process reports the same shared
//! queues) and from in-process counters; a small writer is all that needs.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use cognomega_consumers::{QueueCounters, BATCH_BUCKETS_MS};
use cognomega_core::queue::{QueueName, QueueStats, DRAIN_BUCKETS_MS};

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Seconds, from milliseconds, as Prometheus expects.
#[allow(clippy::cast_precision_loss)]
fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

fn histogram(
    out: &mut String,
    name: &str,
    labels: &str,
    bounds_ms: &[u64],
    counts: &[u64],
    sum_ms: u64,
) {
    let mut cumulative = 0;
    for (i, bound) in bounds_ms.iter().enumerate() {
        cumulative += counts.get(i).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels},le=\"{}\"}} {cumulative}",
            secs(*bound)
        );
    }
    cumulative += counts.get(bounds_ms.len()).copied().unwrap_or(0);
    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", secs(sum_ms));
    let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
}

/// A gauge: name, help text, and how to read its value from a queue's statistics.
type Gauge = (&'static str, &'static str, fn(&QueueStats) -> String);

/// Gauges and the drain-latency histogram of every queue.
#[must_use]
pub fn render_queues(stats: &[QueueStats]) -> String {
    let mut out = String::new();
    let gauges: [Gauge; 6] = [
        (
            "cognomega_queue_depth",
            "Messages ready for delivery now.",
            |s| s.depth.to_string(),
        ),
        (
            "cognomega_queue_in_flight",
            "Messages claimed under a live lease.",
            |s| s.in_flight.to_string(),
        ),
        (
            "cognomega_queue_delayed",
            "Messages waiting for a delay or retry backoff.",
            |s| s.delayed.to_string(),
        ),
        (
            "cognomega_queue_dlq_depth",
            "Messages in the queue's dead-letter queue.",
            |s| s.dlq_depth.to_string(),
        ),
        (
            "cognomega_queue_oldest_age_seconds",
            "Age of the oldest unacked message.",
            |s| secs(u64::try_from(s.oldest_age_ms).unwrap_or(0)).to_string(),
        ),
        (
            "cognomega_queue_acked_retained",
            "Acked messages kept for inspection.",
            |s| s.acked_retained.to_string(),
        ),
    ];
    for (name, help, value) in gauges {
        header(&mut out, name, "gauge", help);
        for s in stats {
            let _ = writeln!(out, "{name}{{queue=\"{}\"}} {}", s.queue, value(s));
        }
    }
    let name = "cognomega_queue_drain_latency_seconds";
    header(&mut out, name, "histogram", "Time from enqueue to ack.");
    let bounds: Vec<u64> = DRAIN_BUCKETS_MS
        .iter()
        .map(|b| u64::try_from(*b).unwrap_or(0))
        .collect();
    for s in stats {
        histogram(
            &mut out,
            name,
            &format!("queue=\"{}\"", s.queue),
            &bounds,
            &s.drain.counts,
            s.drain.sum_ms,
        );
    }
    out
}

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

/// Lifecycle: objects and stored bytes per recorded tier as of the last finished sweep, and
/// what every sweep has saved and expired (from the sweep checkpoints in the database).
#[must_use]
pub fn render_lifecycle(totals: &cognomega_stores::lifecycle::LifecycleTotals) -> String {
    use cognomega_r2_lifecycle::policy::Tier;
    use cognomega_r2_lifecycle::sweep::SweepReport;
    let mut out = String::new();
    let report: Option<SweepReport> = totals
        .last_report
        .as_deref()
        .and_then(|r| serde_json::from_str(r).ok());
    let census = report.map(|r| r.census).unwrap_or_default();
    for (name, help, value) in [
        (
            "cognomega_lifecycle_objects",
            "Objects per lifecycle tier, as of the last finished sweep.",
            (|c: &cognomega_r2_lifecycle::sweep::Count| c.objects)
                as fn(&cognomega_r2_lifecycle::sweep::Count) -> u64,
        ),
        (
            "cognomega_lifecycle_bytes",
            "Stored bytes per lifecycle tier, as of the last finished sweep.",
            |c| c.bytes,
        ),
    ] {
        header(&mut out, name, "gauge", help);
        for tier in Tier::ALL {
            let v = census.get(&tier).map_or(0, value);
            let _ = writeln!(out, "{name}{{tier=\"{tier}\"}} {v}");
        }
    }
    let name = "cognomega_lifecycle_compression_saved_bytes_total";
    header(
        &mut out,
        name,
        "counter",
        "Stored bytes saved by recompressing cold artifacts.",
    );
    let _ = writeln!(out, "{name} {}", totals.bytes_saved);
    let name = "cognomega_lifecycle_expired_objects_total";
    header(
        &mut out,
        name,
        "counter",
        "Objects deleted by the lifecycle sweeper.",
    );
    let _ = writeln!(out, "{name} {}", totals.objects_expired);
    let name = "cognomega_lifecycle_last_sweep_timestamp_seconds";
    header(
        &mut out,
        name,
        "gauge",
        "Clock of the last finished sweep (0: none yet).",
    );
    let _ = writeln!(
        out,
        "{name} {}",
        secs(u64::try_from(totals.last_finished_ms.unwrap_or(0)).unwrap_or(0))
    );
    out
}

/// Export files and rows recorded in the database (so every process reports the same totals,
/// whichever worker wrote them).
#[must_use]
pub fn render_exports(totals: &[cognomega_stores::exports::ExportTotals]) -> String {
    let mut out = String::new();
    for (name, help, value) in [
        (
            "cognomega_export_files_total",
            "Export files written and recorded, by dataset and format.",
            (|t: &cognomega_stores::exports::ExportTotals| t.files) as fn(&_) -> i64,
        ),
        (
            "cognomega_export_rows_total",
            "Rows exported, by dataset and format.",
            |t| t.rows,
        ),
        (
            "cognomega_export_bytes_total",
            "Bytes of export files, by dataset and format.",
            |t| t.bytes,
        ),
    ] {
        header(&mut out, name, "counter", help);
        for t in totals {
            let _ = writeln!(
                out,
                "{name}{{dataset=\"{}\",format=\"{}\"}} {}",
                t.dataset,
                t.format,
                value(t)
            );
        }
    }
    out
}

/// Credits charged and granted (from the ledger) and uploads per scan result.
#[must_use]
pub fn render_business(totals: &cognomega_stores::metrics::BusinessTotals) -> String {
    let mut out = String::new();
    for (name, help, value) in [
        (
            "cognomega_credits_charged_total",
            "Credits charged for usage, from the ledger.",
            totals.credits_charged,
        ),
        (
            "cognomega_credits_granted_total",
            "Credits granted to new tenants, from the ledger.",
            totals.credits_granted,
        ),
    ] {
        header(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {value}");
    }
    let name = "cognomega_uploads_scanned_total";
    header(
        &mut out,
        name,
        "counter",
        "Uploads by scan result (scan_failed is error; a replayed scan moves one).",
    );
    for (result, n) in &totals.uploads_scanned {
        let _ = writeln!(out, "{name}{{result=\"{result}\"}} {n}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cognomega_core::queue::DrainHistogram;

    #[test]
    fn histogram_is_cumulative_with_inf() {
        let mut drain = DrainHistogram::empty();
        drain.add(0, 2, 1);
        drain.add(3, 1, 9);
        drain.add(DRAIN_BUCKETS_MS.len(), 1, 4_000_000);
        let stats = QueueStats {
            queue: QueueName::parse("usage").expect("valid"),
            depth: 3,
            in_flight: 1,
            delayed: 0,
            dlq_depth: 0,
            oldest_age_ms: 1500,
            acked_retained: 0,
            drain,
        };
        let text = render_queues(&[stats]);
        assert!(text.contains("cognomega_queue_depth{queue=\"usage\"} 3\n"));
        assert!(text.contains("cognomega_queue_oldest_age_seconds{queue=\"usage\"} 1.5\n"));
        assert!(text.contains(
            "cognomega_queue_drain_latency_seconds_bucket{queue=\"usage\",le=\"0.001\"} 2\n"
        ));
        assert!(text.contains(
            "cognomega_queue_drain_latency_seconds_bucket{queue=\"usage\",le=\"0.01\"} 3\n"
        ));
        assert!(text.contains(
            "cognomega_queue_drain_latency_seconds_bucket{queue=\"usage\",le=\"3600\"} 3\n"
        ));
        assert!(text.contains(
            "cognomega_queue_drain_latency_seconds_bucket{queue=\"usage\",le=\"+Inf\"} 4\n"
        ));
        assert!(text.contains("cognomega_queue_drain_latency_seconds_count{queue=\"usage\"} 4\n"));
    }
}
