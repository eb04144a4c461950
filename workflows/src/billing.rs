//! The billing routes, written once: `POST /usage` (every event validated, then produced to
//! `usage`; a tier's daily token cap charged in the transaction that enqueues them), `GET
//! /usage` (totals per kind in a window), `POST /credits/adjust` (recorded once per
//! `Idempotency-Key`, then settled through the queue like every credit change) and `GET
//! /credits/adjustments/{id}`.

use chrono::{DateTime, SecondsFormat, Utc};
use cognomega_core::api::Refusal;
use cognomega_core::billing::sql::{self, Adjustment, NewAdjustment};
use cognomega_core::billing::{
    check_adjustment_delta, parse_usage_request, SettlementKind, SettlementMessage,
    UsageBatchMessage, UsageEvent, UsageKind,
};
use cognomega_core::limits::{self, CostMetric};
use cognomega_core::queue::catalog;
use cognomega_core::sql::Outbound;

use crate::ports::WriteHost;

/// The largest `POST /usage` body.
pub const USAGE_BODY_LIMIT: usize = 8 * 1024 * 1024;

/// An instant as the API writes it (RFC 3339, milliseconds, UTC).
#[must_use]
pub fn rfc3339(ms: i64) -> String {
    DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// `GET /credits`' answer (the host adds the `X-Credits-Balance` header).
#[must_use]
pub fn credits(tenant: &str, balance: i64, as_of_ms: i64) -> serde_json::Value {
    serde_json::json!({
        "tenant_id": tenant,
        "balance": balance,
        "as_of": rfc3339(as_of_ms),
    })
}

fn unavailable(e: &dyn std::fmt::Display) -> Refusal {
    Refusal::unavailable(format!(
        "cannot enqueue usage right now ({e}); retry with the same idempotency keys"
    ))
}

/// The events of one request as `usage` messages: one, or — where the queue bounds a message
/// (`budget` bytes) — as many as it takes. Each event keeps its idempotency key, so how the
/// batch is cut changes nothing downstream.
fn batches(
    tenant: &str,
    events: Vec<UsageEvent>,
    received_at_ms: i64,
    budget: Option<usize>,
) -> Result<Vec<String>, Refusal> {
    let mut chunks: Vec<Vec<UsageEvent>> = vec![Vec::new()];
    let mut size = 0;
    for e in events {
        if let Some(budget) = budget {
            let len = serde_json::to_vec(&e).map_or(budget, |v| v.len());
            if size + len > budget && !chunks.last().is_none_or(Vec::is_empty) {
                chunks.push(Vec::new());
                size = 0;
            }
            size += len;
        }
        if let Some(last) = chunks.last_mut() {
            last.push(e);
        }
    }
    chunks
        .into_iter()
        .filter(|c| !c.is_empty())
        .map(|events| {
            serde_json::to_string(&UsageBatchMessage {
                tenant_id: tenant.to_owned(),
                events,
                received_at_ms,
            })
            .map_err(Refusal::internal)
        })
        .collect()
}

/// `POST /usage`: validates every event, then produces them to `usage`; returns how many were
/// accepted. With a daily token cap (`cap`) the tokens are counted in the transaction that
/// enqueues them: a refused or failed enqueue counts nothing. Without one it is a plain send.
pub async fn accept_usage<H: WriteHost + ?Sized>(
    host: &H,
    tenant: &str,
    cap: Option<u64>,
    body: &[u8],
    request_id: &str,
) -> Result<usize, Refusal> {
    if body.len() > USAGE_BODY_LIMIT {
        return Err(Refusal::new(
            413,
            "body_too_large",
            format!("the body is larger than {USAGE_BODY_LIMIT} bytes"),
        ));
    }
    let events =
        parse_usage_request(body).map_err(|e| Refusal::new(400, "invalid_usage", e.to_string()))?;
    let accepted = events.len();
    let tokens: u64 = events
        .iter()
        .filter(|e| matches!(e.kind, UsageKind::TokensIn | UsageKind::TokensOut))
        .map(|e| e.quantity)
        .fold(0, u64::saturating_add);
    let now = host.now_ms();
    let bodies = batches(tenant, events, now, host.message_budget())?;
    let outbound = |body: String| Outbound {
        queue: catalog::usage::QUEUE,
        body,
        request_id: Some(request_id),
    };
    let Some(cap) = cap.filter(|_| tokens > 0) else {
        // Uncapped: a plain send, which shares its commit with concurrent ones.
        let messages = bodies.into_iter().map(outbound).collect();
        host.send(messages).await.map_err(|e| unavailable(&e))?;
        return Ok(accepted);
    };
    let mut tx = host.begin().await.map_err(|e| unavailable(&e))?;
    let now_secs = now.div_euclid(1000);
    let metric = CostMetric::TokensPerDay;
    let charged = limits::charge(&mut *tx, tenant, metric, tokens, cap, now_secs)
        .await
        .map_err(|e| unavailable(&e))?;
    if let Err(over) = charged {
        tx.rollback().await.map_err(|e| unavailable(&e))?;
        return Err(over.refusal(metric, tokens, now_secs));
    }
    for body in bodies {
        tx.send(outbound(body)).await.map_err(|e| unavailable(&e))?;
    }
    tx.commit().await.map_err(|e| unavailable(&e))?;
    Ok(accepted)
}

fn parse_time(
    name: &str,
    raw: Option<&str>,
    default: DateTime<Utc>,
) -> Result<DateTime<Utc>, Refusal> {
    match raw {
        None => Ok(default),
        Some(s) => DateTime::parse_from_rfc3339(s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                Refusal::new(
                    400,
                    "invalid_window",
                    format!("{name} must be RFC 3339, e.g. 2026-01-31T00:00:00Z: {e}"),
                )
            }),
    }
}

