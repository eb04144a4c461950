//! Rate limits (token buckets per tier and route class) and cost guards (caps on billable
//! quantity per fixed UTC window): the policy, the bucket arithmetic and the [`RateLimiter`]
//! port. Adapters live in `stores/` (in-process for SQLite, one table for PostgreSQL).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::auth::Tier;
use crate::queue::MaybeSendSync;

/// What a request costs the gateway, and so which bucket it takes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteClass {
    /// Authenticated GETs (balance, usage totals, jobs, uploads): keyed by tenant.
    Read,
    /// `POST /usage` and `POST /api/si/ask`: keyed by tenant.
    Usage,
    /// `POST /jobs` and `POST /jobs/{id}/cancel`: keyed by tenant.
    Jobs,
    /// `POST /upload/direct`: keyed by tenant.
    Upload,
    /// Admin routes: keyed by client IP, so guessing the admin key is slow while the one
    /// operator key never shares a bucket with anyone else.
    Admin,
    /// `POST /auth/guest`: keyed by the lower-cased email, or the client IP without one.
    Guest,
}

impl RouteClass {
    /// Every class, in a fixed order.
    pub const ALL: [Self; 6] = [
        Self::Read,
        Self::Usage,
        Self::Jobs,
        Self::Upload,
        Self::Admin,
        Self::Guest,
    ];

    /// The class's name in config and bucket keys.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Usage => "usage",
            Self::Jobs => "jobs",
            Self::Upload => "upload",
            Self::Admin => "admin",
            Self::Guest => "guest",
        }
    }

    /// Requests of this class carry no tenant yet, so the `guest` tier's limit applies.
    #[must_use]
    pub fn is_anonymous(self) -> bool {
        matches!(self, Self::Admin | Self::Guest)
    }
}

impl fmt::Display for RouteClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A token bucket's shape: refills at `rate` tokens per second up to `burst`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rate {
    /// Tokens per second (> 0).
    pub rate: f64,
    /// Bucket size (≥ 1): how many requests may arrive at once.
    pub burst: u32,
}

impl Rate {
    /// A rate; `None` unless `rate` is finite and positive and `burst` ≥ 1.
    #[must_use]
    pub fn new(rate: f64, burst: u32) -> Option<Self> {
        (rate.is_finite() && rate > 0.0 && burst >= 1).then_some(Self { rate, burst })
    }

    /// Refills a bucket holding `tokens` for `elapsed_secs` and takes one token if there is
    /// one: the tokens left and whether the request may pass. Shared by every adapter (the
    /// PostgreSQL statement spells out the same steps in SQL).
    #[must_use]
    pub fn take(self, tokens: f64, elapsed_secs: f64) -> (f64, bool) {
        let refilled = (tokens + elapsed_secs.max(0.0) * self.rate).min(f64::from(self.burst));
        if refilled >= 1.0 {
            (refilled - 1.0, true)
        } else {
            (refilled, false)
        }
    }

    /// The decision for a bucket left with `tokens` after a check.
    #[must_use]
    pub fn decision(self, tokens: f64, allowed: bool) -> Decision {
        let burst = f64::from(self.burst);
        let tokens = tokens.clamp(0.0, burst);
        let secs = |missing: f64| {
            let s = (missing / self.rate).ceil();
            // Saturating float → integer: a tiny rate must not wrap around.
            if s >= 1e12 {
                1_000_000_000_000
            } else {
                s.max(0.0) as u64
            }
        };
        Decision {
            allowed,
            limit: self.burst,
            remaining: tokens.floor() as u32,
            reset_secs: secs(burst - tokens),
            retry_after_secs: secs(1.0 - tokens).max(1),
        }
    }
}

/// What a bucket said about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Decision {
    /// The request may pass.
    pub allowed: bool,
    /// `RateLimit-Limit`: the bucket size.
    pub limit: u32,
    /// `RateLimit-Remaining`: whole tokens left.
    pub remaining: u32,
    /// `RateLimit-Reset`: seconds until the bucket is full again.
    pub reset_secs: u64,
    /// `Retry-After` of a refused request: seconds until one token is back (≥ 1).
    pub retry_after_secs: u64,
}

