//! `POST /usage` bodies: one event, or `{"events":[…]}` with 1..=1000 of them.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Most events in one request.
pub const MAX_EVENTS: usize = 1000;
/// Largest quantity of one event (10^12: a terabyte of storage, a trillion tokens). Bounding it
/// keeps every charge, ledger sum and balance far inside `i64`, whatever a client sends.
pub const MAX_QUANTITY: u64 = 1_000_000_000_000;
/// Largest `meta` object, serialized.
pub const MAX_META_BYTES: usize = 4096;

/// What was consumed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageKind {
    /// Model input tokens.
    TokensIn,
    /// Model output tokens.
    TokensOut,
    /// A job run.
    Job,
    /// Bytes stored.
    StorageBytes,
    /// Seconds of audio.
    AudioSeconds,
}

impl UsageKind {
    /// Every kind.
    pub const ALL: [UsageKind; 5] = [
        Self::TokensIn,
        Self::TokensOut,
        Self::Job,
        Self::StorageBytes,
        Self::AudioSeconds,
    ];

    /// The wire name.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TokensIn => "tokens_in",
            Self::TokensOut => "tokens_out",
            Self::Job => "job",
            Self::StorageBytes => "storage_bytes",
            Self::AudioSeconds => "audio_seconds",
        }
    }

    /// Parses a wire name.
    #[must_use]
    pub fn parse(raw: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.as_str() == raw)
    }
}

impl fmt::Display for UsageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A client's idempotency key for one usage event: 1..=128 characters, no control characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UsageKey(String);

impl UsageKey {
    /// Validates a key.
    pub fn parse(raw: &str) -> Result<Self, &'static str> {
        let chars = raw.chars().count();
        if chars == 0 || chars > 128 {
            return Err("must be a string of 1..=128 characters");
        }
        if raw.chars().any(char::is_control) {
            return Err("must not contain control characters");
        }
        Ok(Self(raw.to_owned()))
    }

    /// The key.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A validated usage event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageEvent {
    /// Unique per tenant; a repeat is ignored.
    pub idempotency_key: UsageKey,
    /// What was consumed.
    pub kind: UsageKind,
    /// How much, in the kind's unit.
    pub quantity: u64,
    /// When it happened (default: when it was received).
    pub occurred_at: Option<DateTime<Utc>>,
    /// Free-form annotations, at most 4 KiB serialized.
    pub meta: Option<Map<String, Value>>,
}

/// Why a usage request was refused; names the event and field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.describe())]
pub struct UsageError {
    /// Index of the offending event (`None` for the request as a whole).
    pub index: Option<usize>,
    /// The field, if one.
    pub field: Option<&'static str>,
    /// What is wrong.
    pub problem: String,
}

impl UsageError {
    fn whole(problem: impl Into<String>) -> Self {
        Self {
            index: None,
            field: None,
            problem: problem.into(),
        }
    }

    fn at(index: usize, field: Option<&'static str>, problem: impl Into<String>) -> Self {
        Self {
            index: Some(index),
            field,
            problem: problem.into(),
        }
    }

    fn describe(&self) -> String {
        match (self.index, self.field) {
            (Some(i), Some(f)) => format!("events[{i}].{f}: {}", self.problem),
            (Some(i), None) => format!("events[{i}]: {}", self.problem),
            (None, _) => self.problem.clone(),
        }
    }
}

const FIELDS: [&str; 5] = ["idempotency_key", "kind", "quantity", "occurred_at", "meta"];

/// Parses and validates a whole request; one bad event rejects all of them.
pub fn parse_usage_request(body: &[u8]) -> Result<Vec<UsageEvent>, UsageError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| UsageError::whole(format!("body is not valid JSON: {e}")))?;
    let Value::Object(obj) = value else {
        return Err(UsageError::whole(
            "body must be a JSON object: one event, or {\"events\":[…]}",
        ));
    };
    let raw_events: Vec<Value> = if obj.contains_key("events") {
        if obj.len() != 1 {
            return Err(UsageError::whole(
                "a batch body has only the \"events\" field",
            ));
        }
        match obj.into_iter().next().map(|(_, v)| v) {
            Some(Value::Array(events)) => events,
            _ => return Err(UsageError::whole("\"events\" must be an array")),
        }
    } else {
        vec![Value::Object(obj)]
    };
    if raw_events.is_empty() || raw_events.len() > MAX_EVENTS {
        return Err(UsageError::whole(format!(
            "\"events\" must hold 1..={MAX_EVENTS} events, got {}",
            raw_events.len()
        )));
    }
    raw_events
        .into_iter()
        .enumerate()
        .map(|(i, v)| parse_event(i, v))
        .collect()
}

