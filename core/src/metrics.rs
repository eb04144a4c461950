//! Prometheus text format (version 0.0.4): the writer and the figures every shape reports
//! the same way. The aggregates are read from the database at scrape time (the SQL below is
//! portable between SQLite and PostgreSQL), so every process, native or edge, reports the same
//! totals whichever worker wrote the rows.

use std::fmt::Write as _;

use crate::queue::{QueueStats, DRAIN_BUCKETS_MS};

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Credits charged (the negated sum of the ledger's `usage` entries) and granted.
pub const LEDGER_TOTALS_SQL: &str =
    "SELECT CAST(COALESCE(SUM(CASE WHEN kind = 'usage' THEN -delta ELSE 0 END), 0) AS BIGINT), \
     CAST(COALESCE(SUM(CASE WHEN kind = 'grant' THEN delta ELSE 0 END), 0) AS BIGINT) \
     FROM ledger_entries";
/// Uploads per scan value.
pub const UPLOAD_SCANS_SQL: &str =
    "SELECT scan, CAST(COUNT(*) AS BIGINT) FROM uploads GROUP BY scan";
/// Export files, rows and bytes per dataset and format.
pub const EXPORT_TOTALS_SQL: &str = "SELECT dataset, format, CAST(COUNT(*) AS BIGINT), \
     CAST(COALESCE(SUM(rows), 0) AS BIGINT), CAST(COALESCE(SUM(bytes), 0) AS BIGINT) \
     FROM export_files GROUP BY dataset, format ORDER BY dataset, format";
/// The last finished lifecycle sweep: its report (JSON) and when it finished (epoch ms).
pub const LIFECYCLE_LAST_SQL: &str = "SELECT report, finished_at FROM lifecycle_sweeps \
     WHERE finished_at IS NOT NULL ORDER BY id DESC LIMIT 1";
/// What every lifecycle sweep saved and expired.
pub const LIFECYCLE_SUMS_SQL: &str = "SELECT CAST(COALESCE(SUM(bytes_saved), 0) AS BIGINT), \
     CAST(COALESCE(SUM(objects_expired), 0) AS BIGINT) FROM lifecycle_sweeps";

/// Money and scan totals.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BusinessTotals {
    /// Credits charged for usage: the negated sum of the ledger's `usage` entries.
    pub credits_charged: i64,
    /// Credits granted to new tenants.
    pub credits_granted: i64,
    /// Uploads per scan result, `pending` left out: (`clean` | `infected` | `error` |
    /// `skipped`, count).
    pub uploads_scanned: Vec<(&'static str, i64)>,
}

/// The scan results as `/metrics` names them, from the `uploads.scan` values.
pub const SCAN_RESULTS: [(&str, &str); 4] = [
    ("clean", "clean"),
    ("infected", "infected"),
    ("error", "scan_failed"),
    ("skipped", "skipped"),
];

impl BusinessTotals {
    /// From the rows of [`LEDGER_TOTALS_SQL`] and [`UPLOAD_SCANS_SQL`].
    #[must_use]
    pub fn from_rows(charged: i64, granted: i64, scans: &[(String, i64)]) -> Self {
        let uploads_scanned = SCAN_RESULTS
            .iter()
            .map(|(label, value)| {
                let n = scans
                    .iter()
                    .find(|(scan, _)| scan == value)
                    .map_or(0, |(_, n)| *n);
                (*label, n)
            })
            .collect();
        Self {
            credits_charged: charged,
            credits_granted: granted,
            uploads_scanned,
        }
    }
}

/// Export files recorded per dataset and format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportTotals {
    /// Dataset name.
    pub dataset: String,
    /// Format name.
    pub format: String,
    /// Files written.
    pub files: i64,
    /// Rows in them.
    pub rows: i64,
    /// Bytes in them.
    pub bytes: i64,
}

/// The lifecycle sweeps' checkpoints.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct LifecycleTotals {
    /// The last finished sweep's report (JSON), if any.
    pub last_report: Option<String>,
    /// When it finished (epoch ms of its clock).
    pub last_finished_ms: Option<i64>,
    /// Bytes saved by every finished or partial sweep.
    pub bytes_saved: i64,
    /// Objects expired by every sweep.
    pub objects_expired: i64,
}

