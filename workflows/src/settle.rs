//! The money path's writes, written once and run inside the caller's transaction: the
//! usage-writer recording accepted events ([`record_usage`]) and settlement appending entries
//! to the ledger ([`settle`]) — which is also how a new guest's starting grant lands, in the
//! transaction that creates the tenant.
//!
//! Each batch travels to the database as one JSON parameter (SQLite's `json_each`,
//! PostgreSQL's `jsonb_to_recordset`): one statement per batch whatever its size, the only
//! difference between the dialects' texts. The settlement messages of recorded events go out
//! through the transaction's queue send (natively the database-backed queue in the same
//! transaction, on the edge the outbox), so an event and the message that settles it commit
//! together.

use std::collections::BTreeMap;

use cognomega_core::billing::sql::{
    PG_ADD_BALANCES, PG_FLAG_GUESTS, SQLITE_ADD_BALANCES, SQLITE_FLAG_GUESTS,
};
use cognomega_core::billing::{
    PriceTable, SettlementKind, SettlementMessage, UsageEvent, UsageKind,
};
use cognomega_core::queue::catalog;
use cognomega_core::sql::{Dialect, Dialects, Executor, Outbound, SqlError, Transaction};
use serde::Serialize;

/// Usage events of tenant `$1` from the JSON array `$2` (`k` key, `kind`, `q` quantity, `c`
/// credits, `at` occurred at in epoch ms, `meta` JSON text), received at `$3` (epoch ms) by
/// request `$4`; keys the tenant already used are skipped. Returns the new rows: `seq`, key,
/// credits, kind, quantity, occurred at (epoch ms). PostgreSQL inserts in key order, so
/// concurrent batches take the key index's locks in one order.
pub const INSERT_USAGE: Dialects = Dialects {
    sqlite: "INSERT INTO usage_events (tenant_id, idempotency_key, kind, quantity, credits, occurred_at, received_at, meta, request_id)
             SELECT $1, json_extract(value, '$.k'), json_extract(value, '$.kind'), json_extract(value, '$.q'),
                    json_extract(value, '$.c'), json_extract(value, '$.at'), $3, json_extract(value, '$.meta'), $4
             FROM json_each($2) WHERE true
             ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
             RETURNING seq, idempotency_key, credits, kind, quantity, occurred_at",
    postgres: "INSERT INTO usage_events (tenant_id, idempotency_key, kind, quantity, credits, occurred_at, received_at, meta, request_id)
               SELECT $1, x.k, x.kind, x.q, x.c, to_timestamp(x.at / 1000.0), to_timestamp($3::float8 / 1000.0), x.meta, $4
               FROM jsonb_to_recordset($2::text::jsonb) AS x(k text, kind text, q bigint, c bigint, at bigint, meta text)
               ORDER BY x.k
               ON CONFLICT (tenant_id, idempotency_key) DO NOTHING
               RETURNING seq, idempotency_key, credits, kind, quantity, (extract(epoch FROM occurred_at) * 1000)::bigint",
};

/// Adds the JSON array `$1` (`t` tenant, `d` day start in unix seconds, `n` tokens) to
/// `usage_day_tokens` (saturating at `i64::MAX`): the counter `POST /api/si/ask`'s budget reads.
pub const ADD_DAY_TOKENS: Dialects = Dialects {
    sqlite: "INSERT INTO usage_day_tokens (tenant_id, day_start, tokens)
             SELECT json_extract(value, '$.t'), json_extract(value, '$.d'), json_extract(value, '$.n')
             FROM json_each($1) WHERE true
             ON CONFLICT (tenant_id, day_start) DO UPDATE SET tokens =
                 CASE WHEN usage_day_tokens.tokens > 9223372036854775807 - excluded.tokens
                 THEN 9223372036854775807 ELSE usage_day_tokens.tokens + excluded.tokens END",
    postgres: "INSERT INTO usage_day_tokens (tenant_id, day_start, tokens)
               SELECT x.t, x.d, x.n FROM jsonb_to_recordset($1::text::jsonb) AS x(t text, d bigint, n bigint)
               ORDER BY x.t, x.d
               ON CONFLICT (tenant_id, day_start) DO UPDATE SET tokens =
                   CASE WHEN usage_day_tokens.tokens > 9223372036854775807 - excluded.tokens
                   THEN 9223372036854775807 ELSE usage_day_tokens.tokens + excluded.tokens END",
};

