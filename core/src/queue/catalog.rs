//! The queues producers send to, declared once for every host: each queue's name, its
//! settings (batching, retries, dead-letter queue) and its message type. The native consumers
//! run these settings and re-export them; producers send to these names without depending on
//! the consumers.

use crate::queue::{QueueName, QueueSettings};

/// A queue name written in the code (the catalog's, a consumer's own): valid by construction.
#[must_use]
pub fn named(name: &str) -> QueueName {
    QueueName::parse(name).unwrap_or_else(|_| unreachable!("{name} is a valid queue name"))
}

/// The money queues' shape (usage, settlement): batches of `max_batch_size`, four at once, ten
/// retries, then `dlq`. An idle queue gathers 20 ms of arrivals into one claim: one writer
/// transaction per burst instead of one per producer commit, which kept the producers (an
/// answered ask, a `POST /usage`) waiting for the single SQLite writer.
fn money_queue(max_batch_size: u16, dlq: &str) -> QueueSettings {
    QueueSettings {
        max_batch_size,
        max_concurrency: 4,
        max_batch_timeout: std::time::Duration::from_millis(20),
        max_retries: 10,
        dead_letter_queue: Some(named(dlq)),
        ..QueueSettings::default()
    }
}

/// `usage`: accepted usage events (`UsageBatchMessage`), written by the usage-writer.
pub mod usage {
    use crate::queue::{QueueName, QueueSettings};

    /// The queue name.
    pub const QUEUE: &str = "usage";

    /// The queue.
    #[must_use]
    pub fn queue() -> QueueName {
        super::named(QUEUE)
    }

    /// Settings: batches of accepted requests (each up to 1,000 events), patient retries.
    #[must_use]
    pub fn settings() -> QueueSettings {
        super::money_queue(5, "usage.dlq")
    }
}

/// `settlement`: ledger entries to append (`SettlementMessage`), exactly once by id.
pub mod settlement {
    use crate::queue::{QueueName, QueueSettings};

    /// The queue name.
    pub const QUEUE: &str = "settlement";

    /// The queue.
    #[must_use]
    pub fn queue() -> QueueName {
        super::named(QUEUE)
    }

    /// Settings: large batches (one transaction each), patient retries.
    #[must_use]
    pub fn settings() -> QueueSettings {
        super::money_queue(100, "settlement.dlq")
    }
}

/// `av-scan`: uploads to scan (`ScanMessage`).
pub mod av_scan {
    use std::time::Duration;

    use serde::{Deserialize, Serialize};

    use crate::queue::{QueueName, QueueSettings};

    /// The queue name.
    pub const QUEUE: &str = "av-scan";

    /// The message on `av-scan`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct ScanMessage {
        /// The upload's key.
        pub key: String,
    }

    /// The queue.
    #[must_use]
    pub fn queue() -> QueueName {
        super::named(QUEUE)
    }

    /// Settings: one upload per batch, a few at once, a lease long enough for a large file, five
    /// retries with backoff before `scan_failed`.
    #[must_use]
    pub fn settings() -> QueueSettings {
        QueueSettings {
            max_batch_size: 1,
            max_concurrency: 4,
            lease: Duration::from_secs(300),
            max_retries: 5,
            retry_delay: Duration::from_secs(1),
            max_retry_delay: Duration::from_secs(60),
            dead_letter_queue: Some(super::named("av-scan.dlq")),
            ..QueueSettings::default()
        }
    }
}

/// `jobs.<type>`: one queue per job type (`JobMessage`), each with its dead-letter queue.
pub mod jobs {
    use std::time::Duration;

    use serde::{Deserialize, Serialize};

    use crate::queue::{QueueName, QueueSettings};

    /// The message on `jobs.<type>`.
    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    pub struct JobMessage {
        /// The job row's id.
        pub job_id: String,
    }

    /// The queue of a job type: `jobs.<name>`.
    #[must_use]
    pub fn queue(job_type: &str) -> QueueName {
        super::named(&format!("jobs.{job_type}"))
    }