/// One lifecycle tier's objects and stored bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TierCount {
    /// The tier's name (`hot`, `infrequent_access`, `expired`).
    pub tier: String,
    /// Objects.
    pub objects: u64,
    /// Stored bytes.
    pub bytes: u64,
}

/// Writes the `# HELP` and `# TYPE` lines of a metric.
pub fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Seconds, from milliseconds, as Prometheus expects.
#[allow(clippy::cast_precision_loss)]
pub fn secs(ms: u64) -> f64 {
    ms as f64 / 1000.0
}

/// Writes a histogram's cumulative buckets (bounds in ms, one more count for +Inf), sum and
/// count, with `labels` (`k="v",…`).
pub fn histogram(
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

/// The dead-letter depth of each queue, alone: what a host that cannot see its queues'
/// other figures (Cloudflare Queues from inside a Worker) reports, under the same name.
#[must_use]
pub fn render_dlq_depths(depths: &[(String, u64)]) -> String {
    let mut out = String::new();
    let name = "cognomega_queue_dlq_depth";
    header(
        &mut out,
        name,
        "gauge",
        "Messages in the queue's dead-letter queue.",
    );
    for (queue, depth) in depths {
        let _ = writeln!(out, "{name}{{queue=\"{queue}\"}} {depth}");
    }
    out
}

/// Lifecycle: objects and stored bytes per tier as of the last finished sweep (`census`, every
/// tier in order, from its report), and what every sweep has saved and expired (from the sweep
/// checkpoints in the database).
#[must_use]
pub fn render_lifecycle(totals: &LifecycleTotals, census: &[TierCount]) -> String {
    let mut out = String::new();
    for (name, help, value) in [
        (
            "cognomega_lifecycle_objects",
            "Objects per lifecycle tier, as of the last finished sweep.",
            (|c: &TierCount| c.objects) as fn(&TierCount) -> u64,
        ),
        (
            "cognomega_lifecycle_bytes",
            "Stored bytes per lifecycle tier, as of the last finished sweep.",
            |c| c.bytes,
        ),
    ] {
        header(&mut out, name, "gauge", help);
        for c in census {
            let _ = writeln!(out, "{name}{{tier=\"{}\"}} {}", c.tier, value(c));
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
pub fn render_exports(totals: &[ExportTotals]) -> String {
    let mut out = String::new();
    for (name, help, value) in [
        (
            "cognomega_export_files_total",
            "Export files written and recorded, by dataset and format.",
            (|t: &ExportTotals| t.files) as fn(&_) -> i64,
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
pub fn render_business(totals: &BusinessTotals) -> String {
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
    use crate::queue::{DrainHistogram, QueueName};

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

    #[test]
    fn lifecycle_and_business_render_every_series() {
        let totals = LifecycleTotals {
            last_report: None,
            last_finished_ms: Some(1500),
            bytes_saved: 7,
            objects_expired: 2,
        };
        let census = [TierCount {
            tier: "hot".into(),
            objects: 3,
            bytes: 30,
        }];
        let text = render_lifecycle(&totals, &census);
        assert!(text.contains("cognomega_lifecycle_objects{tier=\"hot\"} 3\n"));
        assert!(text.contains("cognomega_lifecycle_bytes{tier=\"hot\"} 30\n"));
        assert!(text.contains("cognomega_lifecycle_compression_saved_bytes_total 7\n"));
        assert!(text.contains("cognomega_lifecycle_last_sweep_timestamp_seconds 1.5\n"));
        let business = BusinessTotals::from_rows(
            12,
            1000,
            &[("scan_failed".into(), 4), ("pending".into(), 9)],
        );
        let text = render_business(&business);
        assert!(text.contains("cognomega_credits_charged_total 12\n"));
        assert!(text.contains("cognomega_uploads_scanned_total{result=\"error\"} 4\n"));
        assert!(text.contains("cognomega_uploads_scanned_total{result=\"clean\"} 0\n"));
        assert!(!text.contains("pending"));
        let text = render_dlq_depths(&[("usage".into(), 5)]);
        assert!(text.contains("cognomega_queue_dlq_depth{queue=\"usage\"} 5\n"));
    }
}
