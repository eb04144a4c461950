//! SQL of `cognomega audit`: the reconciliation of usage events ⇒ settlements ⇒ ledger ⇒ cached
//! balances (the hash chain is in [`crate::ledger_chain`]).
//!
//! How sources map to ledger entries (see [`crate::billing`] and the producers):
//!
//! | ledger `kind` | `id` | source |
//! |---|---|---|
//! | `usage` | `usage-{usage_events.seq}` | the usage event (`ref` = its idempotency key, `delta` = −credits, same tenant) |
//! | `grant` | `grant-{tenant_id}` | the tenant row |
//! | `adjustment` | `adjust-{credit_adjustments.id}` | the adjustment (`ref` = its id, same tenant and delta, status `applied`) |
//!
//! Every check is one aggregate or anti-join statement, so the work stays in the database.

use std::collections::BTreeMap;

use serde::Serialize;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;

use crate::{Database, StoreError};

/// Findings listed per problem at most (all are counted).
pub const MAX_LISTED: usize = 1000;

pub(crate) fn listed_limit() -> i64 {
    i64::try_from(MAX_LISTED).unwrap_or(i64::MAX)
}

/// What is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Problem {
    /// A sealed ledger entry no longer matches its hash.
    Altered,
    /// A sealed ledger entry was deleted.
    Deleted,
    /// An entry at or below the chain head that was never sealed.
    Unsealed,
    /// Chain positions are missing.
    PositionMissing,
    /// The chain no longer holds the head an earlier report recorded.
    ChainRewritten,
    /// A billable usage event without its ledger entry.
    Unsettled,
    /// A usage event's ledger entry disagrees with it (tenant, delta, kind or reference).
    SettlementMismatch,
    /// A ledger entry without its source (usage event, tenant grant, applied adjustment).
    NoSource,
    /// An applied adjustment without its ledger entry.
    AdjustmentUnsettled,
    /// A tenant's cached balance differs from the sum of its ledger entries.
    BalanceMismatch,
}

impl Problem {
    /// The check that finds it: `chain` or `reconciliation`.
    #[must_use]
    pub fn check(self) -> &'static str {
        match self {
            Self::Altered
            | Self::Deleted
            | Self::Unsealed
            | Self::PositionMissing
            | Self::ChainRewritten => "chain",
            Self::Unsettled
            | Self::SettlementMismatch
            | Self::NoSource
            | Self::AdjustmentUnsettled
            | Self::BalanceMismatch => "reconciliation",
        }
    }
}

/// One problem, naming what it concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What is wrong.
    pub problem: Problem,
    /// Chain position, for chain findings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pos: Option<i64>,
    /// Ledger `seq` (usage findings: the usage event's `seq`).
    pub seq: Option<i64>,
    /// Ledger entry id (or adjustment id).
    pub id: Option<String>,
    /// Tenant.
    pub tenant_id: Option<String>,
    /// A sentence for people.
    pub detail: String,
}

/// Entries and summed credits of one ledger kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct KindSum {
    /// Entries.
    pub entries: i64,
    /// Summed delta.
    pub delta: i64,
}

/// What the reconciliation looked at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    /// Usage events.
    pub usage_events: i64,
    /// Usage events with credits ≠ 0 (each needs one ledger entry).
    pub billable_usage_events: i64,
    /// Ledger entries.
    pub ledger_entries: i64,
    /// Ledger entries and credits per kind.
    pub ledger_by_kind: BTreeMap<String, KindSum>,
    /// Summed ledger deltas.
    pub ledger_total: i64,
    /// Tenants.
    pub tenants: i64,
    /// Cached balance rows.
    pub balances: i64,
    /// Summed cached balances.
    pub balance_total: i64,
    /// Adjustments per status (`queued`, `applied`).
    pub adjustments: BTreeMap<String, i64>,
}

/// The outcome of [`reconcile`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Reconciliation {
    /// What was counted.
    pub counts: Counts,
    /// Every problem found, at most [`MAX_LISTED`] per problem.
    pub findings: Vec<Finding>,
}

