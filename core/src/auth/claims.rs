//! What a token says ([`Claims`]), how we mint them ([`ClaimsBuilder`]) and what a verifier
//! insists on ([`Validation`]).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::time::UnixMillis;

/// A caller's plan, which decides quotas and features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    /// Anonymous, from `POST /auth/guest`.
    Guest,
    /// A signed-up user.
    Member,
    /// A paying user.
    Pro,
}

impl Tier {
    /// Its name in tokens and settings: `guest`, `member`, `pro`.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Guest => "guest",
            Self::Member => "member",
            Self::Pro => "pro",
        }
    }
}

/// The payload of our JWTs. Times are JWT `NumericDate`s (unix seconds).
///
/// Fields are public because a `Claims` value is plain data: it is trustworthy only when it
/// came out of [`verify`](super::verify).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: who minted the token.
    pub iss: String,
    /// Audience: who must accept it. Always a single string in our tokens.
    pub aud: String,
    /// Subject: the user id.
    pub sub: String,
    /// The tenant id the user acts in.
    pub tenant: String,
    /// The user's tier.
    pub tier: Tier,
    /// Issued at.
    pub iat: i64,
    /// Not before; absent means "from `iat`".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    /// Expires at.
    pub exp: i64,
    /// Unique token id, for revocation lists and audit logs.
    pub jti: String,
}

/// Mints [`Claims`] with this service's issuer, audience and token lifetime.
///
/// Build one at startup and call [`ClaimsBuilder::build`] per token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimsBuilder {
    issuer: String,
    audience: String,
    ttl: Duration,
    set_not_before: bool,
}

impl ClaimsBuilder {
    /// Tokens from `issuer` for `audience`, valid for `ttl` (whole seconds; a TTL under one
    /// second yields tokens that are already expired).
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>, ttl: Duration) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            ttl,
            set_not_before: false,
        }
    }

    /// Also writes `nbf` (equal to `iat`), for verifiers that insist on it.
    #[must_use]
    pub fn with_not_before(mut self) -> Self {
        self.set_not_before = true;
        self
    }

    /// Claims for user `sub` in `tenant`, issued `now`. `jti` must be unique (a UUID).
    pub fn build(
        &self,
        sub: impl Into<String>,
        tenant: impl Into<String>,
        tier: Tier,
        jti: impl Into<String>,
        now: UnixMillis,
    ) -> Claims {
        let iat = unix_seconds(now);
        Claims {
            iss: self.issuer.clone(),
            aud: self.audience.clone(),
            sub: sub.into(),
            tenant: tenant.into(),
            tier,
            iat,
            nbf: self.set_not_before.then_some(iat),
            exp: iat.saturating_add(seconds(self.ttl)),
            jti: jti.into(),
        }
    }
}

/// What [`verify`](super::verify) requires beyond a valid signature.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Validation {
    /// The only accepted `iss`.
    pub issuer: String,
    /// The only accepted `aud`.
    pub audience: String,
    /// Clock skew tolerated on `exp`, `nbf` and `iat`: the native server and the edge host
    /// mint and check tokens on different clocks.
    pub leeway: Duration,
}

impl Validation {
    /// Leeway used by [`Validation::new`].
    pub const DEFAULT_LEEWAY: Duration = Duration::from_secs(60);

    /// Accept tokens from `issuer` for `audience`, with [`Self::DEFAULT_LEEWAY`].
    pub fn new(issuer: impl Into<String>, audience: impl Into<String>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: audience.into(),
            leeway: Self::DEFAULT_LEEWAY,
        }
    }

    /// Replaces the leeway.
    #[must_use]
    pub fn with_leeway(mut self, leeway: Duration) -> Self {
        self.leeway = leeway;
        self
    }
}

/// `now` as a JWT `NumericDate`, rounding down so a fresh token is never "issued in the future".
pub(crate) fn unix_seconds(now: UnixMillis) -> i64 {
    now.0.div_euclid(1000)
}

/// Whole seconds of `d`, saturating.
pub(crate) fn seconds(d: Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_sets_times_from_now_and_ttl() {
        let builder = ClaimsBuilder::new("iss", "aud", Duration::from_secs(3600));
        let claims = builder.build("u1", "t1", Tier::Guest, "j1", UnixMillis(1_700_000_000_999));
        assert_eq!(claims.iat, 1_700_000_000);
        assert_eq!(claims.exp, 1_700_003_600);
        assert_eq!(claims.nbf, None);
        let with_nbf = builder.with_not_before().build(
            "u1",
            "t1",
            Tier::Guest,
            "j1",
            UnixMillis(1_700_000_000_000),
        );
        assert_eq!(with_nbf.nbf, Some(1_700_000_000));
    }

    #[test]
    fn claims_json_shape() {
        let claims =
            ClaimsBuilder::new("https://api.example", "cognomega", Duration::from_secs(60)).build(
                "user-1",
                "tenant-1",
                Tier::Guest,
                "jti-1",
                UnixMillis(1_000_000),
            );
        let json = serde_json::to_value(&claims).expect("serializes");
        assert_eq!(
            json,
            serde_json::json!({
                "iss": "https://api.example", "aud": "cognomega", "sub": "user-1",
                "tenant": "tenant-1", "tier": "guest", "iat": 1000, "exp": 1060, "jti": "jti-1"
            })
        );
    }

    #[test]
    fn tiers_are_lowercase() {
        for (tier, name) in [
            (Tier::Guest, "\"guest\""),
            (Tier::Member, "\"member\""),
            (Tier::Pro, "\"pro\""),
        ] {
            assert_eq!(serde_json::to_string(&tier).expect("serializes"), name);
            assert_eq!(serde_json::from_str::<Tier>(name).expect("parses"), tier);
        }
        assert!(serde_json::from_str::<Tier>("\"Guest\"").is_err());
    }
}
