//! The usage service: `POST /usage` validates with the native parser
//! (`cognomega_core::billing::parse_usage_request`) and produces to the `usage` queue. Cloudflare
//! Queues carry at most 128 KB per message, so a large batch travels as several messages; each
//! event keeps its idempotency key, so how the batch is cut changes nothing downstream.
//!
//! It also holds the edge's cost guards (`COGNOMEGA_COST_GUARDS_TOML`, the native
//! `[cost_guards]` table): a batch's tokens and a job's run are charged to the tenant's counter
//! in `cost_counters` with the native statement, and 429 `cost_cap_exceeded` says the native
//! text (`cognomega_core::limits::cost_cap_exceeded_message`).

use cognomega_core::auth::Tier;
use cognomega_core::billing::{parse_usage_request, UsageBatchMessage, UsageEvent, UsageKind};
use cognomega_core::limits::{cost_cap_exceeded_message, CostGuards, CostGuardsFile, CostMetric};
use cognomega_core::sql::SqlError;
use worker::{Env, Method, Request};

use crate::http::{self, ApiError, ApiResult, Caller};

/// Largest `POST /usage` body (as native).
const USAGE_BODY_LIMIT: usize = 8 * 1024 * 1024;
/// Target size of one queue message, well under the 128 KB limit.
const MESSAGE_BUDGET: usize = 96 * 1024;

pub async fn route(req: &mut Request, env: &Env, caller: &Caller) -> ApiResult {
    match (req.method(), req.path().as_str()) {
        (Method::Post, "/usage") => post(req, env, caller).await,
        (Method::Get | Method::Head, "/usage") => totals(req, env, caller).await,
        (_, "/usage") => Err(http::no_route(true)),
        _ => Err(http::no_route(false)),
    }
}

async fn post(req: &mut Request, env: &Env, caller: &Caller) -> ApiResult {
    let claims = caller.claims()?;
    let body = req.bytes().await?;
    if body.len() > USAGE_BODY_LIMIT {
        return Err(ApiError::new(
            413,
            "body_too_large",
            format!("the body is larger than {USAGE_BODY_LIMIT} bytes"),
        ));
    }
    let events = parse_usage_request(&body)
        .map_err(|e| ApiError::bad_request("invalid_usage", e.to_string()))?;
    let accepted = events.len();
    let tokens: u64 = events
        .iter()
        .filter(|e| matches!(e.kind, UsageKind::TokensIn | UsageKind::TokensOut))
        .map(|e| e.quantity)
        .fold(0, u64::saturating_add);
    let received_at_ms = worker::Date::now().as_millis() as i64;
    let mut chunks: Vec<Vec<UsageEvent>> = vec![Vec::new()];
    let mut size = 0;
    for e in events {
        let len = serde_json::to_vec(&e)
            .map(|v| v.len())
            .unwrap_or(MESSAGE_BUDGET);
        if size + len > MESSAGE_BUDGET && !chunks.last().is_none_or(Vec::is_empty) {
            chunks.push(Vec::new());
            size = 0;
        }
        size += len;
        if let Some(last) = chunks.last_mut() {
            last.push(e);
        }
    }
    let messages: Vec<UsageBatchMessage> = chunks
        .into_iter()
        .filter(|c| !c.is_empty())
        .map(|events| UsageBatchMessage {
            tenant_id: claims.tenant.clone(),
            events,
            received_at_ms,
        })
        .collect();
    // The tokens are counted before the batch is enqueued (as natively, where both share a
    // transaction): a refused charge enqueues nothing, and a failed enqueue gives it back.
    let charged = if tokens > 0 {
        charge_cost(
            env,
            claims.tier,
            &claims.tenant,
            CostMetric::TokensPerDay,
            tokens,
        )
        .await?
    } else {
        None
    };
    if let Err(e) = crate::consumers::send_all(env, "USAGE", &messages, &caller.request_id).await {
        if let Some(charge) = charged {
            charge.give_back(env).await;
        }
        return Err(ApiError::unavailable(format!(
            "cannot enqueue usage right now ({e}); retry with the same idempotency keys"
        )));
    }
    http::json(202, &serde_json::json!({ "accepted": accepted }))
}