impl Decision {
    /// The 429 of a refused request of `class`.
    #[must_use]
    pub fn refusal(&self, class: RouteClass) -> crate::api::Refusal {
        crate::api::Refusal::new(
            429,
            "rate_limited",
            format!(
                "too many {class} requests: the limit is a burst of {} refilling over time; retry after {} s",
                self.limit, self.retry_after_secs
            ),
        )
        .retry_after(self.retry_after_secs)
    }
}

/// The rate-limit store failed; the gateway lets the request through and logs it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("rate limit store: {0}")]
pub struct LimitError(pub String);

/// Where buckets live: in the process (embedded shape) or in the shared database (so every
/// server of the scale-out shape takes from the same bucket).
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait RateLimiter: MaybeSendSync + fmt::Debug {
    /// Refills `key`'s bucket (created full) and takes one token if it can.
    async fn check(&self, key: &str, rate: Rate) -> Result<Decision, LimitError>;

    /// Where the buckets live, for the environment snapshot.
    fn location(&self) -> &'static str;
}

/// A partial `[rate_limits.<tier>.<class>]` entry of the config file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateOverride {
    /// Tokens per second.
    pub rate: Option<f64>,
    /// Bucket size.
    pub burst: Option<u32>,
}

/// The `[rate_limits]` table of the config file.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitsFile {
    /// On/off (`COGNOMEGA_RATE_LIMITS` and `--rate-limits` win over it).
    pub enabled: Option<bool>,
    /// `[rate_limits.guest.<class>]`.
    #[serde(default)]
    pub guest: BTreeMap<RouteClass, RateOverride>,
    /// `[rate_limits.member.<class>]`.
    #[serde(default)]
    pub member: BTreeMap<RouteClass, RateOverride>,
    /// `[rate_limits.pro.<class>]`.
    #[serde(default)]
    pub pro: BTreeMap<RouteClass, RateOverride>,
}

/// Why a rate-limit or cost-guard setting was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

/// The effective rate limits: on/off and a bucket shape per tier and class.
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimits {
    /// Off: no check, no `RateLimit-*` headers.
    pub enabled: bool,
    table: [[Rate; 6]; 3],
}

const TIERS: [Tier; 3] = [Tier::Guest, Tier::Member, Tier::Pro];

fn tier_name(tier: Tier) -> &'static str {
    match tier {
        Tier::Guest => "guest",
        Tier::Member => "member",
        Tier::Pro => "pro",
    }
}

fn tier_index(tier: Tier) -> usize {
    match tier {
        Tier::Guest => 0,
        Tier::Member => 1,
        Tier::Pro => 2,
    }
}

fn class_index(class: RouteClass) -> usize {
    match class {
        RouteClass::Read => 0,
        RouteClass::Usage => 1,
        RouteClass::Jobs => 2,
        RouteClass::Upload => 3,
        RouteClass::Admin => 4,
        RouteClass::Guest => 5,
    }
}

const fn r(rate: f64, burst: u32) -> Rate {
    Rate { rate, burst }
}

impl Default for RateLimits {
    /// Generous defaults: a circuit breaker against runaway clients, far above what the
    /// benchmarks drive through one tenant (`bench credits`: 5,000 GET /credits per second;
    /// `bench upload`: 1,000 small uploads at once). Columns: read, usage, jobs, upload,
    /// admin (per IP), guest issuance (per email or IP).
    fn default() -> Self {
        let anonymous = [r(100.0, 1_000), r(10.0, 200)];
        Self {
            enabled: true,
            table: [
                [
                    r(6_000.0, 12_000),
                    r(200.0, 2_000),
                    r(20.0, 200),
                    r(100.0, 2_000),
                    anonymous[0],
                    anonymous[1],
                ],
                [
                    r(6_000.0, 12_000),
                    r(500.0, 5_000),
                    r(50.0, 500),
                    r(200.0, 4_000),
                    anonymous[0],
                    anonymous[1],
                ],
                [
                    r(12_000.0, 24_000),
                    r(2_000.0, 20_000),
                    r(200.0, 2_000),
                    r(500.0, 10_000),
                    anonymous[0],
                    anonymous[1],
                ],
            ],
        }
    }
}

