//! Comparing secrets without leaking, through timing, how much of a guess was right.

use subtle::ConstantTimeEq as _;

/// Whether `a == b`, in time independent of where they differ (for the `X-Admin-Key` check).
///
/// Uses `subtle`, which keeps the optimizer from turning the comparison back into an early
/// exit — the part a hand-written XOR loop cannot promise. Lengths are not secret: inputs of
/// different lengths return `false` at once, which reveals only the key's length.
#[must_use]
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_bytes() {
        assert!(constant_time_eq(b"s3cret-admin-key", b"s3cret-admin-key"));
        assert!(!constant_time_eq(b"s3cret-admin-key", b"s3cret-admin-kez"));
        assert!(!constant_time_eq(b"s3cret", b"s3cret-admin-key"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }
}
