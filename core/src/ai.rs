//! `/api/si/ask`: the request, the providers it can be routed to, the per-tier cost levers, and
//! the circuit breaker that lets a dead provider be skipped quickly. Pure policy: no I/O and no
//! clock of its own (callers pass the time), so it runs in every host.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::auth::Tier;

pub mod replay;

/// Longest prompt (all message contents together), in bytes.
pub const MAX_PROMPT_BYTES: usize = 256 * 1024;
/// Most messages in one request.
pub const MAX_MESSAGES: usize = 256;

/// A model provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderId {
    /// Cloudflare Workers AI (REST `…/accounts/{id}/ai/run/{model}`).
    Cfai,
    /// Groq (OpenAI-compatible chat completions).
    Groq,
    /// OpenAI, or any OpenAI-compatible server at `OPENAI_BASE_URL` (llama.cpp, Ollama, vLLM).
    Openai,
}

impl ProviderId {
    /// Every provider, cheapest first (the default order).
    pub const ALL: [ProviderId; 3] = [Self::Cfai, Self::Groq, Self::Openai];

    /// The wire name (`X-Provider`, `COGNOMEGA_PROVIDER_ORDER`).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Cfai => "cfai",
            Self::Groq => "groq",
            Self::Openai => "openai",
        }
    }

    /// Parses a wire name.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(raw.trim()))
    }

    /// The model used when the request names none.
    #[must_use]
    pub fn default_model(self) -> &'static str {
        match self {
            Self::Cfai => "@cf/meta/llama-3.1-8b-instruct",
            Self::Groq => "llama-3.1-8b-instant",
            Self::Openai => "gpt-4o-mini",
        }
    }
}

impl fmt::Display for ProviderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Parses `COGNOMEGA_PROVIDER_ORDER` (`cfai,groq,openai`): known names, no repeats.
pub fn parse_order(raw: &str) -> Result<Vec<ProviderId>, String> {
    let mut order = Vec::new();
    for name in raw.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let p = ProviderId::parse(name)
            .ok_or_else(|| format!("unknown provider {name:?}; one of cfai, groq, openai"))?;
        if order.contains(&p) {
            return Err(format!("provider {name:?} is listed twice"));
        }
        order.push(p);
    }
    if order.is_empty() {
        return Err("the provider order is empty; e.g. cfai,groq,openai".into());
    }
    Ok(order)
}

/// A chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAsk {
    messages: Option<Vec<Message>>,
    prompt: Option<String>,
    model: Option<String>,
    max_tokens: Option<u32>,
    intent: Option<String>,
    #[serde(default)]
    stream: bool,
}

/// A validated `POST /api/si/ask` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AskRequest {
    /// The conversation (a bare `prompt` becomes one user message).
    pub messages: Vec<Message>,
    /// A model alias or a provider's model name; `None` = each provider's default.
    pub model: Option<String>,
    /// Requested output cap (the tier's cap applies on top).
    pub max_tokens: Option<u32>,
    /// What the request is for (`chat`, `summarize`, …), for the guest denylist.
    pub intent: Option<String>,
    /// Answer as Server-Sent Events.
    pub stream: bool,
}

/// Why a body was refused; `field` names the culprit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AskError {
    /// The JSON path of the problem (`messages[2].role`).
    pub field: String,
    /// What is wrong.
    pub reason: String,
}

impl fmt::Display for AskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> AskError {
    AskError {
        field: field.into(),
        reason: reason.into(),
    }
}

fn plain_name(s: &str, max: usize) -> bool {
    (1..=max).contains(&s.len())
        && s.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':' | b'/' | b'@')
        })
}

