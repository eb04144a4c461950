//! Billing statements both hosts run: tenants, the ask standing, balances from the ledger,
//! adjustments and usage totals (the usage-writer's and settlement's are
//! `cognomega_workflows::settle`'s). Where SQLite and PostgreSQL spell time differently, each
//! has its variant, side by side.

/// PostgreSQL: a tenant — `$1` id, `$2` tier, `$3` email. (SQLite's variant also sets
/// `created_at`, which PostgreSQL defaults.)
pub const PG_INSERT_TENANT: &str = "INSERT INTO tenants (id, tier, email) VALUES ($1, $2, $3)";

/// PostgreSQL: a tenant's user — `$1` id, `$2` tenant, `$3` email.
pub const PG_INSERT_USER: &str = "INSERT INTO users (id, tenant_id, email) VALUES ($1, $2, $3)";

/// Before an ask (both backends): tenant `$1`'s flag, stored balance (null before its first
/// settlement) and tokens recorded in the UTC day starting at `$2` (epoch seconds), in one read;
/// no row when the tenant does not exist.
pub const ASK_STANDING: &str = "SELECT t.flagged_at IS NOT NULL, b.balance,
            (SELECT d.tokens FROM usage_day_tokens d
             WHERE d.tenant_id = t.id AND d.day_start = $2)
     FROM tenants t LEFT JOIN balances b ON b.tenant_id = t.id
     WHERE t.id = $1";

/// Tenants with at least one ledger entry (both backends).
pub const LEDGER_TENANTS: &str = "SELECT COUNT(DISTINCT tenant_id) FROM ledger_entries";

/// PostgreSQL: recomputes every balance from the ledger, writing only those that differ;
/// returns the corrected ones as `tenant_id, balance, updated_at` (epoch ms).
pub const PG_REBUILD_BALANCES: &str = "INSERT INTO balances (tenant_id, balance)
     SELECT tenant_id, SUM(delta)::bigint FROM ledger_entries GROUP BY tenant_id
     ON CONFLICT (tenant_id) DO UPDATE SET balance = EXCLUDED.balance, updated_at = now()
     WHERE balances.balance <> EXCLUDED.balance
     RETURNING tenant_id, balance, (extract(epoch FROM updated_at) * 1000)::bigint";

/// PostgreSQL: a queued credit adjustment — `$1` id, `$2` idempotency key, `$3` tenant, `$4`
/// delta, `$5` reason; no row back when the key was used (the first one stands).
pub const PG_INSERT_ADJUSTMENT: &str =
    "INSERT INTO credit_adjustments (id, idempotency_key, tenant_id, delta, reason, status)
     VALUES ($1, $2, $3, $4, $5, 'queued') ON CONFLICT (idempotency_key) DO NOTHING RETURNING id";

/// The adjustment recorded under idempotency key `$1` (both backends): `id`.
pub const ADJUSTMENT_BY_KEY: &str = "SELECT id FROM credit_adjustments WHERE idempotency_key = $1";

/// PostgreSQL: adjustment `$1` — `id, tenant_id, delta, reason, status, created_at,
/// applied_at` (times in epoch ms).
pub const PG_ADJUSTMENT: &str = "SELECT id, tenant_id, delta, reason, status,
            (extract(epoch from created_at) * 1000)::bigint,
            (extract(epoch from applied_at) * 1000)::bigint
     FROM credit_adjustments WHERE id = $1";

/// Whether tenant `$1` is flagged (out of credits); no row when it does not exist.
pub const TENANT_STATUS: &str = "SELECT flagged_at IS NOT NULL FROM tenants WHERE id = $1";

use std::collections::BTreeMap;

use crate::billing::UsageKind;
use crate::sql::{Dialects, Executor, SqlError};

/// A queued credit adjustment — `$1` id, `$2` idempotency key, `$3` tenant, `$4` delta, `$5`
/// reason (SQLite: `$6` now) — returning its `id`; no row when the key was used.
pub const INSERT_ADJUSTMENT: Dialects = Dialects {
    sqlite: "INSERT INTO credit_adjustments (id, idempotency_key, tenant_id, delta, reason, status, created_at)
             VALUES ($1, $2, $3, $4, $5, 'queued', $6) ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
    postgres: PG_INSERT_ADJUSTMENT,
};

/// Adjustment `$1`: `id, tenant_id, delta, reason, status, created_at, applied_at` (epoch ms).
pub const ADJUSTMENT: Dialects = Dialects {
    sqlite: "SELECT id, tenant_id, delta, reason, status, created_at, applied_at FROM credit_adjustments WHERE id = $1",
    postgres: PG_ADJUSTMENT,
};

/// Tenant `$1`'s usage per kind with `$2 <= occurred_at < $3` (epoch ms): `kind`, the summed
/// quantity and the summed credits each as its high and low 32 bits (`>> 32`,
/// `& 4294967295`), and the events. SQLite's SUM fails on integer overflow, so it sums the
/// halves (both far from overflowing), joined in i128 by [`usage_totals`]; PostgreSQL sums
/// bigints as numeric (no overflow) and bounds the cast back, then splits the sums the same way.
pub const USAGE_TOTALS: Dialects = Dialects {
    sqlite: "SELECT kind, SUM(quantity >> 32), SUM(quantity & 4294967295),
                    SUM(credits >> 32), SUM(credits & 4294967295), COUNT(*)
             FROM usage_events
             WHERE tenant_id = $1 AND occurred_at >= $2 AND occurred_at < $3 GROUP BY kind",
    postgres: "SELECT kind, q >> 32, q & 4294967295, c >> 32, c & 4294967295, n FROM (
                   SELECT kind, LEAST(SUM(quantity), 9223372036854775807)::bigint AS q,
                          LEAST(SUM(credits), 9223372036854775807)::bigint AS c, COUNT(*) AS n
                   FROM usage_events
                   WHERE tenant_id = $1 AND occurred_at >= to_timestamp($2::float8 / 1000.0)
                     AND occurred_at < to_timestamp($3::float8 / 1000.0) GROUP BY kind) t",
};

