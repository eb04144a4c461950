//! The one error envelope of the HTTP API: `{"error":{"code","message","request_id"}}`.
//!
//! Every host (native server, edge Worker) renders errors through these types so clients see
//! the same shape everywhere.

use serde::{Deserialize, Serialize};

/// The body of every error response.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEnvelope {
    /// The error itself.
    pub error: ErrorBody,
}

/// What went wrong, in machine- and human-readable form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable `snake_case` code clients can branch on.
    pub code: String,
    /// A sentence for humans, saying what to do next where possible.
    pub message: String,
    /// The request id, also sent as the `X-Request-Id` header.
    pub request_id: String,
}

impl ErrorEnvelope {
    /// Builds an envelope.
    pub fn new(
        code: impl Into<String>,
        message: impl Into<String>,
        request_id: impl Into<String>,
    ) -> Self {
        Self {
            error: ErrorBody {
                code: code.into(),
                message: message.into(),
                request_id: request_id.into(),
            },
        }
    }
}

/// A refusal a workflow answers with, rendered by each host into the envelope above: the HTTP
/// status, the stable code, the sentence, and `Retry-After` when the client should come back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// HTTP status.
    pub status: u16,
    /// `snake_case` code.
    pub code: &'static str,
    /// What happened and what to do next.
    pub message: String,
    /// `Retry-After` in seconds.
    pub retry_after: Option<u64>,
}

impl Refusal {
    /// Any refusal.
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    /// 500: something broke here (the message is logged and sent).
    pub fn internal(message: impl std::fmt::Display) -> Self {
        Self::new(500, "internal", message.to_string())
    }

    /// 503: a dependency is down; retry.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(503, "unavailable", message)
    }

    /// 402: the balance cannot pay for billable work.
    #[must_use]
    pub fn insufficient_credits(balance: i64) -> Self {
        Self::new(
            402,
            "insufficient_credits",
            format!("the balance is {balance} credits; add credits (POST /credits/adjust) before submitting billable work"),
        )
    }

    /// The same refusal, telling the client when to come back.
    #[must_use]
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs);
        self
    }
}

/// Parses a JSON body, naming the problem precisely: `invalid_json` when it is not JSON,
/// `invalid_body` when it is JSON of the wrong shape.
pub fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, Refusal> {
    serde_json::from_slice(body).map_err(|e| {
        let code = if e.is_syntax() || e.is_eof() {
            "invalid_json"
        } else {
            "invalid_body"
        };
        Refusal::new(400, code, format!("request body: {e}"))
    })
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code, self.message)
    }
}

impl std::error::Error for Refusal {}

/// The CORS policy every shape applies: which request headers a browser may send, which
/// response headers it may read, and how long it may cache a preflight.
pub mod cors {
    /// Headers a browser client may read: billing figures, the request id, the rate-limit
    /// figures a client paces itself by, the stage timings of an ask, and the mark of a
    /// replayed answer.
    pub const EXPOSED_HEADERS: [&str; 16] = [
        "x-request-id",
        "x-credits-used",
        "x-credits-balance",
        "x-provider",
        "x-provider-fallback",
        "x-voice",
        "x-audio-seconds",
        "x-model",
        "x-tokens-in",
        "x-tokens-out",
        "ratelimit-limit",
        "ratelimit-remaining",
        "ratelimit-reset",
        "retry-after",
        "server-timing",
        "idempotent-replayed",
    ];
    /// Request headers a browser client may send.
    pub const ALLOWED_HEADERS: [&str; 5] = [
        "authorization",
        "content-type",
        "idempotency-key",
        "x-request-id",
        "x-admin-key",
    ];
    /// Methods a browser client may use.
    pub const ALLOWED_METHODS: [&str; 3] = ["GET", "POST", "OPTIONS"];
    /// Seconds a browser may cache a preflight answer.
    pub const MAX_AGE_SECS: u64 = 600;

    /// Whether `origin` may call the API under `allowed` (`*` allows any).
    #[must_use]
    pub fn allows(allowed: &[String], origin: &str) -> bool {
        allowed.iter().any(|o| o == "*" || o == origin)
    }
}
