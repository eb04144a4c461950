//! The sweeper's decisions, without I/O: what to do with one object given its rule, its age and
//! what the database records about it, and the report a sweep adds up. The I/O side (listing,
//! rewriting, deleting, recording) lives in `cognomega-consumers::lifecycle`.
//!
//! Every decision depends only on the object's recorded state and the sweep's `now`, and every
//! step moves the object forward (recompressed once, tiers only ascending), so running a sweep
//! twice, or resuming one that crashed, changes nothing the first run did not.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::policy::{Rule, Tier};

/// What the database records about an object, as far as the policy cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ObjectState {
    /// When the object's owner was created (epoch ms): the row's `created_at`, or the store's
    /// last-modified for an object no row owns.
    pub created_ms: i64,
    /// Its recorded tier.
    pub tier: Tier,
    /// It is text that has not been recompressed yet.
    pub recompressible: bool,
}

/// What a sweep does to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Steps {
    /// Delete the object (its row then records `expired`).
    pub delete: bool,
    /// Re-encode its text at the archive level.
    pub recompress: bool,
    /// Record this tier.
    pub tier: Option<Tier>,
}

impl Steps {
    /// True if nothing is due.
    pub fn is_empty(&self) -> bool {
        !self.delete && !self.recompress && self.tier.is_none()
    }
}

/// The steps due for an object in `state` under `rule` at `now_ms`. An expired object needs
/// nothing; a deletion makes recompression and transitions moot; a tier never goes back (a
/// policy that lengthens its days leaves objects where they are).
pub fn steps(rule: &Rule, state: ObjectState, now_ms: i64) -> Steps {
    if state.tier == Tier::Expired {
        return Steps::default();
    }
    let due = rule.due(state.created_ms, now_ms);
    if due.tier == Tier::Expired {
        return Steps {
            delete: true,
            recompress: false,
            tier: Some(Tier::Expired),
        };
    }
    Steps {
        delete: false,
        recompress: due.recompress && state.recompressible,
        tier: (due.tier > state.tier).then_some(due.tier),
    }
}

/// Objects and their stored bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Count {
    /// Objects.
    pub objects: u64,
    /// Stored bytes.
    pub bytes: u64,
}

impl Count {
    /// Adds one object of `bytes`.
    pub fn add(&mut self, bytes: u64) {
        self.objects += 1;
        self.bytes += bytes;
    }
}

/// What a sweep did (or, dry, would do). Stored with the sweep's checkpoint, so a resumed sweep
/// reports the whole run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepReport {
    /// Objects looked at.
    pub examined: u64,
    /// Objects recompressed, with their stored bytes before.
    pub recompressed: Count,
    /// Stored bytes recompression saved.
    pub bytes_saved: u64,
    /// Objects moved to Infrequent Access, with their stored bytes.
    pub to_infrequent_access: Count,
    /// Objects deleted, with the stored bytes freed.
    pub expired: Count,
    /// Every tracked object per tier once the sweep finished (expired ones at their last size).
    #[serde(default)]
    pub census: BTreeMap<Tier, Count>,
}

impl SweepReport {
    /// True if the sweep changed (or would change) nothing.
    pub fn is_noop(&self) -> bool {
        self.recompressed.objects == 0
            && self.to_infrequent_access.objects == 0
            && self.expired.objects == 0
    }
}

/// Every tier's objects and stored bytes (zero where the report has none, or there is no
/// report yet), from a sweep report's JSON as the sweep checkpoints keep it: the census
/// `/metrics` shows.
#[must_use]
pub fn census_of(report_json: Option<&str>) -> Vec<cognomega_core::metrics::TierCount> {
    let census = report_json
        .and_then(|r| serde_json::from_str::<SweepReport>(r).ok())
        .map(|r| r.census)
        .unwrap_or_default();
    Tier::ALL
        .iter()
        .map(|tier| {
            let c = census.get(tier).copied().unwrap_or_default();
            cognomega_core::metrics::TierCount {
                tier: tier.to_string(),
                objects: c.objects,
                bytes: c.bytes,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Policy, DAY_MS};

    const NOW: i64 = 1_800_000_000_000;

    fn state(days: i64, tier: Tier, recompressible: bool) -> ObjectState {
        ObjectState {
            created_ms: NOW - days * DAY_MS,
            tier,
            recompressible,
        }
    }

    #[test]
    fn artifacts_age_through_every_step() {
        let policy = Policy::default();
        let rule = &policy.rules["artifacts"];
        assert!(steps(rule, state(10, Tier::Hot, true), NOW).is_empty());
        let s = steps(rule, state(30, Tier::Hot, true), NOW);
        assert!(s.recompress && !s.delete && s.tier.is_none());
        // Already recompressed: nothing until day 60.
        assert!(steps(rule, state(45, Tier::Hot, false), NOW).is_empty());
        // Never swept before day 65: both at once.
        let s = steps(rule, state(65, Tier::Hot, true), NOW);
        assert!(s.recompress && s.tier == Some(Tier::InfrequentAccess));
        assert!(steps(rule, state(65, Tier::InfrequentAccess, false), NOW).is_empty());
        let s = steps(rule, state(90, Tier::InfrequentAccess, true), NOW);
        assert!(s.delete && !s.recompress && s.tier == Some(Tier::Expired));
        assert!(steps(rule, state(400, Tier::Expired, true), NOW).is_empty());
    }

    #[test]
    fn tiers_never_go_back() {
        let text =
            r#"{"rules":{"uploads":{"prefix":"uploads/","infrequent_access_after_days":300}}}"#;
        let policy = Policy::from_text(text, true).unwrap_or_else(|e| panic!("{e}"));
        let rule = &policy.rules["uploads"];
        assert!(steps(rule, state(100, Tier::InfrequentAccess, false), NOW).is_empty());
    }
}