/// Totals of one usage kind in a window.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KindTotal {
    /// Units.
    pub quantity: i64,
    /// Credits charged.
    pub credits: i64,
    /// Events.
    pub events: i64,
}

/// Usage per kind with `from_ms <= occurred_at < to_ms`. Totals saturate at `i64::MAX`: a
/// quantity or a charge may each be up to `i64::MAX`, so the sum of a few can pass it, and an
/// overflow must not fail the read.
pub async fn usage_totals<E: Executor + ?Sized>(
    db: &mut E,
    tenant: &str,
    from_ms: i64,
    to_ms: i64,
) -> Result<BTreeMap<UsageKind, KindTotal>, SqlError> {
    let join = |high: i64, low: i64| {
        let sum = (i128::from(high) << 32) + i128::from(low);
        i64::try_from(sum).unwrap_or(if sum < 0 { i64::MIN } else { i64::MAX })
    };
    let statement = USAGE_TOTALS.pick(db.dialect());
    let rows = db
        .query(statement, &[tenant.into(), from_ms.into(), to_ms.into()])
        .await?;
    let mut totals = BTreeMap::new();
    for r in &rows {
        let Some(kind) = UsageKind::parse(&r.text(0)?) else {
            continue;
        };
        totals.insert(
            kind,
            KindTotal {
                quantity: join(r.int(1)?, r.int(2)?),
                credits: join(r.int(3)?, r.int(4)?),
                events: r.int(5)?,
            },
        );
    }
    Ok(totals)
}

/// An admin credit adjustment.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Adjustment {
    /// Id.
    pub adjustment_id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Signed credits.
    pub delta: i64,
    /// Why.
    pub reason: String,
    /// `queued` or `applied`.
    pub status: String,
    /// Epoch ms.
    pub created_at_ms: i64,
    /// Epoch ms, once applied.
    pub applied_at_ms: Option<i64>,
}

/// A new adjustment.
#[derive(Debug, Clone, Copy)]
pub struct NewAdjustment<'a> {
    /// Its id.
    pub id: &'a str,
    /// The key retries repeat.
    pub idempotency_key: &'a str,
    /// Whose balance.
    pub tenant_id: &'a str,
    /// Signed credits.
    pub delta: i64,
    /// Why.
    pub reason: &'a str,
}

/// Records an adjustment under its idempotency key at `now_ms`; a repeated key returns the
/// first one's id (`created == false`).
pub async fn create_adjustment<E: Executor + ?Sized>(
    db: &mut E,
    new: &NewAdjustment<'_>,
    now_ms: i64,
) -> Result<(String, bool), SqlError> {
    let args = vec![
        new.id.into(),
        new.idempotency_key.into(),
        new.tenant_id.into(),
        new.delta.into(),
        new.reason.into(),
    ];
    let (sql, args) = INSERT_ADJUSTMENT.stamped(db.dialect(), args, now_ms);
    if let Some(row) = db.query_opt(sql, &args).await? {
        return Ok((row.text(0)?, true));
    }
    let existing = db
        .query_opt(ADJUSTMENT_BY_KEY, &[new.idempotency_key.into()])
        .await?
        .ok_or_else(|| SqlError::new("the adjustment under this key is gone"))?;
    Ok((existing.text(0)?, false))
}

/// One adjustment by id.
pub async fn get_adjustment<E: Executor + ?Sized>(
    db: &mut E,
    id: &str,
) -> Result<Option<Adjustment>, SqlError> {
    let statement = ADJUSTMENT.pick(db.dialect());
    let row = db.query_opt(statement, &[id.into()]).await?;
    row.map(|r| {
        Ok(Adjustment {
            adjustment_id: r.text(0)?,
            tenant_id: r.text(1)?,
            delta: r.int(2)?,
            reason: r.text(3)?,
            status: r.text(4)?,
            created_at_ms: r.int(5)?,
            applied_at_ms: r.opt_int(6)?,
        })
    })
    .transpose()
}

/// A tenant — `$1` id, `$2` tier, `$3` email (SQLite: `$4` now; PostgreSQL defaults
/// `created_at`).
pub const INSERT_TENANT: Dialects = Dialects {
    sqlite: "INSERT INTO tenants (id, tier, email, created_at) VALUES ($1, $2, $3, $4)",
    postgres: PG_INSERT_TENANT,
};

/// A tenant's user — `$1` id, `$2` tenant, `$3` email (SQLite: `$4` now).
pub const INSERT_USER: Dialects = Dialects {
    sqlite: "INSERT INTO users (id, tenant_id, email, created_at) VALUES ($1, $2, $3, $4)",
    postgres: PG_INSERT_USER,
};

/// Creates a tenant and its first user at `now_ms`.
pub async fn create_tenant<E: Executor + ?Sized>(
    db: &mut E,
    tenant_id: &str,
    user_id: &str,
    tier: &str,
    email: Option<&str>,
    now_ms: i64,
) -> Result<(), SqlError> {
    let dialect = db.dialect();
    let tenant = vec![tenant_id.into(), tier.into(), email.into()];
    let (sql, args) = INSERT_TENANT.stamped(dialect, tenant, now_ms);
    db.execute(sql, &args).await?;
    let user = vec![user_id.into(), tenant_id.into(), email.into()];
    let (sql, args) = INSERT_USER.stamped(dialect, user, now_ms);
    db.execute(sql, &args).await?;
    Ok(())
}
