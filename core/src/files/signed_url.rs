//! HMAC-SHA256 signed, expiring download URLs: `/files/{key}?exp=UNIX_SECONDS&sig=HEX`.

use hmac::{KeyInit, Mac};
use rsa::sha2::Sha256;

type HmacSha256 = hmac::Hmac<Sha256>;

/// Why a signed URL was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignedUrlError {
    /// `exp` has passed.
    #[error("the download link has expired; ask for a new one")]
    Expired,
    /// The signature does not match the key and expiry (tampered, or for another file).
    #[error("the download link's signature is invalid")]
    BadSignature,
}

impl SignedUrlError {
    /// The stable code of the 403 answer: `link_expired` or `link_invalid`.
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            Self::Expired => "link_expired",
            Self::BadSignature => "link_invalid",
        }
    }
}

fn mac(secret: &[u8], key: &str, exp: i64) -> HmacSha256 {
    // A key any length is valid for HMAC, so this never fails.
    let mut mac = HmacSha256::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC takes keys of any size"));
    mac.update(key.as_bytes());
    mac.update(b"\n");
    mac.update(exp.to_string().as_bytes());
    mac
}

/// The `sig` for downloading object `key` until `exp` (Unix seconds).
#[must_use]
pub fn sign_download(secret: &[u8], key: &str, exp: i64) -> String {
    mac(secret, key, exp)
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The signed download link of `key`, valid for `ttl_secs` from `now` (Unix seconds).
#[must_use]
pub fn signed_url(secret: &[u8], key: &str, now: i64, ttl_secs: i64) -> String {
    let exp = now.saturating_add(ttl_secs);
    format!(
        "/files/{key}?exp={exp}&sig={}",
        sign_download(secret, key, exp)
    )
}

/// Checks a download link in constant time; `now` is Unix seconds.
pub fn verify_download(
    secret: &[u8],
    key: &str,
    exp: i64,
    sig_hex: &str,
    now: i64,
) -> Result<(), SignedUrlError> {
    let sig: Option<Vec<u8>> = (sig_hex.len() == 64)
        .then(|| {
            (0..64)
                .step_by(2)
                .map(|i| u8::from_str_radix(&sig_hex[i..i + 2], 16).ok())
                .collect()
        })
        .flatten();
    let Some(sig) = sig else {
        return Err(SignedUrlError::BadSignature);
    };
    // The signature is checked first, so an expired link is only reported as such when genuine.
    mac(secret, key, exp)
        .verify_slice(&sig)
        .map_err(|_| SignedUrlError::BadSignature)?;
    if now > exp {
        return Err(SignedUrlError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_and_verify() {
        let secret = b"s3cret";
        let sig = sign_download(secret, "uploads/t/1", 1_000);
        assert_eq!(
            verify_download(secret, "uploads/t/1", 1_000, &sig, 999),
            Ok(())
        );
        assert_eq!(
            verify_download(secret, "uploads/t/1", 1_000, &sig, 1_001),
            Err(SignedUrlError::Expired)
        );
        assert_eq!(
            verify_download(secret, "uploads/t/2", 1_000, &sig, 999),
            Err(SignedUrlError::BadSignature)
        );
        assert_eq!(
            verify_download(secret, "uploads/t/1", 2_000, &sig, 999),
            Err(SignedUrlError::BadSignature)
        );
        assert_eq!(
            verify_download(b"other", "uploads/t/1", 1_000, &sig, 999),
            Err(SignedUrlError::BadSignature)
        );
        assert_eq!(
            verify_download(secret, "uploads/t/1", 1_000, "zz", 999),
            Err(SignedUrlError::BadSignature)
        );
        let mut tampered = sig.clone();
        tampered.replace_range(0..1, if &sig[0..1] == "a" { "b" } else { "a" });
        assert_eq!(
            verify_download(secret, "uploads/t/1", 1_000, &tampered, 999),
            Err(SignedUrlError::BadSignature)
        );
    }
}
