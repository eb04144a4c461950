//! The lifecycle policy: what happens to the objects under each prefix as they age.
//!
//! | rule | prefix | recompress text (zstd 19) | Infrequent Access | delete |
//! |---|---|---|---|---|
//! | `artifacts` | `artifacts/` | after 30 days | after 60 days | after 90 days |
//! | `uploads` | `uploads/` | – | after 30 days | after 90 days |
//! | `quarantine` | `quarantine/` | – | – | after 30 days |
//! | `exports` | `exports/` | – | after 30 days | never |
//!
//! A policy file (JSON or TOML, chosen by the file's extension) overrides these: a rule it names
//! replaces the default rule of that name whole (a field it leaves out is an action not taken),
//! a new name adds a rule, and `recompress_level` / `abort_incomplete_multipart_after_days`
//! replace the defaults (JSON `null` removes the multipart rule). Unknown keys are refused, so a typo cannot silently keep a default.
//!
//! ```toml
//! recompress_level = 19
//! [rules.exports]
//! prefix = "exports/"
//! infrequent_access_after_days = 30
//! delete_after_days = 365
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::codec::ZstdLevel;

/// Milliseconds in a day: ages are whole days since creation, as S3 counts them.
pub const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// The only prefix whose objects may be recompressed: job artifacts, whose database rows record
/// the content type and compression a reader needs. Uploads are served byte for byte.
pub const RECOMPRESSIBLE_PREFIX: &str = "artifacts/";

/// Where an object stands in its lifecycle. Ordered: an object only ever moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// Standard storage, as written.
    Hot,
    /// The provider's Infrequent Access class (S3 `STANDARD_IA`); on the local folder a tier
    /// recorded in the database only.
    InfrequentAccess,
    /// Deleted by the policy; the database row stays and says so.
    Expired,
}

impl Tier {
    /// Every tier, in lifecycle order.
    pub const ALL: [Tier; 3] = [Tier::Hot, Tier::InfrequentAccess, Tier::Expired];

    /// The name stored in the database and shown by the API: `hot`, `infrequent_access`,
    /// `expired`.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Hot => "hot",
            Tier::InfrequentAccess => "infrequent_access",
            Tier::Expired => "expired",
        }
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Tier {
    type Err = PolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "hot" => Ok(Tier::Hot),
            "infrequent_access" => Ok(Tier::InfrequentAccess),
            "expired" => Ok(Tier::Expired),
            other => Err(PolicyError::Invalid(format!("unknown tier {other:?}"))),
        }
    }
}

/// What happens to the objects under one prefix. A `None` action is never taken.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The key prefix, ending in `/` (`artifacts/`).
    pub prefix: String,
    /// Recompress text at [`Policy::recompress_level`] once this old (artifacts only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recompress_after_days: Option<u32>,
    /// Move to Infrequent Access once this old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub infrequent_access_after_days: Option<u32>,
    /// Delete once this old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delete_after_days: Option<u32>,
}

/// What is due for an object of some age under a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Due {
    /// Its text should be stored at the archive level by now.
    pub recompress: bool,
    /// The tier it should be in by now.
    pub tier: Tier,
}

impl Rule {
    fn days(prefix: &str, recompress: Option<u32>, ia: Option<u32>, delete: Option<u32>) -> Self {
        Rule {
            prefix: prefix.to_owned(),
            recompress_after_days: recompress,
            infrequent_access_after_days: ia,
            delete_after_days: delete,
        }
    }

    /// What is due for an object created at `created_ms`, judged at `now_ms`.
    pub fn due(&self, created_ms: i64, now_ms: i64) -> Due {
        let age_ms = now_ms.saturating_sub(created_ms);
        let reached = |days: Option<u32>| days.is_some_and(|d| age_ms >= i64::from(d) * DAY_MS);
        let tier = if reached(self.delete_after_days) {
            Tier::Expired
        } else if reached(self.infrequent_access_after_days) {
            Tier::InfrequentAccess
        } else {
            Tier::Hot
        };
        Due {
            recompress: reached(self.recompress_after_days),
            tier,
        }
    }

