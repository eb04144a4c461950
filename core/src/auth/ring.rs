//! The issuer's keys: one current key that signs, and a few retired keys that still verify.

use serde::{Deserialize, Serialize};

use super::claims::{Claims, Validation};
use super::error::{AuthError, KeyError};
use super::jwt;
use super::keys::{Jwks, KeyId, SigningKey};
use crate::time::UnixMillis;

/// The current signing key plus the most recent retired ones, newest first.
///
/// Retired keys stay in the published JWKS so tokens signed before a rotation keep verifying
/// until they expire. With [`KeyRing::RETAINED_PREVIOUS`] = 2, a token survives two rotations:
/// rotate no more often than the longest token TTL and no live token ever breaks.
#[derive(Debug, Clone)]
pub struct KeyRing {
    current: SigningKey,
    previous: Vec<SigningKey>,
}

impl KeyRing {
    /// How many retired keys are kept (and published) after rotations.
    pub const RETAINED_PREVIOUS: usize = 2;

    /// A ring with a single key.
    #[must_use]
    pub fn new(current: SigningKey) -> Self {
        Self {
            current,
            previous: Vec::new(),
        }
    }

    /// Rebuilds a ring from storage: `previous` newest first. Keys beyond
    /// [`Self::RETAINED_PREVIOUS`] are dropped; duplicate `kid`s are refused.
    pub fn from_parts(current: SigningKey, previous: Vec<SigningKey>) -> Result<Self, KeyError> {
        let mut ring = Self::new(current);
        for key in previous.into_iter().take(Self::RETAINED_PREVIOUS) {
            ring.ensure_new_kid(&key)?;
            ring.previous.push(key);
        }
        Ok(ring)
    }

    /// The key that signs new tokens.
    #[must_use]
    pub fn current(&self) -> &SigningKey {
        &self.current
    }

    /// Retired keys that still verify, newest first.
    #[must_use]
    pub fn previous(&self) -> &[SigningKey] {
        &self.previous
    }

    /// Makes `new_key` current and retires the old current key, dropping the oldest retired
    /// key beyond [`Self::RETAINED_PREVIOUS`]. Refuses a `kid` already in the ring.
    pub fn rotate(&mut self, new_key: SigningKey) -> Result<(), KeyError> {
        self.ensure_new_kid(&new_key)?;
        let retired = std::mem::replace(&mut self.current, new_key);
        self.previous.insert(0, retired);
        self.previous.truncate(Self::RETAINED_PREVIOUS);
        Ok(())
    }

    /// Signs `claims` with the current key (RS256, header `kid` set).
    pub fn issue(&self, claims: &Claims) -> Result<String, KeyError> {
        jwt::encode(&self.current, claims)
    }

    /// The public keys to publish: current first, then the retired ones.
    #[must_use]
    pub fn jwks(&self) -> Jwks {
        let keys = std::iter::once(&self.current)
            .chain(&self.previous)
            .map(SigningKey::public_jwk)
            .collect();
        // Every way into a ring refuses duplicate kids, so the set is always valid; the
        // constructor is bypassed rather than unwrapped.
        Jwks::from_unique(keys)
    }

    /// Verifies `token` against this ring's public keys; see [`verify`](super::verify).
    /// Builds the JWKS on every call: hot paths should keep a [`Jwks`] and call `verify`.
    pub fn verify(
        &self,
        token: &str,
        validation: &Validation,
        now: UnixMillis,
    ) -> Result<Claims, AuthError> {
        jwt::verify(token, &self.jwks(), validation, now)
    }

    fn ensure_new_kid(&self, key: &SigningKey) -> Result<(), KeyError> {
        let taken = std::iter::once(&self.current)
            .chain(&self.previous)
            .any(|k| k.kid() == key.kid());
        if taken {
            return Err(KeyError::DuplicateKid(key.kid().clone()));
        }
        Ok(())
    }
}

#[derive(Serialize, Deserialize)]
struct StoredKey {
    kid: String,
    pem: String,
}

#[derive(Serialize, Deserialize)]
struct StoredRing {
    current: StoredKey,
    previous: Vec<StoredKey>,
}

impl KeyRing {
    /// The ring as stored by every host (JSON: `{"current":{"kid","pem"},"previous":[…]}`,
    /// PKCS#8 PEM), so the native server and the edge sign and verify with the same keys.
    pub fn to_stored(&self) -> Result<Vec<u8>, KeyError> {
        let stored = |k: &SigningKey| -> Result<StoredKey, KeyError> {
            Ok(StoredKey {
                kid: k.kid().to_string(),
                pem: k.to_pkcs8_pem()?.to_string(),
            })
        };
        let ring = StoredRing {
            current: stored(self.current())?,
            previous: self
                .previous()
                .iter()
                .map(stored)
                .collect::<Result<_, _>>()?,
        };
        serde_json::to_vec(&ring).map_err(|e| KeyError::Stored(e.to_string()))
    }

    /// Reads a ring written by [`KeyRing::to_stored`].
    pub fn from_stored(bytes: &[u8]) -> Result<Self, KeyError> {
        let stored: StoredRing =
            serde_json::from_slice(bytes).map_err(|e| KeyError::Stored(e.to_string()))?;
        let key = |k: StoredKey| -> Result<SigningKey, KeyError> {
            let kid = KeyId::parse(&k.kid).map_err(|e| KeyError::Stored(e.to_string()))?;
            SigningKey::from_pkcs8_pem(kid, &k.pem)
        };
        let current = key(stored.current)?;
        let previous = stored
            .previous
            .into_iter()
            .map(key)
            .collect::<Result<_, _>>()?;
        Self::from_parts(current, previous)
    }
}
