//! The settings model both hosts read, under the same names: the config file (natively
//! `--config FILE` / `DATA_DIR/cognomega.toml`; on the edge its text in
//! `COGNOMEGA_CONFIG_TOML`) and the environment variables of [`VARS`] (natively also flags of
//! `serve` and `worker`, whose tests check that every name here is one of theirs).

use std::collections::BTreeMap;
use std::time::Duration;

use crate::limits::{ConfigError, CostGuards, CostGuardsFile, RateLimits, RateLimitsFile};

/// The environment variables read through this model (and by [`crate::billing::BillingConfig`]),
/// on both hosts.
pub const VARS: &[&str] = &[
    "COGNOMEGA_TOKEN_TTL",
    "COGNOMEGA_JWT_ISSUER",
    "COGNOMEGA_JWT_AUDIENCE",
    "COGNOMEGA_GUEST_GRANT",
    "COGNOMEGA_GUEST_FLOOR",
    "COGNOMEGA_PRICES",
    "COGNOMEGA_CLAMD",
    "COGNOMEGA_REQUIRE_SCAN",
    "COGNOMEGA_MAX_UPLOAD_BYTES",
    "COGNOMEGA_TIER_MAX_UPLOAD_BYTES",
    "COGNOMEGA_UPLOAD_QUOTA_BYTES",
    "COGNOMEGA_UPLOAD_TYPES",
    "COGNOMEGA_LINK_TTL",
    "COGNOMEGA_CORS_ORIGINS",
    "COGNOMEGA_PROVIDER_ORDER",
    "COGNOMEGA_PROVIDER_TIMEOUT",
    "COGNOMEGA_RATE_LIMITS",
];

/// The config file (TOML). Everything in it has a default.
///
/// ```toml
/// [schedules.etl-export]          # override a built-in schedule
/// cron = "0 0 * * * *"
///
/// [schedules.nightly-probe]       # or add one: cron + queue (+ body)
/// cron = "0 0 2 * * *"
/// queue = "probe"
/// body = { key = "nightly" }
///
/// [rate_limits]                   # token buckets per tier and route class
/// enabled = true
/// [rate_limits.guest.jobs]
/// rate = 1.0                      # tokens per second
/// burst = 20
///
/// [cost_guards.guest]             # caps per fixed UTC window; an absent key is no cap
/// tokens_per_day = 1000000
/// job_runs_per_hour = 100
///
/// [ai]
/// order = ["groq", "openai"]      # default cfai, groq, openai (COGNOMEGA_PROVIDER_ORDER wins)
/// timeout_s = 20
/// [ai.models.small]               # an alias: the model each provider runs for it
/// cfai = "@cf/meta/llama-3.1-8b-instruct"
/// groq = "llama-3.1-8b-instant"
/// [ai.policy.guest]               # per-tier levers (guest, member, pro)
/// max_tokens = 512
/// daily_tokens = 50000
///
/// [voice]
/// order = ["local"]               # COGNOMEGA_VOICE_PROVIDER_ORDER wins
/// session_stale_secs = 60         # a dead process's sessions are settled after this
/// tts_inline_chars = 500          # longer POST /voice/tts texts become tts_render jobs (202)
/// [voice.policy.guest]            # per-tier caps (guest, member, pro); all five keys
/// max_tts_chars = 1000
/// max_stt_seconds = 60
/// max_session_seconds = 300
/// max_sessions = 2
/// session_idle_secs = 30
/// ```
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Overrides of the built-in schedules, and extra schedules (natively; the edge's periodic
    /// work runs on its Cron Triggers).
    #[serde(default)]
    pub schedules: BTreeMap<String, crate::schedule::ScheduleOverride>,
    /// `POST /api/si/ask`: provider order, timeout, model aliases, per-tier cost levers.
    #[serde(default)]
    pub ai: AiFileConfig,
    /// `[rate_limits]`: `enabled`, and `[rate_limits.<tier>.<class>]` with `rate` and `burst`.
    #[serde(default)]
    pub rate_limits: RateLimitsFile,
    /// `[cost_guards.<tier>]` with `tokens_per_day` and `job_runs_per_hour`.
    #[serde(default)]
    pub cost_guards: CostGuardsFile,
    /// `[voice]`: provider order and `[voice.policy.<tier>]` caps.
    #[serde(default)]
    pub voice: VoiceFileConfig,
}

