//! The two ways auth can fail: a presented token is refused ([`AuthError`], always the
//! client's problem), or our own key material is unusable ([`KeyError`], always ours).

use super::keys::KeyId;

/// Why a presented token was refused.
///
/// Every variant is the client's problem and maps to `401 Unauthorized`; [`AuthError::code`]
/// is the stable `snake_case` code for the error envelope. Server-side failures (bad key
/// material, signing failures) are [`KeyError`]s instead, so this mapping never hides a 500.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not a compact JWS with base64url JSON parts, too long, or claims of the wrong shape.
    #[error("the token is malformed ({reason}); send a token issued by this service")]
    Malformed {
        /// What was wrong, for logs. Never contains token bytes.
        reason: &'static str,
    },
    /// The header says `"alg": "none"`: an unsigned token.
    #[error("unsigned tokens (alg \"none\") are refused; only RS256 is accepted")]
    AlgNone,
    /// An HMAC algorithm (`HS256`…): the classic confusion attack signs with our *public* key
    /// as the shared secret, so symmetric algorithms are refused outright.
    #[error("symmetric algorithm {alg:?} is refused; only RS256 is accepted")]
    SymmetricAlg {
        /// The header's `alg`, truncated.
        alg: String,
    },
    /// Any other algorithm than `RS256` (including other RSA or EC algorithms).
    #[error("algorithm {alg:?} is not supported; only RS256 is accepted")]
    UnsupportedAlg {
        /// The header's `alg`, truncated.
        alg: String,
    },
    /// The header carries no `kid`, so no key can be chosen.
    #[error("the token header has no kid; send a token issued by this service")]
    MissingKid,
    /// The `kid` names no published key (never ours, or rotated out since).
    #[error("the token's signing key is unknown or retired; request a new token")]
    UnknownKid {
        /// The `kid`, when it is at least a well-formed key id.
        kid: Option<KeyId>,
    },
    /// The signature does not match the header and payload (tampered or forged).
    #[error("the token signature is invalid")]
    BadSignature,
    /// `exp` has passed (beyond the leeway).
    #[error("the token expired at {exp} (unix seconds); request a new token")]
    Expired {
        /// The token's `exp`.
        exp: i64,
    },
    /// `nbf` (or `iat`) lies in the future (beyond the leeway).
    #[error("the token is not valid before {valid_from} (unix seconds)")]
    NotYetValid {
        /// The token's `nbf`, or its `iat` if that is the later bound.
        valid_from: i64,
    },
    /// `iss` is not this service.
    #[error("the token was issued by someone else")]
    WrongIssuer,
    /// `aud` is not this service.
    #[error("the token is meant for another audience")]
    WrongAudience,
}

impl AuthError {
    /// The stable `snake_case` code clients can branch on.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Malformed { .. } => "token_malformed",
            Self::AlgNone => "token_alg_none",
            Self::SymmetricAlg { .. } => "token_alg_symmetric",
            Self::UnsupportedAlg { .. } => "token_alg_unsupported",
            Self::MissingKid => "token_kid_missing",
            Self::UnknownKid { .. } => "token_kid_unknown",
            Self::BadSignature => "token_signature_invalid",
            Self::Expired { .. } => "token_expired",
            Self::NotYetValid { .. } => "token_not_yet_valid",
            Self::WrongIssuer => "token_issuer_invalid",
            Self::WrongAudience => "token_audience_invalid",
        }
    }
}

/// Our own key material or signing failed: a server-side fault (500), never the client's.
///
/// Messages never contain key bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Key generation failed (in practice: the system RNG is unavailable).
    #[error("RSA key generation failed: {0}")]
    Generate(String),
    /// The PKCS#8 PEM could not be decoded, or is not an RSA private key.
    #[error("the private key is not a valid PKCS#8 PEM RSA key: {0}")]
    Pem(String),
    /// A key could not be encoded as PEM.
    #[error("the key could not be encoded as PEM: {0}")]
    Encode(String),
    /// The RSA modulus is outside the accepted range.
    #[error("RSA keys must have a {min}..={max} bit modulus, got {bits}")]
    KeySize {
        /// Observed modulus size.
        bits: usize,
        /// Smallest accepted size.
        min: usize,
        /// Largest accepted size.
        max: usize,
    },
    /// A JWK is not an RS256 signing key we can use.
    #[error("JWK is not a usable RS256 signing key: {reason}")]
    Jwk {
        /// What was wrong.
        reason: String,
    },
    /// Two keys share a `kid`, which would make verification ambiguous.
    #[error("two keys share the kid {0:?}")]
    DuplicateKid(KeyId),
    /// Producing the signature failed.
    #[error("signing the token failed: {0}")]
    Sign(String),
    /// A stored key ring could not be read or written.
    #[error("the stored key ring is unreadable: {0}")]
    Stored(String),
}

impl KeyError {
    /// A stable `snake_case` code, for logs and metrics.
    #[must_use]
    pub fn code(&self) -> &'static str {
        match self {
            Self::Generate(_) => "key_generation_failed",
            Self::Pem(_) => "key_pem_invalid",
            Self::Encode(_) => "key_encoding_failed",
            Self::KeySize { .. } => "key_size_invalid",
            Self::Jwk { .. } => "jwk_invalid",
            Self::DuplicateKid(_) => "key_kid_duplicate",
            Self::Sign(_) => "token_signing_failed",
            Self::Stored(_) => "key_ring_stored_invalid",
        }
    }
}
