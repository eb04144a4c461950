//! The billing service: `GET /credits` from the balance cache in Workers KV (filled from
//! PostgreSQL on a miss and written through by the settlement consumer), and the admin
//! adjustments, which are settlement messages like every other change of a balance.

use serde::{Deserialize, Serialize};
use worker::{Env, Method, Request};

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

/// The tenant's balance: KV hit, else PostgreSQL (then cached).
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
    let row = db
        .query_opt(
            "SELECT balance, (extract(epoch FROM updated_at) * 1000)::bigint FROM balances WHERE tenant_id = $1",
            &[&tenant],
        )
        .await?;
    let Some(row) = row else {
        // Nothing settled yet (a new guest's grant is on its way): not cached, so the first
        // settlement shows at once.
        return Ok(CachedBalance {
            balance: 0,
            as_of_ms: Some(worker::Date::now().as_millis() as i64),
        });
    };
    let cached = CachedBalance {
        balance: row.get(0),
        as_of_ms: Some(row.get(1)),
    };
    put(env, tenant, &cached).await;
    Ok(cached)
}

/// Writes a balance through to KV; a failure only costs a cache miss later.
pub async fn put(env: &Env, tenant: &str, cached: &CachedBalance) {
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

pub fn rfc3339(ms: Option<i64>) -> serde_json::Value {
    ms.and_then(chrono::DateTime::from_timestamp_millis)
        .map(|t| serde_json::Value::String(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)))
        .unwrap_or(serde_json::Value::Null)
}

pub async fn route(req: &mut Request, env: &Env, caller: &Caller) -> ApiResult {
    match (req.method(), req.path().as_str()) {
        (Method::Get | Method::Head, "/credits") => {
            let claims = caller.claims()?;
            let cached = balance(env, &claims.tenant).await?;
            let mut resp = http::json(
                200,
                &serde_json::json!({
                    "tenant_id": claims.tenant,
                    "balance": cached.balance,
                    "as_of": rfc3339(cached.as_of_ms),
                }),
            )?;
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
    for row in &corrected {
        let tenant: String = row.get(0);
        let cached = CachedBalance {
            balance: row.get(1),
            as_of_ms: row.get(2),
        };
        put(env, &tenant, &cached).await;
    }
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AdjustRequest {
    tenant_id: String,
    delta: i64,
    reason: String,
}

/// `POST /credits/adjust`: recorded once per `Idempotency-Key`, then settled through the queue
/// like every credit change (the native contract: 202 `{"adjustment_id","status"}`).
async fn adjust(req: &mut Request, env: &Env, caller: &Caller) -> ApiResult {
    let key = req
        .headers()
        .get("idempotency-key")?
        .map(|k| k.trim().to_owned())
        .filter(|k| (1..=128).contains(&k.len()))
        .ok_or_else(|| {
            ApiError::bad_request(
                "missing_idempotency_key",
                "send an Idempotency-Key header (1..=128 characters): retries with the same key apply once",
            )
        })?;
    let body = req.bytes().await?;
    let r: AdjustRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("invalid_json", format!("invalid JSON body: {e}")))?;
    cognomega_core::billing::check_adjustment_delta(r.delta)
        .map_err(|m| ApiError::bad_request("invalid_delta", m))?;
    let reason = r.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(ApiError::bad_request(
            "invalid_reason",
            "reason must be 1..=500 characters",
        ));
    }
    let db = crate::db::connect(env).await?;
    if db
        .query_opt("SELECT 1 FROM tenants WHERE id = $1", &[&r.tenant_id])
        .await?
        .is_none()
    {
        return Err(ApiError::not_found(
            "tenant_not_found",
            format!("no tenant {}", r.tenant_id),
        ));
    }
    // The adjustment and its settlement message (staged in the outbox) commit together; the
    // message is relayed after the commit and its ledger id makes it land once.
    let fresh = uuid::Uuid::now_v7().to_string();
    db.batch_execute("BEGIN").await?;
    let written = async {
        let inserted = db
            .query_opt(
                cognomega_core::billing::sql::PG_INSERT_ADJUSTMENT,
                &[&fresh, &key, &r.tenant_id, &r.delta, &reason],
            )
            .await?;
        if inserted.is_some() {
            let msg = cognomega_core::billing::SettlementMessage {
                id: format!("adjust-{fresh}"),
                tenant_id: r.tenant_id.clone(),
                delta: r.delta,
                kind: cognomega_core::billing::SettlementKind::Adjustment,
                reference: Some(fresh.clone()),
            };
            crate::outbox::stage(
                &db,
                &crate::outbox::batch_id(),
                "settlement",
                &msg,
                &caller.request_id,
            )
            .await
            .map_err(ApiError::internal)?;
        }
        db.batch_execute("COMMIT").await?;
        Ok::<_, ApiError>(())
    }
    .await;
    if let Err(e) = written {
        let _ = db.batch_execute("ROLLBACK").await;
        return Err(e);
    }
    let row = db
        .query_one(
            "SELECT id, tenant_id, delta, reason, status FROM credit_adjustments WHERE idempotency_key = $1",
            &[&key],
        )
        .await?;
    let (id, tenant_id, delta, stored_reason, status): (String, String, i64, String, String) =
        (row.get(0), row.get(1), row.get(2), row.get(3), row.get(4));
    if tenant_id != r.tenant_id || delta != r.delta || stored_reason != reason {
        return Err(ApiError::new(
            409,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different adjustment; use a new key",
        ));
    }
    http::json(
        202,
        &serde_json::json!({ "adjustment_id": id, "status": status }),
    )
}

/// `GET /credits/adjustments/{id}`: the adjustment and whether it has been applied.
async fn adjustment(env: &Env, id: &str) -> ApiResult {
    let db = crate::db::connect(env).await?;
    let Some(r) = db
        .query_opt(cognomega_core::billing::sql::PG_ADJUSTMENT, &[&id])
        .await?
    else {
        return Err(ApiError::not_found(
            "adjustment_not_found",
            format!("no adjustment {id}"),
        ));
    };
    http::json(
        200,
        &serde_json::json!({
            "adjustment_id": r.get::<_, String>(0),
            "tenant_id": r.get::<_, String>(1),
            "delta": r.get::<_, i64>(2),
            "reason": r.get::<_, String>(3),
            "status": r.get::<_, String>(4),
            "created_at": rfc3339(r.get::<_, Option<i64>>(5)),
            "applied_at": rfc3339(r.get::<_, Option<i64>>(6)),
        }),
    )
}