/// The `[voice]` table.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoiceFileConfig {
    /// Provider order (`COGNOMEGA_VOICE_PROVIDER_ORDER` wins).
    pub order: Option<Vec<String>>,
    /// Per-tier caps (a tier left out keeps its defaults).
    #[serde(default)]
    pub policy: crate::voice::VoicePolicy,
    /// A realtime session whose process stopped beating its heart for this long is settled by
    /// another (default 60).
    pub session_stale_secs: Option<u64>,
    /// `POST /voice/tts` texts longer than this are rendered by a `tts_render` job (default
    /// [`crate::voice::TTS_INLINE_CHARS`]; `COGNOMEGA_VOICE_TTS_INLINE_CHARS` wins).
    pub tts_inline_chars: Option<usize>,
}

/// The `[ai]` table (keys never live here: they come from the environment).
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AiFileConfig {
    /// Provider order.
    pub order: Option<Vec<String>>,
    /// Per-call timeout in seconds.
    pub timeout_s: Option<u64>,
    /// Model aliases.
    #[serde(default)]
    pub models: crate::ai::ModelMap,
    /// Per-tier cost levers (a tier left out keeps its defaults).
    #[serde(default)]
    pub policy: crate::ai::AskPolicy,
}

impl ConfigFile {
    /// Parses the file's text.
    pub fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    /// The default rate limits with this file's entries, and its on/off switch unless
    /// `switch` (`COGNOMEGA_RATE_LIMITS`) says otherwise.
    pub fn rate_limits(&self, switch: Option<bool>) -> Result<RateLimits, ConfigError> {
        let mut limits = RateLimits::from_file(&self.rate_limits)?;
        if let Some(on) = switch {
            limits.enabled = on;
        }
        Ok(limits)
    }

    /// The default cost guards with this file's tiers replacing theirs.
    #[must_use]
    pub fn cost_guards(&self) -> CostGuards {
        CostGuards::from_file(&self.cost_guards)
    }

    /// The provider order: `COGNOMEGA_PROVIDER_ORDER` (`env`), else the file's.
    #[must_use]
    pub fn provider_order(&self, env: Option<&str>) -> Option<String> {
        env.map(str::to_owned)
            .or_else(|| self.ai.order.as_ref().map(|o| o.join(",")))
    }

    /// The voice provider order: `COGNOMEGA_VOICE_PROVIDER_ORDER` (`env`), else the file's.
    #[must_use]
    pub fn voice_order(&self, env: Option<&str>) -> Option<String> {
        env.map(str::to_owned)
            .or_else(|| self.voice.order.as_ref().map(|o| o.join(",")))
    }

    /// The provider timeout: `COGNOMEGA_PROVIDER_TIMEOUT` (`env`, seconds), else the file's.
    pub fn provider_timeout(&self, env: Option<u64>) -> Result<Option<Duration>, String> {
        match env.or(self.ai.timeout_s) {
            Some(0) => Err("the provider timeout must be at least 1 second".into()),
            other => Ok(other.map(Duration::from_secs)),
        }
    }
}

/// What both hosts report alike in `GET /admin/env-snapshot` (an allow-list: no secret is an
/// input here).
#[derive(Debug, Clone, Copy)]
pub struct Snapshot<'a> {
    /// Token issuer.
    pub issuer: &'a str,
    /// Token audience.
    pub audience: &'a str,
    /// Guest token lifetime, seconds.
    pub token_ttl_s: u64,
    /// Prices, grant, floor.
    pub billing: &'a crate::billing::BillingConfig,
    /// CORS origins (`*` among them: any).
    pub cors: &'a [String],
    /// Upload settings.
    pub uploads: &'a UploadConfig,
    /// Rate limits.
    pub rate_limits: &'a RateLimits,
    /// Where the buckets live (`sqlite`, `postgres`, `durable-object`).
    pub buckets: &'a str,
    /// Cost caps.
    pub cost_guards: &'a CostGuards,
}

impl Snapshot<'_> {
    /// The sections `auth`, `billing`, `cors`, `uploads`, `rate_limits` and `cost_guards`.
    #[must_use]
    pub fn sections(&self) -> serde_json::Map<String, serde_json::Value> {
        let cors = if self.cors.iter().any(|o| o == "*") {
            serde_json::json!("*")
        } else {
            serde_json::json!(self.cors)
        };
        let value = serde_json::json!({
            "auth": {
                "issuer": self.issuer,
                "audience": self.audience,
                "token_ttl_s": self.token_ttl_s,
                "admin_key": "[redacted]",
            },
            "billing": {
                "prices": self.billing.prices,
                "guest_grant": self.billing.guest_grant,
                "guest_floor": self.billing.guest_floor,
            },
            "cors": cors,
            "uploads": self.uploads.snapshot(),
            "rate_limits": {
                "enabled": self.rate_limits.enabled,
                "buckets": self.buckets,
                "limits": self.rate_limits.table(),
            },
            "cost_guards": self.cost_guards,
        });
        match value {
            serde_json::Value::Object(map) => map,
            _ => serde_json::Map::new(),
        }
    }
}