/// Runs a query on either backend with `i64` parameters (`?N` on SQLite, `$N` on PostgreSQL).
pub(crate) async fn fetch_all<T>(
    db: &Database,
    sqlite: &str,
    postgres: &str,
    binds: &[i64],
) -> Result<Vec<T>, StoreError>
where
    T: for<'r> sqlx::FromRow<'r, SqliteRow> + for<'r> sqlx::FromRow<'r, PgRow> + Send + Unpin,
{
    Ok(match db {
        Database::Sqlite(s) => {
            let mut q = sqlx::query_as::<_, T>(sqlite);
            for b in binds {
                q = q.bind(*b);
            }
            q.fetch_all(&s.read).await?
        }
        Database::Postgres(p) => {
            let mut q = sqlx::query_as::<_, T>(postgres);
            for b in binds {
                q = q.bind(*b);
            }
            q.fetch_all(&p.pool).await?
        }
    })
}

/// Reconciles usage events, ledger entries, adjustments and cached balances.
///
/// # Errors
/// Database errors.
pub async fn reconcile(db: &Database) -> Result<Reconciliation, StoreError> {
    let mut out = Reconciliation {
        counts: counts(db).await?,
        findings: Vec::new(),
    };
    out.findings.extend(settlements(db).await?);
    out.findings.extend(sources(db).await?);
    out.findings.extend(adjustments(db).await?);
    out.findings.extend(balances(db).await?);
    Ok(out)
}

/// Credit adjustments counted per status.
const ADJUSTMENTS_BY_STATUS: &str =
    "SELECT status, COUNT(*) FROM credit_adjustments GROUP BY status";

async fn counts(db: &Database) -> Result<Counts, StoreError> {
    let mut c = Counts::default();
    let usage: Vec<(i64, i64)> = fetch_all(
        db,
        "SELECT COUNT(*), COALESCE(SUM(credits <> 0), 0) FROM usage_events",
        "SELECT COUNT(*), COUNT(*) FILTER (WHERE credits <> 0) FROM usage_events",
        &[],
    )
    .await?;
    (c.usage_events, c.billable_usage_events) = usage.first().copied().unwrap_or_default();
    let kinds: Vec<(String, i64, i64)> = fetch_all(
        db,
        "SELECT kind, COUNT(*), SUM(delta) FROM ledger_entries GROUP BY kind",
        "SELECT kind, COUNT(*), SUM(delta)::bigint FROM ledger_entries GROUP BY kind",
        &[],
    )
    .await?;
    for (kind, entries, delta) in kinds {
        c.ledger_entries += entries;
        c.ledger_total += delta;
        c.ledger_by_kind.insert(kind, KindSum { entries, delta });
    }
    let balances: Vec<(i64, i64, i64)> = fetch_all(
        db,
        "SELECT (SELECT COUNT(*) FROM tenants), COUNT(*), COALESCE(SUM(balance), 0) FROM balances",
        "SELECT (SELECT COUNT(*) FROM tenants), COUNT(*), COALESCE(SUM(balance), 0)::bigint FROM balances",
        &[],
    )
    .await?;
    (c.tenants, c.balances, c.balance_total) = balances.first().copied().unwrap_or_default();
    let adjustments = cognomega_core::sql::Executor::query(
        &mut crate::sql::Reader(db),
        ADJUSTMENTS_BY_STATUS,
        &[],
    )
    .await?;
    c.adjustments = adjustments
        .iter()
        .map(|r| Ok((r.text(0)?, r.int(1)?)))
        .collect::<Result<_, cognomega_core::sql::SqlError>>()?;
    Ok(c)
}

