//! The money path's writes, written once and run inside the caller's transaction: the
//! usage-writer recording accepted events ([`record_usage`]) and settlement appending entries
//! to the ledger ([`settle`]) — which is also how a new guest's starting grant lands, in the
//! transaction that creates the tenant.
//!
//! Usage events go in as multi-row inserts; what follows from the new rows (their settlement
//! messages, the day's token counters) is computed in the database from the rows past a
//! watermark, set-based: the settlement messages are sent by one `INSERT … SELECT` through the
//! transaction's queue (`Transaction::send_rows`: natively the database-backed queue in the
//! same transaction, on the edge the outbox), so an event and the message that settles it
//! commit together and no row travels to the process. Ledger entries go in the same way, and
//! the balances, guest flags and applied adjustments follow from the entries past the ledger's
//! watermark. Where the dialects differ, both texts are side by side.

use std::collections::BTreeMap;

use cognomega_core::billing::{PriceTable, SettlementKind, SettlementMessage, UsageEvent};
use cognomega_core::queue::catalog;
use cognomega_core::sql::{Dialect, Dialects, Executor, SqlError, Transaction, Value};

/// The highest `usage_events.seq` so far: the rows a recording inserts are those past it
/// (with [`NEW`]'s condition).
pub const WATERMARK: &str = "SELECT CAST(COALESCE(MAX(seq), 0) AS BIGINT) FROM usage_events";

/// The rows this transaction inserted past the watermark `$1`. SQLite's writer is exclusive,
/// so they are every row past it; on PostgreSQL a concurrent writer's committed rows can be
/// past it too, so the rows must also be this transaction's own (`xmin`).
macro_rules! new_rows {
    (sqlite) => {
        "seq > $1"
    };
    (postgres) => {
        "seq > $1 AND xmin::text::bigint = txid_current() % 4294967296"
    };
}

/// How many events the recording inserted.
pub const NEW: Dialects = Dialects {
    sqlite: concat!(
        "SELECT COUNT(*) FROM usage_events WHERE ",
        new_rows!(sqlite)
    ),
    postgres: concat!(
        "SELECT COUNT(*) FROM usage_events WHERE ",
        new_rows!(postgres)
    ),
};

/// The settlement message of each new event that costs something (`{"id":"usage-{seq}", …,
/// "kind":"usage"}`) and its request id, in insertion order.
pub const NEW_SETTLEMENTS: Dialects = Dialects {
    sqlite: concat!(
        "SELECT json_object('id', 'usage-' || seq, 'tenant_id', tenant_id, 'delta', -credits,
                'kind', 'usage', 'reference', idempotency_key) AS body, request_id
         FROM usage_events WHERE ",
        new_rows!(sqlite),
        " AND credits <> 0 ORDER BY seq"
    ),
    postgres: concat!(
        "SELECT json_build_object('id', 'usage-' || seq, 'tenant_id', tenant_id, 'delta', -credits,
                'kind', 'usage', 'reference', idempotency_key)::text AS body, request_id
         FROM usage_events WHERE ",
        new_rows!(postgres),
        " AND credits <> 0 ORDER BY seq"
    ),
};

/// Adds the new `tokens_in`/`tokens_out` quantities to their tenant's UTC day in
/// `usage_day_tokens` (the counter `POST /api/si/ask`'s budget reads), saturating at
/// `i64::MAX`. SQLite's SUM fails on overflow, so it sums each quantity's halves (far from
/// overflowing) and joins them, clamped.
pub const NEW_DAY_TOKENS: Dialects = Dialects {
    sqlite: concat!(
        "INSERT INTO usage_day_tokens (tenant_id, day_start, tokens)
         SELECT tenant_id, day,
                CASE WHEN high * 4294967296.0 + low >= 9223372036854775807.0
                THEN 9223372036854775807 ELSE high * 4294967296 + low END
         FROM (SELECT tenant_id,
                      (occurred_at - ((occurred_at % 86400000) + 86400000) % 86400000) / 1000 AS day,
                      SUM(quantity >> 32) AS high, SUM(quantity & 4294967295) AS low
               FROM usage_events WHERE ",
        new_rows!(sqlite),
        " AND kind IN ('tokens_in', 'tokens_out') AND quantity > 0
               GROUP BY 1, 2) WHERE true
         ON CONFLICT (tenant_id, day_start) DO UPDATE SET tokens =
             CASE WHEN usage_day_tokens.tokens > 9223372036854775807 - excluded.tokens
             THEN 9223372036854775807 ELSE usage_day_tokens.tokens + excluded.tokens END"
    ),
    postgres: concat!(
        "INSERT INTO usage_day_tokens (tenant_id, day_start, tokens)
         SELECT tenant_id, (floor(extract(epoch FROM occurred_at) / 86400) * 86400)::bigint,
                LEAST(SUM(quantity), 9223372036854775807)::bigint
         FROM usage_events WHERE ",
        new_rows!(postgres),
        " AND kind IN ('tokens_in', 'tokens_out') AND quantity > 0
         GROUP BY 1, 2 ORDER BY 1, 2
         ON CONFLICT (tenant_id, day_start) DO UPDATE SET tokens =
             CASE WHEN usage_day_tokens.tokens > 9223372036854775807 - excluded.tokens
             THEN 9223372036854775807 ELSE usage_day_tokens.tokens + excluded.tokens END"
    ),
};