/// Parses and validates a body.
pub fn parse_ask(body: &[u8]) -> Result<AskRequest, AskError> {
    let raw: RawAsk = serde_json::from_slice(body).map_err(|e| err("body", e.to_string()))?;
    let messages = match (raw.messages, raw.prompt) {
        (Some(_), Some(_)) => return Err(err("body", "send either messages or prompt, not both")),
        (None, None) => return Err(err("body", "messages or prompt is required")),
        (None, Some(prompt)) => {
            if prompt.trim().is_empty() {
                return Err(err("prompt", "must not be empty"));
            }
            vec![Message {
                role: "user".into(),
                content: prompt,
            }]
        }
        (Some(messages), None) => {
            if messages.is_empty() {
                return Err(err("messages", "must hold at least one message"));
            }
            if messages.len() > MAX_MESSAGES {
                return Err(err("messages", format!("at most {MAX_MESSAGES} messages")));
            }
            for (i, m) in messages.iter().enumerate() {
                if !matches!(m.role.as_str(), "system" | "user" | "assistant") {
                    return Err(err(
                        format!("messages[{i}].role"),
                        "must be system, user or assistant",
                    ));
                }
                if m.content.trim().is_empty() {
                    return Err(err(format!("messages[{i}].content"), "must not be empty"));
                }
            }
            if !messages.iter().any(|m| m.role == "user") {
                return Err(err("messages", "needs at least one user message"));
            }
            messages
        }
    };
    let total: usize = messages.iter().map(|m| m.content.len()).sum();
    if total > MAX_PROMPT_BYTES {
        return Err(err(
            "messages",
            format!("the prompt is {total} bytes; at most {MAX_PROMPT_BYTES}"),
        ));
    }
    if let Some(model) = &raw.model {
        if !plain_name(model, 128) {
            return Err(err("model", "1..=128 of A-Z a-z 0-9 - _ . : / @"));
        }
    }
    if let Some(intent) = &raw.intent {
        if !plain_name(intent, 64) {
            return Err(err("intent", "1..=64 of A-Z a-z 0-9 - _ . : / @"));
        }
    }
    if raw.max_tokens == Some(0) {
        return Err(err("max_tokens", "must be at least 1"));
    }
    Ok(AskRequest {
        messages,
        model: raw.model,
        max_tokens: raw.max_tokens,
        intent: raw.intent,
        stream: raw.stream,
    })
}

/// One tier's cost levers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TierPolicy {
    /// Output tokens per request at most (a larger `max_tokens` is lowered to this).
    pub max_tokens: u32,
    /// Input + output tokens per UTC day; `None` = no budget.
    pub daily_tokens: Option<u64>,
    /// Intents this tier may not ask for (⇒ 403).
    pub denied_intents: Vec<String>,
    /// Models (aliases or provider names) this tier may not ask for (⇒ 403).
    pub denied_models: Vec<String>,
}

impl Default for TierPolicy {
    fn default() -> Self {
        Self {
            max_tokens: 4096,
            daily_tokens: None,
            denied_intents: Vec::new(),
            denied_models: Vec::new(),
        }
    }
}

/// The cost levers of every tier.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AskPolicy {
    /// Guests: small answers, a daily budget, no heavy intents or large models.
    pub guest: TierPolicy,
    /// Members.
    pub member: TierPolicy,
    /// Paying users.
    pub pro: TierPolicy,
}

impl Default for AskPolicy {
    fn default() -> Self {
        Self {
            guest: TierPolicy {
                max_tokens: 1024,
                daily_tokens: Some(200_000),
                denied_intents: ["image_generation", "long_form", "batch"]
                    .map(str::to_owned)
                    .to_vec(),
                denied_models: [
                    "gpt-4o",
                    "gpt-4.1",
                    "o1",
                    "o3",
                    "@cf/meta/llama-3.1-70b-instruct",
                ]
                .map(str::to_owned)
                .to_vec(),
            },
            member: TierPolicy {
                max_tokens: 4096,
                daily_tokens: Some(2_000_000),
                ..TierPolicy::default()
            },
            pro: TierPolicy {
                max_tokens: 16_384,
                daily_tokens: None,
                ..TierPolicy::default()
            },
        }
    }
}