/// `on`/`off` (`COGNOMEGA_RATE_LIMITS`); anything else is an error.
pub fn switch(raw: &str) -> Result<bool, String> {
    match raw.trim().to_ascii_lowercase().as_str() {
        "on" => Ok(true),
        "off" => Ok(false),
        other => Err(format!("{other:?} is neither on nor off")),
    }
}

/// Limits and policy of `POST /upload/direct`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadConfig {
    /// Largest upload in bytes (default 100 MiB), unless the tenant's tier has its own.
    pub max_bytes: u64,
    /// Largest upload per tier (`guest`, `member`, `pro`), overriding `max_bytes`.
    pub max_bytes_by_tier: BTreeMap<String, u64>,
    /// Bytes a tenant may keep in uploads (default 1 GiB).
    pub quota_bytes: u64,
    /// Content types accepted (checked against the bytes' magic).
    pub allowed_types: Vec<String>,
    /// Lifetime of signed download links (default 15 minutes).
    pub link_ttl: Duration,
    /// A scanner (clamd) is configured: uploads start `pending`; otherwise `skipped`.
    pub scanning: bool,
    /// Refuse uploads when no scanner is configured.
    pub require_scan: bool,
}

impl UploadConfig {
    /// The upload limit of a tier.
    #[must_use]
    pub fn max_bytes_for(&self, tier: &str) -> u64 {
        self.max_bytes_by_tier
            .get(tier)
            .copied()
            .unwrap_or(self.max_bytes)
    }

    /// Refuses uploads (503) when they must be scanned and no scanner is configured.
    pub fn check_scanning(&self) -> Result<(), crate::api::Refusal> {
        if self.require_scan && !self.scanning {
            return Err(crate::api::Refusal::unavailable(
                "uploads need virus scanning, and no scanner is configured (COGNOMEGA_CLAMD)",
            ));
        }
        Ok(())
    }

    /// The `uploads` part of `GET /admin/env-snapshot`.
    #[must_use]
    pub fn snapshot(&self) -> serde_json::Value {
        serde_json::json!({
            "max_bytes": self.max_bytes,
            "max_bytes_by_tier": self.max_bytes_by_tier,
            "quota_bytes": self.quota_bytes,
            "allowed_types": self.allowed_types,
            "link_ttl_s": self.link_ttl.as_secs(),
            "scanning": self.scanning,
            "require_scan": self.require_scan,
        })
    }

    /// Read from the environment's names (`var` gives a set, non-empty value); an entry that
    /// does not parse is an error naming it.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let d = Self::default();
        let number = |name: &str, default: u64| -> Result<u64, String> {
            var(name).map_or(Ok(default), |raw| {
                raw.trim()
                    .parse()
                    .map_err(|_| format!("{name}={raw:?}: not a whole number"))
            })
        };
        let tiers = var("COGNOMEGA_TIER_MAX_UPLOAD_BYTES").unwrap_or_default();
        let types = var("COGNOMEGA_UPLOAD_TYPES");
        Ok(Self {
            max_bytes: number("COGNOMEGA_MAX_UPLOAD_BYTES", d.max_bytes)?,
            max_bytes_by_tier: tier_limits(tiers.split(','))
                .map_err(|e| format!("COGNOMEGA_TIER_MAX_UPLOAD_BYTES: {e}"))?,
            quota_bytes: number("COGNOMEGA_UPLOAD_QUOTA_BYTES", d.quota_bytes)?,
            allowed_types: types.map_or(d.allowed_types, |t| upload_types(t.split(','))),
            link_ttl: Duration::from_secs(number("COGNOMEGA_LINK_TTL", 900)?.max(1)),
            scanning: var("COGNOMEGA_CLAMD").is_some(),
            require_scan: var("COGNOMEGA_REQUIRE_SCAN")
                .is_some_and(|v| matches!(v.trim(), "1" | "true" | "yes" | "on")),
        })
    }
}

impl Default for UploadConfig {
    fn default() -> Self {
        Self {
            max_bytes: 100 << 20,
            max_bytes_by_tier: BTreeMap::new(),
            quota_bytes: 1 << 30,
            allowed_types: upload_types(crate::files::DEFAULT_UPLOAD_TYPES),
            link_ttl: Duration::from_secs(15 * 60),
            scanning: false,
            require_scan: false,
        }
    }
}

