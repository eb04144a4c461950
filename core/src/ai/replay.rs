//! `Idempotency-Key` on `POST /api/si/ask`: a retried ask is replayed, not re-asked.
//!
//! An ask spends provider money, so a client's retry (same key, same body) must get the first
//! answer back — the JSON body and its headers, or the recorded event stream — without calling
//! the provider again, billed once. The same key with another body is a client bug (409). A
//! key lives 24 hours. Requests without a key are each asked and each billed: billing is keyed
//! on an id the server makes (`billing_id`), never on the client's `X-Request-Id`, which is for
//! tracing only.
//!
//! Both hosts keep the keys in the `ask_replays` table with the statements below
//! (PostgreSQL-style `$n` parameters, which SQLite reads too; times are epoch milliseconds):
//! a request first *claims* its key (`CLAIM`); a claim that returns no row met a live one,
//! which `LOOKUP` reads and `decide` judges. The claimant `FINISH`es with the response it sent
//! or, when nothing was billed (a refusal, a provider failure), `RELEASE`s the key so a retry
//! asks afresh.

use rsa::sha2::{Digest as _, Sha256};
use serde::{Deserialize, Serialize};

/// How long a key is remembered (24 hours).
pub const KEY_TTL_MS: i64 = 24 * 3600 * 1000;
/// A claim still `pending` after this long was abandoned (its process died mid-answer): the
/// next request with the key may take it over. Longer than any answer (provider timeouts and
/// the longest stream are minutes).
pub const ABANDONED_AFTER_MS: i64 = 15 * 60 * 1000;
/// The longest key accepted (as `POST /jobs`).
pub const MAX_KEY_LEN: usize = 128;

/// Claims `(tenant_id $1, key $2)` for a request with body hash `$3` at `$4`: inserts a
/// pending row, or takes over an expired one (claimed before `$5`) or an abandoned pending one
/// (claimed before `$6`). Returns `claimed_at` when claimed, no row when a live claim exists.
pub const CLAIM: &str = "INSERT INTO ask_replays (tenant_id, key, request_hash, state, claimed_at)
     VALUES ($1, $2, $3, 'pending', $4)
     ON CONFLICT (tenant_id, key) DO UPDATE
       SET request_hash = excluded.request_hash, state = 'pending',
           claimed_at = excluded.claimed_at, response = NULL
       WHERE ask_replays.claimed_at < $5
          OR (ask_replays.state = 'pending' AND ask_replays.claimed_at < $6)
     RETURNING claimed_at";
/// The live row of `(tenant_id $1, key $2)`: `request_hash, state, claimed_at, response`.
pub const LOOKUP: &str = "SELECT request_hash, state, claimed_at, response FROM ask_replays
     WHERE tenant_id = $1 AND key = $2";
/// Stores the response `$4` (JSON of [`Recorded`]) of the claim `(tenant $1, key $2,
/// claimed_at $3)`.
pub const FINISH: &str = "UPDATE ask_replays SET state = 'done', response = $4
     WHERE tenant_id = $1 AND key = $2 AND claimed_at = $3";
/// Gives up the claim `(tenant $1, key $2, claimed_at $3)` when nothing was billed.
pub const RELEASE: &str = "DELETE FROM ask_replays
     WHERE tenant_id = $1 AND key = $2 AND claimed_at = $3 AND state = 'pending'";
/// Retention: keys claimed before `$1`.
pub const PRUNE: &str = "DELETE FROM ask_replays WHERE claimed_at < $1";

/// Reads an `Idempotency-Key` header value: `None` when absent, an error message when it is
/// not 1..=128 visible ASCII characters.
pub fn parse_key(value: Option<&[u8]>) -> Result<Option<String>, &'static str> {
    let Some(raw) = value else {
        return Ok(None);
    };
    let key = std::str::from_utf8(raw).map_err(|_| KEY_RULE)?.trim();
    if key.is_empty() || key.len() > MAX_KEY_LEN || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(KEY_RULE);
    }
    Ok(Some(key.to_owned()))
}

/// What `parse_key` requires.
pub const KEY_RULE: &str = "Idempotency-Key must be 1..=128 visible ASCII characters";

/// The hash a key is bound to: SHA-256 of the request body, hex.
#[must_use]
pub fn request_hash(body: &[u8]) -> String {
    hex(&Sha256::digest(body))
}

