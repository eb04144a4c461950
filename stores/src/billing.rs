//! SQL of the money path: tenants, usage events, the append-only ledger, derived balances,
//! adjustments. Functions that write take a [`Tx`] so callers commit effects together with the
//! messages they produce (and, in consumers, with the idempotency record of what they consumed).
//!
//! SQLite stores times as epoch milliseconds; PostgreSQL as `timestamptz`, converted at the
//! boundary (`to_timestamp(ms / 1000.0)`, `extract(epoch …) * 1000`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use cognomega_core::billing::{sql, SettlementMessage, UsageEvent, UsageKind};
use cognomega_core::sql::{Dialects, Executor as _, SqlError, Value};
use sqlx::{QueryBuilder, Row};

use crate::queue::now_ms;
use crate::stamped::Stamped;
use crate::{Database, StoreError, Tx};

/// A usage event inserted for the first time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewUsage {
    /// Insertion order; also names its settlement (`usage-{seq}`).
    pub seq: i64,
    /// Its key.
    pub idempotency_key: String,
    /// Credits charged.
    pub credits: i64,
}

pub use cognomega_core::billing::sql::{Adjustment, KindTotal};

/// A tenant — `$1` id, `$2` tier, `$3` email (SQLite: `$4` now; PostgreSQL defaults
/// `created_at`).
const INSERT_TENANT: Stamped = Stamped(Dialects {
    sqlite: "INSERT INTO tenants (id, tier, email, created_at) VALUES ($1, $2, $3, $4)",
    postgres: sql::PG_INSERT_TENANT,
});

/// A tenant's user — `$1` id, `$2` tenant, `$3` email (SQLite: `$4` now).
const INSERT_USER: Stamped = Stamped(Dialects {
    sqlite: "INSERT INTO users (id, tenant_id, email, created_at) VALUES ($1, $2, $3, $4)",
    postgres: sql::PG_INSERT_USER,
});

/// Creates a tenant and its first user.
pub async fn create_tenant(
    tx: &mut Tx,
    tenant_id: &str,
    user_id: &str,
    tier: &str,
    email: Option<&str>,
) -> Result<(), StoreError> {
    let now = now_ms().0;
    let dialect = tx.dialect();
    let (tenant, args) = INSERT_TENANT.bind(
        dialect,
        vec![tenant_id.into(), tier.into(), email.into()],
        now,
    );
    tx.execute(tenant, &args).await?;
    let (user, args) = INSERT_USER.bind(
        dialect,
        vec![user_id.into(), tenant_id.into(), email.into()],
        now,
    );
    tx.execute(user, &args).await?;
    Ok(())
}

/// Whether the tenant `$1` is flagged; no row when it does not exist.
use cognomega_core::billing::sql::TENANT_STATUS;

/// Whether a tenant exists, and if so whether it is flagged (out of credits).
pub async fn tenant_status(db: &Database, tenant_id: &str) -> Result<Option<bool>, StoreError> {
    let row = cognomega_core::sql::Executor::query_opt(
        &mut crate::sql::Reader(db),
        TENANT_STATUS,
        &[tenant_id.into()],
    )
    .await?;
    Ok(row.map(|r| r.bool(0)).transpose()?)
}

/// What `POST /api/si/ask` checks before calling a provider, read in one round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AskStanding {
    /// Flagged (out of credits).
    pub flagged: bool,
    /// The `balances` row, when the tenant has one.
    pub balance: Option<i64>,
    /// `tokens_in` + `tokens_out` recorded today (UTC), as [`tokens_on_day`] reads it.
    pub tokens_today: u64,
}

/// The tenant's flag, stored balance and tokens recorded in the UTC day holding `unix_secs`,
/// in one statement; `None` when the tenant does not exist.
pub async fn ask_standing(
    db: &Database,
    tenant_id: &str,
    unix_secs: i64,
) -> Result<Option<AskStanding>, StoreError> {
    let day = day_start(unix_secs);
    let row = cognomega_core::sql::Executor::query_opt(
        &mut crate::sql::Reader(db),
        sql::ASK_STANDING,
        &[tenant_id.into(), day.into()],
    )
    .await?
    .map(|r| -> Result<_, cognomega_core::sql::SqlError> {
        Ok((r.bool(0)?, r.opt_int(1)?, r.opt_int(2)?))
    })
    .transpose()?;
    Ok(row.map(|(flagged, balance, tokens)| AskStanding {
        flagged,
        balance,
        tokens_today: tokens.map_or(0, |t| u64::try_from(t).unwrap_or(0)),
    }))
}

