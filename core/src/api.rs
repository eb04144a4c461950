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