impl AskPolicy {
    /// The levers of `tier`.
    #[must_use]
    pub fn tier(&self, tier: Tier) -> &TierPolicy {
        match tier {
            Tier::Guest => &self.guest,
            Tier::Member => &self.member,
            Tier::Pro => &self.pro,
        }
    }
}

/// What a tier's policy says about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead with this output cap.
    Allow {
        /// `max_tokens` after the tier cap.
        max_tokens: u32,
    },
    /// The intent is on the tier's denylist.
    IntentDenied(String),
    /// The model is on the tier's denylist.
    ModelDenied(String),
}

impl TierPolicy {
    /// Applies the denylists and the output cap.
    #[must_use]
    pub fn judge(&self, req: &AskRequest) -> Verdict {
        if let Some(intent) = &req.intent {
            if self
                .denied_intents
                .iter()
                .any(|d| d.eq_ignore_ascii_case(intent))
            {
                return Verdict::IntentDenied(intent.clone());
            }
        }
        if let Some(model) = &req.model {
            if self
                .denied_models
                .iter()
                .any(|d| d.eq_ignore_ascii_case(model))
            {
                return Verdict::ModelDenied(model.clone());
            }
        }
        Verdict::Allow {
            max_tokens: req
                .max_tokens
                .unwrap_or(self.max_tokens)
                .min(self.max_tokens),
        }
    }
}

/// Model aliases: an alias names, per provider, the model that provider should run. A request
/// naming an alias goes only to providers that have it; any other model name is passed through.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ModelMap(pub BTreeMap<String, BTreeMap<ProviderId, String>>);

impl ModelMap {
    /// The model `provider` should run for `requested`, or `None` when an alias leaves this
    /// provider out.
    #[must_use]
    pub fn resolve(&self, requested: Option<&str>, provider: ProviderId) -> Option<String> {
        match requested {
            None => Some(provider.default_model().to_owned()),
            Some(name) => match self.0.get(name) {
                Some(per_provider) => per_provider.get(&provider).cloned(),
                None => Some(name.to_owned()),
            },
        }
    }
}

/// How a provider call failed, and whether the next provider should be tried.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// No connection (refused, DNS, TLS).
    Connect(String),
    /// No answer within the timeout.
    Timeout,
    /// 429 from the provider.
    RateLimited,
    /// 5xx from the provider.
    Server(u16, String),
    /// 4xx other than 429: the request is wrong; another provider would refuse it too.
    Rejected(u16, String),
    /// An answer we could not read.
    Protocol(String),
    /// Skipped: the provider's circuit is open.
    CircuitOpen,
}

impl Failure {
    /// Whether to try the next provider.
    #[must_use]
    pub fn falls_back(&self) -> bool {
        !matches!(self, Self::Rejected(..))
    }

    /// Whether it counts against the provider's circuit breaker.
    #[must_use]
    pub fn trips(&self) -> bool {
        !matches!(self, Self::Rejected(..) | Self::CircuitOpen)
    }

    /// A short label for metrics.
    #[must_use]
    pub fn label(&self) -> &'static str {
        match self {
            Self::Connect(_) => "connect",
            Self::Timeout => "timeout",
            Self::RateLimited => "rate_limited",
            Self::Server(..) => "server_error",
            Self::Rejected(..) => "rejected",
            Self::Protocol(_) => "protocol",
            Self::CircuitOpen => "circuit_open",
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Connect(e) => write!(f, "cannot connect ({e})"),
            Self::Timeout => f.write_str("timed out"),
            Self::RateLimited => f.write_str("rate limited (HTTP 429)"),
            Self::Server(s, m) => write!(f, "HTTP {s}: {m}"),
            Self::Rejected(s, m) => write!(f, "refused the request (HTTP {s}): {m}"),
            Self::Protocol(e) => write!(f, "unreadable answer ({e})"),
            Self::CircuitOpen => f.write_str("skipped: circuit open after repeated failures"),
        }
    }
}