impl RateLimits {
    /// The bucket shape of `class` for a caller of `tier` (anonymous classes: always the
    /// `guest` tier's).
    #[must_use]
    pub fn rate(&self, tier: Tier, class: RouteClass) -> Rate {
        let tier = if class.is_anonymous() {
            Tier::Guest
        } else {
            tier
        };
        self.table[tier_index(tier)][class_index(class)]
    }

    /// Sets one entry.
    pub fn set(&mut self, tier: Tier, class: RouteClass, rate: Rate) {
        self.table[tier_index(tier)][class_index(class)] = rate;
    }

    /// The defaults with the file's entries layered over them.
    pub fn from_file(file: &RateLimitsFile) -> Result<Self, ConfigError> {
        let mut limits = Self::default();
        if let Some(enabled) = file.enabled {
            limits.enabled = enabled;
        }
        for (tier, entries) in [
            (Tier::Guest, &file.guest),
            (Tier::Member, &file.member),
            (Tier::Pro, &file.pro),
        ] {
            for (&class, o) in entries {
                let name = format!("[rate_limits.{}.{class}]", tier_name(tier));
                if class.is_anonymous() && tier != Tier::Guest {
                    return Err(ConfigError(format!(
                        "{name}: {class} requests carry no tenant, so only [rate_limits.guest.{class}] applies"
                    )));
                }
                let current = limits.rate(tier, class);
                let rate = Rate::new(
                    o.rate.unwrap_or(current.rate),
                    o.burst.unwrap_or(current.burst),
                )
                .ok_or_else(|| {
                    ConfigError(format!(
                        "{name}: rate must be a positive number of tokens per second and burst an integer ≥ 1"
                    ))
                })?;
                limits.set(tier, class, rate);
            }
        }
        Ok(limits)
    }

    /// `{"guest":{"read":{"rate","burst"},…},…}` for the environment snapshot.
    #[must_use]
    pub fn table(&self) -> BTreeMap<&'static str, BTreeMap<&'static str, Rate>> {
        TIERS
            .iter()
            .map(|&tier| {
                let classes = RouteClass::ALL
                    .iter()
                    .filter(|c| tier == Tier::Guest || !c.is_anonymous())
                    .map(|&c| (c.as_str(), self.rate(tier, c)))
                    .collect();
                (tier_name(tier), classes)
            })
            .collect()
    }
}

/// A capped quantity and the fixed UTC window it is counted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CostMetric {
    /// `tokens_in` + `tokens_out` quantities of `POST /usage`, per UTC day.
    TokensPerDay,
    /// Jobs created by `POST /jobs`, per UTC hour.
    JobRunsPerHour,
}

impl CostMetric {
    /// The config key and the counter's name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokensPerDay => "tokens_per_day",
            Self::JobRunsPerHour => "job_runs_per_hour",
        }
    }

    /// The window's length in seconds.
    #[must_use]
    pub fn window_secs(self) -> i64 {
        match self {
            Self::TokensPerDay => 86_400,
            Self::JobRunsPerHour => 3_600,
        }
    }

    /// The window (start, end) holding `unix_secs`. Unix time has no leap seconds, so these
    /// are exactly UTC days and hours.
    #[must_use]
    pub fn window(self, unix_secs: i64) -> (i64, i64) {
        let start = unix_secs - unix_secs.rem_euclid(self.window_secs());
        (start, start + self.window_secs())
    }
}

/// One tier's caps (`[cost_guards.<tier>]`); an absent key is no cap.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostCaps {
    /// Most `tokens_in` + `tokens_out` per UTC day.
    pub tokens_per_day: Option<u64>,
    /// Most jobs submitted per UTC hour.
    pub job_runs_per_hour: Option<u64>,
}

impl CostCaps {
    /// The cap of `metric`, if any.
    #[must_use]
    pub fn cap(&self, metric: CostMetric) -> Option<u64> {
        match metric {
            CostMetric::TokensPerDay => self.tokens_per_day,
            CostMetric::JobRunsPerHour => self.job_runs_per_hour,
        }
    }
}

