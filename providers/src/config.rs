//! Which providers are enabled and how to reach them: from the environment (`CF_ACCOUNT_ID` +
//! `CF_API_TOKEN` (+ `CF_AI_BASE_URL`), `GROQ_API_KEY` (+ `GROQ_BASE_URL`), `OPENAI_API_KEY`
//! (+ `OPENAI_BASE_URL`), `COGNOMEGA_PROVIDER_ORDER`). A provider is enabled when its key is set;
//! base URLs default to the real services. Keys never appear in `Debug` output or logs.

use std::fmt;
use std::time::Duration;

use cognomega_core::ai::{parse_order, ModelMap, ProviderId};

/// Workers AI's REST base.
pub const CFAI_BASE_URL: &str = "https://api.cloudflare.com/client/v4";
/// Groq's OpenAI-compatible base.
pub const GROQ_BASE_URL: &str = "https://api.groq.com/openai/v1";
/// OpenAI's base.
pub const OPENAI_BASE_URL: &str = "https://api.openai.com/v1";

/// One enabled provider.
#[derive(Clone, PartialEq, Eq)]
pub struct ProviderSettings {
    /// Which provider.
    pub id: ProviderId,
    /// Its API base URL.
    pub base_url: String,
    /// Its API key (a bearer token).
    pub api_key: String,
    /// Workers AI only: the account id.
    pub account_id: Option<String>,
}

impl fmt::Debug for ProviderSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProviderSettings")
            .field("id", &self.id)
            .field("base_url", &self.base_url)
            .field("api_key", &"[redacted]")
            .field("account_id", &self.account_id.as_ref().map(|_| "[set]"))
            .finish()
    }
}

/// The providers and how they are tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvidersConfig {
    /// Enabled providers, in the order they are tried.
    pub providers: Vec<ProviderSettings>,
    /// Per-call timeout (to the whole answer, or to each streamed chunk).
    pub timeout: Duration,
    /// Model aliases.
    pub models: ModelMap,
    /// Consecutive failures that open a provider's circuit.
    pub breaker_threshold: u32,
    /// How long an open circuit skips the provider.
    pub breaker_cooldown: Duration,
}

impl Default for ProvidersConfig {
    /// No provider enabled.
    fn default() -> Self {
        Self {
            providers: Vec::new(),
            timeout: Duration::from_secs(30),
            models: ModelMap::default(),
            breaker_threshold: 3,
            breaker_cooldown: Duration::from_secs(30),
        }
    }
}

impl ProvidersConfig {
    /// Reads the provider variables through `var` (the process environment in the binary, a map
    /// in tests). `order` overrides the default cheap-first order; unknown names are an error.
    pub fn from_vars(
        var: impl Fn(&str) -> Option<String>,
        order: Option<&str>,
    ) -> Result<Self, String> {
        Self::from_vars_bound(var, order, &[])
    }