/// `GET /usage?from=&to=`: the tenant's usage per kind in a window (default: the 30 days up to
/// now).
pub async fn usage_totals<H: WriteHost + ?Sized>(
    host: &H,
    tenant: &str,
    from: Option<&str>,
    to: Option<&str>,
) -> Result<serde_json::Value, Refusal> {
    let now = DateTime::from_timestamp_millis(host.now_ms()).unwrap_or_default();
    let to = parse_time("to", to, now)?;
    let from = parse_time("from", from, to - chrono::Duration::days(30))?;
    if from > to {
        return Err(Refusal::new(
            400,
            "invalid_window",
            "from must not be after to",
        ));
    }
    let (from_ms, to_ms) = (from.timestamp_millis(), to.timestamp_millis());
    let totals = sql::usage_totals(&mut *host.db(), tenant, from_ms, to_ms)
        .await
        .map_err(Refusal::internal)?;
    // Each total saturates at i64::MAX, so their sum must too.
    let charged = totals
        .values()
        .fold(0i64, |sum, t| sum.saturating_add(t.credits));
    let totals: std::collections::BTreeMap<&str, _> =
        totals.iter().map(|(k, v)| (k.as_str(), v)).collect();
    Ok(serde_json::json!({
        "tenant_id": tenant,
        "from": from.to_rfc3339_opts(SecondsFormat::Millis, true),
        "to": to.to_rfc3339_opts(SecondsFormat::Millis, true),
        "totals": totals,
        "credits_charged": charged,
    }))
}

/// `POST /credits/adjust`.
#[derive(Debug, Clone, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct AdjustRequest {
    /// An existing tenant.
    pub tenant_id: String,
    /// Credits to add (positive) or take (negative); never 0, at most 10^12 either way.
    #[cfg_attr(
        feature = "openapi",
        schema(minimum = -1_000_000_000_000_i64, maximum = 1_000_000_000_000_i64)
    )]
    pub delta: i64,
    /// Why, 1..=500 characters (trimmed).
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 500))]
    pub reason: String,
}

/// The `Idempotency-Key` of `POST /credits/adjust` (required): 1..=128 characters, trimmed.
pub fn adjust_key(raw: Option<&[u8]>) -> Result<&str, Refusal> {
    raw.and_then(|k| std::str::from_utf8(k).ok())
        .map(str::trim)
        .filter(|k| (1..=128).contains(&k.len()))
        .ok_or_else(|| {
            Refusal::new(
                400,
                "missing_idempotency_key",
                "send an Idempotency-Key header (1..=128 characters): retries with the same key apply once",
            )
        })
}

