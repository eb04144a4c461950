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

use cognomega_core::sql::{Dialects, Executor as _, Row, SqlError};
use serde::Serialize;

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

/// Usage events, and those with credits ≠ 0.
const USAGE_COUNTS: Dialects = Dialects {
    sqlite: "SELECT COUNT(*), COALESCE(SUM(credits <> 0), 0) FROM usage_events",
    postgres: "SELECT COUNT(*), COUNT(*) FILTER (WHERE credits <> 0) FROM usage_events",
};

/// Ledger entries and summed deltas per kind.
const LEDGER_BY_KIND: &str =
    "SELECT kind, COUNT(*), CAST(SUM(delta) AS BIGINT) FROM ledger_entries GROUP BY kind";

/// Tenants, cached balance rows and summed cached balances.
const BALANCE_COUNTS: &str = "SELECT (SELECT COUNT(*) FROM tenants), COUNT(*),
     CAST(COALESCE(SUM(balance), 0) AS BIGINT) FROM balances";

/// Credit adjustments counted per status.
const ADJUSTMENTS_BY_STATUS: &str =
    "SELECT status, COUNT(*) FROM credit_adjustments GROUP BY status";

/// The one row of an aggregate without `GROUP BY`.
async fn one_row(db: &Database, sql: &str) -> Result<Row, StoreError> {
    crate::sql::Reader(db)
        .query_opt(sql, &[])
        .await?
        .ok_or(StoreError::Sqlx(sqlx::Error::RowNotFound))
}

async fn counts(db: &Database) -> Result<Counts, StoreError> {
    let mut c = Counts::default();
    let usage = one_row(db, USAGE_COUNTS.pick(db.dialect())).await?;
    (c.usage_events, c.billable_usage_events) = (usage.int(0)?, usage.int(1)?);
    let kinds = crate::sql::Reader(db).query(LEDGER_BY_KIND, &[]).await?;
    for r in &kinds {
        let (entries, delta) = (r.int(1)?, r.int(2)?);
        c.ledger_entries += entries;
        c.ledger_total += delta;
        c.ledger_by_kind
            .insert(r.text(0)?, KindSum { entries, delta });
    }
    let balances = one_row(db, BALANCE_COUNTS).await?;
    (c.tenants, c.balances, c.balance_total) =
        (balances.int(0)?, balances.int(1)?, balances.int(2)?);
    let adjustments = crate::sql::Reader(db)
        .query(ADJUSTMENTS_BY_STATUS, &[])
        .await?;
    c.adjustments = adjustments
        .iter()
        .map(|r| Ok((r.text(0)?, r.int(1)?)))
        .collect::<Result<_, SqlError>>()?;
    Ok(c)
}

/// Billable usage events without their entry, and entries that disagree with their event, at
/// most `$1`: `u.seq, u.tenant_id, u.credits, l.seq, l.id, l.tenant_id, l.delta` (the `l`
/// columns null when the entry is missing).
const SETTLEMENT_FINDINGS: Dialects = Dialects {
    sqlite: "SELECT u.seq, u.tenant_id, u.credits, l.seq, l.id, l.tenant_id, l.delta
             FROM usage_events u LEFT JOIN ledger_entries l ON l.id = 'usage-' || u.seq
             WHERE (l.id IS NULL AND u.credits <> 0)
                OR (l.id IS NOT NULL AND (l.tenant_id <> u.tenant_id OR l.delta <> -u.credits
                    OR l.kind <> 'usage' OR l.ref IS NOT u.idempotency_key))
             ORDER BY u.seq LIMIT $1",
    postgres: "SELECT u.seq, u.tenant_id, u.credits, l.seq, l.id, l.tenant_id, l.delta
               FROM usage_events u LEFT JOIN ledger_entries l ON l.id = 'usage-' || u.seq
               WHERE (l.id IS NULL AND u.credits <> 0)
                  OR (l.id IS NOT NULL AND (l.tenant_id <> u.tenant_id OR l.delta <> -u.credits
                      OR l.kind <> 'usage' OR l.ref IS DISTINCT FROM u.idempotency_key))
               ORDER BY u.seq LIMIT $1",
};