/// The id an ask is billed under (its usage events' keys derive from it): with an
/// `Idempotency-Key`, one id per tenant and key, so however often the key is retried the
/// answer is billed once; without one, `fresh` (a new id per request, from the host).
#[must_use]
pub fn billing_id(tenant: &str, key: Option<&str>, fresh: impl FnOnce() -> String) -> String {
    match key {
        Some(key) => {
            let mut h = Sha256::new();
            h.update(tenant.as_bytes());
            h.update([0]);
            h.update(key.as_bytes());
            format!("idem-{}", &hex(&h.finalize())[..40])
        }
        None => format!("ask-{}", fresh()),
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// A response as it was sent, kept for replays.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: String,
    /// The answer's own headers (`X-Provider`, `X-Credits-Used`, …).
    pub headers: Vec<(String, String)>,
    /// The body: the JSON answer, or the event stream as sent (`event:`/`data:` lines).
    pub body: String,
}

impl Recorded {
    /// A JSON answer (200) with its headers.
    #[must_use]
    pub fn json_answer(headers: &[(&str, String)], body: String) -> Self {
        Self {
            status: 200,
            content_type: "application/json".into(),
            headers: headers
                .iter()
                .map(|(n, v)| ((*n).to_owned(), v.clone()))
                .collect(),
            body,
        }
    }

    /// A streamed answer (200): the frames as sent, and who answered.
    #[must_use]
    pub fn event_stream(provider: &str, model: &str, body: String) -> Self {
        Self {
            status: 200,
            content_type: "text/event-stream".into(),
            headers: vec![
                ("x-provider".into(), provider.to_owned()),
                ("x-model".into(), model.to_owned()),
            ],
            body,
        }
    }

    /// The JSON stored by `FINISH`.
    #[must_use]
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// The header a replayed answer carries.
pub const REPLAYED_HEADER: &str = "idempotent-replayed";

/// A live row met by a claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Existing {
    /// The hash of the body its key was first used with.
    pub request_hash: String,
    /// `pending` or `done`.
    pub state: String,
    /// When it was claimed (epoch ms).
    pub claimed_at: i64,
    /// The recorded response, once `done`.
    pub response: Option<String>,
}

/// What to answer a request whose claim met a live row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// The stored answer, as it was first sent.
    Replay(Recorded),
    /// 409 `idempotency_key_reused`: the key was used with another body.
    Mismatch,
    /// 409 `idempotency_key_in_flight`: the first request is still being answered; retry after
    /// the given seconds.
    InFlight {
        /// Seconds.
        retry_after_secs: u64,
    },
}

/// Judges a live row for a request with body hash `hash`.
#[must_use]
pub fn decide(existing: &Existing, hash: &str) -> Decision {
    if existing.request_hash != hash {
        return Decision::Mismatch;
    }
    match (existing.state.as_str(), existing.response.as_deref()) {
        ("done", Some(json)) => match serde_json::from_str::<Recorded>(json) {
            Ok(r) => Decision::Replay(r),
            // Unreadable (never written so): as a claim in flight, until it is abandoned.
            Err(_) => Decision::InFlight {
                retry_after_secs: 1,
            },
        },
        _ => Decision::InFlight {
            retry_after_secs: 1,
        },
    }
}

/// The `(status, code, message)` of a decision that refuses.
#[must_use]
pub fn refusal(decision: &Decision) -> Option<(u16, &'static str, &'static str)> {
    match decision {
        Decision::Replay(_) => None,
        Decision::Mismatch => Some((
            409,
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body; use a new key for a new request",
        )),
        Decision::InFlight { .. } => Some((
            409,
            "idempotency_key_in_flight",
            "a request with this Idempotency-Key is still being answered; retry shortly to get its answer",
        )),
    }
}

/// The claim's time bounds at `now_ms`: `(now, expired_before, abandoned_before)` for `CLAIM`'s
/// `$4`, `$5`, `$6`.
#[must_use]
pub fn claim_times(now_ms: i64) -> (i64, i64, i64) {
    (now_ms, now_ms - KEY_TTL_MS, now_ms - ABANDONED_AFTER_MS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_visible_ascii_up_to_128() {
        assert_eq!(parse_key(None), Ok(None));
        assert_eq!(parse_key(Some(b" k-1 ")), Ok(Some("k-1".into())));
        assert!(parse_key(Some(b"")).is_err());
        assert!(parse_key(Some(b"a b")).is_err());
        assert!(parse_key(Some("é".as_bytes())).is_err());
        assert!(parse_key(Some(&[b'x'; 129])).is_err());
        assert!(parse_key(Some(&[b'x'; 128])).is_ok());
    }

    #[test]
    fn billing_ids_are_per_tenant_and_key_or_fresh() {
        let a = billing_id("t1", Some("k"), || unreachable!());
        assert_eq!(a, billing_id("t1", Some("k"), || unreachable!()));
        assert_ne!(a, billing_id("t2", Some("k"), || unreachable!()));
        assert_ne!(a, billing_id("t1", Some("k2"), || unreachable!()));
        assert_eq!(billing_id("t1", None, || "x".into()), "ask-x");
        assert!(a.len() <= 100, "fits a usage key unhashed");
    }

    #[test]
    fn a_live_row_is_replayed_refused_or_waited_for() {
        let recorded = Recorded {
            status: 200,
            content_type: "application/json".into(),
            headers: vec![("x-provider".into(), "openai".into())],
            body: "{}".into(),
        };
        let done = Existing {
            request_hash: "h".into(),
            state: "done".into(),
            claimed_at: 1,
            response: Some(recorded.to_json()),
        };
        assert_eq!(decide(&done, "h"), Decision::Replay(recorded));
        assert_eq!(decide(&done, "other"), Decision::Mismatch);
        let pending = Existing {
            state: "pending".into(),
            response: None,
            ..done
        };
        assert!(matches!(decide(&pending, "h"), Decision::InFlight { .. }));
        assert_eq!(refusal(&decide(&pending, "other")).map(|r| r.0), Some(409));
    }
}
