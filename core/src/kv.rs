//! The KV role's table (`kv`, Workers KV's role natively; on the edge it holds what every
//! isolate must share, the signing keys): a namespaced key-value store, with the statements
//! both hosts run (side by side where SQLite and PostgreSQL spell time differently) and the
//! signing key ring kept in it.

use crate::auth::{KeyRing, SigningKey};
use crate::sql::{Dialects, Executor, SqlError};

/// The value under `$1`/`$2` unless expired (SQLite: at `$3`, epoch ms).
pub const GET: Dialects = Dialects {
    sqlite: "SELECT value FROM kv WHERE namespace = $1 AND key = $2 AND (expires_at IS NULL OR expires_at > $3)",
    postgres: "SELECT value FROM kv WHERE namespace = $1 AND key = $2 AND (expires_at IS NULL OR expires_at > now())",
};

/// Writes `$3` under `$1`/`$2`, replacing any previous value.
pub const PUT: &str = "INSERT INTO kv (namespace, key, value) VALUES ($1, $2, $3)
     ON CONFLICT (namespace, key) DO UPDATE SET value = excluded.value, expires_at = NULL";

/// Writes `$3` under `$1`/`$2` only if the key is absent.
pub const INSERT_IF_ABSENT: &str =
    "INSERT INTO kv (namespace, key, value) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING";

/// Reads a value at `now_ms` (expired values read as absent).
pub async fn get<E: Executor + ?Sized>(
    db: &mut E,
    namespace: &str,
    key: &str,
    now_ms: i64,
) -> Result<Option<Vec<u8>>, SqlError> {
    let (sql, args) = GET.stamped(db.dialect(), vec![namespace.into(), key.into()], now_ms);
    let row = db.query_opt(sql, &args).await?;
    Ok(row.map(|r| r.opt_bytes(0)).transpose()?.flatten())
}

/// Writes a value, replacing any previous one.
pub async fn put<E: Executor + ?Sized>(
    db: &mut E,
    namespace: &str,
    key: &str,
    value: &[u8],
) -> Result<(), SqlError> {
    db.execute(PUT, &[namespace.into(), key.into(), value.into()])
        .await
        .map(drop)
}

/// Writes a value only if the key is absent; whether it was written. Lets several processes
/// race to initialize a key (the first wins, the rest read the winner's value).
pub async fn insert_if_absent<E: Executor + ?Sized>(
    db: &mut E,
    namespace: &str,
    key: &str,
    value: &[u8],
) -> Result<bool, SqlError> {
    let args = [namespace.into(), key.into(), value.into()];
    Ok(db.execute(INSERT_IF_ABSENT, &args).await? == 1)
}

/// Where the JWT signing key ring is kept (PKCS#8 PEM), so every process of a deployment signs
/// and verifies with the same keys.
pub const KEY_RING: (&str, &str) = ("KEYS", "ring");

/// The signing key ring, if one was stored.
pub async fn load_ring<E: Executor + ?Sized>(
    db: &mut E,
    now_ms: i64,
) -> Result<Option<KeyRing>, String> {
    let stored = get(db, KEY_RING.0, KEY_RING.1, now_ms)
        .await
        .map_err(|e| e.to_string())?;
    stored
        .map(|b| KeyRing::from_stored(&b).map_err(|e| format!("signing keys: {e}")))
        .transpose()
}

/// The signing key ring, created on first use exactly once across every process and isolate
/// (insert if absent, then read back); whether this call created it.
pub async fn load_or_create_ring<E: Executor + ?Sized>(
    db: &mut E,
    now_ms: i64,
    new_key: impl FnOnce() -> Result<SigningKey, String>,
) -> Result<(KeyRing, bool), String> {
    if let Some(ring) = load_ring(db, now_ms).await? {
        return Ok((ring, false));
    }
    let ring = KeyRing::new(new_key()?);
    let stored = ring.to_stored().map_err(|e| format!("signing keys: {e}"))?;
    let created = insert_if_absent(db, KEY_RING.0, KEY_RING.1, &stored)
        .await
        .map_err(|e| e.to_string())?;
    if created {
        return Ok((ring, true));
    }
    let ring = load_ring(db, now_ms)
        .await?
        .ok_or_else(|| "the signing key ring vanished while starting".to_owned())?;
    Ok((ring, false))
}
