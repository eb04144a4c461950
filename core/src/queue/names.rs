//! Parsed, validated identifiers: once constructed they are known to be well formed.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a raw string was refused as an identifier.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// Empty or too long.
    #[error("{what} must be {min}..={max} bytes long, got {len}")]
    Length {
        /// Which identifier.
        what: &'static str,
        /// Lower bound.
        min: usize,
        /// Upper bound.
        max: usize,
        /// Observed length.
        len: usize,
    },
    /// A character outside the allowed set.
    #[error("{what} may only contain {allowed}; found {found:?}")]
    Character {
        /// Which identifier.
        what: &'static str,
        /// Description of the allowed set.
        allowed: &'static str,
        /// The offending character.
        found: char,
    },
}

/// A queue name: 1..=64 of `[a-z0-9._-]`, starting with a letter or digit
/// (the same alphabet Cloudflare Queues accepts, so names map to the edge unchanged).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct QueueName(String);

impl QueueName {
    /// Parses and validates a queue name.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        const WHAT: &str = "queue name";
        const ALLOWED: &str = "lowercase letters, digits, '.', '_' and '-'";
        if raw.is_empty() || raw.len() > 64 {
            return Err(ParseError::Length {
                what: WHAT,
                min: 1,
                max: 64,
                len: raw.len(),
            });
        }
        for (i, c) in raw.chars().enumerate() {
            let ok = c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || (i > 0 && matches!(c, '.' | '_' | '-'));
            if !ok {
                return Err(ParseError::Character {
                    what: WHAT,
                    allowed: ALLOWED,
                    found: c,
                });
            }
        }
        Ok(Self(raw.to_owned()))
    }

    /// The name as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for QueueName {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<QueueName> for String {
    fn from(value: QueueName) -> Self {
        value.0
    }
}

impl fmt::Display for QueueName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A producer-chosen key that makes a send idempotent within the dedup window:
/// 1..=128 bytes of printable ASCII (no spaces or control characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Parses and validates a key.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        const WHAT: &str = "idempotency key";
        if raw.is_empty() || raw.len() > 128 {
            return Err(ParseError::Length {
                what: WHAT,
                min: 1,
                max: 128,
                len: raw.len(),
            });
        }
        if let Some(found) = raw.chars().find(|c| !c.is_ascii_graphic()) {
            return Err(ParseError::Character {
                what: WHAT,
                allowed: "printable ASCII without spaces",
                found,
            });
        }
        Ok(Self(raw.to_owned()))
    }

    /// The key as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for IdempotencyKey {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<IdempotencyKey> for String {
    fn from(value: IdempotencyKey) -> Self {
        value.0
    }
}

impl fmt::Display for IdempotencyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A message's identity, stable for its whole life (also across dead-lettering and replay).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct MessageId(pub i64);

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// The fencing token of one claim. Every claim draws a new, strictly larger token; settling a
/// message requires the token of its current lease, so a worker whose lease expired and was
/// re-claimed elsewhere cannot ack or retry it any more.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseToken(pub i64);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn queue_names() {
        assert!(QueueName::parse("jobs.sketch_to_app").is_ok());
        assert!(QueueName::parse("av-scan").is_ok());
        assert!(QueueName::parse("").is_err());
        assert!(QueueName::parse("Upper").is_err());
        assert!(QueueName::parse(".hidden").is_err());
        assert!(QueueName::parse("a b").is_err());
        assert!(QueueName::parse(&"a".repeat(65)).is_err());
        assert!(QueueName::parse(&"a".repeat(64)).is_ok());
    }

    #[test]
    fn idempotency_keys() {
        assert!(IdempotencyKey::parse("order-42:v1").is_ok());
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("has space").is_err());
        assert!(IdempotencyKey::parse("nul\0").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(128)).is_ok());
        assert!(IdempotencyKey::parse(&"k".repeat(129)).is_err());
    }

    #[test]
    fn serde_validates() {
        let bad: Result<QueueName, _> = serde_json::from_str("\"BAD\"");
        assert!(bad.is_err());
        let good: QueueName = serde_json::from_str("\"usage\"").expect("valid name");
        assert_eq!(good.as_str(), "usage");
    }
}
