//! The billing service: `GET /credits` from the balance cache in Workers KV (filled from
//! PostgreSQL on a miss and written through by the settlement consumer), and the admin
//! adjustments, which are settlement messages like every other change of a balance.

use cognomega_workflows::billing::{self as workflows, AdjustRequest};
use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use worker::{Env, Method, Request};

use crate::host::Writes;
use crate::http::{self, ApiError, ApiResult, Caller};

/// A balance in KV. Short-lived: the settlement consumer writes it through after every batch,
/// and a missed write heals within the TTL.
pub const BALANCE_TTL_SECS: u64 = 60;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedBalance {
    pub balance: i64,
    pub as_of_ms: Option<i64>,
}

pub fn balance_key(tenant: &str) -> String {
    format!("balance:{tenant}")
}

/// The tenant's balance: KV hit, else PostgreSQL (then cached, verified).
pub async fn balance(env: &Env, tenant: &str) -> Result<CachedBalance, ApiError> {
    let kv = env.kv("KV")?;
    let key = balance_key(tenant);
    if let Some(hit) = kv
        .get(&key)
        .json::<CachedBalance>()
        .await
        .map_err(|e| ApiError::internal(format!("KV: {e}")))?
    {
        return Ok(hit);
    }
    let db = crate::db::connect(env).await?;
    let tenants = [tenant.to_owned()];
    let Some(cached) = stored(&db, &tenants).await?.remove(tenant) else {
        // Nothing settled yet (a new guest's grant is on its way): not cached, so the first
        // settlement shows at once.
        return Ok(CachedBalance {
            balance: 0,
            as_of_ms: Some(worker::Date::now().as_millis() as i64),
        });
    };
    cache_verified(env, &db, vec![(tenant.to_owned(), cached.clone())]).await;
    Ok(cached)
}

/// The stored balances of `tenants` (those that have one).
async fn stored(
    db: &tokio_postgres::Client,
    tenants: &[String],
) -> Result<BTreeMap<String, CachedBalance>, tokio_postgres::Error> {
    let rows = db
        .query(
            "SELECT tenant_id, balance, (extract(epoch FROM updated_at) * 1000)::bigint
             FROM balances WHERE tenant_id = ANY($1)",
            &[&tenants],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let cached = CachedBalance {
                balance: r.get(1),
                as_of_ms: Some(r.get(2)),
            };
            (r.get(0), cached)
        })
        .collect())
}

/// Writes balances through to KV, then reads them back from PostgreSQL and writes again each
/// that changed meanwhile (up to three rounds). KV has no compare-and-set, so a writer's put
/// can land after a newer one: a cache fill that read the balance just before a settlement
/// committed, or two settlement batches whose puts crossed. Each writer checks after its own
/// put, so no stale balance outlives the writers in flight (it would otherwise be served for
/// the whole TTL).
pub async fn cache_verified(
    env: &Env,
    db: &tokio_postgres::Client,
    mut pending: Vec<(String, CachedBalance)>,
) {
    for _ in 0..3 {
        if pending.is_empty() {
            return;
        }
        for (tenant, cached) in &pending {
            put(env, tenant, cached).await;
        }
        let tenants: Vec<String> = pending.iter().map(|(t, _)| t.clone()).collect();
        let mut now = match stored(db, &tenants).await {
            Ok(now) => now,
            Err(e) => {
                worker::console_warn!(
                    "balance cache check: {e}; cached balances expire in {BALANCE_TTL_SECS} s"
                );
                return;
            }
        };
        pending = pending
            .into_iter()
            .filter_map(|(tenant, put)| {
                let current = now.remove(&tenant)?;
                (current.balance != put.balance).then_some((tenant, current))
            })
            .collect();
    }
}

/// Writes a balance through to KV; a failure only costs a cache miss later.
async fn put(env: &Env, tenant: &str, cached: &CachedBalance) {
    let write = async {
        env.kv("KV")?
            .put(&balance_key(tenant), cached)?
            .expiration_ttl(BALANCE_TTL_SECS)
            .execute()
            .await?;
        Ok::<_, worker::Error>(())
    };
    if let Err(e) = write.await {
        worker::console_warn!("balance cache write for {tenant}: {e}");
    }
}

pub async fn route(req: &mut Request, env: &Env, caller: &Caller) -> ApiResult {
    match (req.method(), req.path().as_str()) {
        (Method::Get | Method::Head, "/credits") => {
            let claims = caller.claims()?;
            let cached = balance(env, &claims.tenant).await?;
            let as_of = (cached.as_of_ms).unwrap_or_else(|| worker::Date::now().as_millis() as i64);
            let body = workflows::credits(&claims.tenant, cached.balance, as_of);
            let mut resp = http::json(200, &body)?;
            resp.headers_mut()
                .set("x-credits-balance", &cached.balance.to_string())?;
            Ok(resp)
        }
        (Method::Post, "/credits/adjust") => {
            caller.require_admin()?;
            adjust(req, env, caller).await
        }
        (Method::Get | Method::Head, p) if p.starts_with("/credits/adjustments/") => {
            caller.require_admin()?;
            adjustment(env, &p["/credits/adjustments/".len()..]).await
        }
        (Method::Post, "/admin/rebuild-balance-cache") => {
            caller.require_admin()?;
            rebuild(env).await
        }
        (_, "/credits" | "/admin/rebuild-balance-cache") => Err(http::no_route(true)),
        _ => Err(http::no_route(false)),
    }
}

/// `POST /admin/rebuild-balance-cache`: recomputes every balance from the ledger (the native
/// statement), and writes each corrected one through to KV so no stale cached balance
/// outlives the call.
async fn rebuild(env: &Env) -> ApiResult {
    let db = crate::db::connect(env).await?;
    let corrected = db
        .query(cognomega_core::billing::sql::PG_REBUILD_BALANCES, &[])
        .await?;
    let tenants: i64 = db
        .query_one(cognomega_core::billing::sql::LEDGER_TENANTS, &[])
        .await?
        .get(0);
    let fixed = corrected.iter().map(|row| {
        let cached = CachedBalance {
            balance: row.get(1),
            as_of_ms: row.get(2),
        };
        (row.get(0), cached)
    });
    cache_verified(env, &db, fixed.collect()).await;
    if !corrected.is_empty() {
        worker::console_warn!(
            "rebuild corrected {} cached balances that had drifted from the ledger",
            corrected.len()
        );
    }
    http::json(
        200,
        &serde_json::json!({ "tenants": tenants, "changed": corrected.len() }),
    )
}

/// `POST /credits/adjust` and `GET /credits/adjustments/{id}`: the native workflows.
async fn adjust(req: &mut Request, env: &Env, caller: &Caller) -> ApiResult {
    let raw_key = req.headers().get("idempotency-key")?;
    let key = workflows::adjust_key(raw_key.as_deref().map(str::as_bytes))?;
    let body = req.bytes().await?;
    let r: AdjustRequest = cognomega_core::api::json_body(&body)?;
    let db = crate::db::connect(env).await?;
    let host = Writes::new(env, &db);
    let adjusted = workflows::adjust(&host, key, &r, &caller.request_id).await?;
    host.relay("adjustment").await;
    http::json(202, &adjusted)
}

async fn adjustment(env: &Env, id: &str) -> ApiResult {
    let db = crate::db::connect(env).await?;
    let host = Writes::new(env, &db);
    http::json(200, &workflows::adjustment(&host, id).await?)
}