/// Billable usage events without their entry, and entries that disagree with their event.
async fn settlements(db: &Database) -> Result<Vec<Finding>, StoreError> {
    type R = (
        i64,
        String,
        i64,
        Option<i64>,
        Option<String>,
        Option<String>,
        Option<i64>,
    );
    let rows: Vec<R> = fetch_all(
        db,
        "SELECT u.seq, u.tenant_id, u.credits, l.seq, l.id, l.tenant_id, l.delta
         FROM usage_events u LEFT JOIN ledger_entries l ON l.id = 'usage-' || u.seq
         WHERE (l.id IS NULL AND u.credits <> 0)
            OR (l.id IS NOT NULL AND (l.tenant_id <> u.tenant_id OR l.delta <> -u.credits
                OR l.kind <> 'usage' OR l.ref IS NOT u.idempotency_key))
         ORDER BY u.seq LIMIT ?1",
        "SELECT u.seq, u.tenant_id, u.credits, l.seq, l.id, l.tenant_id, l.delta
         FROM usage_events u LEFT JOIN ledger_entries l ON l.id = 'usage-' || u.seq
         WHERE (l.id IS NULL AND u.credits <> 0)
            OR (l.id IS NOT NULL AND (l.tenant_id <> u.tenant_id OR l.delta <> -u.credits
                OR l.kind <> 'usage' OR l.ref IS DISTINCT FROM u.idempotency_key))
         ORDER BY u.seq LIMIT $1",
        &[listed_limit()],
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(useq, tenant, credits, lseq, lid, ltenant, ldelta)| match lseq {
                None => Finding {
                    problem: Problem::Unsettled,
                    pos: None,
                    seq: None,
                    id: Some(format!("usage-{useq}")),
                    tenant_id: Some(tenant),
                    detail: format!(
                        "usage event {useq} ({credits} credits) has no ledger entry usage-{useq}"
                    ),
                },
                Some(lseq) => Finding {
                    problem: Problem::SettlementMismatch,
                    pos: None,
                    seq: Some(lseq),
                    id: lid,
                    tenant_id: Some(tenant.clone()),
                    detail: format!(
                    "ledger entry {lseq} settles usage event {useq} (tenant {tenant}, {credits} \
                     credits) but says tenant {}, delta {}",
                    ltenant.unwrap_or_default(),
                    ldelta.unwrap_or_default()
                ),
                },
            },
        )
        .collect())
}

/// Ledger entries whose source is missing or disagrees.
async fn sources(db: &Database) -> Result<Vec<Finding>, StoreError> {
    let rows: Vec<(i64, String, String, String, i64)> = fetch_all(
        db,
        "SELECT l.seq, l.id, l.tenant_id, l.kind, l.delta FROM ledger_entries l
         WHERE CASE l.kind
             WHEN 'usage' THEN NOT EXISTS (SELECT 1 FROM usage_events u
                 WHERE u.seq = CAST(substr(l.id, 7) AS INTEGER) AND l.id = 'usage-' || u.seq)
             WHEN 'grant' THEN l.id <> 'grant-' || l.tenant_id
                 OR NOT EXISTS (SELECT 1 FROM tenants t WHERE t.id = l.tenant_id)
             WHEN 'adjustment' THEN NOT EXISTS (SELECT 1 FROM credit_adjustments a
                 WHERE a.id = l.ref AND l.id = 'adjust-' || a.id AND a.tenant_id = l.tenant_id
                   AND a.delta = l.delta AND a.status = 'applied')
             ELSE 1 END
         ORDER BY l.seq LIMIT ?1",
        // The regex keeps the cast from failing on an id that was tampered into non-digits.
        "SELECT l.seq, l.id, l.tenant_id, l.kind, l.delta FROM ledger_entries l
         WHERE CASE l.kind
             WHEN 'usage' THEN NOT EXISTS (SELECT 1 FROM usage_events u
                 WHERE u.seq = CASE WHEN l.id ~ '^usage-[0-9]{1,18}$'
                                    THEN substr(l.id, 7)::bigint END)
             WHEN 'grant' THEN l.id <> 'grant-' || l.tenant_id
                 OR NOT EXISTS (SELECT 1 FROM tenants t WHERE t.id = l.tenant_id)
             WHEN 'adjustment' THEN NOT EXISTS (SELECT 1 FROM credit_adjustments a
                 WHERE a.id = l.ref AND l.id = 'adjust-' || a.id AND a.tenant_id = l.tenant_id
                   AND a.delta = l.delta AND a.status = 'applied')
             ELSE true END
         ORDER BY l.seq LIMIT $1",
        &[listed_limit()],
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(|(seq, id, tenant, kind, delta)| {
            let source = match kind.as_str() {
                "usage" => "no usage event with that seq",
                "grant" => "no tenant with that id, or an id other than grant-{tenant}",
                "adjustment" => "no applied adjustment with that id, tenant and delta",
                _ => "an unknown kind",
            };
            Finding {
                problem: Problem::NoSource,
                pos: None,
                seq: Some(seq),
                detail: format!(
                    "ledger entry {seq} ({id}, {kind}, {delta} credits) has no source: {source}"
                ),
                id: Some(id),
                tenant_id: Some(tenant),
            }
        })
        .collect())
}