/// Ledger entries from the JSON array `$1` (`id`, `tenant_id`, `delta`, `kind`, `reference`;
/// SQLite: created at `$2`), each id once; returns the entries appended now: tenant, delta,
/// kind, reference. Appended in id order.
pub const APPEND_LEDGER: Dialects = Dialects {
    sqlite: "INSERT INTO ledger_entries (id, tenant_id, delta, kind, ref, created_at)
             SELECT json_extract(value, '$.id'), json_extract(value, '$.tenant_id'), json_extract(value, '$.delta'),
                    json_extract(value, '$.kind'), json_extract(value, '$.reference'), $2
             FROM json_each($1) WHERE true ORDER BY 1
             ON CONFLICT (id) DO NOTHING
             RETURNING tenant_id, delta, kind, ref",
    postgres: "INSERT INTO ledger_entries (id, tenant_id, delta, kind, ref)
               SELECT x.id, x.tenant_id, x.delta, x.kind, x.reference
               FROM jsonb_to_recordset($1::text::jsonb) AS x(id text, tenant_id text, delta bigint, kind text, reference text)
               ORDER BY x.id
               ON CONFLICT (id) DO NOTHING RETURNING tenant_id, delta, kind, ref",
};

/// Adds the deltas `$1` (JSON object, tenant → delta) to the balances (SQLite: at `$2`);
/// returns `tenant_id, balance, updated_at` (epoch ms).
pub const ADD_BALANCES: Dialects = Dialects {
    sqlite: SQLITE_ADD_BALANCES,
    postgres: PG_ADD_BALANCES,
};

/// Flags the guests of `$1` whose balance is below `$2` (SQLite: at `$3`), and unflags the
/// others.
pub const FLAG_GUESTS: Dialects = Dialects {
    sqlite: SQLITE_FLAG_GUESTS,
    postgres: PG_FLAG_GUESTS,
};

/// Marks the adjustments of the JSON array `$1` applied (SQLite: at `$2`).
pub const MARK_APPLIED: Dialects = Dialects {
    sqlite: "UPDATE credit_adjustments SET status = 'applied', applied_at = $2
             WHERE id IN (SELECT value FROM json_each($1))",
    postgres: "UPDATE credit_adjustments SET status = 'applied', applied_at = now()
               WHERE id IN (SELECT jsonb_array_elements_text($1::text::jsonb))",
};

/// Milliseconds in a UTC day (unix time has no leap seconds).
const DAY_MS: i64 = 86_400_000;

fn encode<T: Serialize + ?Sized>(value: &T) -> Result<String, SqlError> {
    serde_json::to_string(value).map_err(|e| SqlError::new(e.to_string()))
}

/// Runs `statement`, with `now_ms` appended for SQLite (which has no `now()` of its own here).
async fn stamped<E: Executor + ?Sized>(
    db: &mut E,
    statement: Dialects,
    mut args: Vec<cognomega_core::sql::Value>,
    now_ms: i64,
) -> Result<Vec<cognomega_core::sql::Row>, SqlError> {
    let dialect = db.dialect();
    if dialect == Dialect::Sqlite {
        args.push(now_ms.into());
    }
    db.query(statement.pick(dialect), &args).await
}

/// One accepted `usage` message.
#[derive(Debug, Clone, Copy)]
pub struct UsageItem<'a> {
    /// Whose events.
    pub tenant: &'a str,
    /// The events.
    pub events: &'a [UsageEvent],
    /// When the API accepted them (the default `occurred_at`), epoch ms.
    pub received_at_ms: i64,
    /// The request that produced them.
    pub request_id: Option<&'a str>,
}

#[derive(Serialize)]
struct UsageRow<'a> {
    k: &'a str,
    kind: &'static str,
    q: i64,
    c: i64,
    at: i64,
    meta: Option<String>,
}

#[derive(Serialize)]
struct DayRow<'a> {
    t: &'a str,
    d: i64,
    n: i64,
}