    /// The youngest age (days) at which this rule does anything, `None` if it never does.
    pub fn first_action_days(&self) -> Option<u32> {
        [
            self.recompress_after_days,
            self.infrequent_access_after_days,
            self.delete_after_days,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// True if `key` lies under this rule's prefix.
    pub fn covers(&self, key: &str) -> bool {
        key.starts_with(&self.prefix)
    }
}

/// The whole policy: named rules (their names are the bucket rules' IDs) and the settings every
/// rule shares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Policy {
    /// The zstd level cold text is recompressed at (default 19, [`ZstdLevel::ARCHIVE`]).
    pub recompress_level: ZstdLevel,
    /// The bucket rule aborting multipart uploads left incomplete (a failed streamed upload
    /// whose abort also failed) after this many days; default 7. Provider-only.
    pub abort_incomplete_multipart_after_days: Option<u32>,
    /// Rules by name.
    pub rules: BTreeMap<String, Rule>,
}

impl Default for Policy {
    fn default() -> Self {
        let rules = [
            (
                "artifacts",
                Rule::days("artifacts/", Some(30), Some(60), Some(90)),
            ),
            ("uploads", Rule::days("uploads/", None, Some(30), Some(90))),
            (
                "quarantine",
                Rule::days("quarantine/", None, None, Some(30)),
            ),
            ("exports", Rule::days("exports/", None, Some(30), None)),
        ];
        Policy {
            recompress_level: ZstdLevel::ARCHIVE,
            abort_incomplete_multipart_after_days: Some(7),
            rules: rules
                .into_iter()
                .map(|(name, rule)| (name.to_owned(), rule))
                .collect(),
        }
    }
}

/// A policy file: every field optional, layered over the defaults.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    recompress_level: Option<ZstdLevel>,
    /// Absent: keep the default; JSON `null`: no such rule.
    #[serde(default, deserialize_with = "present")]
    abort_incomplete_multipart_after_days: Option<Option<u32>>,
    #[serde(default)]
    rules: BTreeMap<String, Rule>,
}

/// A field that is present, even as `null`.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<u32>>, D::Error> {
    Option::<u32>::deserialize(d).map(Some)
}

/// Why a policy cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read the lifecycle policy {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid JSON/TOML for a policy.
    #[error("lifecycle policy {path}: {reason}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message (it names the offending key).
        reason: String,
    },
    /// The policy parses but breaks a rule.
    #[error("invalid lifecycle policy: {0}")]
    Invalid(String),
}

