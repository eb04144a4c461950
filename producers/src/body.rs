//! JSON request bodies with errors in the envelope (axum's own rejections are plain text).

use serde::de::DeserializeOwned;

use crate::ApiError;

/// Parses a JSON body, naming the problem precisely (`cognomega_core::api::json_body`, which
/// the edge runs too).
pub fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    Ok(cognomega_core::api::json_body(body)?)
}
