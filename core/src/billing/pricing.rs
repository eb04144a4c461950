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
