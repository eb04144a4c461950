//! The JWT compact form (`header.payload.signature`, RFC 7515/7519), RS256 only.
//!
//! Hand-written over `rsa` rather than taken from `jsonwebtoken`: the codec is a few dozen
//! lines, while every refusal must surface as its own [`AuthError`] (`alg: none`, HMAC
//! confusion, other algorithms, missing/unknown `kid`) and a general-purpose library folds
//! several of those into one opaque error. Owning it also means no algorithm other than RS256
//! is even linked in, so none can be reached by a crafted header.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::claims::{seconds, unix_seconds, Claims, Validation};
use super::error::{AuthError, KeyError};
use super::keys::{Jwk, Jwks, KeyId, SigningKey};
use crate::time::UnixMillis;

/// The only algorithm we sign with or accept.
const RS256: &str = "RS256";

/// Longest token we look at. Ours are well under 1 KiB; the cap bounds the work (decoding,
/// JSON parsing) an anonymous caller can make us do before the signature check.
pub const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// Longest `alg` value echoed back in an error, so logs stay bounded.
const MAX_ECHOED_ALG: usize = 16;

#[derive(Serialize)]
struct HeaderOut<'a> {
    alg: &'static str,
    typ: &'static str,
    kid: &'a str,
}

/// Only the fields that steer verification. Others (`typ`, `cty`, `jku`, `x5u`, `jwk`, …) are
/// ignored: keys come solely from our JWKS by `kid`, never from the token itself.
#[derive(Deserialize)]
struct HeaderIn {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

/// Signs `claims` with `key`: `base64url(header).base64url(claims).base64url(signature)`.
pub(crate) fn encode(key: &SigningKey, claims: &Claims) -> Result<String, KeyError> {
    let header = HeaderOut {
        alg: RS256,
        typ: "JWT",
        kid: key.kid().as_str(),
    };
    let mut token = json_b64(&header)?;
    token.push('.');
    token.push_str(&json_b64(claims)?);
    let signature = key.sign(token.as_bytes())?;
    token.push('.');
    token.push_str(&URL_SAFE_NO_PAD.encode(signature));
    Ok(token)
}

fn json_b64<T: Serialize>(value: &T) -> Result<String, KeyError> {
    // Our header and claims are plain structs, so this cannot fail in practice; an error
    // still surfaces as a server-side fault rather than a panic.
    let json = serde_json::to_vec(value).map_err(|e| KeyError::Sign(e.to_string()))?;
    Ok(URL_SAFE_NO_PAD.encode(json))
}

/// Verifies an RS256 JWT against the published `keys` and returns its claims.
///
/// In order: shape, header (`alg` must be exactly `RS256`, `kid` must name a key in `keys`),
/// signature, then claims (`exp`, `nbf`/`iat`, `iss`, `aud`) against `now`. The payload is
/// parsed only after the signature holds. A [`Jwks`] holds public keys only, which is all
/// the edge host has.
pub fn verify(
    token: &str,
    keys: &Jwks,
    validation: &Validation,
    now: UnixMillis,
) -> Result<Claims, AuthError> {
    let parts = split(token)?;
    let key = select_key(parts.header, keys)?;
    let signature = decode_b64(parts.signature, "signature is not unpadded base64url")?;
    if !key.verifies(parts.signing_input.as_bytes(), &signature) {
        return Err(AuthError::BadSignature);
    }
    let payload = decode_b64(parts.payload, "payload is not unpadded base64url")?;
    let claims: Claims = json_object(&payload).ok_or(AuthError::Malformed {
        reason: "claims are not a JSON object with the required fields",
    })?;
    check_claims(&claims, validation, now)?;
    Ok(claims)
}

struct Parts<'a> {
    header: &'a str,
    payload: &'a str,
    signature: &'a str,
    /// `header.payload`, exactly as received: the signature covers these bytes.
    signing_input: &'a str,
}

fn split(token: &str) -> Result<Parts<'_>, AuthError> {
    if token.len() > MAX_TOKEN_BYTES {
        return Err(AuthError::Malformed {
            reason: "token is too long",
        });
    }
    let malformed = AuthError::Malformed {
        reason: "expected three dot-separated parts",
    };
    let (signing_input, signature) = token.rsplit_once('.').ok_or(malformed.clone())?;
    let (header, payload) = signing_input.split_once('.').ok_or(malformed.clone())?;
    // An empty signature is left to the header checks: `alg: none` tokens end in "." and
    // must be reported as such.
    if payload.contains('.') || header.is_empty() || payload.is_empty() {
        return Err(malformed);
    }
    Ok(Parts {
        header,
        payload,
        signature,
        signing_input,
    })
}

fn select_key<'k>(header_b64: &str, keys: &'k Jwks) -> Result<&'k Jwk, AuthError> {
    let header = decode_b64(header_b64, "header is not unpadded base64url")?;
    let header: HeaderIn = json_object(&header).ok_or(AuthError::Malformed {
        reason: "header is not a JSON object with a string alg",
    })?;
    check_alg(&header.alg)?;
    // We understand no extensions, and RFC 7515 §4.1.11 says to refuse what we don't.
    if header.crit.is_some() {
        return Err(AuthError::Malformed {
            reason: "header has critical extensions",
        });
    }
    let kid = header.kid.ok_or(AuthError::MissingKid)?;
    keys.find(&kid).ok_or_else(|| AuthError::UnknownKid {
        kid: KeyId::parse(&kid).ok(),
    })
}

fn check_alg(alg: &str) -> Result<(), AuthError> {
    if alg == RS256 {
        return Ok(());
    }
    // Case-insensitive: some libraries historically accepted "None" / "NONE" as unsigned.
    if alg.eq_ignore_ascii_case("none") {
        return Err(AuthError::AlgNone);
    }
    let echoed: String = alg.chars().take(MAX_ECHOED_ALG).collect();
    if alg.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("HS")) {
        return Err(AuthError::SymmetricAlg { alg: echoed });
    }
    Err(AuthError::UnsupportedAlg { alg: echoed })
}

/// Parses a JSON *object* into `T`. serde's derived structs also accept arrays (fields by
/// position), which is not JWT; parsing straight into `T` (not via a map) keeps serde's
/// refusal of duplicate keys such as a second `alg`.
fn json_object<T: serde::de::DeserializeOwned>(json: &[u8]) -> Option<T> {
    let first = json.iter().find(|b| !b.is_ascii_whitespace());
    if first != Some(&b'{') {
        return None;
    }
    serde_json::from_slice(json).ok()
}

fn decode_b64(part: &str, reason: &'static str) -> Result<Vec<u8>, AuthError> {
    URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed { reason })
}

fn check_claims(
    claims: &Claims,
    validation: &Validation,
    now: UnixMillis,
) -> Result<(), AuthError> {
    let now = unix_seconds(now);
    let leeway = seconds(validation.leeway);
    // RFC 7519 §4.1.4: valid only while now < exp.
    if now >= claims.exp.saturating_add(leeway) {
        return Err(AuthError::Expired { exp: claims.exp });
    }
    // A token issued in the future is as suspect as one not yet valid.
    let valid_from = claims.nbf.unwrap_or(claims.iat).max(claims.iat);
    if now.saturating_add(leeway) < valid_from {
        return Err(AuthError::NotYetValid { valid_from });
    }
    if claims.iss != validation.issuer {
        return Err(AuthError::WrongIssuer);
    }
    if claims.aud != validation.audience {
        return Err(AuthError::WrongAudience);
    }
    Ok(())
}
