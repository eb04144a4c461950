//! Turning usage into integer credits.

use serde::{Deserialize, Serialize};

use super::UsageKind;

/// `credits` credits per `per` units, rounded up per event (so a non-zero quantity never costs 0
/// when the price is non-zero).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Price {
    /// Credits charged…
    pub credits: u64,
    /// …per this many units (≥ 1).
    pub per: u64,
}

impl Price {
    /// Parses `"CREDITS/PER"` or `"CREDITS"` (per 1 unit).
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (c, p) = raw.split_once('/').unwrap_or((raw, "1"));
        let credits = c
            .trim()
            .parse()
            .map_err(|_| format!("bad price {raw:?}: use CREDITS/UNITS, e.g. 1/1000"))?;
        let per: u64 = p
            .trim()
            .parse()
            .map_err(|_| format!("bad price {raw:?}: use CREDITS/UNITS, e.g. 1/1000"))?;
        if per == 0 {
            return Err(format!("bad price {raw:?}: units must be ≥ 1"));
        }
        Ok(Self { credits, per })
    }

    /// The charge for `quantity` units, saturating at `i64::MAX`.
    #[must_use]
    pub fn charge(self, quantity: u64) -> i64 {
        let total = u128::from(quantity) * u128::from(self.credits);
        let per = u128::from(self.per);
        i64::try_from(total.div_ceil(per)).unwrap_or(i64::MAX)
    }
}

/// A price per usage kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PriceTable {
    /// Model input tokens (default 1 credit per 1,000).
    pub tokens_in: Price,
    /// Model output tokens (default 3 credits per 1,000).
    pub tokens_out: Price,
    /// Job runs (default 10 credits each).
    pub job: Price,
    /// Stored bytes (default 1 credit per MiB).
    pub storage_bytes: Price,
    /// Audio seconds (default 1 credit per 10 s).
    pub audio_seconds: Price,
}

impl Default for PriceTable {
    fn default() -> Self {
        Self {
            tokens_in: Price {
                credits: 1,
                per: 1000,
            },
            tokens_out: Price {
                credits: 3,
                per: 1000,
            },
            job: Price {
                credits: 10,
                per: 1,
            },
            storage_bytes: Price {
                credits: 1,
                per: 1 << 20,
            },
            audio_seconds: Price {
                credits: 1,
                per: 10,
            },
        }
    }
}

impl PriceTable {
    /// The price of one kind.
    #[must_use]
    pub fn price(&self, kind: UsageKind) -> Price {
        match kind {
            UsageKind::TokensIn => self.tokens_in,
            UsageKind::TokensOut => self.tokens_out,
            UsageKind::Job => self.job,
            UsageKind::StorageBytes => self.storage_bytes,
            UsageKind::AudioSeconds => self.audio_seconds,
        }
    }

    /// Credits for `quantity` of `kind`.
    #[must_use]
    pub fn charge(&self, kind: UsageKind, quantity: u64) -> i64 {
        self.price(kind).charge(quantity)
    }

    /// Replaces one kind's price.
    pub fn set(&mut self, kind: UsageKind, price: Price) {
        match kind {
            UsageKind::TokensIn => self.tokens_in = price,
            UsageKind::TokensOut => self.tokens_out = price,
            UsageKind::Job => self.job = price,
            UsageKind::StorageBytes => self.storage_bytes = price,
            UsageKind::AudioSeconds => self.audio_seconds = price,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_up_per_event_and_never_overflows() {
        let t = PriceTable::default();
        assert_eq!(t.charge(UsageKind::TokensIn, 0), 0);
        assert_eq!(t.charge(UsageKind::TokensIn, 1), 1);
        assert_eq!(t.charge(UsageKind::TokensIn, 1000), 1);
        assert_eq!(t.charge(UsageKind::TokensIn, 1001), 2);
        assert_eq!(t.charge(UsageKind::TokensOut, 1000), 3);
        assert_eq!(t.charge(UsageKind::Job, 2), 20);
        assert_eq!(
            Price {
                credits: u64::MAX,
                per: 1
            }
            .charge(u64::MAX),
            i64::MAX
        );
    }

    #[test]
    fn parses_prices() {
        assert_eq!(
            Price::parse("1/1000"),
            Ok(Price {
                credits: 1,
                per: 1000
            })
        );
        assert_eq!(Price::parse("7"), Ok(Price { credits: 7, per: 1 }));
        assert!(Price::parse("1/0").is_err());
        assert!(Price::parse("x").is_err());
    }
}

/// The money path's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BillingConfig {
    /// Prices per usage kind.
    pub prices: PriceTable,
    /// Credits a new guest tenant starts with (default 1,000).
    pub guest_grant: i64,
    /// A guest whose balance falls below this is flagged: new billable work gets 402 (default 0).
    pub guest_floor: i64,
}

impl Default for BillingConfig {
    fn default() -> Self {
        Self {
            prices: PriceTable::default(),
            guest_grant: 1000,
            guest_floor: 0,
        }
    }
}

impl BillingConfig {
    /// Sets prices from `KIND=CREDITS/UNITS` specs (`tokens_in=1/1000`), as both hosts read them
    /// (`COGNOMEGA_PRICES`, comma-separated; natively also `--price`). Empty specs are skipped.
    pub fn set_prices<'a>(
        &mut self,
        specs: impl IntoIterator<Item = &'a str>,
    ) -> Result<(), String> {
        for spec in specs.into_iter().map(str::trim).filter(|s| !s.is_empty()) {
            let Some((kind, price)) = spec.split_once('=') else {
                return Err(format!(
                    "price {spec:?}: use KIND=CREDITS/UNITS, e.g. tokens_in=1/1000"
                ));
            };
            let kind = super::UsageKind::parse(kind.trim()).ok_or_else(|| {
                format!(
                    "price {spec:?}: unknown kind; one of tokens_in, tokens_out, job, storage_bytes, audio_seconds"
                )
            })?;
            let price = Price::parse(price).map_err(|e| format!("price {spec:?}: {e}"))?;
            self.prices.set(kind, price);
        }
        Ok(())
    }