/// The SQLite multi-row usage INSERT of `chunk`, skipping keys the tenant already used.
fn sqlite_usage_insert<'a>(
    tenant_id: &'a str,
    chunk: &'a [(UsageEvent, i64)],
    received_at_ms: i64,
    request_id: Option<&'a str>,
) -> QueryBuilder<'a, sqlx::Sqlite> {
    let mut qb: QueryBuilder<sqlx::Sqlite> = QueryBuilder::new(
        "INSERT INTO usage_events (tenant_id, idempotency_key, kind, quantity, credits, occurred_at, received_at, meta, request_id) ",
    );
    qb.push_values(chunk, |mut b, (e, credits)| {
        b.push_bind(tenant_id)
            .push_bind(e.idempotency_key.as_str())
            .push_bind(e.kind.as_str())
            .push_bind(i64::try_from(e.quantity).unwrap_or(i64::MAX))
            .push_bind(*credits)
            .push_bind(
                e.occurred_at
                    .map_or(received_at_ms, |t| t.timestamp_millis()),
            )
            .push_bind(received_at_ms)
            .push_bind(received_meta(e))
            .push_bind(request_id);
    });
    qb.push(" ON CONFLICT (tenant_id, idempotency_key) DO NOTHING");
    qb
}

/// Inserts usage events, ignoring keys the tenant already used; returns the new ones.
pub async fn insert_usage(
    tx: &mut Tx,
    tenant_id: &str,
    events: &[(UsageEvent, i64)],
    received_at_ms: i64,
    request_id: Option<&str>,
) -> Result<Vec<NewUsage>, StoreError> {
    let mut inserted = Vec::new();
    for chunk in events.chunks(500) {
        let meta: Vec<Option<String>> = chunk
            .iter()
            .map(|(e, _)| {
                e.meta
                    .as_ref()
                    .map(|m| serde_json::Value::Object(m.clone()).to_string())
            })
            .collect();
        let occurred = |e: &UsageEvent| {
            e.occurred_at
                .map_or(received_at_ms, |t| t.timestamp_millis())
        };
        let new_rows = match tx {
            Tx::Sqlite { tx, .. } => {
                let mut qb = sqlite_usage_insert(tenant_id, chunk, received_at_ms, request_id);
                qb.push(" RETURNING seq, idempotency_key, credits");
                let rows = qb.build().fetch_all(&mut **tx).await?;
                rows.iter()
                    .map(new_usage)
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            }
            Tx::Postgres { tx, .. } => {
                let mut qb: QueryBuilder<sqlx::Postgres> = QueryBuilder::new(
                    "INSERT INTO usage_events (tenant_id, idempotency_key, kind, quantity, credits, occurred_at, received_at, meta, request_id) ",
                );
                qb.push_values(chunk.iter().zip(&meta), |mut b, ((e, credits), meta)| {
                    b.push_bind(tenant_id)
                        .push_bind(e.idempotency_key.as_str())
                        .push_bind(e.kind.as_str())
                        .push_bind(i64::try_from(e.quantity).unwrap_or(i64::MAX))
                        .push_bind(*credits)
                        .push("to_timestamp(")
                        .push_bind_unseparated(occurred(e))
                        .push_unseparated("::float8 / 1000.0)")
                        .push("to_timestamp(")
                        .push_bind_unseparated(received_at_ms)
                        .push_unseparated("::float8 / 1000.0)")
                        .push_bind(meta.as_deref())
                        .push_bind(request_id);
                });
                qb.push(" ON CONFLICT (tenant_id, idempotency_key) DO NOTHING RETURNING seq, idempotency_key, credits");
                let rows = qb.build().fetch_all(&mut **tx).await?;
                rows.iter()
                    .map(new_usage)
                    .collect::<Result<Vec<_>, sqlx::Error>>()?
            }
        };
        inserted.extend(new_rows);
    }
    inserted.sort_by_key(|u| u.seq);
    Ok(inserted)
}