/// A per-provider circuit breaker: after `threshold` consecutive failures the provider is
/// skipped for `cooldown_ms`; then one trial call decides (success closes, failure reopens).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Breaker {
    threshold: u32,
    cooldown_ms: u64,
    failures: u32,
    open_until_ms: Option<u64>,
    trial_in_flight: bool,
}

impl Breaker {
    /// A closed breaker.
    #[must_use]
    pub fn new(threshold: u32, cooldown_ms: u64) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown_ms,
            failures: 0,
            open_until_ms: None,
            trial_in_flight: false,
        }
    }

    /// Whether a call may go out at `now_ms` (claims the half-open trial when it is due).
    pub fn allow(&mut self, now_ms: u64) -> bool {
        match self.open_until_ms {
            None => true,
            Some(until) if now_ms < until => false,
            Some(_) if self.trial_in_flight => false,
            Some(_) => {
                self.trial_in_flight = true;
                true
            }
        }
    }

    /// A call succeeded.
    pub fn success(&mut self) {
        self.failures = 0;
        self.open_until_ms = None;
        self.trial_in_flight = false;
    }

    /// A call failed at `now_ms`.
    pub fn failure(&mut self, now_ms: u64) {
        self.failures = self.failures.saturating_add(1);
        if self.trial_in_flight || self.failures >= self.threshold {
            self.open_until_ms = Some(now_ms.saturating_add(self.cooldown_ms));
            self.trial_in_flight = false;
        }
    }

    /// Whether the circuit is open (skipping calls) at `now_ms`.
    #[must_use]
    pub fn is_open(&self, now_ms: u64) -> bool {
        self.open_until_ms.is_some_and(|until| now_ms < until)
    }
}

impl Verdict {
    /// The refusal a denied request gets: status, error code and message (`None` for
    /// [`Verdict::Allow`]).
    #[must_use]
    pub fn refusal(&self) -> Option<(u16, &'static str, String)> {
        match self {
            Self::Allow { .. } => None,
            Self::IntentDenied(intent) => Some((
                403,
                "intent_denied",
                format!("the intent {intent:?} is not available to this tier; upgrade or choose another intent"),
            )),
            Self::ModelDenied(model) => Some((
                403,
                "model_denied",
                format!("the model {model:?} is not available to this tier; omit model to use the default"),
            )),
        }
    }
}

/// A tenant over its daily token budget: 429 `token_budget_exceeded` with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetExceeded {
    /// The error message.
    pub message: String,
    /// Seconds until the budget resets (00:00 UTC), at least 1.
    pub retry_after_secs: i64,
}

/// Whether `used` tokens today (UTC, at `now_secs`) leave room under `budget`.
pub fn check_budget(used: u64, budget: Option<u64>, now_secs: i64) -> Result<(), BudgetExceeded> {
    let Some(budget) = budget else {
        return Ok(());
    };
    if used < budget {
        return Ok(());
    }
    let reset = (86_400 - now_secs.rem_euclid(86_400)).max(1);
    Err(BudgetExceeded {
        message: format!(
            "{used} of today's {budget} tokens are used; the budget resets at 00:00 UTC (in {reset} s)"
        ),
        retry_after_secs: reset,
    })
}

/// What an answered ask is billed: its usage message for the `usage` queue (none when no
/// token was counted) and the credits it costs.
#[derive(Debug, Clone, PartialEq)]
pub struct AskCharge {
    /// The `tokens_in`/`tokens_out` events, keyed by the request id.
    pub message: Option<crate::billing::UsageBatchMessage>,
    /// Credits charged.
    pub credits: i64,
}