    /// As [`ProvidersConfig::from_vars`], with the providers in `bound` enabled without a key:
    /// the host reaches them through a binding of its own (the edge's Workers AI binding), so
    /// their settings carry no key and their base URL is unused.
    pub fn from_vars_bound(
        var: impl Fn(&str) -> Option<String>,
        order: Option<&str>,
        bound: &[ProviderId],
    ) -> Result<Self, String> {
        let get = |name: &str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
        };
        let mut enabled = Vec::new();
        if let Some(token) = get("CF_API_TOKEN") {
            let account = get("CF_ACCOUNT_ID").ok_or(
                "CF_API_TOKEN is set but CF_ACCOUNT_ID is not; set both to enable Workers AI",
            )?;
            enabled.push(ProviderSettings {
                id: ProviderId::Cfai,
                base_url: base(get("CF_AI_BASE_URL"), CFAI_BASE_URL, "CF_AI_BASE_URL")?,
                api_key: token,
                account_id: Some(account),
            });
        }
        if let Some(key) = get("GROQ_API_KEY") {
            enabled.push(ProviderSettings {
                id: ProviderId::Groq,
                base_url: base(get("GROQ_BASE_URL"), GROQ_BASE_URL, "GROQ_BASE_URL")?,
                api_key: key,
                account_id: None,
            });
        }
        if let Some(key) = get("OPENAI_API_KEY") {
            enabled.push(ProviderSettings {
                id: ProviderId::Openai,
                base_url: base(get("OPENAI_BASE_URL"), OPENAI_BASE_URL, "OPENAI_BASE_URL")?,
                api_key: key,
                account_id: None,
            });
        }
        for id in bound {
            if !enabled.iter().any(|p| p.id == *id) {
                enabled.push(ProviderSettings {
                    id: *id,
                    base_url: String::new(),
                    api_key: String::new(),
                    account_id: None,
                });
            }
        }
        let order = match order.map(str::trim).filter(|o| !o.is_empty()) {
            Some(raw) => parse_order(raw).map_err(|e| format!("COGNOMEGA_PROVIDER_ORDER: {e}"))?,
            None => ProviderId::ALL.to_vec(),
        };
        // Providers left out of an explicit order are not used, even with a key.
        let providers = order
            .iter()
            .filter_map(|id| enabled.iter().find(|p| p.id == *id).cloned())
            .collect();
        Ok(Self {
            providers,
            ..Self::default()
        })
    }

    /// Whether any provider is enabled.
    #[must_use]
    pub fn any(&self) -> bool {
        !self.providers.is_empty()
    }
}

fn base(raw: Option<String>, default: &str, name: &str) -> Result<String, String> {
    let raw = raw.unwrap_or_else(|| default.to_owned());
    let parsed = url::Url::parse(&raw).map_err(|e| format!("{name} {raw:?}: {e}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("{name} {raw:?}: use an http:// or https:// URL"));
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| map.get(k).cloned()
    }

    #[test]
    fn enabled_by_key_in_order() {
        let c = ProvidersConfig::from_vars(vars(&[]), None).unwrap_or_default();
        assert!(!c.any());
        let c = ProvidersConfig::from_vars(
            vars(&[
                ("OPENAI_API_KEY", "sk-1"),
                ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/"),
                ("GROQ_API_KEY", "gq"),
            ]),
            None,
        )
        .unwrap_or_default();
        let ids: Vec<_> = c.providers.iter().map(|p| p.id).collect();
        assert_eq!(ids, [ProviderId::Groq, ProviderId::Openai]);
        assert_eq!(c.providers[1].base_url, "http://127.0.0.1:9/v1");
        assert_eq!(c.providers[0].base_url, GROQ_BASE_URL);
        assert!(!format!("{c:?}").contains("sk-1"));
        let c = ProvidersConfig::from_vars(
            vars(&[("OPENAI_API_KEY", "k"), ("GROQ_API_KEY", "g")]),
            Some("openai"),
        )
        .unwrap_or_default();
        assert_eq!(c.providers.len(), 1);
        assert!(ProvidersConfig::from_vars(vars(&[("CF_API_TOKEN", "t")]), None).is_err());
        assert!(ProvidersConfig::from_vars(vars(&[]), Some("bogus")).is_err());
        let c = ProvidersConfig::from_vars_bound(
            vars(&[("OPENAI_API_KEY", "k")]),
            None,
            &[ProviderId::Cfai],
        )
        .unwrap_or_default();
        let ids: Vec<_> = c.providers.iter().map(|p| p.id).collect();
        assert_eq!(
            ids,
            [ProviderId::Cfai, ProviderId::Openai],
            "a bound provider keeps its place"
        );
        assert!(ProvidersConfig::from_vars(
            vars(&[("GROQ_API_KEY", "g"), ("GROQ_BASE_URL", "ftp://x")]),
            None
        )
        .is_err());
    }
}