/// One accepted `POST /usage` request, priced: what the usage-writer records.
#[derive(Debug, Clone)]
pub struct UsageInsert<'a> {
    /// Whose events.
    pub tenant_id: &'a str,
    /// Each event with its price in credits.
    pub events: Vec<(UsageEvent, i64)>,
    /// Receipt time (the default `occurred_at`).
    pub received_at_ms: i64,
    /// The request that produced it.
    pub request_id: Option<&'a str>,
}

/// Records usage and, in the same transaction, enqueues one `settlement` message
/// (`{"id":"usage-{seq}", …, "kind":"usage"}`) per newly inserted event that costs something.
/// Keys the tenant already used are skipped. The new events' `tokens_in`/`tokens_out`
/// quantities are added to the tenant's day in `usage_day_tokens` (read by [`tokens_on_day`]),
/// in the same transaction. Returns how many events were new.
///
/// On SQLite the settlement messages are built by one `INSERT … SELECT` over the rows this
/// transaction inserted (the writer is exclusive, so they are exactly the rows past the
/// watermark taken first): no row travels back to the process, which halves the work per event.
pub async fn record_usage(
    tx: &mut Tx,
    items: &[UsageInsert<'_>],
    settlement_queue: &cognomega_core::queue::QueueName,
) -> Result<u64, StoreError> {
    if let Tx::Sqlite { tx: conn, wake, .. } = tx {
        let before: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM usage_events")
            .fetch_one(&mut **conn)
            .await?;
        for item in items {
            for chunk in item.events.chunks(500) {
                sqlite_usage_insert(item.tenant_id, chunk, item.received_at_ms, item.request_id)
                    .build()
                    .execute(&mut **conn)
                    .await?;
            }
        }
        let now = now_ms().0;
        let new: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM usage_events WHERE seq > ?1")
            .bind(before)
            .fetch_one(&mut **conn)
            .await?;
        let sent = sqlx::query(
            "INSERT INTO queue_messages (queue, body, content_type, request_id, enqueued_at, visible_at)
             SELECT ?1,
                    CAST(json_object('id', 'usage-' || seq, 'tenant_id', tenant_id, 'delta', -credits,
                                     'kind', 'usage', 'reference', idempotency_key) AS BLOB),
                    'application/json', request_id, ?2, ?2
             FROM usage_events WHERE seq > ?3 AND credits <> 0 ORDER BY seq",
        )
        .bind(settlement_queue.as_str())
        .bind(now)
        .bind(before)
        .execute(&mut **conn)
        .await?
        .rows_affected();
        if sent > 0 && !wake.contains(settlement_queue) {
            wake.push(settlement_queue.clone());
        }
        if new > 0 {
            // The new token events' quantities per tenant and UTC day, each summed in two
            // halves (SQLite's SUM fails on overflow) and joined in i128.
            let halves: Vec<(String, i64, i64, i64)> = sqlx::query_as(
                "SELECT tenant_id,
                        (occurred_at - ((occurred_at % 86400000) + 86400000) % 86400000) / 1000,
                        SUM(quantity >> 32), SUM(quantity & 4294967295)
                 FROM usage_events
                 WHERE seq > ?1 AND kind IN ('tokens_in', 'tokens_out')
                 GROUP BY 1, 2",
            )
            .bind(before)
            .fetch_all(&mut **conn)
            .await?;
            let days: DayTokens = halves
                .into_iter()
                .map(|(tenant, day, high, low)| {
                    let sum = (i128::from(high) << 32) + i128::from(low);
                    ((tenant, day), i64::try_from(sum).unwrap_or(i64::MAX))
                })
                .collect();
            add_day_tokens(tx, &days).await?;
        }
        return Ok(u64::try_from(new).unwrap_or(0));
    }
    let mut new_events = 0;
    let mut settlements = Vec::new();
    let mut days = DayTokens::new();
    for item in items {
        let new = insert_usage(
            tx,
            item.tenant_id,
            &item.events,
            item.received_at_ms,
            item.request_id,
        )
        .await?;
        new_events += new.len() as u64;
        count_day_tokens(&mut days, item, &new);
        for usage in new.into_iter().filter(|u| u.credits != 0) {
            let msg = SettlementMessage {
                id: format!("usage-{}", usage.seq),
                tenant_id: item.tenant_id.to_owned(),
                delta: -usage.credits,
                kind: cognomega_core::billing::SettlementKind::Usage,
                reference: Some(usage.idempotency_key),
            };
            let mut out = cognomega_core::queue::OutgoingMessage::json(&msg)
                .map_err(|e| cognomega_core::queue::QueueError::Invalid(e.to_string()))?;
            out.options.request_id = item.request_id.map(str::to_owned);
            settlements.push(out);
        }
    }
    if !settlements.is_empty() {
        tx.send_batch(settlement_queue, settlements).await?;
    }
    add_day_tokens(tx, &days).await?;
    Ok(new_events)
}

/// Milliseconds in a UTC day (unix time has no leap seconds).
const DAY_MS: i64 = 86_400_000;

/// The start (unix seconds) of the UTC day holding `unix_secs`.
fn day_start(unix_secs: i64) -> i64 {
    unix_secs - unix_secs.rem_euclid(DAY_MS / 1000)
}

/// Token quantity per (tenant, UTC day start in unix seconds).
type DayTokens = BTreeMap<(String, i64), i64>;

/// Adds the token quantities of `item`'s newly inserted events (`new`) to `days`. A key
/// repeated inside the item was inserted once, with its first occurrence.
fn count_day_tokens(days: &mut DayTokens, item: &UsageInsert<'_>, new: &[NewUsage]) {
    if new.is_empty() {
        return;
    }
    let mut first: std::collections::HashMap<&str, &UsageEvent> =
        std::collections::HashMap::with_capacity(item.events.len());
    for (e, _) in &item.events {
        first.entry(e.idempotency_key.as_str()).or_insert(e);
    }
    for usage in new {
        let Some(e) = first.get(usage.idempotency_key.as_str()) else {
            continue;
        };
        if !matches!(e.kind, UsageKind::TokensIn | UsageKind::TokensOut) {
            continue;
        }
        let occurred = e
            .occurred_at
            .map_or(item.received_at_ms, |t| t.timestamp_millis());
        let day = occurred.div_euclid(DAY_MS) * (DAY_MS / 1000);
        let quantity = i64::try_from(e.quantity).unwrap_or(i64::MAX);
        let total = days.entry((item.tenant_id.to_owned(), day)).or_insert(0);
        *total = total.saturating_add(quantity);
    }
}

/// Adds `days` to `usage_day_tokens` (saturating), in the caller's transaction.
async fn add_day_tokens(tx: &mut Tx, days: &DayTokens) -> Result<(), StoreError> {
    const INSERT: &str = "INSERT INTO usage_day_tokens (tenant_id, day_start, tokens) VALUES ";
    const UPSERT: &str = " ON CONFLICT (tenant_id, day_start) DO UPDATE SET tokens = \
        CASE WHEN usage_day_tokens.tokens > 9223372036854775807 - excluded.tokens \
        THEN 9223372036854775807 ELSE usage_day_tokens.tokens + excluded.tokens END";
    // Keys are unique (a map), as PostgreSQL requires of one upsert; 300 rows × 3 parameters
    // stay far below either backend's bound.
    let rows: Vec<_> = days.iter().filter(|(_, &t)| t > 0).collect();
    for chunk in rows.chunks(300) {
        let mut statement = String::from(INSERT);
        let mut args: Vec<Value> = Vec::with_capacity(chunk.len() * 3);
        for (i, ((tenant, day), tokens)) in chunk.iter().enumerate() {
            if i > 0 {
                statement.push_str(", ");
            }
            let n = i * 3;
            let _ = write!(statement, "(${}, ${}, ${})", n + 1, n + 2, n + 3);
            args.extend([tenant.into(), (*day).into(), (**tokens).into()]);
        }
        statement.push_str(UPSERT);
        tx.execute(&statement, &args).await?;
    }
    Ok(())
}

/// The tokens recorded for tenant `$1` on the UTC day starting at `$2`.
const TOKENS_ON_DAY: &str =
    "SELECT tokens FROM usage_day_tokens WHERE tenant_id = $1 AND day_start = $2";

/// The `tokens_in` + `tokens_out` quantity recorded for the tenant's events that occurred in
/// the UTC day holding `unix_secs`: one row read (`usage_day_tokens`, kept by
/// [`record_usage`]), not a sum over the day's events. Like any read of recorded usage it
/// trails what is still queued.
pub async fn tokens_on_day(
    db: &Database,
    tenant_id: &str,
    unix_secs: i64,
) -> Result<u64, StoreError> {
    let day = day_start(unix_secs);
    let tokens = cognomega_core::sql::Executor::query_opt(
        &mut crate::sql::Reader(db),
        TOKENS_ON_DAY,
        &[tenant_id.into(), day.into()],
    )
    .await?
    .map(|r| r.int(0))
    .transpose()?;
    Ok(tokens.map_or(0, |t| u64::try_from(t).unwrap_or(0)))
}

fn received_meta(e: &UsageEvent) -> Option<String> {
    e.meta
        .as_ref()
        .map(|m| serde_json::Value::Object(m.clone()).to_string())
}

fn new_usage<R: Row>(row: &R) -> Result<NewUsage, sqlx::Error>
where
    usize: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(NewUsage {
        seq: row.try_get(0)?,
        idempotency_key: row.try_get(1)?,
        credits: row.try_get(2)?,
    })
}