/// Billable usage events without their entry, and entries that disagree with their event.
async fn settlements(db: &Database) -> Result<Vec<Finding>, StoreError> {
    let mut read = crate::sql::Reader(db);
    let rows = read
        .query(
            SETTLEMENT_FINDINGS.pick(read.dialect()),
            &[listed_limit().into()],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let (useq, tenant, credits) = (r.int(0)?, r.text(1)?, r.int(2)?);
        out.push(match r.opt_int(3)? {
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
                id: r.opt_text(4)?,
                tenant_id: Some(tenant.clone()),
                detail: format!(
                    "ledger entry {lseq} settles usage event {useq} (tenant {tenant}, {credits} \
                     credits) but says tenant {}, delta {}",
                    r.opt_text(5)?.unwrap_or_default(),
                    r.opt_int(6)?.unwrap_or_default()
                ),
            },
        });
    }
    Ok(out)
}

/// Ledger entries whose source is missing or disagrees, at most `$1`: `seq, id, tenant_id,
/// kind, delta`. On PostgreSQL the regex keeps the cast from failing on an id that was
/// tampered into non-digits.
const SOURCE_FINDINGS: Dialects = Dialects {
    sqlite: "SELECT l.seq, l.id, l.tenant_id, l.kind, l.delta FROM ledger_entries l
             WHERE CASE l.kind
                 WHEN 'usage' THEN NOT EXISTS (SELECT 1 FROM usage_events u
                     WHERE u.seq = CAST(substr(l.id, 7) AS INTEGER) AND l.id = 'usage-' || u.seq)
                 WHEN 'grant' THEN l.id <> 'grant-' || l.tenant_id
                     OR NOT EXISTS (SELECT 1 FROM tenants t WHERE t.id = l.tenant_id)
                 WHEN 'adjustment' THEN NOT EXISTS (SELECT 1 FROM credit_adjustments a
                     WHERE a.id = l.ref AND l.id = 'adjust-' || a.id AND a.tenant_id = l.tenant_id
                       AND a.delta = l.delta AND a.status = 'applied')
                 ELSE 1 END
             ORDER BY l.seq LIMIT $1",
    postgres: "SELECT l.seq, l.id, l.tenant_id, l.kind, l.delta FROM ledger_entries l
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
};

/// Ledger entries whose source is missing or disagrees.
async fn sources(db: &Database) -> Result<Vec<Finding>, StoreError> {
    let mut read = crate::sql::Reader(db);
    let rows = read
        .query(
            SOURCE_FINDINGS.pick(read.dialect()),
            &[listed_limit().into()],
        )
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let (seq, id, tenant, kind, delta) =
            (r.int(0)?, r.text(1)?, r.text(2)?, r.text(3)?, r.int(4)?);
        let source = match kind.as_str() {
            "usage" => "no usage event with that seq",
            "grant" => "no tenant with that id, or an id other than grant-{tenant}",
            "adjustment" => "no applied adjustment with that id, tenant and delta",
            _ => "an unknown kind",
        };
        out.push(Finding {
            problem: Problem::NoSource,
            pos: None,
            seq: Some(seq),
            detail: format!(
                "ledger entry {seq} ({id}, {kind}, {delta} credits) has no source: {source}"
            ),
            id: Some(id),
            tenant_id: Some(tenant),
        });
    }
    Ok(out)
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
    .collect::<Result<Vec<_>, SqlError>>()?;
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

/// Tenants whose cached balance (a missing row counts as 0) is not their ledger sum, at most
/// `$1`: `tenant_id, ledger sum, cached balance, whether a balance row exists (0/1)`.
const BALANCE_FINDINGS: &str = "SELECT tenant_id, CAST(SUM(l) AS BIGINT), CAST(SUM(b) AS BIGINT),
            CAST(SUM(has) AS BIGINT) FROM (
         SELECT tenant_id, delta AS l, CAST(0 AS BIGINT) AS b, 0 AS has FROM ledger_entries
         UNION ALL SELECT tenant_id, 0, balance, 1 FROM balances) x
     GROUP BY tenant_id HAVING SUM(l) <> SUM(b) ORDER BY tenant_id LIMIT $1";

/// Tenants whose cached balance (a missing row counts as 0) is not their ledger sum.
async fn balances(db: &Database) -> Result<Vec<Finding>, StoreError> {
    let rows = crate::sql::Reader(db)
        .query(BALANCE_FINDINGS, &[listed_limit().into()])
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for r in &rows {
        let (tenant, ledger, cached, has) = (r.text(0)?, r.int(1)?, r.int(2)?, r.int(3)?);
        out.push(Finding {
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
        });
    }
    Ok(out)
}