fn parse_time(
    name: &str,
    raw: Option<&str>,
    default: chrono::DateTime<chrono::Utc>,
) -> Result<chrono::DateTime<chrono::Utc>, ApiError> {
    match raw {
        None => Ok(default),
        Some(s) => chrono::DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&chrono::Utc))
            .map_err(|e| {
                ApiError::bad_request(
                    "invalid_window",
                    format!("{name} must be RFC 3339, e.g. 2026-01-31T00:00:00Z: {e}"),
                )
            }),
    }
}

/// `GET /usage?from=&to=`: the tenant's usage totals per kind in a window (default: the last
/// 30 days), as natively.
async fn totals(req: &Request, env: &Env, caller: &Caller) -> ApiResult {
    use chrono::SecondsFormat;
    let claims = caller.claims()?;
    let url = req.url()?;
    let mut from_raw = None;
    let mut to_raw = None;
    for (k, v) in url.query_pairs() {
        let slot = match k.as_ref() {
            "from" => &mut from_raw,
            "to" => &mut to_raw,
            other => {
                return Err(ApiError::bad_request(
                    "invalid_query",
                    format!("unknown query parameter {other:?}; this route takes from and to"),
                ))
            }
        };
        if slot.replace(v.into_owned()).is_some() {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("query parameter {k:?} is given more than once"),
            ));
        }
    }
    let now = chrono::DateTime::from_timestamp_millis(worker::Date::now().as_millis() as i64)
        .unwrap_or_default();
    let to = parse_time("to", to_raw.as_deref(), now)?;
    let from = parse_time("from", from_raw.as_deref(), to - chrono::Duration::days(30))?;
    if from > to {
        return Err(ApiError::bad_request(
            "invalid_window",
            "from must not be after to",
        ));
    }
    let db = crate::db::connect(env).await?;
    let rows = db
        .query(
            "SELECT kind, LEAST(SUM(quantity), 9223372036854775807)::bigint,
                    LEAST(SUM(credits), 9223372036854775807)::bigint, COUNT(*)
             FROM usage_events
             WHERE tenant_id = $1 AND occurred_at >= to_timestamp($2::bigint / 1000.0)
               AND occurred_at < to_timestamp($3::bigint / 1000.0) GROUP BY kind ORDER BY kind",
            &[
                &claims.tenant,
                &from.timestamp_millis(),
                &to.timestamp_millis(),
            ],
        )
        .await?;
    let mut charged: i64 = 0;
    let mut totals = serde_json::Map::new();
    for r in &rows {
        let kind: String = r.get(0);
        let credits: i64 = r.get(2);
        charged = charged.saturating_add(credits);
        totals.insert(
            kind,
            serde_json::json!({
                "quantity": r.get::<_, i64>(1),
                "credits": credits,
                "events": r.get::<_, i64>(3),
            }),
        );
    }
    http::json(
        200,
        &serde_json::json!({
            "tenant_id": claims.tenant,
            "from": from.to_rfc3339_opts(SecondsFormat::Millis, true),
            "to": to.to_rfc3339_opts(SecondsFormat::Millis, true),
            "totals": totals,
            "credits_charged": charged,
        }),
    )
}

// ---------------------------------------------------------------------------------------------
// Cost guards (`POST /usage` tokens, `POST /jobs` runs), as the native `producers::limits`
// ---------------------------------------------------------------------------------------------