/// The SQLite multi-row ledger INSERT of `chunk`, skipping ids already present.
fn sqlite_ledger_insert(chunk: &[SettlementMessage], now: i64) -> QueryBuilder<'_, sqlx::Sqlite> {
    let mut qb: QueryBuilder<sqlx::Sqlite> = QueryBuilder::new(
        "INSERT INTO ledger_entries (id, tenant_id, delta, kind, ref, created_at) ",
    );
    qb.push_values(chunk, |mut b, e| {
        b.push_bind(&e.id)
            .push_bind(&e.tenant_id)
            .push_bind(e.delta)
            .push_bind(e.kind.as_str())
            .push_bind(e.reference.as_deref())
            .push_bind(now);
    });
    qb.push(" ON CONFLICT (id) DO NOTHING");
    qb
}

/// Appends ledger entries, skipping ids already present; returns the entries applied now.
pub async fn append_ledger<'a>(
    tx: &mut Tx,
    entries: &'a [SettlementMessage],
) -> Result<Vec<&'a SettlementMessage>, StoreError> {
    let mut applied_ids = std::collections::HashSet::new();
    for chunk in entries.chunks(500) {
        let ids: Vec<String> = match tx {
            Tx::Sqlite { tx, .. } => {
                let mut qb = sqlite_ledger_insert(chunk, now_ms().0);
                qb.push(" RETURNING id");
                qb.build_query_scalar().fetch_all(&mut **tx).await?
            }
            Tx::Postgres { tx, .. } => {
                let mut qb: QueryBuilder<sqlx::Postgres> = QueryBuilder::new(
                    "INSERT INTO ledger_entries (id, tenant_id, delta, kind, ref) ",
                );
                qb.push_values(chunk, |mut b, e| {
                    b.push_bind(&e.id)
                        .push_bind(&e.tenant_id)
                        .push_bind(e.delta)
                        .push_bind(e.kind.as_str())
                        .push_bind(e.reference.as_deref());
                });
                qb.push(" ON CONFLICT (id) DO NOTHING RETURNING id");
                qb.build_query_scalar().fetch_all(&mut **tx).await?
            }
        };
        applied_ids.extend(ids);
    }
    Ok(entries
        .iter()
        .filter(|e| applied_ids.remove(&e.id))
        .collect())
}