/// The `[cost_guards]` table of the config file: a tier named here replaces its defaults whole.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CostGuardsFile {
    /// `[cost_guards.guest]`.
    pub guest: Option<CostCaps>,
    /// `[cost_guards.member]`.
    pub member: Option<CostCaps>,
    /// `[cost_guards.pro]`.
    pub pro: Option<CostCaps>,
}

/// The effective cost caps per tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CostGuards {
    /// Guests.
    pub guest: CostCaps,
    /// Members.
    pub member: CostCaps,
    /// Pro.
    pub pro: CostCaps,
}

impl Default for CostGuards {
    /// Guests are capped far above what a guest's starting grant buys (1,000 credits pay for
    /// one million `tokens_in` or 100 jobs) and what the tests and benchmarks use; members and
    /// pro tenants are uncapped.
    fn default() -> Self {
        Self {
            guest: CostCaps {
                tokens_per_day: Some(10_000_000),
                job_runs_per_hour: Some(1_000),
            },
            member: CostCaps::default(),
            pro: CostCaps::default(),
        }
    }
}

impl CostGuards {
    /// The defaults with the file's tiers replacing theirs.
    #[must_use]
    pub fn from_file(file: &CostGuardsFile) -> Self {
        let d = Self::default();
        Self {
            guest: file.guest.unwrap_or(d.guest),
            member: file.member.unwrap_or(d.member),
            pro: file.pro.unwrap_or(d.pro),
        }
    }

    /// The caps of a tier.
    #[must_use]
    pub fn for_tier(&self, tier: Tier) -> CostCaps {
        match tier {
            Tier::Guest => self.guest,
            Tier::Member => self.member,
            Tier::Pro => self.pro,
        }
    }
}

/// The message of a 429 `cost_cap_exceeded` and its `Retry-After` (seconds from `now` to the
/// window's end, at least 1): a charge of `quantity` of `metric` refused because `used` of
/// `cap` is already counted in the window ending at `window_end` (unix seconds). One text for
/// the native server and the edge.
#[must_use]
pub fn cost_cap_exceeded_message(
    metric: CostMetric,
    quantity: u64,
    used: u64,
    cap: u64,
    window_end: i64,
    now: i64,
) -> (String, u64) {
    let window = match metric {
        CostMetric::TokensPerDay => "UTC day",
        CostMetric::JobRunsPerHour => "UTC hour",
    };
    let end = chrono::DateTime::from_timestamp(window_end, 0)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default();
    let retry = u64::try_from(window_end.saturating_sub(now))
        .unwrap_or(0)
        .max(1);
    (
        format!(
            "the {} cap of {cap} is reached: {used} used this {window}, this request needs {quantity}; the window ends at {end} (retry after {retry} s)",
            metric.as_str(),
        ),
        retry,
    )
}

/// A cost-guard charge that did not fit under its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OverCap {
    /// Already counted in the window.
    pub used: u64,
    /// The cap.
    pub cap: u64,
    /// When the window ends (unix seconds).
    pub window_end: i64,
}

impl OverCap {
    /// 429 `cost_cap_exceeded` for a charge of `quantity` of `metric` at `now` (unix seconds):
    /// names the cap and window; `Retry-After` is the seconds to the window's end.
    #[must_use]
    pub fn refusal(&self, metric: CostMetric, quantity: u64, now: i64) -> crate::api::Refusal {
        let (message, retry) =
            cost_cap_exceeded_message(metric, quantity, self.used, self.cap, self.window_end, now);
        crate::api::Refusal::new(429, "cost_cap_exceeded", message).retry_after(retry)
    }
}