/// Records usage inside `tx`: each event priced by `prices`, keys the tenant already used
/// skipped; one `settlement` message (`{"id":"usage-{seq}", …, "kind":"usage"}`) per new event
/// that costs something; the new `tokens_in`/`tokens_out` quantities added to the tenant's UTC
/// day. Returns how many events were new.
pub async fn record_usage<T: Transaction + ?Sized>(
    tx: &mut T,
    items: &[UsageItem<'_>],
    prices: &PriceTable,
) -> Result<u64, SqlError> {
    let mut new_events = 0;
    let mut settlements = Vec::new();
    let mut days: BTreeMap<(&str, i64), i64> = BTreeMap::new();
    for item in items {
        let rows: Vec<UsageRow> = item
            .events
            .iter()
            .map(|e| UsageRow {
                k: e.idempotency_key.as_str(),
                kind: e.kind.as_str(),
                q: i64::try_from(e.quantity).unwrap_or(i64::MAX),
                c: prices.charge(e.kind, e.quantity),
                at: e
                    .occurred_at
                    .map_or(item.received_at_ms, |t| t.timestamp_millis()),
                meta: e
                    .meta
                    .as_ref()
                    .map(|m| serde_json::Value::Object(m.clone()).to_string()),
            })
            .collect();
        let statement = INSERT_USAGE.pick(tx.dialect());
        let args = [
            item.tenant.into(),
            encode(&rows)?.into(),
            item.received_at_ms.into(),
            item.request_id.into(),
        ];
        let mut inserted = tx.query(statement, &args).await?;
        // Settlement ids follow insertion order.
        inserted.sort_by_key(|r| r.int(0).unwrap_or(i64::MAX));
        for r in &inserted {
            new_events += 1;
            let (seq, credits) = (r.int(0)?, r.int(2)?);
            if credits != 0 {
                let msg = SettlementMessage {
                    id: format!("usage-{seq}"),
                    tenant_id: item.tenant.to_owned(),
                    delta: -credits,
                    kind: SettlementKind::Usage,
                    reference: Some(r.text(1)?),
                };
                settlements.push((encode(&msg)?, item.request_id));
            }
            let tokens = matches!(
                UsageKind::parse(&r.text(3)?),
                Some(UsageKind::TokensIn | UsageKind::TokensOut)
            );
            let quantity = r.int(4)?;
            if tokens && quantity > 0 {
                let day = r.int(5)?.div_euclid(DAY_MS) * (DAY_MS / 1000);
                let total = days.entry((item.tenant, day)).or_insert(0);
                *total = total.saturating_add(quantity);
            }
        }
    }
    if !settlements.is_empty() {
        let messages = settlements
            .into_iter()
            .map(|(body, request_id)| Outbound {
                queue: catalog::settlement::QUEUE,
                body,
                request_id,
            })
            .collect();
        tx.send_all(messages).await?;
    }
    if !days.is_empty() {
        let rows: Vec<DayRow> = days
            .into_iter()
            .map(|((t, d), n)| DayRow { t, d, n })
            .collect();
        tx.execute(ADD_DAY_TOKENS.pick(tx.dialect()), &[encode(&rows)?.into()])
            .await?;
    }
    Ok(new_events)
}

/// What a settled batch changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled {
    /// Entries appended now (ids already in the ledger change nothing).
    pub entries: u64,
    /// Each changed tenant's new balance and its time (epoch ms).
    pub balances: BTreeMap<String, (i64, i64)>,
}

#[derive(Serialize)]
struct LedgerRow<'a> {
    id: &'a str,
    tenant_id: &'a str,
    delta: i64,
    kind: &'static str,
    reference: Option<&'a str>,
}

/// Settles `entries` inside the caller's transaction: appends each to the ledger once
/// (`ledger_entries.id` is unique), adds what was appended to the balances, (un)flags guests
/// below `floor`, and marks applied adjustments. The settlement consumer settles its batches
/// this way, and a new guest's starting grant is settled in the transaction that creates the
/// tenant, so its first billable request already sees it.
pub async fn settle<E: Executor + ?Sized>(
    tx: &mut E,
    entries: &[SettlementMessage],
    floor: i64,
    now_ms: i64,
) -> Result<Settled, SqlError> {
    let mut out = Settled::default();
    if entries.is_empty() {
        return Ok(out);
    }
    let rows: Vec<LedgerRow> = entries
        .iter()
        .map(|s| LedgerRow {
            id: &s.id,
            tenant_id: &s.tenant_id,
            delta: s.delta,
            kind: s.kind.as_str(),
            reference: s.reference.as_deref(),
        })
        .collect();
    let appended = stamped(&mut *tx, APPEND_LEDGER, vec![encode(&rows)?.into()], now_ms).await?;
    let mut deltas: BTreeMap<String, i64> = BTreeMap::new();
    let mut adjustments: Vec<String> = Vec::new();
    for r in &appended {
        out.entries += 1;
        let delta = deltas.entry(r.text(0)?).or_insert(0);
        *delta = delta.saturating_add(r.int(1)?);
        if r.text(2)? == SettlementKind::Adjustment.as_str() {
            if let Some(id) = r.opt_text(3)? {
                adjustments.push(id);
            }
        }
    }
    if !deltas.is_empty() {
        // Two statements for the whole batch, whatever the number of tenants; rows go in key
        // order, so concurrent batches lock balances in one order and cannot deadlock.
        let json = encode(&deltas)?;
        let balances = stamped(&mut *tx, ADD_BALANCES, vec![json.as_str().into()], now_ms).await?;
        for r in &balances {
            out.balances.insert(r.text(0)?, (r.int(1)?, r.int(2)?));
        }
        let args = vec![json.as_str().into(), floor.into()];
        stamped(&mut *tx, FLAG_GUESTS, args, now_ms).await?;
    }
    if !adjustments.is_empty() {
        let args = vec![encode(&adjustments)?.into()];
        stamped(&mut *tx, MARK_APPLIED, args, now_ms).await?;
    }
    Ok(out)
}