/// What a batch of settlements changed: the summed delta per tenant and the adjustments
/// applied, counting only entries appended now (ids already in the ledger change nothing).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Summed delta per tenant.
    pub deltas: BTreeMap<String, i64>,
    /// Adjustment ids (the entries' `reference`) applied now.
    pub adjustments: Vec<String>,
    /// Entries appended now.
    pub entries: u64,
}

/// Appends ledger entries (skipping ids already present) and sums what was appended.
///
/// On SQLite the sums come from one aggregate over the rows this transaction appended (the
/// writer is exclusive, so they are the rows past the watermark taken first) instead of one
/// returned row per entry.
pub async fn append_and_sum(
    tx: &mut Tx,
    entries: &[SettlementMessage],
) -> Result<Applied, StoreError> {
    let mut out = Applied::default();
    if let Tx::Sqlite { tx: conn, .. } = tx {
        let before: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM ledger_entries")
            .fetch_one(&mut **conn)
            .await?;
        let now = now_ms().0;
        for chunk in entries.chunks(500) {
            sqlite_ledger_insert(chunk, now)
                .build()
                .execute(&mut **conn)
                .await?;
        }
        let sums: Vec<(String, i64, i64)> = sqlx::query_as(
            // NOT INDEXED: without it the planner walks the whole (tenant, seq) index to
            // group, instead of the few rows past the watermark.
            "SELECT tenant_id, SUM(delta), COUNT(*) FROM ledger_entries NOT INDEXED
             WHERE seq > ?1 GROUP BY tenant_id",
        )
        .bind(before)
        .fetch_all(&mut **conn)
        .await?;
        for (tenant, delta, n) in sums {
            out.entries += u64::try_from(n).unwrap_or(0);
            out.deltas.insert(tenant, delta);
        }
        if entries
            .iter()
            .any(|e| e.kind == cognomega_core::billing::SettlementKind::Adjustment)
        {
            out.adjustments = sqlx::query_scalar(
                "SELECT ref FROM ledger_entries WHERE seq > ?1 AND kind = 'adjustment' AND ref IS NOT NULL",
            )
            .bind(before)
            .fetch_all(&mut **conn)
            .await?;
        }
        return Ok(out);
    }
    for e in append_ledger(tx, entries).await? {
        out.entries += 1;
        *out.deltas.entry(e.tenant_id.clone()).or_default() += e.delta;
        if e.kind == cognomega_core::billing::SettlementKind::Adjustment {
            if let Some(id) = &e.reference {
                out.adjustments.push(id.clone());
            }
        }
    }
    Ok(out)
}