impl Policy {
    /// The defaults with `path` (`.json`, else TOML) layered over them, validated.
    pub fn from_file(path: &Path) -> Result<Self, PolicyError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Read {
            path: shown.clone(),
            source,
        })?;
        let is_json = path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("json"));
        Self::from_text(&text, is_json).map_err(|e| match e {
            PolicyError::Parse { reason, .. } => PolicyError::Parse {
                path: shown,
                reason,
            },
            other => other,
        })
    }

    /// The defaults with a policy document (JSON if `json`, else TOML) layered over them.
    pub fn from_text(text: &str, json: bool) -> Result<Self, PolicyError> {
        let parse = |reason: String| PolicyError::Parse {
            path: "(text)".into(),
            reason,
        };
        let file: PolicyFile = if json {
            serde_json::from_str(text).map_err(|e| parse(e.to_string()))?
        } else {
            toml::from_str(text).map_err(|e| parse(e.to_string()))?
        };
        let mut policy = Policy::default();
        if let Some(level) = file.recompress_level {
            policy.recompress_level = level;
        }
        if let Some(days) = file.abort_incomplete_multipart_after_days {
            policy.abort_incomplete_multipart_after_days = days;
        }
        policy.rules.extend(file.rules);
        policy.validate()?;
        Ok(policy)
    }

    /// Checks the rules S3 and the sweeper rely on: names usable as rule IDs, prefixes that are
    /// key prefixes and do not overlap (one object, one rule), days of at least 1, deletion
    /// after the other actions, recompression on artifacts only.
    pub fn validate(&self) -> Result<(), PolicyError> {
        let bad = |m: String| Err(PolicyError::Invalid(m));
        if self.abort_incomplete_multipart_after_days == Some(0) {
            return bad("abort_incomplete_multipart_after_days must be at least 1".into());
        }
        for (name, rule) in &self.rules {
            if name.is_empty()
                || name.len() > 200
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
            {
                return bad(format!(
                    "rule name {name:?}: 1..=200 of A-Z a-z 0-9 - _ . (it becomes the bucket rule's ID)"
                ));
            }
            let p = &rule.prefix;
            if p.len() < 2
                || !p.ends_with('/')
                || p.starts_with('/')
                || p.contains("//")
                || !p.bytes().all(|b| {
                    b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.' | b'=')
                })
            {
                return bad(format!(
                    "rules.{name}.prefix {p:?}: a key prefix ending in '/', e.g. \"exports/\""
                ));
            }
            for (field, days) in [
                ("recompress_after_days", rule.recompress_after_days),
                (
                    "infrequent_access_after_days",
                    rule.infrequent_access_after_days,
                ),
                ("delete_after_days", rule.delete_after_days),
            ] {
                if days == Some(0) {
                    return bad(format!("rules.{name}.{field} must be at least 1"));
                }
            }
            if let Some(delete) = rule.delete_after_days {
                for (field, days) in [
                    ("recompress_after_days", rule.recompress_after_days),
                    (
                        "infrequent_access_after_days",
                        rule.infrequent_access_after_days,
                    ),
                ] {
                    if days.is_some_and(|d| d >= delete) {
                        return bad(format!(
                            "rules.{name}.{field} must be less than delete_after_days ({delete})"
                        ));
                    }
                }
            }
            if rule.recompress_after_days.is_some() && !p.starts_with(RECOMPRESSIBLE_PREFIX) {
                return bad(format!(
                    "rules.{name}.recompress_after_days: only job artifacts ({RECOMPRESSIBLE_PREFIX}) can be recompressed"
                ));
            }
            for (other_name, other) in &self.rules {
                if other_name != name && other.prefix.starts_with(p.as_str()) {
                    return bad(format!(
                        "rules.{name} ({p}) and rules.{other_name} ({}) overlap: an object must fall under one rule",
                        other.prefix
                    ));
                }
            }
        }
        Ok(())
    }

    /// The rule covering `key`, with its name.
    pub fn rule_for(&self, key: &str) -> Option<(&str, &Rule)> {
        self.rules
            .iter()
            .find(|(_, rule)| rule.covers(key))
            .map(|(name, rule)| (name.as_str(), rule))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000_000;

    fn days_ago(days: i64) -> i64 {
        NOW - days * DAY_MS
    }

    #[test]
    fn defaults_follow_the_contract() {
        let p = Policy::default();
        p.validate().unwrap();
        let (name, artifacts) = p.rule_for("artifacts/t/j/index.html").unwrap();
        assert_eq!(name, "artifacts");
        let due = |rule: &Rule, d| rule.due(days_ago(d), NOW);
        assert_eq!(
            due(artifacts, 29),
            Due {
                recompress: false,
                tier: Tier::Hot
            }
        );
        assert_eq!(
            due(artifacts, 30),
            Due {
                recompress: true,
                tier: Tier::Hot
            }
        );
        assert_eq!(due(artifacts, 60).tier, Tier::InfrequentAccess);
        assert_eq!(due(artifacts, 90).tier, Tier::Expired);
        let uploads = &p.rules["uploads"];
        assert_eq!(
            due(uploads, 30),
            Due {
                recompress: false,
                tier: Tier::InfrequentAccess
            }
        );
        assert_eq!(due(uploads, 90).tier, Tier::Expired);
        let quarantine = &p.rules["quarantine"];
        assert_eq!(due(quarantine, 29).tier, Tier::Hot);
        assert_eq!(due(quarantine, 30).tier, Tier::Expired);
        let exports = &p.rules["exports"];
        assert_eq!(due(exports, 10_000).tier, Tier::InfrequentAccess);
        assert_eq!(p.recompress_level, ZstdLevel::ARCHIVE);
        assert!(p.rule_for("inputs/t/j").is_none());
        // Segment-wise: `artifactsX/` is not under `artifacts/`.
        assert!(p.rule_for("artifactsX/a").is_none());
    }

    #[test]
    fn one_millisecond_short_of_a_day_is_not_that_day() {
        let rule = &Policy::default().rules["quarantine"];
        assert_eq!(rule.due(NOW - 30 * DAY_MS + 1, NOW).tier, Tier::Hot);
    }

    #[test]
    fn files_override_whole_rules_and_keep_the_rest() {
        let toml = r#"
            recompress_level = 15
            [rules.exports]
            prefix = "exports/"
            delete_after_days = 365
        "#;
        let p = Policy::from_text(toml, false).unwrap();
        assert_eq!(p.recompress_level.get(), 15);
        assert_eq!(p.rules["exports"].infrequent_access_after_days, None);
        assert_eq!(p.rules["exports"].delete_after_days, Some(365));
        assert_eq!(p.rules["artifacts"], Policy::default().rules["artifacts"]);
        let json = r#"{"rules":{"logs":{"prefix":"logs/","delete_after_days":7}}}"#;
        let p = Policy::from_text(json, true).unwrap();
        assert_eq!(p.rules.len(), 5);
        assert_eq!(p.rule_for("logs/a").unwrap().0, "logs");
    }

    #[test]
    fn bad_policies_say_what_is_wrong() {
        for (text, json, says) in [
            (r#"{"rulez":{}}"#, true, "unknown field"),
            (
                "[rules.x]\nprefix = \"x/\"\ndelete_days = 3",
                false,
                "unknown field",
            ),
            (r#"{"recompress_level":40}"#, true, "outside 1..=22"),
            (r#"{"rules":{"x":{"prefix":"x"}}}"#, true, "ending in '/'"),
            (
                r#"{"rules":{"x":{"prefix":"x/","delete_after_days":0}}}"#,
                true,
                "at least 1",
            ),
            (
                r#"{"rules":{"uploads":{"prefix":"uploads/","infrequent_access_after_days":90,"delete_after_days":90}}}"#,
                true,
                "less than delete_after_days",
            ),
            (
                r#"{"rules":{"u2":{"prefix":"uploads/x/"}}}"#,
                true,
                "overlap",
            ),
            (
                r#"{"rules":{"exports":{"prefix":"exports/","recompress_after_days":3}}}"#,
                true,
                "only job artifacts",
            ),
            (r#"{"rules":{"a b":{"prefix":"ab/"}}}"#, true, "rule name"),
        ] {
            let err = Policy::from_text(text, json).unwrap_err().to_string();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    #[test]
    fn tiers_round_trip_and_order() {
        for tier in Tier::ALL {
            assert_eq!(tier.as_str().parse::<Tier>().unwrap(), tier);
        }
        assert!(Tier::Hot < Tier::InfrequentAccess && Tier::InfrequentAccess < Tier::Expired);
    }
}