/// `POST /credits/adjust`: the adjustment and its settlement message commit together (its
/// ledger id makes it land once); a repeated key returns the first adjustment, and 409 when it
/// was for another adjustment. Returns the `202` body.
pub async fn adjust<H: WriteHost + ?Sized>(
    host: &H,
    key: &str,
    req: &AdjustRequest,
    request_id: &str,
) -> Result<serde_json::Value, Refusal> {
    check_adjustment_delta(req.delta).map_err(|m| Refusal::new(400, "invalid_delta", m))?;
    let reason = req.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(Refusal::new(
            400,
            "invalid_reason",
            "reason must be 1..=500 characters",
        ));
    }
    let exists = host
        .db()
        .query_opt(sql::TENANT_STATUS, &[req.tenant_id.as_str().into()])
        .await
        .map_err(Refusal::internal)?;
    if exists.is_none() {
        return Err(Refusal::new(
            404,
            "tenant_not_found",
            format!("no tenant {}", req.tenant_id),
        ));
    }
    let fresh = host.fresh_id();
    let new = NewAdjustment {
        id: &fresh,
        idempotency_key: key,
        tenant_id: &req.tenant_id,
        delta: req.delta,
        reason,
    };
    let mut tx = host.begin().await.map_err(Refusal::internal)?;
    let (id, created) = sql::create_adjustment(&mut *tx, &new, host.now_ms())
        .await
        .map_err(Refusal::internal)?;
    if created {
        let msg = SettlementMessage {
            id: format!("adjust-{id}"),
            tenant_id: req.tenant_id.clone(),
            delta: req.delta,
            kind: SettlementKind::Adjustment,
            reference: Some(id.clone()),
        };
        tx.send(Outbound {
            queue: catalog::settlement::QUEUE,
            body: serde_json::to_string(&msg).map_err(Refusal::internal)?,
            request_id: Some(request_id),
        })
        .await
        .map_err(Refusal::internal)?;
    }
    let existing = sql::get_adjustment(&mut *tx, &id)
        .await
        .map_err(Refusal::internal)?
        .ok_or_else(|| Refusal::internal("the adjustment vanished in its transaction"))?;
    tx.commit().await.map_err(Refusal::internal)?;
    if !created
        && (existing.tenant_id != req.tenant_id
            || existing.delta != req.delta
            || existing.reason != reason)
    {
        return Err(Refusal::new(
            409,
            "idempotency_key_reused",
            "this Idempotency-Key was used for a different adjustment; use a new key",
        ));
    }
    Ok(serde_json::json!({ "adjustment_id": id, "status": existing.status }))
}

/// An adjustment as the API shows it.
#[must_use]
pub fn adjustment_json(a: &Adjustment) -> serde_json::Value {
    serde_json::json!({
        "adjustment_id": a.adjustment_id,
        "tenant_id": a.tenant_id,
        "delta": a.delta,
        "reason": a.reason,
        "status": a.status,
        "created_at": rfc3339(a.created_at_ms),
        "applied_at": a.applied_at_ms.map(rfc3339),
    })
}

/// `GET /credits/adjustments/{id}`.
pub async fn adjustment<H: WriteHost + ?Sized>(
    host: &H,
    id: &str,
) -> Result<serde_json::Value, Refusal> {
    match sql::get_adjustment(&mut *host.db(), id)
        .await
        .map_err(Refusal::internal)?
    {
        Some(a) => Ok(adjustment_json(&a)),
        None => Err(Refusal::new(
            404,
            "adjustment_not_found",
            format!("no adjustment {id}"),
        )),
    }
}

/// A tenant's standing before billable work, on one read of its flag, stored balance and
/// tokens recorded today (UTC): 402 when it is flagged or its balance is at or below `floor`.
/// `balance` is asked only when the tenant has no `balances` row yet (the cache, which falls
/// back to the ledger's settled balance). Returns the balance and today's tokens.
pub async fn funded(
    reader: &mut dyn cognomega_core::sql::Executor,
    tenant: &str,
    now_secs: i64,
    floor: i64,
    balance: impl std::future::Future<Output = Result<i64, String>>,
) -> Result<(i64, u64), Refusal> {
    let day_start = now_secs - now_secs.rem_euclid(86_400);
    let row = reader
        .query_opt(sql::ASK_STANDING, &[tenant.into(), day_start.into()])
        .await
        .map_err(Refusal::internal)?;
    let (flagged, stored, tokens) = match row {
        Some(r) => (
            r.bool(0).map_err(Refusal::internal)?,
            r.opt_int(1).map_err(Refusal::internal)?,
            r.opt_int(2).map_err(Refusal::internal)?,
        ),
        None => (false, None, None),
    };
    let balance = match stored {
        Some(b) => b,
        None => balance.await.map_err(Refusal::internal)?,
    };
    if flagged || balance <= floor {
        return Err(Refusal::insufficient_credits(balance));
    }
    Ok((balance, tokens.map_or(0, |t| u64::try_from(t).unwrap_or(0))))
}
