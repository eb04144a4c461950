//! The KV role (Workers KV on the edge): a namespaced key-value table, and the in-process
//! balance cache in front of the derived balances (stale-while-revalidate, one load per key).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::billing::{ledger_balance, stored_balance};
use crate::queue::now_ms;
use crate::{Database, StoreError};

/// Reads a value (expired values read as absent).
pub async fn get(db: &Database, namespace: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
    let mut read = crate::sql::Reader(db);
    Ok(cognomega_core::kv::get(&mut read, namespace, key, now_ms().0).await?)
}

/// Writes a value, replacing any previous one.
pub async fn put(
    db: &Database,
    namespace: &str,
    key: &str,
    value: &[u8],
) -> Result<(), StoreError> {
    Ok(cognomega_core::kv::put(&mut db.clone(), namespace, key, value).await?)
}

/// Writes a value only if the key is absent; returns whether it was written. Lets several
/// processes race to initialize a key (the first wins, the rest read the winner's value).
pub async fn insert_if_absent(
    db: &Database,
    namespace: &str,
    key: &str,
    value: &[u8],
) -> Result<bool, StoreError> {
    Ok(cognomega_core::kv::insert_if_absent(&mut db.clone(), namespace, key, value).await?)
}

/// A cached balance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedBalance {
    /// Credits.
    pub balance: i64,
    /// When the value was read or written (epoch ms).
    pub as_of_ms: i64,
    /// Served from memory without touching the database.
    pub hit: bool,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    balance: i64,
    as_of_ms: i64,
    stored: Instant,
}

/// In-process balance cache over the `balances` table, with ledger fallback.
///
/// Fresh for `fresh`; then served stale for up to `stale` while one background task refreshes
/// it; a miss loads once per tenant however many requests wait (no stampede). Consumers in the
/// same process write through it after each settlement, so the embedded shape is always exact.
#[derive(Debug, Clone)]
pub struct BalanceCache {
    inner: Arc<CacheInner>,
}

#[derive(Debug)]
struct CacheInner {
    db: Database,
    fresh: Duration,
    stale: Duration,
    entries: Mutex<HashMap<String, Entry>>,
    /// Bumped by every invalidation, so a load that read the database before a settlement
    /// committed cannot put its (older) value back afterwards.
    generations: Mutex<HashMap<String, u64>>,
    loading: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl BalanceCache {
    /// A cache over `db`.
    #[must_use]
    pub fn new(db: Database, fresh: Duration, stale: Duration) -> Self {
        Self {
            inner: Arc::new(CacheInner {
                db,
                fresh,
                stale,
                entries: Mutex::default(),
                generations: Mutex::default(),
                loading: Mutex::default(),
            }),
        }
    }

    fn lookup(&self, tenant: &str) -> Option<Entry> {
        self.inner
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(tenant)
            .copied()
    }

    /// Drops a tenant's cached balance because it changed (a settlement committed); the next
    /// read loads the new value.
    pub fn invalidate(&self, tenant: &str) {
        *self
            .inner
            .generations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .entry(tenant.to_owned())
            .or_default() += 1;
        self.inner
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(tenant);
    }

    fn generation(&self, tenant: &str) -> u64 {
        self.inner
            .generations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(tenant)
            .copied()
            .unwrap_or(0)
    }

    /// Writes a balance known to be current.
    pub fn put(&self, tenant: &str, balance: i64) {
        let entry = Entry {
            balance,
            as_of_ms: now_ms().0,
            stored: Instant::now(),
        };
        self.inner
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(tenant.to_owned(), entry);
    }

    /// Forgets every cached balance (after a rebuild).
    pub fn clear(&self) {
        self.inner
            .entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// The tenant's balance.
    pub async fn get(&self, tenant: &str) -> Result<CachedBalance, StoreError> {
        if let Some(e) = self.lookup(tenant) {
            let age = e.stored.elapsed();
            if age < self.inner.fresh {
                return Ok(CachedBalance {
                    balance: e.balance,
                    as_of_ms: e.as_of_ms,
                    hit: true,
                });
            }
            if age < self.inner.fresh + self.inner.stale {
                self.refresh_in_background(tenant);
                return Ok(CachedBalance {
                    balance: e.balance,
                    as_of_ms: e.as_of_ms,
                    hit: true,
                });
            }
        }
        self.load(tenant).await
    }

    fn refresh_in_background(&self, tenant: &str) {
        let lock = self.load_lock(tenant);
        // Someone is already loading this tenant: their result will do.
        let Ok(guard) = lock.try_lock_owned() else {
            return;
        };
        let this = self.clone();
        let tenant = tenant.to_owned();
        tokio::spawn(async move {
            if let Err(e) = this.read_through(&tenant).await {
                tracing::warn!(tenant, error = %e, "balance refresh failed; serving the stale value");
            }
            drop(guard);
        });
    }

    fn load_lock(&self, tenant: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self
            .inner
            .loading
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(tenant.to_owned()).or_default().clone()
    }

    async fn load(&self, tenant: &str) -> Result<CachedBalance, StoreError> {
        let lock = self.load_lock(tenant);
        let _guard = lock.lock().await;
        // Whoever held the lock before us may have loaded it already.
        if let Some(e) = self
            .lookup(tenant)
            .filter(|e| e.stored.elapsed() < self.inner.fresh)
        {
            return Ok(CachedBalance {
                balance: e.balance,
                as_of_ms: e.as_of_ms,
                hit: false,
            });
        }
        self.read_through(tenant).await
    }

    async fn read_through(&self, tenant: &str) -> Result<CachedBalance, StoreError> {
        let generation = self.generation(tenant);
        let balance = match stored_balance(&self.inner.db, tenant).await? {
            Some(b) => b,
            None => ledger_balance(&self.inner.db, tenant).await?,
        };
        if self.generation(tenant) == generation {
            self.put(tenant, balance);
        }
        Ok(CachedBalance {
            balance,
            as_of_ms: now_ms().0,
            hit: false,
        })
    }
}