/// Cost-counter statements both hosts run (`$n`, the same text on SQLite and PostgreSQL).
pub mod sql {
    /// Adds `$4` to tenant `$1`'s counter of metric `$2` in the window starting at `$3` unless
    /// that would pass the cap `$5`; returns the new count, no row when refused. INSERT … SELECT
    /// … WHERE refuses a first charge already over the cap; the conflict arm's WHERE refuses a
    /// later one. (SQLite needs the WHERE on the SELECT anyway, to tell its ON CONFLICT from a
    /// join's ON.)
    pub const CHARGE: &str = "INSERT INTO cost_counters (tenant_id, metric, window_start, used)
     SELECT $1, $2, $3, $4 WHERE $4 <= $5
     ON CONFLICT (tenant_id, metric, window_start)
     DO UPDATE SET used = cost_counters.used + excluded.used
     WHERE cost_counters.used + excluded.used <= $5
     RETURNING used";

    /// Tenant `$1`'s count of metric `$2` in the window starting at `$3`.
    pub const USED: &str =
        "SELECT used FROM cost_counters WHERE tenant_id = $1 AND metric = $2 AND window_start = $3";

    /// Gives `$4` back to tenant `$1`'s counter of metric `$2` in the window starting at `$3`
    /// (never below zero): a charge whose work was not enqueued after all.
    pub const GIVE_BACK: &str =
        "UPDATE cost_counters SET used = CASE WHEN used > $4 THEN used - $4 ELSE 0 END
     WHERE tenant_id = $1 AND metric = $2 AND window_start = $3";
}

/// Adds `quantity` to the tenant's counter of `metric` in the window holding `now_secs`,
/// unless that would pass `cap`: then nothing changes and the caller learns how much is used.
/// Runs on the caller's executor (its transaction, so the count commits or rolls back with the
/// work it pays for). `Ok(Ok(count))` when counted.
pub async fn charge<E: crate::sql::Executor + ?Sized>(
    db: &mut E,
    tenant: &str,
    metric: CostMetric,
    quantity: u64,
    cap: u64,
    now_secs: i64,
) -> Result<Result<u64, OverCap>, crate::sql::SqlError> {
    let (start, end) = metric.window(now_secs);
    let q = i64::try_from(quantity).unwrap_or(i64::MAX);
    let c = i64::try_from(cap).unwrap_or(i64::MAX);
    let args = [
        tenant.into(),
        metric.as_str().into(),
        start.into(),
        q.into(),
        c.into(),
    ];
    if let Some(row) = db.query_opt(sql::CHARGE, &args).await? {
        return Ok(Ok(u64::try_from(row.int(0)?).unwrap_or(0)));
    }
    let args = [tenant.into(), metric.as_str().into(), start.into()];
    let used = db.query_opt(sql::USED, &args).await?;
    let used = used.map(|r| r.int(0)).transpose()?;
    Ok(Err(OverCap {
        used: used.map_or(0, |u| u64::try_from(u).unwrap_or(0)),
        cap,
        window_end: end,
    }))
}