    /// The settings both hosts read by the same names, from `lookup` (the environment natively,
    /// the Worker's variables on the edge): `COGNOMEGA_GUEST_GRANT`, `COGNOMEGA_GUEST_FLOOR`,
    /// `COGNOMEGA_PRICES`. Unset names keep the defaults.
    pub fn from_settings(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut cfg = Self::default();
        let int = |name: &str| -> Result<Option<i64>, String> {
            lookup(name)
                .map(|v| {
                    v.trim()
                        .parse::<i64>()
                        .map_err(|_| format!("{name}={v:?}: expected an integer"))
                })
                .transpose()
        };
        if let Some(grant) = int("COGNOMEGA_GUEST_GRANT")? {
            if grant < 0 {
                return Err(format!("COGNOMEGA_GUEST_GRANT={grant}: must be ≥ 0"));
            }
            cfg.guest_grant = grant;
        }
        if let Some(floor) = int("COGNOMEGA_GUEST_FLOOR")? {
            cfg.guest_floor = floor;
        }
        if let Some(prices) = lookup("COGNOMEGA_PRICES") {
            cfg.set_prices(prices.split(','))
                .map_err(|e| format!("COGNOMEGA_PRICES: {e}"))?;
        }
        Ok(cfg)
    }
}

#[cfg(test)]
mod settings_tests {
    use super::*;
    use crate::billing::UsageKind;

    #[test]
    fn settings_are_read_by_their_native_names() {
        let vars = |name: &str| match name {
            "COGNOMEGA_GUEST_GRANT" => Some("50".to_owned()),
            "COGNOMEGA_GUEST_FLOOR" => Some("-10".to_owned()),
            "COGNOMEGA_PRICES" => Some("job=7/1, tokens_in=1/100".to_owned()),
            _ => None,
        };
        let cfg = BillingConfig::from_settings(vars).unwrap_or_default();
        assert_eq!(cfg.guest_grant, 50);
        assert_eq!(cfg.guest_floor, -10);
        assert_eq!(cfg.prices.charge(UsageKind::Job, 2), 14);
        assert_eq!(cfg.prices.charge(UsageKind::TokensIn, 1000), 10);
        assert_eq!(
            BillingConfig::from_settings(|_| None),
            Ok(BillingConfig::default())
        );
    }

    #[test]
    fn bad_settings_say_which_and_why() {
        let bad = |n: &'static str, v: &'static str| {
            BillingConfig::from_settings(move |name: &str| (name == n).then(|| v.to_owned()))
                .err()
                .unwrap_or_default()
        };
        let e = bad("COGNOMEGA_PRICES", "job");
        assert!(
            e.contains("COGNOMEGA_PRICES") && e.contains("KIND=CREDITS/UNITS"),
            "{e}"
        );
        let e = bad("COGNOMEGA_PRICES", "gold=1/1");
        assert!(e.contains("unknown kind"), "{e}");
        let e = bad("COGNOMEGA_GUEST_GRANT", "-1");
        assert!(e.contains("≥ 0"), "{e}");
        let e = bad("COGNOMEGA_GUEST_FLOOR", "x");
        assert!(e.contains("COGNOMEGA_GUEST_FLOOR"), "{e}");
    }
}
