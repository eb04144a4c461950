//! JSON request bodies with errors in the envelope (axum's own rejections are plain text).

use serde::de::DeserializeOwned;

use crate::ApiError;

/// Parses a JSON body, naming the problem precisely.
pub fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        let code = if e.is_syntax() || e.is_eof() {
            "invalid_json"
        } else {
            "invalid_body"
        };
        ApiError::bad_request(code, format!("request body: {e}"))
    })
}
