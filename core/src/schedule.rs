//! Periodic schedules: cron expressions that enqueue a message per tick.
//!
//! A schedule names a queue and a JSON body. Whoever leads (one process among many, see
//! `stores::schedules`) enqueues each tick once, keyed by schedule name and tick time, so a
//! second leader or a retry can never enqueue the same tick twice. After downtime only the
//! latest missed tick is enqueued (the jobs these schedules start — exports, sweeps, pruning —
//! each catch up everything in one run, so replaying every missed tick would only repeat work).
//!
//! Expressions have six fields with seconds first (`sec min hour day-of-month month
//! day-of-week`, optionally a seventh for the year), as the `cron` crate parses them; all
//! times are UTC.

use std::collections::BTreeMap;
use std::str::FromStr;

use chrono::{DateTime, Utc};

use crate::queue::QueueName;
use crate::time::UnixMillis;

/// A schedule as configured.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    /// Cron expression (six or seven fields, seconds first, UTC).
    pub cron: String,
    /// The queue each tick is sent to.
    pub queue: String,
    /// The message body (JSON) each tick sends.
    #[serde(default = "empty_object")]
    pub body: serde_json::Value,
    /// Disabled schedules are listed but never enqueue.
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn empty_object() -> serde_json::Value {
    serde_json::Value::Object(serde_json::Map::new())
}

fn yes() -> bool {
    true
}

/// An override of a schedule in the config file: any field may be left out to keep the default.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleOverride {
    /// Cron expression.
    pub cron: Option<String>,
    /// Target queue.
    pub queue: Option<String>,
    /// Message body.
    pub body: Option<serde_json::Value>,
    /// Enabled or not.
    pub enabled: Option<bool>,
}

/// Why a schedule is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The cron expression does not parse.
    #[error("schedule {name}: invalid cron expression {cron:?}: {reason} (six fields, seconds first, e.g. \"0 */15 * * * *\")")]
    Cron {
        /// Schedule name.
        name: String,
        /// The expression.
        cron: String,
        /// The parser's message.
        reason: String,
    },
    /// The queue name is invalid.
    #[error("schedule {name}: invalid queue name {queue:?}")]
    Queue {
        /// Schedule name.
        name: String,
        /// The queue.
        queue: String,
    },
    /// A new schedule (not one of the defaults) lacks a field.
    #[error("schedule {name}: a new schedule needs both `cron` and `queue`")]
    Incomplete {
        /// Schedule name.
        name: String,
    },
    /// The name is unusable.
    #[error("schedule name {0:?} must be 1..=64 characters of a-z, 0-9, '-', '_' or '.'")]
    Name(String),
}

/// A parsed, ready-to-run schedule.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Unique name (part of every tick's idempotency key).
    pub name: String,
    /// The configuration it came from.
    pub spec: ScheduleSpec,
    /// The target queue.
    pub queue: QueueName,
    cron: cron::Schedule,
}

impl Schedule {
    /// Parses and checks a spec.
    ///
    /// # Errors
    /// An invalid name, cron expression or queue name.
    pub fn parse(name: &str, spec: ScheduleSpec) -> Result<Self, ScheduleError> {
        let name_ok = !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"-_.".contains(&b));
        if !name_ok {
            return Err(ScheduleError::Name(name.to_owned()));
        }
        let cron = cron::Schedule::from_str(&spec.cron).map_err(|e| ScheduleError::Cron {
            name: name.to_owned(),
            cron: spec.cron.clone(),
            reason: e.to_string(),
        })?;
        let queue = QueueName::parse(&spec.queue).map_err(|_| ScheduleError::Queue {
            name: name.to_owned(),
            queue: spec.queue.clone(),
        })?;
        Ok(Self {
            name: name.to_owned(),
            spec,
            queue,
            cron,
        })
    }

    /// The first tick strictly after `t`.
    #[must_use]
    pub fn next_after(&self, t: UnixMillis) -> Option<UnixMillis> {
        let start = to_datetime(t)?;
        self.cron
            .after(&start)
            .next()
            .map(|d| UnixMillis(d.timestamp_millis()))
    }

    /// The latest tick in `(after, now]`, if any: what a leader enqueues now.
    ///
    /// The search starts at most [`CATCH_UP_WINDOW_MS`] before `now` and walks at most
    /// [`CATCH_UP_STEPS`] ticks (a per-second schedule after a long outage), restarting from
    /// an hour back if the walk is too long; a tick older than that window is not enqueued.
    #[must_use]
    pub fn latest_due(&self, after: UnixMillis, now: UnixMillis) -> Option<UnixMillis> {
        if now <= after {
            return None;
        }
        let from = after.0.max(now.0.saturating_sub(CATCH_UP_WINDOW_MS));
        if let Some(t) = self.walk(UnixMillis(from), now, CATCH_UP_STEPS) {
            return t;
        }
        let from = after.0.max(now.0.saturating_sub(3_600_000));
        self.walk(UnixMillis(from), now, usize::MAX).flatten()
    }

    /// `Some(latest)` when the walk from `from` reached past `now` within `max_steps`.
    fn walk(
        &self,
        from: UnixMillis,
        now: UnixMillis,
        max_steps: usize,
    ) -> Option<Option<UnixMillis>> {
        let start = to_datetime(from)?;
        let mut latest = None;
        for (steps, tick) in self.cron.after(&start).enumerate() {
            let t = UnixMillis(tick.timestamp_millis());
            if t > now {
                return Some(latest);
            }
            if steps >= max_steps {
                return None;
            }
            latest = Some(t);
        }
        Some(latest)
    }

    /// The idempotency key of one tick: the same for every process that could enqueue it.
    #[must_use]
    pub fn tick_key(&self, tick: UnixMillis) -> String {
        format!("schedule:{}:{}", self.name, tick.0)
    }
}

