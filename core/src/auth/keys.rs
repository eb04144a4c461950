//! RSA key material: private [`SigningKey`]s and the public [`Jwk`] / [`Jwks`] documents.
//!
//! A [`Jwk`] is parsed, not validated later: once it exists it holds a usable RS256 public
//! key, so a [`Jwks`] read from Workers KV either deserializes into keys that can verify, or
//! fails loudly at load time instead of at the first request.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey, LineEnding};
use rsa::sha2::Sha256;
use rsa::traits::PublicKeyParts;
use rsa::{BoxedUint, PrivateKey, PublicKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

use super::error::KeyError;
use crate::queue::ParseError;

/// Modulus size of generated keys. 2048 bits is what RS256 deployments (and JWKS consumers)
/// expect; verification on the edge stays cheap.
pub const GENERATED_KEY_BITS: usize = 2048;
/// Smallest modulus accepted from PEM or JWK: below this RSA is breakable.
pub const MIN_KEY_BITS: usize = 2048;
/// Largest modulus accepted: bounds the verification cost an attacker-chosen JWKS could cause.
pub const MAX_KEY_BITS: usize = 4096;

/// A key id (`kid`): 1..=64 of `[A-Za-z0-9._-]`, so it is safe in headers, logs and KV keys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct KeyId(String);

impl KeyId {
    /// Parses and validates a key id.
    pub fn parse(raw: &str) -> Result<Self, ParseError> {
        const WHAT: &str = "key id";
        if raw.is_empty() || raw.len() > 64 {
            return Err(ParseError::Length {
                what: WHAT,
                min: 1,
                max: 64,
                len: raw.len(),
            });
        }
        if let Some(found) = raw
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        {
            return Err(ParseError::Character {
                what: WHAT,
                allowed: "ASCII letters, digits, '.', '_' and '-'",
                found,
            });
        }
        Ok(Self(raw.to_owned()))
    }

    /// The id as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for KeyId {
    type Error = ParseError;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<KeyId> for String {
    fn from(value: KeyId) -> Self {
        value.0
    }
}

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An RSA private key with its `kid`. `Debug` never shows the key.
#[derive(Clone)]
pub struct SigningKey {
    kid: KeyId,
    key: PrivateKey,
}

impl SigningKey {
    /// Generates a fresh 2048-bit key from the system RNG (`crypto.getRandomValues` on the
    /// edge). Slow: seconds in debug builds, so do it once per rotation, not per request.
    pub fn generate(kid: KeyId) -> Result<Self, KeyError> {
        let key = PrivateKey::new(&mut getrandom::SysRng, GENERATED_KEY_BITS)
            .map_err(|e| KeyError::Generate(e.to_string()))?;
        Ok(Self { kid, key })
    }

    /// Loads a PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`) RSA key, as stored in KV `KEYS`.
    pub fn from_pkcs8_pem(kid: KeyId, pem: &str) -> Result<Self, KeyError> {
        let key = PrivateKey::from_pkcs8_pem(pem).map_err(|e| KeyError::Pem(e.to_string()))?;
        check_bits(key.n().bit_width_vartime() as usize)?;
        Ok(Self { kid, key })
    }

    /// The key as PKCS#8 PEM, for storage. The buffer is wiped when dropped.
    pub fn to_pkcs8_pem(&self) -> Result<Zeroizing<String>, KeyError> {
        self.key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| KeyError::Encode(e.to_string()))
    }

    /// The key's id.
    #[must_use]
    pub fn kid(&self) -> &KeyId {
        &self.kid
    }

    /// The public half, ready to publish in a JWKS.
    #[must_use]
    pub fn public_jwk(&self) -> Jwk {
        Jwk {
            kid: self.kid.clone(),
            key: self.key.to_public_key(),
        }
    }

    /// RS256 (RSASSA-PKCS1-v1_5 with SHA-256) over `message`.
    pub(crate) fn sign(&self, message: &[u8]) -> Result<Vec<u8>, KeyError> {
        self.key
            .pkcs1v15_sign::<Sha256>(message)
            .map_err(|e| KeyError::Sign(e.to_string()))
    }
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .field("bits", &self.key.n().bit_width_vartime())
            .field("private_key", &"<redacted>")
            .finish()
    }
}

/// A public RS256 signing key in JWK form (RFC 7517): always `kty` `RSA`, `use` `sig`, `alg`
/// `RS256`.
#[derive(Clone, PartialEq, Eq)]
pub struct Jwk {
    kid: KeyId,
    key: PublicKey,
}

impl Jwk {
    /// The key's id.
    #[must_use]
    pub fn kid(&self) -> &KeyId {
        &self.kid
    }

    /// Modulus size in bits.
    #[must_use]
    pub fn bits(&self) -> usize {
        self.key.n().bit_width_vartime() as usize
    }