    /// The dead-letter queue of a job type.
    #[must_use]
    pub fn dead_letter_queue(job_type: &str) -> QueueName {
        super::named(&format!("jobs.{job_type}.dlq"))
    }

    /// Settings: one job per batch (CPU-bound), two at once (one per core of a small machine),
    /// leases long enough for a big image, three retries then the DLQ.
    #[must_use]
    pub fn settings(job_type: &str) -> QueueSettings {
        QueueSettings {
            max_batch_size: 1,
            max_concurrency: 2,
            lease: Duration::from_secs(120),
            max_retries: 3,
            retry_delay: Duration::from_secs(1),
            dead_letter_queue: Some(dead_letter_queue(job_type)),
            ..QueueSettings::default()
        }
    }
}

/// `etl`: analytics export requests (`EtlMessage`).
pub mod etl {
    use std::time::Duration;

    use crate::queue::{QueueName, QueueSettings};

    /// The queue name.
    pub const QUEUE: &str = crate::etl::QUEUE;

    /// The queue.
    #[must_use]
    pub fn queue() -> QueueName {
        super::named(QUEUE)
    }

    /// Settings: one export at a time per process (runs of one dataset would only repeat each
    /// other's work), a long lease (heartbeated) for large parts, patient retries.
    #[must_use]
    pub fn settings() -> QueueSettings {
        QueueSettings {
            max_batch_size: 1,
            max_concurrency: 1,
            max_retries: 5,
            lease: Duration::from_secs(120),
            retry_delay: Duration::from_secs(10),
            dead_letter_queue: Some(super::named("etl.dlq")),
            ..QueueSettings::default()
        }
    }
}

/// Every queue of a deployment running `job_types`, with its settings: the money queues, the
/// scans, one queue per job type, the exports. Both hosts' consumers, the edge's bindings and
/// the wrangler configs (checked by a test) derive from this list.
#[must_use]
pub fn all(job_types: &[&str]) -> Vec<(QueueName, QueueSettings)> {
    let mut out = vec![
        (usage::queue(), usage::settings()),
        (settlement::queue(), settlement::settings()),
        (av_scan::queue(), av_scan::settings()),
    ];
    for t in job_types {
        out.push((jobs::queue(t), jobs::settings(t)));
    }
    out.push((etl::queue(), etl::settings()));
    out
}

/// The queues a write stages messages for in the edge's outbox (all but the exports, whose
/// requests are sent at once): every Worker that writes has a producer for each.
#[must_use]
pub fn outbox_queues(job_types: &[&str]) -> Vec<QueueName> {
    all(job_types)
        .into_iter()
        .map(|(q, _)| q)
        .filter(|q| q.as_str() != etl::QUEUE)
        .collect()
}

/// How the Cloudflare edge names a catalog queue.
pub mod cloudflare {
    /// The Cloudflare queue: `cognomega-` and the name with `.` and `_` as `-`
    /// (`jobs.sketch_to_app` → `cognomega-jobs-sketch-to-app`).
    #[must_use]
    pub fn queue_name(queue: &str) -> String {
        format!("cognomega-{}", queue.replace(['.', '_'], "-"))
    }

    /// Its dead-letter queue: `<queue_name>-dlq`.
    #[must_use]
    pub fn dead_letter_queue(queue: &str) -> String {
        format!("{}-dlq", queue_name(queue))
    }

    /// A producer's binding: upper case with `.` and `-` as `_` (`av-scan` → `AV_SCAN`).
    #[must_use]
    pub fn binding(queue: &str) -> String {
        queue.to_ascii_uppercase().replace(['.', '-'], "_")
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn names_follow_the_wrangler_configs() {
            assert_eq!(
                super::queue_name("jobs.sketch_to_app"),
                "cognomega-jobs-sketch-to-app"
            );
            assert_eq!(super::dead_letter_queue("av-scan"), "cognomega-av-scan-dlq");
            assert_eq!(
                super::binding("jobs.image_thumbnail"),
                "JOBS_IMAGE_THUMBNAIL"
            );
            assert_eq!(super::binding("av-scan"), "AV_SCAN");
            assert_eq!(super::binding("usage"), "USAGE");
        }
    }
}