/// The idempotency key of a request's `kind` usage: `si:{request id}:{kind}`, with the request
/// id's SHA-256 when the id is long (keys are at most 128 characters). The same request id
/// retried yields the same keys, so it is billed once.
pub fn ask_usage_key(
    request_id: &str,
    kind: crate::billing::UsageKind,
) -> Result<crate::billing::UsageKey, String> {
    use rsa::sha2::{Digest as _, Sha256};
    let id = if request_id.len() <= 100 {
        request_id.to_owned()
    } else {
        Sha256::digest(request_id.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    };
    crate::billing::UsageKey::parse(&format!("si:{id}:{}", kind.as_str()))
        .map_err(|e| e.to_string())
}

/// The charge of an answered ask: one usage event per non-zero token count, priced by
/// `prices`, occurring at `now`.
pub fn ask_charge(
    tenant: &str,
    request_id: &str,
    tokens_in: u64,
    tokens_out: u64,
    prices: &crate::billing::PriceTable,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<AskCharge, String> {
    use crate::billing::{UsageBatchMessage, UsageEvent, UsageKind};
    let mut events = Vec::with_capacity(2);
    for (kind, quantity) in [
        (UsageKind::TokensIn, tokens_in),
        (UsageKind::TokensOut, tokens_out),
    ] {
        if quantity > 0 {
            events.push(UsageEvent {
                idempotency_key: ask_usage_key(request_id, kind)?,
                kind,
                quantity,
                occurred_at: Some(now),
                meta: None,
            });
        }
    }
    let credits = prices.charge(UsageKind::TokensIn, tokens_in)
        + prices.charge(UsageKind::TokensOut, tokens_out);
    let message = (!events.is_empty()).then(|| UsageBatchMessage {
        tenant_id: tenant.to_owned(),
        events,
        received_at_ms: now.timestamp_millis(),
    });
    Ok(AskCharge { message, credits })
}

/// A `Server-Timing` header value from `(stage, milliseconds)` pairs, as every shape sends it
/// on a JSON answer: `standing;dur=0.120, provider;dur=0.250, bill;dur=0.600`.
#[must_use]
pub fn server_timing(stages: &[(&str, f64)]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    for (name, ms) in stages {
        if !out.is_empty() {
            out.push_str(", ");
        }
        let _ = write!(out, "{name};dur={ms:.3}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies() {
        let ok = parse_ask(br#"{"prompt":"hi","max_tokens":5,"stream":true}"#);
        assert!(
            matches!(ok, Ok(ref r) if r.messages.len() == 1 && r.stream && r.max_tokens == Some(5))
        );
        let cases: [(&[u8], &str); 8] = [
            (br#"{}"#, "body"),
            (br#"{"prompt":"a","messages":[]}"#, "body"),
            (br#"{"prompt":"  "}"#, "prompt"),
            (br#"{"messages":[]}"#, "messages"),
            (
                br#"{"messages":[{"role":"robot","content":"x"}]}"#,
                "messages[0].role",
            ),
            (
                br#"{"messages":[{"role":"system","content":"x"}]}"#,
                "messages",
            ),
            (br#"{"prompt":"a","model":"has space"}"#, "model"),
            (br#"{"prompt":"a","max_tokens":0}"#, "max_tokens"),
        ];
        for (body, field) in cases {
            let e = parse_ask(body).err().map(|e| e.field);
            assert_eq!(
                e.as_deref(),
                Some(field),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        assert!(parse_ask(br#"{"prompt":"a","extra":1}"#).is_err());
    }

    #[test]
    fn charges_budgets_and_refusals() {
        use crate::billing::{PriceTable, UsageKind};
        let now = chrono::DateTime::from_timestamp(86_400 * 3 + 100, 0).unwrap_or_default();
        let charge = ask_charge("t1", "req-1", 1500, 0, &PriceTable::default(), now)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(charge.credits, 2, "1,500 tokens_in at 1/1000, rounded up");
        let msg = charge.message.unwrap_or_else(|| panic!("no message"));
        assert_eq!(msg.events.len(), 1, "no event for zero output tokens");
        assert_eq!(msg.events[0].idempotency_key.as_str(), "si:req-1:tokens_in");
        let long = "x".repeat(200);
        let key = ask_usage_key(&long, UsageKind::TokensOut).unwrap_or_else(|e| panic!("{e}"));
        assert!(key.as_str().len() <= 128 && key.as_str().ends_with(":tokens_out"));
        assert_eq!(ask_usage_key(&long, UsageKind::TokensOut), Ok(key));
        assert_eq!(check_budget(10, Some(11), 0), Ok(()));
        assert_eq!(check_budget(10, None, 0), Ok(()));
        let e = check_budget(11, Some(11), 86_400 + 86_399).err();
        assert_eq!(e.map(|e| e.retry_after_secs), Some(1));
        assert_eq!(Verdict::Allow { max_tokens: 1 }.refusal(), None);
        assert_eq!(
            Verdict::ModelDenied("o1".into())
                .refusal()
                .map(|r| (r.0, r.1)),
            Some((403, "model_denied"))
        );
    }

    #[test]
    fn tier_policy() {
        let p = AskPolicy::default();
        let mut req =
            parse_ask(br#"{"prompt":"a","max_tokens":100000}"#).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            p.tier(Tier::Guest).judge(&req),
            Verdict::Allow { max_tokens: 1024 }
        );
        req.intent = Some("IMAGE_GENERATION".into());
        assert!(matches!(
            p.tier(Tier::Guest).judge(&req),
            Verdict::IntentDenied(_)
        ));
        assert!(matches!(
            p.tier(Tier::Pro).judge(&req),
            Verdict::Allow { .. }
        ));
        req.intent = None;
        req.model = Some("gpt-4o".into());
        assert!(matches!(
            p.tier(Tier::Guest).judge(&req),
            Verdict::ModelDenied(_)
        ));
    }

    #[test]
    fn orders_and_models() {
        assert_eq!(
            parse_order("groq, cfai"),
            Ok(vec![ProviderId::Groq, ProviderId::Cfai])
        );
        assert!(parse_order("groq,groq").is_err());
        assert!(parse_order("nope").is_err());
        assert!(parse_order(" , ").is_err());
        let mut map = ModelMap::default();
        map.0.insert(
            "small".into(),
            [(ProviderId::Groq, "llama-3.1-8b-instant".to_owned())].into(),
        );
        assert_eq!(
            map.resolve(Some("small"), ProviderId::Groq).as_deref(),
            Some("llama-3.1-8b-instant")
        );
        assert_eq!(map.resolve(Some("small"), ProviderId::Cfai), None);
        assert_eq!(
            map.resolve(Some("x-1"), ProviderId::Cfai).as_deref(),
            Some("x-1")
        );
        assert_eq!(
            map.resolve(None, ProviderId::Openai).as_deref(),
            Some("gpt-4o-mini")
        );
    }

    #[test]
    fn breaker_opens_cools_down_and_tries_once() {
        let mut b = Breaker::new(2, 1000);
        assert!(b.allow(0));
        b.failure(0);
        assert!(b.allow(1));
        b.failure(1);
        assert!(b.is_open(2) && !b.allow(500));
        assert!(b.allow(1001), "half-open trial after the cooldown");
        assert!(!b.allow(1002), "only one trial at a time");
        b.failure(1003);
        assert!(!b.allow(1500));
        assert!(b.allow(2004));
        b.success();
        assert!(b.allow(2005) && !b.is_open(2005));
        let fallbacks = [
            Failure::Timeout,
            Failure::RateLimited,
            Failure::Server(500, String::new()),
        ];
        assert!(fallbacks.iter().all(Failure::falls_back));
        assert!(!Failure::Rejected(400, String::new()).falls_back());
    }
}