/// How far back a leader looks for a missed tick (35 days: covers a monthly schedule).
pub const CATCH_UP_WINDOW_MS: i64 = 35 * 86_400_000;
/// Ticks walked before the search narrows to the last hour.
pub const CATCH_UP_STEPS: usize = 100_000;

fn to_datetime(t: UnixMillis) -> Option<DateTime<Utc>> {
    DateTime::<Utc>::from_timestamp_millis(t.0)
}

/// The built-in schedules: ETL exports every 15 minutes, the lifecycle sweep daily at 03:30 UTC,
/// retention pruning hourly, sealing the ledger's hash chain every 5 minutes.
#[must_use]
pub fn defaults() -> BTreeMap<String, ScheduleSpec> {
    let mut map = BTreeMap::new();
    map.insert(
        "etl-export".to_owned(),
        ScheduleSpec {
            cron: "0 */15 * * * *".into(),
            queue: "etl".into(),
            body: serde_json::json!({}),
            enabled: true,
        },
    );
    map.insert(
        "lifecycle-sweep".to_owned(),
        ScheduleSpec {
            cron: "0 30 3 * * *".into(),
            queue: "lifecycle".into(),
            body: serde_json::json!({ "dry_run": false }),
            enabled: true,
        },
    );
    map.insert(
        "ledger-seal".to_owned(),
        ScheduleSpec {
            cron: "0 */5 * * * *".into(),
            queue: "maintenance".into(),
            body: serde_json::json!({ "task": "seal_ledger" }),
            enabled: true,
        },
    );
    map.insert(
        "retention-prune".to_owned(),
        ScheduleSpec {
            cron: "0 5 * * * *".into(),
            queue: "maintenance".into(),
            body: serde_json::json!({ "task": "prune" }),
            enabled: true,
        },
    );
    map
}