fn parse_event(i: usize, value: Value) -> Result<UsageEvent, UsageError> {
    let Value::Object(mut obj) = value else {
        return Err(UsageError::at(i, None, "must be a JSON object"));
    };
    if let Some(unknown) = obj.keys().find(|k| !FIELDS.contains(&k.as_str())) {
        return Err(UsageError::at(
            i,
            None,
            format!("unknown field {unknown:?}"),
        ));
    }
    let key = match obj.remove("idempotency_key") {
        Some(Value::String(s)) => {
            UsageKey::parse(&s).map_err(|p| UsageError::at(i, Some("idempotency_key"), p))?
        }
        Some(_) => {
            return Err(UsageError::at(
                i,
                Some("idempotency_key"),
                "must be a string",
            ))
        }
        None => return Err(UsageError::at(i, Some("idempotency_key"), "is required")),
    };
    let kind = match obj.remove("kind") {
        Some(Value::String(s)) => UsageKind::parse(&s).ok_or_else(|| {
            UsageError::at(
                i,
                Some("kind"),
                format!("unknown kind {s:?}; one of tokens_in, tokens_out, job, storage_bytes, audio_seconds"),
            )
        })?,
        Some(_) => return Err(UsageError::at(i, Some("kind"), "must be a string")),
        None => return Err(UsageError::at(i, Some("kind"), "is required")),
    };
    let quantity = match obj.remove("quantity") {
        Some(Value::Number(n)) => n.as_u64().filter(|q| *q <= MAX_QUANTITY).ok_or_else(|| {
            UsageError::at(i, Some("quantity"), "must be an integer 0..=1000000000000")
        })?,
        Some(_) => {
            return Err(UsageError::at(
                i,
                Some("quantity"),
                "must be an integer 0..=1000000000000",
            ))
        }
        None => return Err(UsageError::at(i, Some("quantity"), "is required")),
    };
    let occurred_at = match obj.remove("occurred_at") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(
            DateTime::parse_from_rfc3339(&s)
                .map_err(|e| {
                    UsageError::at(i, Some("occurred_at"), format!("must be RFC 3339: {e}"))
                })?
                .with_timezone(&Utc),
        ),
        Some(_) => {
            return Err(UsageError::at(
                i,
                Some("occurred_at"),
                "must be an RFC 3339 string",
            ))
        }
    };
    let meta = match obj.remove("meta") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => {
            let size = serde_json::to_vec(&m)
                .map(|v| v.len())
                .unwrap_or(usize::MAX);
            if size > MAX_META_BYTES {
                return Err(UsageError::at(
                    i,
                    Some("meta"),
                    format!("is {size} bytes; at most {MAX_META_BYTES}"),
                ));
            }
            Some(m)
        }
        Some(_) => return Err(UsageError::at(i, Some("meta"), "must be a JSON object")),
    };
    Ok(UsageEvent {
        idempotency_key: key,
        kind,
        quantity,
        occurred_at,
        meta,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(body: &str) -> String {
        parse_usage_request(body.as_bytes())
            .expect_err("should fail")
            .to_string()
    }

    #[test]
    fn single_and_batch() {
        let one = parse_usage_request(br#"{"idempotency_key":"a","kind":"job","quantity":2}"#)
            .expect("valid");
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].kind, UsageKind::Job);
        let many = parse_usage_request(
            br#"{"events":[{"idempotency_key":"a","kind":"tokens_in","quantity":0,"occurred_at":"2026-01-02T03:04:05+02:00","meta":{"m":1}},
                           {"idempotency_key":"b","kind":"audio_seconds","quantity":9}]}"#,
        )
        .expect("valid");
        assert_eq!(many.len(), 2);
        assert_eq!(
            many[0].occurred_at.map(|t| t.to_rfc3339()),
            Some("2026-01-02T01:04:05+00:00".into())
        );
    }

    #[test]
    fn errors_name_the_event_and_field() {
        assert_eq!(
            err(
                r#"{"events":[{"idempotency_key":"a","kind":"job","quantity":1},{"idempotency_key":"b","kind":"job","quantity":-1}]}"#
            ),
            "events[1].quantity: must be an integer 0..=1000000000000"
        );
        assert!(
            err(r#"{"idempotency_key":"a","kind":"job","quantity":1.5}"#)
                .starts_with("events[0].quantity")
        );
        assert!(err(r#"{"idempotency_key":"a","kind":"gold","quantity":1}"#)
            .starts_with("events[0].kind: unknown kind"));
        assert!(err(r#"{"kind":"job","quantity":1}"#)
            .starts_with("events[0].idempotency_key: is required"));
        assert!(err(r#"{"idempotency_key":"","kind":"job","quantity":1}"#)
            .starts_with("events[0].idempotency_key"));
        assert!(err(&format!(
            r#"{{"idempotency_key":"{}","kind":"job","quantity":1}}"#,
            "k".repeat(129)
        ))
        .contains("1..=128"));
        assert!(err(
            r#"{"idempotency_key":"a","kind":"job","quantity":1,"occurred_at":"yesterday"}"#
        )
        .contains("RFC 3339"));
        assert!(err(&format!(
            r#"{{"idempotency_key":"a","kind":"job","quantity":1,"meta":{{"x":"{}"}}}}"#,
            "y".repeat(5000)
        ))
        .contains("meta"));
        assert!(
            err(r#"{"idempotency_key":"a","kind":"job","quantity":1,"extra":true}"#)
                .contains("unknown field")
        );
        assert!(err(r#"{"events":[]}"#).contains("1..=1000"));
        assert!(err("[1]").contains("JSON object"));
        assert!(err("{").contains("not valid JSON"));
        assert!(
            err(r#"{"idempotency_key":"a","kind":"job","quantity":18446744073709551615}"#)
                .contains("quantity")
        );
    }

    #[test]
    fn too_many_events() {
        let ev = r#"{"idempotency_key":"a","kind":"job","quantity":1}"#;
        let body = format!(r#"{{"events":[{}]}}"#, vec![ev; 1001].join(","));
        assert!(err(&body).contains("got 1001"));
    }
}