/// Applied adjustments without their `adjust-<id>` ledger entry, at most `$1`, by id.
const UNSETTLED_ADJUSTMENTS: &str =
    "SELECT a.id, a.tenant_id, a.delta FROM credit_adjustments a WHERE a.status = 'applied'
           AND NOT EXISTS (SELECT 1 FROM ledger_entries l WHERE l.id = 'adjust-' || a.id)
         ORDER BY a.id LIMIT $1";

/// Applied adjustments without their ledger entry.
async fn adjustments(db: &Database) -> Result<Vec<Finding>, StoreError> {
    let rows = cognomega_core::sql::Executor::query(
        &mut crate::sql::Reader(db),
        UNSETTLED_ADJUSTMENTS,
        &[listed_limit().into()],
    )
    .await?
    .iter()
    .map(|r| Ok((r.text(0)?, r.text(1)?, r.int(2)?)))
    .collect::<Result<Vec<_>, cognomega_core::sql::SqlError>>()?;
    Ok(rows
        .into_iter()
        .map(|(id, tenant, delta)| Finding {
            problem: Problem::AdjustmentUnsettled,
            pos: None,
            seq: None,
            detail: format!(
                "adjustment {id} ({delta} credits) is applied but has no ledger entry adjust-{id}"
            ),
            id: Some(id),
            tenant_id: Some(tenant),
        })
        .collect())
}

/// Tenants whose cached balance (a missing row counts as 0) is not their ledger sum.
async fn balances(db: &Database) -> Result<Vec<Finding>, StoreError> {
    let rows: Vec<(String, i64, i64, i64)> = fetch_all(
        db,
        "SELECT tenant_id, SUM(l), SUM(b), SUM(has) FROM (
             SELECT tenant_id, delta AS l, 0 AS b, 0 AS has FROM ledger_entries
             UNION ALL SELECT tenant_id, 0, balance, 1 FROM balances)
         GROUP BY tenant_id HAVING SUM(l) <> SUM(b) ORDER BY tenant_id LIMIT ?1",
        "SELECT tenant_id, SUM(l)::bigint, SUM(b)::bigint, SUM(has)::bigint FROM (
             SELECT tenant_id, delta AS l, 0::bigint AS b, 0 AS has FROM ledger_entries
             UNION ALL SELECT tenant_id, 0, balance, 1 FROM balances) x
         GROUP BY tenant_id HAVING SUM(l) <> SUM(b) ORDER BY tenant_id LIMIT $1",
        &[listed_limit()],
    )
    .await?;
    Ok(rows
        .into_iter()
        .map(|(tenant, ledger, cached, has)| Finding {
            problem: Problem::BalanceMismatch,
            pos: None,
            seq: None,
            id: None,
            detail: format!(
                "tenant {tenant}: the ledger sums to {ledger} credits but the cached balance is \
                 {cached}{}",
                if has == 0 { " (no balance row)" } else { "" }
            ),
            tenant_id: Some(tenant),
        })
        .collect())
}