/// Settles entries inside the caller's transaction: appends them to the ledger (ids already
/// there change nothing) and adds what was appended to the derived balances, as the
/// settlement consumer does for a batch. A new guest's starting grant is settled this way in
/// the transaction that creates the tenant, so its first billable request already sees it.
/// Returns each changed tenant's new balance.
pub async fn settle_in(
    tx: &mut Tx,
    entries: &[SettlementMessage],
    guest_floor: i64,
) -> Result<BTreeMap<String, i64>, StoreError> {
    let applied = append_and_sum(tx, entries).await?;
    apply_balance_deltas(tx, &applied.deltas, guest_floor).await
}

/// Adds per-tenant deltas to the derived balances and (un)flags guests whose balance is below
/// `guest_floor`. Returns each tenant's new balance.
pub async fn apply_balance_deltas(
    tx: &mut Tx,
    deltas: &BTreeMap<String, i64>,
    guest_floor: i64,
) -> Result<BTreeMap<String, i64>, StoreError> {
    if deltas.is_empty() {
        return Ok(BTreeMap::new());
    }
    // Two statements for the whole batch, whatever the number of tenants (a statement per
    // tenant was most of a settlement batch's time). Rows go in key order, so concurrent
    // batches lock balances in one order and cannot deadlock.
    let json = serde_json::to_string(deltas)
        .map_err(|e| cognomega_core::queue::QueueError::Invalid(e.to_string()))?;
    let now = now_ms().0;
    let dialect = tx.dialect();
    let (add, args) = ADD_BALANCES.bind(dialect, vec![json.as_str().into()], now);
    let rows = tx.query(add, &args).await?;
    let (flag, args) =
        FLAG_GUESTS.bind(dialect, vec![json.as_str().into(), guest_floor.into()], now);
    tx.execute(flag, &args).await?;
    Ok(rows
        .iter()
        .map(|r| Ok((r.text(0)?, r.int(1)?)))
        .collect::<Result<_, SqlError>>()?)
}

/// Adds the deltas `$1` (JSON) to the balances (SQLite: at `$2`); returns `tenant_id, balance,
/// updated_at`.
const ADD_BALANCES: Stamped = Stamped(Dialects {
    sqlite: sql::SQLITE_ADD_BALANCES,
    postgres: sql::PG_ADD_BALANCES,
});

/// Flags the guests of `$1` whose balance is below `$2` (SQLite: at `$3`), and unflags the
/// others.
const FLAG_GUESTS: Stamped = Stamped(Dialects {
    sqlite: sql::SQLITE_FLAG_GUESTS,
    postgres: sql::PG_FLAG_GUESTS,
});