/// Per-tier upload limits from `TIER=BYTES` entries (empty ones skipped).
pub fn tier_limits<'a>(
    specs: impl IntoIterator<Item = &'a str>,
) -> Result<BTreeMap<String, u64>, String> {
    let mut limits = BTreeMap::new();
    for spec in specs.into_iter().map(str::trim).filter(|s| !s.is_empty()) {
        let (tier, bytes) = spec
            .split_once('=')
            .ok_or_else(|| format!("{spec:?}: use TIER=BYTES, e.g. guest=10485760"))?;
        let tier = tier.trim().to_ascii_lowercase();
        if !matches!(tier.as_str(), "guest" | "member" | "pro") {
            return Err(format!("{spec:?}: unknown tier; one of guest, member, pro"));
        }
        let bytes = (bytes.trim().parse())
            .map_err(|_| format!("{spec:?}: BYTES must be a whole number"))?;
        limits.insert(tier, bytes);
    }
    Ok(limits)
}

/// Content types, trimmed and lower-cased (empty ones skipped).
pub fn upload_types<'a>(types: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    types
        .into_iter()
        .map(|t| t.trim().to_ascii_lowercase())
        .filter(|t| !t.is_empty())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| map.get(name).cloned()
    }

    #[test]
    fn uploads_read_every_name_and_name_what_does_not_parse() {
        assert_eq!(
            UploadConfig::from_vars(vars(&[])),
            Ok(UploadConfig::default())
        );
        let c = UploadConfig::from_vars(vars(&[
            ("COGNOMEGA_MAX_UPLOAD_BYTES", "2048"),
            ("COGNOMEGA_TIER_MAX_UPLOAD_BYTES", "Guest=10, pro=99,"),
            ("COGNOMEGA_UPLOAD_QUOTA_BYTES", "4096"),
            ("COGNOMEGA_UPLOAD_TYPES", "Text/Plain, ,image/png"),
            ("COGNOMEGA_LINK_TTL", "60"),
            ("COGNOMEGA_CLAMD", "tcp://127.0.0.1:3310"),
            ("COGNOMEGA_REQUIRE_SCAN", "true"),
        ]))
        .unwrap_or_default();
        assert_eq!(c.max_bytes, 2048);
        assert_eq!((c.max_bytes_for("guest"), c.max_bytes_for("pro")), (10, 99));
        assert_eq!(c.max_bytes_for("member"), 2048);
        assert_eq!(c.quota_bytes, 4096);
        assert_eq!(c.allowed_types, ["text/plain", "image/png"]);
        assert_eq!(c.link_ttl, Duration::from_secs(60));
        assert!(c.scanning && c.require_scan);
        for (name, raw, says) in [
            (
                "COGNOMEGA_MAX_UPLOAD_BYTES",
                "lots",
                "COGNOMEGA_MAX_UPLOAD_BYTES",
            ),
            ("COGNOMEGA_TIER_MAX_UPLOAD_BYTES", "admin=5", "unknown tier"),
            ("COGNOMEGA_TIER_MAX_UPLOAD_BYTES", "guest", "TIER=BYTES"),
            (
                "COGNOMEGA_TIER_MAX_UPLOAD_BYTES",
                "guest=-1",
                "whole number",
            ),
        ] {
            let err = UploadConfig::from_vars(vars(&[(name, raw)]))
                .err()
                .unwrap_or_default();
            assert!(err.contains(says), "{name}={raw}: {err}");
        }
    }

    #[test]
    fn the_file_layers_over_the_defaults_and_the_environment_wins() {
        let file = ConfigFile::parse(
            "[rate_limits]\nenabled = false\n[rate_limits.guest.usage]\nrate = 2.0\nburst = 3\n\
             [cost_guards.guest]\njob_runs_per_hour = 7\n\
             [ai]\norder = [\"openai\", \"groq\"]\ntimeout_s = 5\n\
             [ai.policy.guest]\nmax_tokens = 64\n",
        )
        .unwrap_or_default();
        let limits = file.rate_limits(None).unwrap_or_default();
        assert!(!limits.enabled);
        assert!(file.rate_limits(Some(true)).is_ok_and(|l| l.enabled));
        assert_eq!(
            file.cost_guards()
                .for_tier(crate::auth::Tier::Guest)
                .job_runs_per_hour,
            Some(7)
        );
        assert_eq!(file.provider_order(None).as_deref(), Some("openai,groq"));
        assert_eq!(file.provider_order(Some("cfai")).as_deref(), Some("cfai"));
        assert_eq!(
            file.provider_timeout(None),
            Ok(Some(Duration::from_secs(5)))
        );
        assert!(file.provider_timeout(Some(0)).is_err());
        assert_eq!(file.ai.policy.guest.max_tokens, 64);
        assert!(ConfigFile::parse("[nope]\n").is_err());
        assert_eq!(switch(" OFF"), Ok(false));
        assert!(switch("maybe").is_err());
    }
}
