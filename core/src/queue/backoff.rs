//! Retry delays: exponential backoff with "equal jitter".

use std::time::Duration;

/// The delay before delivery number `attempt + 1`, after `attempt` failed deliveries (≥ 1).
///
/// `base * 2^(attempt-1)`, capped at `cap`, then jittered into `[d/2, d]` by `unit`
/// (a random number in `[0, 1)` supplied by the caller, since the core has no RNG). Half the
/// delay is kept so retries never collapse to zero; the other half spreads a thundering herd.
#[must_use]
pub fn backoff_delay(base: Duration, cap: Duration, attempt: u32, unit: f64) -> Duration {
    let exp = attempt.saturating_sub(1).min(30);
    let raw = base.saturating_mul(1u32 << exp).min(cap);
    let unit = if unit.is_finite() {
        unit.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let half = raw / 2;
    half + half.mul_f64(unit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_and_caps() {
        let base = Duration::from_secs(1);
        let cap = Duration::from_secs(10);
        assert_eq!(backoff_delay(base, cap, 1, 1.0), Duration::from_secs(1));
        assert_eq!(backoff_delay(base, cap, 2, 1.0), Duration::from_secs(2));
        assert_eq!(backoff_delay(base, cap, 3, 1.0), Duration::from_secs(4));
        assert_eq!(backoff_delay(base, cap, 9, 1.0), Duration::from_secs(10));
        assert_eq!(backoff_delay(base, cap, 1000, 1.0), Duration::from_secs(10));
    }

    #[test]
    fn jitter_stays_in_the_upper_half() {
        let base = Duration::from_secs(8);
        let cap = Duration::from_secs(60);
        assert_eq!(backoff_delay(base, cap, 1, 0.0), Duration::from_secs(4));
        assert_eq!(backoff_delay(base, cap, 1, 0.5), Duration::from_secs(6));
        assert_eq!(
            backoff_delay(base, cap, 1, f64::NAN),
            Duration::from_secs(4)
        );
    }
}