/// Takes `quantity` back off the tenant's counter of `metric` in the window holding
/// `now_secs` (never below zero).
pub async fn give_back<E: crate::sql::Executor + ?Sized>(
    db: &mut E,
    tenant: &str,
    metric: CostMetric,
    quantity: u64,
    window_start: i64,
) -> Result<(), crate::sql::SqlError> {
    let q = i64::try_from(quantity).unwrap_or(i64::MAX);
    let args = [
        tenant.into(),
        metric.as_str().into(),
        window_start.into(),
        q.into(),
    ];
    db.execute(sql::GIVE_BACK, &args).await.map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_refills_by_elapsed_time_up_to_its_burst() {
        let rate = Rate::new(2.0, 3).expect("valid");
        assert_eq!(rate.take(3.0, 0.0), (2.0, true));
        assert_eq!(rate.take(0.0, 0.0), (0.0, false));
        assert_eq!(rate.take(0.0, 0.25), (0.5, false));
        assert_eq!(rate.take(0.5, 0.25), (0.0, true));
        assert_eq!(rate.take(0.0, 100.0), (2.0, true), "never above the burst");
    }

    #[test]
    fn decisions_round_towards_the_safe_side() {
        let rate = Rate::new(0.5, 4).expect("valid");
        let d = rate.decision(0.2, false);
        assert_eq!((d.remaining, d.limit), (0, 4));
        assert_eq!(
            d.retry_after_secs, 2,
            "0.8 tokens at 0.5/s: 1.6 s, rounded up"
        );
        assert_eq!(d.reset_secs, 8, "3.8 tokens at 0.5/s: 7.6 s, rounded up");
        let full = rate.decision(4.0, true);
        assert_eq!((full.remaining, full.reset_secs), (4, 0));
        assert_eq!(
            Rate::new(1000.0, 10)
                .expect("valid")
                .decision(0.999, false)
                .retry_after_secs,
            1,
            "Retry-After is at least one second"
        );
        assert!(Rate::new(0.0, 1).is_none() && Rate::new(1.0, 0).is_none());
        assert!(Rate::new(f64::NAN, 1).is_none());
    }

    #[test]
    fn file_entries_override_single_fields_and_anonymous_classes_only_for_guests() {
        let file: RateLimitsFile = serde_json::from_value(serde_json::json!({
            "enabled": false,
            "pro": {"jobs": {"burst": 7}},
            "guest": {"guest": {"rate": 0.5, "burst": 2}}
        }))
        .expect("valid");
        let limits = RateLimits::from_file(&file).expect("valid");
        assert!(!limits.enabled);
        let pro_jobs = limits.rate(Tier::Pro, RouteClass::Jobs);
        assert_eq!(pro_jobs.burst, 7);
        assert_eq!(
            pro_jobs.rate,
            RateLimits::default().rate(Tier::Pro, RouteClass::Jobs).rate
        );
        assert_eq!(
            limits.rate(Tier::Member, RouteClass::Guest),
            Rate::new(0.5, 2).expect("valid"),
            "anonymous classes use the guest tier's entry"
        );
        let bad: RateLimitsFile =
            serde_json::from_value(serde_json::json!({"member": {"admin": {"rate": 1.0}}}))
                .expect("parses");
        assert!(RateLimits::from_file(&bad).is_err());
        let zero: RateLimitsFile =
            serde_json::from_value(serde_json::json!({"guest": {"read": {"burst": 0}}}))
                .expect("parses");
        assert!(RateLimits::from_file(&zero).is_err());
        assert!(serde_json::from_value::<RateLimitsFile>(
            serde_json::json!({"guest": {"writes": {"rate": 1.0}}})
        )
        .is_err());
    }

    #[test]
    fn cost_windows_are_utc_days_and_hours() {
        // 2026-01-02T03:04:05Z
        let t = 1_767_323_045;
        assert_eq!(
            CostMetric::TokensPerDay.window(t),
            (1_767_312_000, 1_767_398_400)
        );
        assert_eq!(
            CostMetric::JobRunsPerHour.window(t),
            (1_767_322_800, 1_767_326_400)
        );
        let file = CostGuardsFile {
            guest: Some(CostCaps {
                tokens_per_day: None,
                job_runs_per_hour: Some(3),
            }),
            ..CostGuardsFile::default()
        };
        let guards = CostGuards::from_file(&file);
        assert_eq!(guards.guest.cap(CostMetric::TokensPerDay), None);
        assert_eq!(guards.guest.cap(CostMetric::JobRunsPerHour), Some(3));
    }

    #[test]
    fn a_refused_charge_names_the_cap_and_the_window_end() {
        // 2026-01-02T03:04:05Z, in the hour ending 04:00:00Z.
        let now = 1_767_323_045;
        let (_, end) = CostMetric::JobRunsPerHour.window(now);
        let (message, retry) =
            cost_cap_exceeded_message(CostMetric::JobRunsPerHour, 1, 3, 3, end, now);
        assert_eq!(
            message,
            "the job_runs_per_hour cap of 3 is reached: 3 used this UTC hour, this request needs 1; \
             the window ends at 2026-01-02T04:00:00Z (retry after 3355 s)"
        );
        assert_eq!(retry, 3355);
        let (message, retry) =
            cost_cap_exceeded_message(CostMetric::TokensPerDay, 401, 600, 1000, now, now);
        assert!(
            message.contains("UTC day") && message.contains("600 used"),
            "{message}"
        );
        assert_eq!(retry, 1, "Retry-After is at least one second");
    }
}