/// The head of a multi-row usage insert; each row's values follow ([`usage_values`]), then
/// `ON CONFLICT (tenant_id, idempotency_key) DO NOTHING` (keys the tenant already used).
const INSERT_USAGE: &str = "INSERT INTO usage_events
     (tenant_id, idempotency_key, kind, quantity, credits, occurred_at, received_at, meta, request_id) VALUES ";

/// One row's values from parameter `n + 1` on: times are epoch ms, which PostgreSQL stores
/// as `timestamptz`. SQLite's placeholders are anonymous (`?`, bound in order): a numbered one
/// is a name SQLite looks up by walking the statement's parameter list, which costs the square
/// of a 4,500-parameter insert.
fn usage_values(dialect: Dialect, n: usize) -> String {
    match dialect {
        Dialect::Sqlite => "(?, ?, ?, ?, ?, ?, ?, ?, ?)".to_owned(),
        Dialect::Postgres => {
            let p = |i: usize| format!("${}", n + i);
            let time = |i: usize| format!("to_timestamp({}::float8 / 1000.0)", p(i));
            format!(
                "({}, {}, {}, {}, {}, {}, {}, {}, {})",
                p(1),
                p(2),
                p(3),
                p(4),
                p(5),
                time(6),
                time(7),
                p(8),
                p(9)
            )
        }
    }
}

/// Rows per usage insert (9 parameters each: far below either backend's bound).
const INSERT_ROWS: usize = 500;

/// The highest `ledger_entries.seq` so far: the entries a settlement appends are those past it
/// (with [`new_rows`]'s condition).
pub const LEDGER_WATERMARK: &str =
    "SELECT CAST(COALESCE(MAX(seq), 0) AS BIGINT) FROM ledger_entries";

/// The head of a multi-row ledger append; each entry's values follow ([`ledger_values`]),
/// then `ON CONFLICT (id) DO NOTHING` (each id once).
const APPEND_LEDGER: &str =
    "INSERT INTO ledger_entries (id, tenant_id, delta, kind, ref, created_at) VALUES ";

/// One entry's values from parameter `n + 1` on (`created_at`: SQLite's epoch ms, PostgreSQL's
/// `now()`); SQLite's placeholders anonymous, as [`usage_values`]'.
fn ledger_values(dialect: Dialect, n: usize) -> String {
    match dialect {
        Dialect::Sqlite => "(?, ?, ?, ?, ?, ?)".to_owned(),
        Dialect::Postgres => format!(
            "(${}, ${}, ${}, ${}, ${}, now())",
            n + 1,
            n + 2,
            n + 3,
            n + 4,
            n + 5
        ),
    }
}

/// Adds the new entries' deltas (past `$1`) to their tenants' balances (SQLite: at `$2`), in
/// tenant order (concurrent batches lock balances in one order and cannot deadlock); returns
/// `tenant_id, balance, updated_at` (epoch ms).
pub const ADD_BALANCES: Dialects = Dialects {
    sqlite: concat!(
        "INSERT INTO balances (tenant_id, balance, updated_at)
         SELECT tenant_id, SUM(delta), $2 FROM ledger_entries NOT INDEXED WHERE ",
        new_rows!(sqlite),
        " GROUP BY tenant_id ORDER BY tenant_id
         ON CONFLICT (tenant_id) DO UPDATE SET balance = balance + excluded.balance, updated_at = excluded.updated_at
         RETURNING tenant_id, balance, updated_at"
    ),
    postgres: concat!(
        "INSERT INTO balances (tenant_id, balance)
         SELECT tenant_id, SUM(delta)::bigint FROM ledger_entries WHERE ",
        new_rows!(postgres),
        " GROUP BY tenant_id ORDER BY tenant_id
         ON CONFLICT (tenant_id) DO UPDATE SET balance = balances.balance + EXCLUDED.balance, updated_at = now()
         RETURNING tenant_id, balance, (extract(epoch FROM updated_at) * 1000)::bigint"
    ),
};

