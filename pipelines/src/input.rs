//! A job's input as clients send it: an image in base64 (or a `data:` URL), bounded in size.
//! Shared by the native server and the edge host.

use base64::Engine as _;

/// The largest input image: 20 MiB.
pub const MAX_INPUT_BYTES: usize = 20 * 1024 * 1024;

/// Why `input.image_base64` was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InputError {
    /// Larger than [`MAX_INPUT_BYTES`] once decoded (413 `input_too_large`).
    #[error("input images are at most {} MiB", MAX_INPUT_BYTES >> 20)]
    TooLarge,
    /// Not base64 (400 `invalid_input`).
    #[error("input.image_base64 is not base64: {0}")]
    NotBase64(String),
}

/// Decodes `input.image_base64`; a `data:…;base64,` prefix (what browsers produce) and
/// whitespace are accepted. The size is checked before decoding.
pub fn decode_base64_input(raw: &str) -> Result<Vec<u8>, InputError> {
    let raw = raw.split_once(";base64,").map_or(raw, |(_, data)| data);
    let cleaned: String = raw.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    if cleaned.len() > MAX_INPUT_BYTES / 3 * 4 + 4 {
        return Err(InputError::TooLarge);
    }
    base64::engine::general_purpose::STANDARD
        .decode(cleaned.as_bytes())
        .map_err(|e| InputError::NotBase64(e.to_string()))
}

/// Checks a job's input before anything is stored: 1 byte to [`MAX_INPUT_BYTES`], and what
/// the job type itself accepts (a decodable image of bounded dimensions, …). The message is the
/// 400 `invalid_input` answer.
pub fn check_input(job_type: &dyn crate::JobType, input: &[u8]) -> Result<(), String> {
    if input.is_empty() || input.len() > MAX_INPUT_BYTES {
        return Err(format!(
            "the input must be 1 byte to {} MiB",
            MAX_INPUT_BYTES >> 20
        ));
    }
    job_type.validate_input(input)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_inputs() {
        assert_eq!(decode_base64_input("aGk=").as_deref(), Ok(&b"hi"[..]));
        assert_eq!(
            decode_base64_input("data:image/png;base64,aG\nk=").as_deref(),
            Ok(&b"hi"[..])
        );
        assert!(matches!(
            decode_base64_input("%%%"),
            Err(InputError::NotBase64(_))
        ));
        let huge = "A".repeat(MAX_INPUT_BYTES / 3 * 4 + 8);
        assert_eq!(decode_base64_input(&huge), Err(InputError::TooLarge));
    }
}