/// The cost caps: the native defaults, with the `[cost_guards]` table of the native config
/// file from `COGNOMEGA_COST_GUARDS_TOML` (the same format, parsed by the same code). A value
/// that does not parse is logged and the defaults apply.
pub fn cost_guards(env: &Env) -> CostGuards {
    let Some(raw) = crate::config::var(env, "COGNOMEGA_COST_GUARDS_TOML") else {
        return CostGuards::default();
    };
    #[derive(serde::Deserialize)]
    struct File {
        #[serde(default)]
        cost_guards: CostGuardsFile,
    }
    match toml::from_str::<File>(&raw) {
        Ok(file) => CostGuards::from_file(&file.cost_guards),
        Err(e) => {
            worker::console_error!("COGNOMEGA_COST_GUARDS_TOML: {e}; using the default caps");
            CostGuards::default()
        }
    }
}

/// A charge that was counted, so it can be given back when the work it paid for is not
/// enqueued after all.
#[derive(Debug)]
pub struct CostCharge {
    tenant: String,
    metric: CostMetric,
    window_start: i64,
    quantity: i64,
}

impl CostCharge {
    /// Takes the charge back off the counter (best effort: a failure is logged, and the
    /// counter then over-counts until its window ends).
    pub async fn give_back(self, env: &Env) {
        let undone = async {
            let db = crate::db::connect(env).await?;
            self.undo(&db)
                .await
                .map_err(|e| worker::Error::RustError(e.to_string()))
        };
        if let Err(e) = undone.await {
            worker::console_warn!(
                "cost guard: giving back {} {} of {}: {e}",
                self.quantity,
                self.metric.as_str(),
                self.tenant
            );
        }
    }

    /// Takes the charge back off the counter on `db`.
    pub async fn undo(&self, db: &tokio_postgres::Client) -> Result<(), SqlError> {
        let q = u64::try_from(self.quantity).unwrap_or(0);
        let (tenant, metric, start) = (&self.tenant, self.metric, self.window_start);
        cognomega_core::limits::give_back(&mut crate::sql::Pg(db), tenant, metric, q, start).await
    }
}

/// The cap of `metric` for `tier`, if it has one.
pub fn cost_cap(env: &Env, tier: Tier, metric: CostMetric) -> Option<u64> {
    cost_guards(env).for_tier(tier).cap(metric)
}

/// Charges `quantity` of `metric` to the tenant when its tier has a cap (on a connection of its
/// own): `Ok(None)` when uncapped, `Ok(Some(charge))` when counted, 429 `cost_cap_exceeded`
/// when it would pass the cap (nothing counted).
pub async fn charge_cost(
    env: &Env,
    tier: Tier,
    tenant: &str,
    metric: CostMetric,
    quantity: u64,
) -> Result<Option<CostCharge>, ApiError> {
    let Some(cap) = cost_cap(env, tier, metric).filter(|_| quantity > 0) else {
        return Ok(None);
    };
    let db = crate::db::connect(env).await?;
    charge_cost_on(&db, tenant, metric, quantity, cap)
        .await
        .map(Some)
}

/// Charges `quantity` of `metric` against `cap` on the caller's connection (so it can share
/// the caller's transaction): the charge, or 429 `cost_cap_exceeded` (nothing counted). The
/// statements are the native host's (`cognomega_core::limits::charge`).
pub async fn charge_cost_on(
    db: &tokio_postgres::Client,
    tenant: &str,
    metric: CostMetric,
    quantity: u64,
    cap: u64,
) -> Result<CostCharge, ApiError> {
    let now = worker::Date::now().as_millis() as i64 / 1000;
    let charged =
        cognomega_core::limits::charge(&mut crate::sql::Pg(db), tenant, metric, quantity, cap, now)
            .await
            .map_err(ApiError::internal)?;
    match charged {
        Ok(_) => Ok(CostCharge {
            tenant: tenant.to_owned(),
            metric,
            window_start: metric.window(now).0,
            quantity: i64::try_from(quantity).unwrap_or(i64::MAX),
        }),
        Err(over) => {
            let (message, retry) =
                cost_cap_exceeded_message(metric, quantity, over.used, cap, over.window_end, now);
            let mut refused = ApiError::new(429, "cost_cap_exceeded", message);
            refused.retry_after = Some(retry);
            Err(refused)
        }
    }
}