/// Marks adjustment `$1` applied (SQLite: at `$2`).
const MARK_APPLIED: Stamped = Stamped(Dialects {
    sqlite: "UPDATE credit_adjustments SET status = 'applied', applied_at = $2 WHERE id = $1",
    postgres: "UPDATE credit_adjustments SET status = 'applied', applied_at = now() WHERE id = $1",
});

/// Marks adjustments applied.
pub async fn mark_adjustments_applied(tx: &mut Tx, ids: &[&str]) -> Result<(), StoreError> {
    for id in ids {
        let (mark, args) = MARK_APPLIED.bind(tx.dialect(), vec![(*id).into()], now_ms().0);
        tx.execute(mark, &args).await?;
    }
    Ok(())
}

/// The stored balance of tenant `$1`.
const STORED_BALANCE: &str = "SELECT balance FROM balances WHERE tenant_id = $1";

/// The derived balance, if the tenant has one.
pub async fn stored_balance(db: &Database, tenant_id: &str) -> Result<Option<i64>, StoreError> {
    let row = cognomega_core::sql::Executor::query_opt(
        &mut crate::sql::Reader(db),
        STORED_BALANCE,
        &[tenant_id.into()],
    )
    .await?;
    Ok(row.map(|r| r.int(0)).transpose()?)
}

/// Tenant `$1`'s balance summed from the ledger.
const LEDGER_BALANCE: &str =
    "SELECT CAST(COALESCE(SUM(delta), 0) AS BIGINT) FROM ledger_entries WHERE tenant_id = $1";

/// The balance summed from the ledger itself (the source of truth).
pub async fn ledger_balance(db: &Database, tenant_id: &str) -> Result<i64, StoreError> {
    let row = crate::sql::Reader(db)
        .query_opt(LEDGER_BALANCE, &[tenant_id.into()])
        .await?
        .ok_or(StoreError::Sqlx(sqlx::Error::RowNotFound))?;
    Ok(row.int(0)?)
}

/// Usage per kind with `from_ms <= occurred_at < to_ms`.
pub async fn usage_totals(
    db: &Database,
    tenant_id: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<BTreeMap<UsageKind, KindTotal>, StoreError> {
    let mut read = crate::sql::Reader(db);
    Ok(sql::usage_totals(&mut read, tenant_id, from_ms, to_ms).await?)
}

/// Recomputes every balance from the ledger, writing only those that differ (SQLite: at `$1`).
const REBUILD_BALANCES: Stamped = Stamped(Dialects {
    sqlite: "INSERT INTO balances (tenant_id, balance, updated_at)
             SELECT tenant_id, SUM(delta), $1 FROM ledger_entries GROUP BY tenant_id
             ON CONFLICT (tenant_id) DO UPDATE SET balance = excluded.balance, updated_at = excluded.updated_at
             WHERE balances.balance <> excluded.balance",
    postgres: sql::PG_REBUILD_BALANCES,
});

/// Recomputes every derived balance from the ledger. Returns (tenants, balances changed).
pub async fn rebuild_balances(db: &Database) -> Result<(u64, u64), StoreError> {
    let mut tx = db.begin().await?;
    let (rebuild, args) = REBUILD_BALANCES.bind(tx.dialect(), Vec::new(), now_ms().0);
    // PostgreSQL's statement also returns the corrected rows: one per row changed.
    let changed = tx.execute(rebuild, &args).await?;
    let tenants = tx
        .query_opt(sql::LEDGER_TENANTS, &[])
        .await?
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(0);
    tx.commit().await?;
    Ok((u64::try_from(tenants).unwrap_or(0), changed))
}

/// Records an adjustment under an idempotency key; a repeated key returns the first one
/// (`created == false`).
pub async fn create_adjustment(
    tx: &mut Tx,
    idempotency_key: &str,
    tenant_id: &str,
    delta: i64,
    reason: &str,
) -> Result<(String, bool), StoreError> {
    let id = uuid::Uuid::now_v7().to_string();
    let new = sql::NewAdjustment {
        id: &id,
        idempotency_key,
        tenant_id,
        delta,
        reason,
    };
    Ok(sql::create_adjustment(tx, &new, now_ms().0).await?)
}

/// One adjustment by id.
pub async fn get_adjustment(db: &Database, id: &str) -> Result<Option<Adjustment>, StoreError> {
    Ok(sql::get_adjustment(&mut crate::sql::Reader(db), id).await?)
}
