//! The JWT signing keys, kept in the KV role under `KEYS/ring` (PKCS#8 PEM), so every process
//! of a deployment signs and verifies with the same keys.

use cognomega_core::auth::{KeyId, KeyRing, SigningKey};

use crate::queue::now_ms;
use crate::{kv, Database, StoreError};

const NAMESPACE: &str = cognomega_core::kv::KEY_RING.0;
const RING: &str = cognomega_core::kv::KEY_RING.1;

#[derive(Debug, thiserror::Error)]
pub enum KeysError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A stored key could not be parsed or a new one generated.
    #[error("signing keys: {0}")]
    Key(String),
}

fn encode(ring: &KeyRing) -> Result<Vec<u8>, KeysError> {
    ring.to_stored().map_err(|e| KeysError::Key(e.to_string()))
}

fn new_key() -> Result<SigningKey, KeysError> {
    let kid = format!("k-{}", uuid::Uuid::now_v7().simple());
    let kid = KeyId::parse(&kid).map_err(|e| KeysError::Key(e.to_string()))?;
    SigningKey::generate(kid).map_err(|e| KeysError::Key(e.to_string()))
}

/// The stored key ring, if any.
pub async fn load(db: &Database) -> Result<Option<KeyRing>, KeysError> {
    let mut read = crate::sql::Reader(db);
    cognomega_core::kv::load_ring(&mut read, now_ms().0)
        .await
        .map_err(KeysError::Key)
}

/// The key ring, generating and storing the first key if there is none; concurrent starters
/// agree on one ring (the first insert wins).
pub async fn load_or_create(db: &Database) -> Result<KeyRing, KeysError> {
    let new = || new_key().map_err(|e| e.to_string());
    let (ring, created) = cognomega_core::kv::load_or_create_ring(&mut db.clone(), now_ms().0, new)
        .await
        .map_err(KeysError::Key)?;
    if created {
        tracing::info!(kid = %ring.current().kid(), "generated the first JWT signing key");
    }
    Ok(ring)
}

/// Adds a new current key; the old one stays in the JWKS as previous so live tokens keep
/// verifying.
pub async fn rotate(db: &Database) -> Result<KeyRing, KeysError> {
    let mut ring = load_or_create(db).await?;
    ring.rotate(new_key()?)
        .map_err(|e| KeysError::Key(e.to_string()))?;
    kv::put(db, NAMESPACE, RING, &encode(&ring)?).await?;
    Ok(ring)
}

/// The HMAC secret of signed download links (`KEYS/url-signing`), generated on first use and
/// shared by every process of the deployment.
pub async fn url_signing_secret(db: &Database) -> Result<Vec<u8>, KeysError> {
    const KEY: &str = "url-signing";
    if let Some(secret) = kv::get(db, NAMESPACE, KEY).await? {
        return Ok(secret);
    }
    let mut secret = [0u8; 32];
    for chunk in secret.chunks_mut(16) {
        chunk.copy_from_slice(uuid::Uuid::new_v4().as_bytes());
    }
    kv::insert_if_absent(db, NAMESPACE, KEY, &secret).await?;
    kv::get(db, NAMESPACE, KEY)
        .await?
        .ok_or_else(|| KeysError::Key("the link-signing secret vanished".into()))
}
