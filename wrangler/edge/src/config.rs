//! A Worker's settings: plain variables and secrets from its wrangler config.
//!
//! The names mirror the native server's environment (`COGNOMEGA_ADMIN_KEY`, …) so one set of
//! secrets configures both shapes.

use std::cell::RefCell;
use std::rc::Rc;

use cognomega_core::billing::BillingConfig;
use cognomega_core::limits::{CostGuards, RateLimits};
use cognomega_core::settings::{self, ConfigFile, UploadConfig};
use worker::Env;

/// Which part of the platform this Worker is (`COGNOMEGA_ROLE`).
pub fn role(env: &Env) -> String {
    var(env, "COGNOMEGA_ROLE").unwrap_or_default()
}

/// A variable or secret, if set and not empty.
pub fn var(env: &Env, name: &str) -> Option<String> {
    env.secret(name)
        .map(|s| s.to_string())
        .or_else(|_| env.var(name).map(|v| v.to_string()))
        .ok()
        .filter(|v| !v.is_empty())
}

/// Token issuer and audience (the native defaults).
pub fn issuer(env: &Env) -> String {
    var(env, "COGNOMEGA_JWT_ISSUER").unwrap_or_else(|| "cognomega".into())
}

pub fn audience(env: &Env) -> String {
    var(env, "COGNOMEGA_JWT_AUDIENCE").unwrap_or_else(|| "cognomega-api".into())
}

/// Guest token lifetime in seconds (`COGNOMEGA_TOKEN_TTL`, as natively; default one day).
pub fn token_ttl_secs(env: &Env) -> u64 {
    var(env, "COGNOMEGA_TOKEN_TTL")
        .and_then(|v| v.parse().ok())
        .unwrap_or(86_400)
}

/// Prices, the guest grant and the guest floor, read by the native names
/// (`COGNOMEGA_PRICES`, `COGNOMEGA_GUEST_GRANT`, `COGNOMEGA_GUEST_FLOOR`) by the same code. A
/// setting that does not parse stops every billable path (it says which and why) rather than
/// charge by prices nobody set.
pub fn billing(env: &Env) -> Result<BillingConfig, String> {
    BillingConfig::from_settings(|name| var(env, name))
}

/// The operator key for `/admin/*` (`COGNOMEGA_ADMIN_KEY`, a secret).
pub fn admin_key(env: &Env) -> Option<String> {
    var(env, "COGNOMEGA_ADMIN_KEY")
}

/// The secret signing download links (`COGNOMEGA_LINK_SECRET`; falls back to the admin key).
pub fn link_secret(env: &Env) -> Option<String> {
    var(env, "COGNOMEGA_LINK_SECRET").or_else(|| admin_key(env))
}

/// The native config file (`cognomega.toml`: `[rate_limits]`, `[cost_guards]`, `[ai]`, the
/// model `cognomega_core::settings::ConfigFile`), its text in `COGNOMEGA_CONFIG_TOML`. A file
/// that does not parse stops the paths that read it (500 naming it) rather than run on
/// defaults nobody chose.
///
/// Parsed once per isolate (a Worker's variables do not change while it runs): the gateway
/// reads the rate limits on every request.
pub fn file(env: &Env) -> Result<Rc<ConfigFile>, String> {
    thread_local! {
        static PARSED: RefCell<Option<(String, Rc<ConfigFile>)>> = const { RefCell::new(None) };
    }
    let text = var(env, "COGNOMEGA_CONFIG_TOML").unwrap_or_default();
    if let Some(hit) = PARSED.with(|p| {
        p.borrow()
            .as_ref()
            .filter(|(t, _)| *t == text)
            .map(|(_, f)| f.clone())
    }) {
        return Ok(hit);
    }
    let parsed = Rc::new(if text.is_empty() {
        ConfigFile::default()
    } else {
        ConfigFile::parse(&text).map_err(|e| format!("COGNOMEGA_CONFIG_TOML: {e}"))?
    });
    PARSED.with(|p| *p.borrow_mut() = Some((text, parsed.clone())));
    Ok(parsed)
}

/// Rate limits: the file's over the defaults, `COGNOMEGA_RATE_LIMITS=on|off` winning.
pub fn rate_limits(env: &Env) -> Result<RateLimits, String> {
    let switch = var(env, "COGNOMEGA_RATE_LIMITS")
        .map(|v| settings::switch(&v))
        .transpose()
        .map_err(|e| format!("COGNOMEGA_RATE_LIMITS: {e}"))?;
    file(env)?
        .rate_limits(switch)
        .map_err(|e| format!("COGNOMEGA_CONFIG_TOML: {e}"))
}

/// The cost caps: the file's `[cost_guards]` over the defaults.
pub fn cost_guards(env: &Env) -> Result<CostGuards, String> {
    Ok(file(env)?.cost_guards())
}

/// Upload limits and link lifetime, by the native names.
pub fn uploads(env: &Env) -> Result<UploadConfig, String> {
    UploadConfig::from_vars(|name| var(env, name))
}

/// Browser origins CORS allows (`COGNOMEGA_CORS_ORIGINS`, comma-separated; default `*`, any).
pub fn cors_origins(env: &Env) -> Vec<String> {
    var(env, "COGNOMEGA_CORS_ORIGINS")
        .unwrap_or_else(|| "*".into())
        .split(',')
        .map(|o| o.trim().to_owned())
        .filter(|o| !o.is_empty())
        .collect()
}

/// The clamd address (`COGNOMEGA_CLAMD`, `host:port`) the av-scan consumer streams uploads to.
pub fn clamd(env: &Env) -> Option<String> {
    var(env, "COGNOMEGA_CLAMD")
}