    /// The key as SPKI PEM (`-----BEGIN PUBLIC KEY-----`), for tools that want PEM.
    pub fn to_public_key_pem(&self) -> Result<String, KeyError> {
        self.key
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| KeyError::Encode(e.to_string()))
    }

    /// Checks an RS256 signature made by this key.
    pub(crate) fn verifies(&self, message: &[u8], signature: &[u8]) -> bool {
        self.key
            .pkcs1v15_verify::<Sha256>(message, signature)
            .is_ok()
    }
}

impl fmt::Debug for Jwk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Jwk")
            .field("kid", &self.kid)
            .field("bits", &self.bits())
            .finish_non_exhaustive()
    }
}

/// The JSON form of a [`Jwk`]; field order is the conventional one.
#[derive(Serialize, Deserialize)]
struct JwkWire {
    kty: String,
    kid: KeyId,
    #[serde(rename = "use")]
    key_use: String,
    alg: String,
    n: String,
    e: String,
}

impl Serialize for Jwk {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        JwkWire {
            kty: "RSA".to_owned(),
            kid: self.kid.clone(),
            key_use: "sig".to_owned(),
            alg: "RS256".to_owned(),
            n: URL_SAFE_NO_PAD.encode(self.key.n_bytes()),
            e: URL_SAFE_NO_PAD.encode(self.key.e_bytes()),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Jwk {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = JwkWire::deserialize(deserializer)?;
        Jwk::try_from(wire).map_err(serde::de::Error::custom)
    }
}

impl TryFrom<JwkWire> for Jwk {
    type Error = KeyError;

    // Strict on purpose: a key not pinned to RS256 is what algorithm-confusion attacks need,
    // and the only JWKS we ever read is our own.
    fn try_from(wire: JwkWire) -> Result<Self, Self::Error> {
        let reject = |reason: &str| KeyError::Jwk {
            reason: format!("kid {:?}: {reason}", wire.kid.as_str()),
        };
        if wire.kty != "RSA" {
            return Err(reject("kty must be \"RSA\""));
        }
        if wire.key_use != "sig" {
            return Err(reject("use must be \"sig\""));
        }
        if wire.alg != "RS256" {
            return Err(reject("alg must be \"RS256\""));
        }
        let n = URL_SAFE_NO_PAD
            .decode(&wire.n)
            .map_err(|_| reject("n is not unpadded base64url"))?;
        let e = URL_SAFE_NO_PAD
            .decode(&wire.e)
            .map_err(|_| reject("e is not unpadded base64url"))?;
        if n.is_empty() || e.is_empty() {
            return Err(reject("n and e must not be empty"));
        }
        let n = BoxedUint::from_be_slice_vartime(&n);
        check_bits(n.bit_width_vartime() as usize)?;
        let key = PublicKey::new_with_size_limits(
            n,
            BoxedUint::from_be_slice_vartime(&e),
            MIN_KEY_BITS..=MAX_KEY_BITS,
        )
        .map_err(|e| reject(&e.to_string()))?;
        Ok(Self { kid: wire.kid, key })
    }
}

/// A JWK Set: `{"keys":[{"kty","kid","use","alg","n","e"}, …]}`, served at
/// `/.well-known/jwks.json` and stored in KV for the edge. `kid`s are unique.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Jwks {
    keys: Vec<Jwk>,
}

impl Jwks {
    /// Builds a set, refusing duplicate `kid`s (verification must pick exactly one key).
    pub fn new(keys: Vec<Jwk>) -> Result<Self, KeyError> {
        for (i, key) in keys.iter().enumerate() {
            if keys[..i].iter().any(|earlier| earlier.kid == key.kid) {
                return Err(KeyError::DuplicateKid(key.kid.clone()));
            }
        }
        Ok(Self { keys })
    }

    /// For callers that already guarantee unique `kid`s.
    pub(crate) fn from_unique(keys: Vec<Jwk>) -> Self {
        debug_assert!(Self::new(keys.clone()).is_ok(), "duplicate kid");
        Self { keys }
    }

    /// The keys, newest first when built by a [`KeyRing`](super::KeyRing).
    #[must_use]
    pub fn keys(&self) -> &[Jwk] {
        &self.keys
    }

    /// The key with this `kid`, if published.
    #[must_use]
    pub fn find(&self, kid: &str) -> Option<&Jwk> {
        self.keys.iter().find(|k| k.kid.as_str() == kid)
    }
}

impl<'de> Deserialize<'de> for Jwks {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct JwksWire {
            keys: Vec<Jwk>,
        }
        let wire = JwksWire::deserialize(deserializer)?;
        Jwks::new(wire.keys).map_err(serde::de::Error::custom)
    }
}

fn check_bits(bits: usize) -> Result<(), KeyError> {
    if (MIN_KEY_BITS..=MAX_KEY_BITS).contains(&bits) {
        Ok(())
    } else {
        Err(KeyError::KeySize {
            bits,
            min: MIN_KEY_BITS,
            max: MAX_KEY_BITS,
        })
    }
}