/// The defaults with `overrides` applied (a name not among the defaults adds a schedule and
/// must give `cron` and `queue`), parsed. Sorted by name.
///
/// # Errors
/// The first invalid schedule.
pub fn resolve(
    overrides: &BTreeMap<String, ScheduleOverride>,
) -> Result<Vec<Schedule>, ScheduleError> {
    let mut specs = defaults();
    for (name, o) in overrides {
        let spec = match specs.remove(name) {
            Some(mut spec) => {
                if let Some(c) = &o.cron {
                    spec.cron.clone_from(c);
                }
                if let Some(q) = &o.queue {
                    spec.queue.clone_from(q);
                }
                if let Some(b) = &o.body {
                    spec.body = b.clone();
                }
                if let Some(e) = o.enabled {
                    spec.enabled = e;
                }
                spec
            }
            None => match (&o.cron, &o.queue) {
                (Some(cron), Some(queue)) => ScheduleSpec {
                    cron: cron.clone(),
                    queue: queue.clone(),
                    body: o.body.clone().unwrap_or_else(empty_object),
                    enabled: o.enabled.unwrap_or(true),
                },
                _ => return Err(ScheduleError::Incomplete { name: name.clone() }),
            },
        };
        specs.insert(name.clone(), spec);
    }
    specs
        .into_iter()
        .map(|(name, spec)| Schedule::parse(&name, spec))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(s: &str) -> UnixMillis {
        UnixMillis(
            DateTime::parse_from_rfc3339(s)
                .map(|d| d.timestamp_millis())
                .unwrap_or_else(|e| panic!("{s}: {e}")),
        )
    }

    fn every(cron: &str) -> Schedule {
        Schedule::parse(
            "t",
            ScheduleSpec {
                cron: cron.into(),
                queue: "q".into(),
                body: empty_object(),
                enabled: true,
            },
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn latest_due_picks_the_newest_missed_tick_only() {
        let s = every("0 */15 * * * *");
        let last = ms("2026-11-25T10:00:00Z");
        // Three ticks were missed (10:15, 10:30, 10:45): only 10:45 is due.
        assert_eq!(
            s.latest_due(last, ms("2026-11-25T10:50:00Z")),
            Some(ms("2026-11-25T10:45:00Z"))
        );
        // A tick exactly at `now` is due; the already-enqueued `after` is not.
        assert_eq!(
            s.latest_due(last, ms("2026-11-25T10:15:00Z")),
            Some(ms("2026-11-25T10:15:00Z"))
        );
        assert_eq!(s.latest_due(last, ms("2026-11-25T10:14:59Z")), None);
        assert_eq!(s.latest_due(last, last), None);
    }

    #[test]
    fn a_per_second_schedule_after_a_long_outage_still_finds_the_last_tick() {
        let s = every("* * * * * *");
        let now = ms("2026-11-25T10:00:00Z");
        let last = UnixMillis(now.0 - 30 * 86_400_000);
        assert_eq!(s.latest_due(last, now), Some(now));
        assert_eq!(s.next_after(now), Some(UnixMillis(now.0 + 1000)));
    }

    #[test]
    fn ticks_older_than_the_window_are_not_replayed_but_the_newest_is() {
        let s = every("0 0 0 1 * *"); // monthly
        let last = ms("2026-01-01T00:00:00Z");
        assert_eq!(
            s.latest_due(last, ms("2026-11-20T00:00:00Z")),
            Some(ms("2026-11-01T00:00:00Z"))
        );
    }

    #[test]
    fn overrides_change_defaults_and_add_schedules() {
        let mut o = BTreeMap::new();
        o.insert(
            "etl-export".to_owned(),
            ScheduleOverride {
                cron: Some("0 0 * * * *".into()),
                ..ScheduleOverride::default()
            },
        );
        o.insert(
            "lifecycle-sweep".to_owned(),
            ScheduleOverride {
                enabled: Some(false),
                ..ScheduleOverride::default()
            },
        );
        o.insert(
            "probe".to_owned(),
            ScheduleOverride {
                cron: Some("*/5 * * * * *".into()),
                queue: Some("probe".into()),
                ..ScheduleOverride::default()
            },
        );
        let all = resolve(&o).unwrap_or_else(|e| panic!("{e}"));
        let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "etl-export",
                "ledger-seal",
                "lifecycle-sweep",
                "probe",
                "retention-prune"
            ]
        );
        assert_eq!(all[0].spec.cron, "0 0 * * * *");
        assert_eq!(all[0].queue.as_str(), "etl");
        assert_eq!(all[1].spec.body, serde_json::json!({"task": "seal_ledger"}));
        assert!(!all[2].spec.enabled);
        assert_eq!(all[3].spec.body, serde_json::json!({}));
    }

    #[test]
    fn bad_schedules_are_named() {
        let mut o = BTreeMap::new();
        o.insert(
            "etl-export".to_owned(),
            ScheduleOverride {
                cron: Some("every hour".into()),
                ..ScheduleOverride::default()
            },
        );
        let err = resolve(&o).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(
            err.contains("etl-export") && err.contains("every hour"),
            "{err}"
        );
        let mut o = BTreeMap::new();
        o.insert(
            "new-one".to_owned(),
            ScheduleOverride {
                cron: Some("* * * * * *".into()),
                ..ScheduleOverride::default()
            },
        );
        assert_eq!(
            resolve(&o).err(),
            Some(ScheduleError::Incomplete {
                name: "new-one".into()
            })
        );
        assert!(matches!(
            Schedule::parse(
                "Bad Name",
                defaults()
                    .remove("etl-export")
                    .unwrap_or_else(|| unreachable!())
            ),
            Err(ScheduleError::Name(_))
        ));
    }
}
