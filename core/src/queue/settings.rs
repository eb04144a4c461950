//! Per-queue consumer settings, with the same names and defaults as Cloudflare Queues where
//! those exist, so a wrangler config can be generated from them.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::QueueName;

/// Why a set of queue settings was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    /// A value out of its allowed range.
    #[error("{field} must be {range}, got {got}")]
    OutOfRange {
        /// The setting.
        field: &'static str,
        /// The allowed range, for the message.
        range: &'static str,
        /// The value given.
        got: String,
    },
    /// A queue cannot be its own dead-letter queue.
    #[error("queue {0} cannot be its own dead_letter_queue")]
    SelfDeadLetter(String),
}

/// How a queue is consumed. Durations are carried as milliseconds on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueSettings {
    /// Most messages handed to one handler call (1..=100, default 10).
    pub max_batch_size: u16,
    /// How long a partial batch may wait to fill up before it is delivered anyway
    /// (default 0: deliver at once).
    #[serde(with = "ms")]
    pub max_batch_timeout: Duration,
    /// Retries after the first delivery before a message is dead-lettered (default 3, so at
    /// most 4 deliveries).
    pub max_retries: u32,
    /// Base delay of a retry after a handler error; doubles per attempt, with jitter
    /// (default 1 s).
    #[serde(with = "ms")]
    pub retry_delay: Duration,
    /// Upper bound of the backoff (default 5 min).
    #[serde(with = "ms")]
    pub max_retry_delay: Duration,
    /// Where messages go after `max_retries`; without one they are dropped with a log line and
    /// a metric.
    pub dead_letter_queue: Option<QueueName>,
    /// Batches handled at once by one consumer process (1..=1000, default 4).
    pub max_concurrency: u16,
    /// Visibility timeout of a claim; the runtime heartbeats it every third of its length
    /// (1 s..=12 h, default 30 s).
    #[serde(with = "ms")]
    pub lease: Duration,
    /// How long acked messages are kept for inspection (default 0: deleted on ack).
    #[serde(with = "ms")]
    pub retain_acked: Duration,
    /// How long dead messages stay in a dead-letter queue before pruning (default 14 days).
    #[serde(with = "ms")]
    pub dead_retention: Duration,
    /// How long an idempotency key dedups sends (default 24 h).
    #[serde(with = "ms")]
    pub dedup_window: Duration,
}

impl Default for QueueSettings {
    fn default() -> Self {
        Self {
            max_batch_size: 10,
            max_batch_timeout: Duration::ZERO,
            max_retries: 3,
            retry_delay: Duration::from_secs(1),
            max_retry_delay: Duration::from_secs(300),
            dead_letter_queue: None,
            max_concurrency: 4,
            lease: Duration::from_secs(30),
            retain_acked: Duration::ZERO,
            dead_retention: Duration::from_secs(14 * 24 * 3600),
            dedup_window: Duration::from_secs(24 * 3600),
        }
    }
}

impl QueueSettings {
    /// Checks every range; call before using settings from configuration.
    pub fn validate(&self, queue: &QueueName) -> Result<(), SettingsError> {
        let range = |field, range, ok: bool, got: String| {
            if ok {
                Ok(())
            } else {
                Err(SettingsError::OutOfRange { field, range, got })
            }
        };
        range(
            "max_batch_size",
            "1..=100",
            (1..=100).contains(&self.max_batch_size),
            self.max_batch_size.to_string(),
        )?;
        range(
            "max_concurrency",
            "1..=1000",
            (1..=1000).contains(&self.max_concurrency),
            self.max_concurrency.to_string(),
        )?;
        range(
            "lease",
            "1s..=12h",
            self.lease >= Duration::from_secs(1) && self.lease <= Duration::from_secs(12 * 3600),
            format!("{:?}", self.lease),
        )?;
        range(
            "max_batch_timeout",
            "shorter than half the lease",
            self.max_batch_timeout < self.lease / 2,
            format!("{:?}", self.max_batch_timeout),
        )?;
        range(
            "max_retries",
            "0..=1000",
            self.max_retries <= 1000,
            self.max_retries.to_string(),
        )?;
        if self.dead_letter_queue.as_ref() == Some(queue) {
            return Err(SettingsError::SelfDeadLetter(queue.to_string()));
        }
        Ok(())
    }

    /// Deliveries a message gets before it is dead-lettered.
    #[must_use]
    pub fn max_deliveries(&self) -> u32 {
        self.max_retries.saturating_add(1)
    }
}

mod ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(name: &str) -> QueueName {
        QueueName::parse(name).expect("valid")
    }

    #[test]
    fn defaults_are_valid() {
        assert!(QueueSettings::default().validate(&q("usage")).is_ok());
        assert_eq!(QueueSettings::default().max_deliveries(), 4);
    }

    #[test]
    fn ranges_are_enforced() {
        let s = QueueSettings {
            max_batch_size: 101,
            ..Default::default()
        };
        assert!(matches!(
            s.validate(&q("usage")),
            Err(SettingsError::OutOfRange {
                field: "max_batch_size",
                ..
            })
        ));
        let s = QueueSettings {
            max_batch_size: 0,
            ..Default::default()
        };
        assert!(s.validate(&q("usage")).is_err());
        let s = QueueSettings {
            dead_letter_queue: Some(q("usage")),
            ..Default::default()
        };
        assert_eq!(
            s.validate(&q("usage")),
            Err(SettingsError::SelfDeadLetter("usage".into()))
        );
    }

    #[test]
    fn round_trips_as_milliseconds() {
        let s = QueueSettings {
            lease: Duration::from_millis(1500),
            ..Default::default()
        };
        let json = serde_json::to_value(&s).expect("serializes");
        assert_eq!(json["lease"], 1500);
        let back: QueueSettings = serde_json::from_value(json).expect("deserializes");
        assert_eq!(back, s);
        assert!(serde_json::from_str::<QueueSettings>(r#"{"leese": 1}"#).is_err());
    }
}