/// Flags the guests among the new entries' tenants (past `$1`) whose balance is below `$2`
/// (SQLite: since `$3`, keeping the time they were first flagged), and unflags the others.
pub const FLAG_GUESTS: Dialects = Dialects {
    sqlite: concat!(
        "UPDATE tenants SET flagged_at = CASE
             WHEN tier = 'guest' AND (SELECT balance FROM balances b WHERE b.tenant_id = tenants.id) < $2
             THEN COALESCE(flagged_at, $3) END
         WHERE id IN (SELECT tenant_id FROM ledger_entries NOT INDEXED WHERE ",
        new_rows!(sqlite),
        ")"
    ),
    postgres: concat!(
        "UPDATE tenants t SET flagged_at = CASE
             WHEN t.tier = 'guest' AND b.balance < $2 THEN COALESCE(t.flagged_at, now()) END
         FROM balances b
         WHERE b.tenant_id = t.id AND t.id IN (SELECT tenant_id FROM ledger_entries WHERE ",
        new_rows!(postgres),
        ")"
    ),
};

/// Marks the adjustments the new entries (past `$1`) apply as applied (SQLite: at `$2`).
pub const MARK_APPLIED: Dialects = Dialects {
    sqlite: concat!(
        "UPDATE credit_adjustments SET status = 'applied', applied_at = $2
         WHERE id IN (SELECT ref FROM ledger_entries NOT INDEXED WHERE ",
        new_rows!(sqlite),
        " AND kind = 'adjustment' AND ref IS NOT NULL)"
    ),
    postgres: concat!(
        "UPDATE credit_adjustments SET status = 'applied', applied_at = now()
         WHERE id IN (SELECT ref FROM ledger_entries WHERE ",
        new_rows!(postgres),
        " AND kind = 'adjustment' AND ref IS NOT NULL)"
    ),
};

/// Runs `statement`, with `now_ms` appended for SQLite (which has no `now()` of its own here).
async fn stamped<E: Executor + ?Sized>(
    db: &mut E,
    statement: Dialects,
    args: Vec<cognomega_core::sql::Value>,
    now_ms: i64,
) -> Result<Vec<cognomega_core::sql::Row>, SqlError> {
    let (sql, args) = statement.stamped(db.dialect(), args, now_ms);
    db.query(sql, &args).await
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

/// Records usage inside `tx`: each event priced by `prices`, keys the tenant already used
/// skipped; one `settlement` message (`{"id":"usage-{seq}", …, "kind":"usage"}`) per new event
/// that costs something, sent set-based through the transaction's queue; the new
/// `tokens_in`/`tokens_out` quantities added to the tenant's UTC day. Returns how many events
/// were new.
pub async fn record_usage<T: Transaction + ?Sized>(
    tx: &mut T,
    items: &[UsageItem<'_>],
    prices: &PriceTable,
) -> Result<u64, SqlError> {
    let dialect = tx.dialect();
    let before = tx
        .query_opt(WATERMARK, &[])
        .await?
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(0);
    for item in items {
        for chunk in item.events.chunks(INSERT_ROWS) {
            let mut statement = String::from(INSERT_USAGE);
            let mut args: Vec<Value> = Vec::with_capacity(chunk.len() * 9);
            for (i, e) in chunk.iter().enumerate() {
                if i > 0 {
                    statement.push_str(", ");
                }
                statement.push_str(&usage_values(dialect, args.len()));
                let occurred = e
                    .occurred_at
                    .map_or(item.received_at_ms, |t| t.timestamp_millis());
                let meta = e
                    .meta
                    .as_ref()
                    .map(|m| serde_json::Value::Object(m.clone()).to_string());
                args.extend([
                    item.tenant.into(),
                    e.idempotency_key.as_str().into(),
                    e.kind.as_str().into(),
                    i64::try_from(e.quantity).unwrap_or(i64::MAX).into(),
                    prices.charge(e.kind, e.quantity).into(),
                    occurred.into(),
                    item.received_at_ms.into(),
                    meta.into(),
                    item.request_id.into(),
                ]);
            }
            statement.push_str(" ON CONFLICT (tenant_id, idempotency_key) DO NOTHING");
            tx.execute(&statement, &args).await?;
        }
    }
    let new = tx
        .query_opt(NEW.pick(dialect), &[before.into()])
        .await?
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(0);
    if new > 0 {
        let settlements = NEW_SETTLEMENTS.pick(dialect);
        tx.send_rows(catalog::settlement::QUEUE, settlements, &[before.into()])
            .await?;
        tx.execute(NEW_DAY_TOKENS.pick(dialect), &[before.into()])
            .await?;
    }
    Ok(u64::try_from(new).unwrap_or(0))
}

/// What a settled batch changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settled {
    /// Entries appended now (ids already in the ledger change nothing).
    pub entries: u64,
    /// Each changed tenant's new balance and its time (epoch ms).
    pub balances: BTreeMap<String, (i64, i64)>,
}

/// Settles `entries` inside the caller's transaction: appends each to the ledger once
/// (`ledger_entries.id` is unique), adds what was appended to the balances, (un)flags guests
/// below `floor`, and marks applied adjustments, each step one statement over the entries
/// appended now. The settlement consumer settles its batches this way, and a new guest's
/// starting grant is settled in the transaction that creates the tenant, so its first
/// billable request already sees it.
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
    let before = tx
        .query_opt(LEDGER_WATERMARK, &[])
        .await?
        .map(|r| r.int(0))
        .transpose()?
        .unwrap_or(0);
    let dialect = tx.dialect();
    // In id order (concurrent batches take the id index's locks in one order); each id once (a
    // batch may repeat a message).
    let mut sorted: Vec<&SettlementMessage> = entries.iter().collect();
    sorted.sort_by(|a, b| a.id.cmp(&b.id));
    sorted.dedup_by(|a, b| a.id == b.id);
    for chunk in sorted.chunks(INSERT_ROWS) {
        let mut statement = String::from(APPEND_LEDGER);
        let mut args: Vec<Value> = Vec::with_capacity(chunk.len() * 6);
        for (i, e) in chunk.iter().enumerate() {
            if i > 0 {
                statement.push_str(", ");
            }
            statement.push_str(&ledger_values(dialect, args.len()));
            args.extend([
                e.id.as_str().into(),
                e.tenant_id.as_str().into(),
                e.delta.into(),
                e.kind.as_str().into(),
                e.reference.as_deref().into(),
            ]);
            if dialect == Dialect::Sqlite {
                args.push(now_ms.into());
            }
        }
        statement.push_str(" ON CONFLICT (id) DO NOTHING");
        out.entries += tx.execute(&statement, &args).await?;
    }
    if out.entries == 0 {
        return Ok(out);
    }
    for r in stamped(&mut *tx, ADD_BALANCES, vec![before.into()], now_ms).await? {
        out.balances.insert(r.text(0)?, (r.int(1)?, r.int(2)?));
    }
    stamped(
        &mut *tx,
        FLAG_GUESTS,
        vec![before.into(), floor.into()],
        now_ms,
    )
    .await?;
    if entries.iter().any(|e| e.kind == SettlementKind::Adjustment) {
        stamped(&mut *tx, MARK_APPLIED, vec![before.into()], now_ms).await?;
    }
    Ok(out)
}

/// Creates a guest tenant, its user and its starting `grant`, settled (ledger entry and
/// balance), inside the caller's transaction: the guest's first billable request, however
/// soon, sees the grant. Returns what the grant settled.
pub async fn create_guest<E: Executor + ?Sized>(
    tx: &mut E,
    tenant_id: &str,
    user_id: &str,
    email: Option<&str>,
    grant: i64,
    floor: i64,
    now_ms: i64,
) -> Result<Settled, SqlError> {
    cognomega_core::billing::sql::create_tenant(tx, tenant_id, user_id, "guest", email, now_ms)
        .await?;
    if grant == 0 {
        return Ok(Settled::default());
    }
    let entry = SettlementMessage::grant(tenant_id, grant);
    settle(tx, &[entry], floor, now_ms).await
}
