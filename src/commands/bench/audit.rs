//! `cognomega bench audit`: seeds a consistent money history with bulk SQL into a throwaway
//! store (1,000 guest tenants with their grants, N billable usage events each settled by its
//! ledger entry, balances summed from the ledger), then times what `cognomega audit` does over
//! it: sealing the whole ledger into a fresh hash chain, verifying the chain, and reconciling.
//! Reports ledger entries per second for each phase and for the whole audit.

use std::time::Instant;

use anyhow::bail;
use cognomega_stores::{audit, ledger_chain, Database};
use serde::Serialize;

use super::{peak_rss_mib, progress, Backend, Ctx, ThrowawayStore};

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Which database to seed and audit.
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    backend: Backend,
    /// Usage events to seed (each settled by one ledger entry; plus 1,000 grants).
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    backend: Backend,
    ledger_entries: u64,
    seed_s: f64,
    seal_s: f64,
    seal_entries_per_s: f64,
    verify_s: f64,
    verify_entries_per_s: f64,
    reconcile_s: f64,
    reconcile_entries_per_s: f64,
    audit_s: f64,
    audit_entries_per_s: f64,
    findings: usize,
    peak_rss_mib: f64,
}

const TENANTS: i64 = 1000;
/// Rows seeded per statement.
const SEED_CHUNK: u64 = 500_000;

pub async fn run(ctx: &Ctx, args: AuditArgs) -> anyhow::Result<()> {
    if args.events == 0 {
        bail!("--events must be at least 1");
    }
    let store = ThrowawayStore::create(args.backend, ctx.database_url.as_deref()).await?;
    let result = measure(&store.db, &args).await;
    store.destroy().await?;
    let r = result?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!(
        "cognomega bench audit: backend={:?} ledger entries={}",
        r.backend, r.ledger_entries
    );
    println!("  seed       {:>10.2} s (bulk SQL)", r.seed_s);
    for (what, s, rate) in [
        ("seal", r.seal_s, r.seal_entries_per_s),
        ("verify", r.verify_s, r.verify_entries_per_s),
        ("reconcile", r.reconcile_s, r.reconcile_entries_per_s),
        ("audit", r.audit_s, r.audit_entries_per_s),
    ] {
        println!("  {what:<10} {rate:>10.0} entries/s ({s:.2} s)");
    }
    println!(
        "  findings   {} (a seeded history is consistent)",
        r.findings
    );
    println!("  peak RSS   {:.1} MiB", r.peak_rss_mib);
    Ok(())
}

#[allow(clippy::cast_precision_loss)]
async fn measure(db: &Database, args: &AuditArgs) -> anyhow::Result<Report> {
    let show = !args.json;
    let started = Instant::now();
    seed_tenants(db).await?;
    let bar = progress(show, args.events, "seed");
    let mut first = 1;
    while first <= args.events {
        let last = (first + SEED_CHUNK - 1).min(args.events);
        seed_usage(db, first, last).await?;
        bar.set_position(last);
        first = last + 1;
    }
    seed_balances(db).await?;
    bar.finish_and_clear();
    let seed_s = started.elapsed().as_secs_f64();
    let entries = args.events + u64::try_from(TENANTS)?;

    let bar = progress(show, entries, "seal");
    let t = Instant::now();
    let sealed = ledger_chain::seal(db, &|n| bar.inc(n)).await?;
    let seal_s = t.elapsed().as_secs_f64();
    bar.finish_and_clear();
    if sealed.sealed != entries {
        bail!("sealed {} entries of {entries}", sealed.sealed);
    }
    let bar = progress(show, entries, "verify");
    let t = Instant::now();
    let chain = ledger_chain::verify(db, &|n| bar.inc(n)).await?;
    let verify_s = t.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let t = Instant::now();
    let recon = audit::reconcile(db).await?;
    let reconcile_s = t.elapsed().as_secs_f64();
    if chain.length != entries {
        bail!("verified {} chain positions of {entries}", chain.length);
    }
    let n = entries as f64;
    let audit_s = seal_s + verify_s + reconcile_s;
    Ok(Report {
        backend: args.backend,
        ledger_entries: entries,
        seed_s,
        seal_s,
        seal_entries_per_s: n / seal_s,
        verify_s,
        verify_entries_per_s: n / verify_s,
        reconcile_s,
        reconcile_entries_per_s: n / reconcile_s,
        audit_s,
        audit_entries_per_s: n / audit_s,
        findings: chain.findings.len() + recon.findings.len(),
        peak_rss_mib: peak_rss_mib(),
    })
}

async fn seed_tenants(db: &Database) -> anyhow::Result<()> {
    match db {
        Database::Sqlite(s) => {
            sqlx::query(
                "INSERT INTO tenants (id, tier, created_at) \
                 WITH RECURSIVE n(x) AS (SELECT 0 UNION ALL SELECT x + 1 FROM n WHERE x < ?1 - 1) \
                 SELECT 'tenant-' || x, 'guest', 1767225600000 FROM n",
            )
            .bind(TENANTS)
            .execute(&s.write)
            .await?;
            sqlx::query(
                "INSERT INTO ledger_entries (id, tenant_id, delta, kind, created_at) \
                 SELECT 'grant-' || id, id, 1000000, 'grant', created_at FROM tenants ORDER BY id",
            )
            .execute(&s.write)
            .await?;
        }
        Database::Postgres(p) => {
            sqlx::query(
                "INSERT INTO tenants (id, tier) \
                 SELECT 'tenant-' || x, 'guest' FROM generate_series(0, $1 - 1) AS x",
            )
            .bind(TENANTS)
            .execute(&p.pool)
            .await?;
            sqlx::query(
                "INSERT INTO ledger_entries (id, tenant_id, delta, kind) \
                 SELECT 'grant-' || id, id, 1000000, 'grant' FROM tenants ORDER BY id",
            )
            .execute(&p.pool)
            .await?;
        }
    }
    Ok(())
}

/// Usage events `first..=last` (the store is fresh, so their `seq` is their number) and the
/// ledger entry settling each, as the settlement consumer writes it.
async fn seed_usage(db: &Database, first: u64, last: u64) -> anyhow::Result<()> {
    let (first, last) = (i64::try_from(first)?, i64::try_from(last)?);
    match db {
        Database::Sqlite(s) => {
            sqlx::query(
                "INSERT INTO usage_events (tenant_id, idempotency_key, kind, quantity, credits, \
                     occurred_at, received_at) \
                 WITH RECURSIVE n(x) AS (SELECT ?1 UNION ALL SELECT x + 1 FROM n WHERE x < ?2) \
                 SELECT 'tenant-' || (x % ?3), 'bench-' || x, 'tokens_in', (x * 7919) % 5000 + 1, \
                     (x * 104729) % 50 + 1, 1767225600000 + x, 1767225600000 + x FROM n",
            )
            .bind(first)
            .bind(last)
            .bind(TENANTS)
            .execute(&s.write)
            .await?;
            sqlx::query(
                "INSERT INTO ledger_entries (id, tenant_id, delta, kind, ref, created_at) \
                 SELECT 'usage-' || seq, tenant_id, -credits, 'usage', idempotency_key, received_at \
                 FROM usage_events WHERE seq BETWEEN ?1 AND ?2 ORDER BY seq",
            )
            .bind(first)
            .bind(last)
            .execute(&s.write)
            .await?;
        }
        Database::Postgres(p) => {
            sqlx::query(
                "INSERT INTO usage_events (tenant_id, idempotency_key, kind, quantity, credits, \
                     occurred_at) \
                 SELECT 'tenant-' || (x % $3), 'bench-' || x, 'tokens_in', (x * 7919) % 5000 + 1, \
                     (x * 104729) % 50 + 1, now() \
                 FROM generate_series($1::bigint, $2::bigint) AS x",
            )
            .bind(first)
            .bind(last)
            .bind(TENANTS)
            .execute(&p.pool)
            .await?;
            sqlx::query(
                "INSERT INTO ledger_entries (id, tenant_id, delta, kind, ref) \
                 SELECT 'usage-' || seq, tenant_id, -credits, 'usage', idempotency_key \
                 FROM usage_events WHERE seq BETWEEN $1 AND $2 ORDER BY seq",
            )
            .bind(first)
            .bind(last)
            .execute(&p.pool)
            .await?;
        }
    }
    Ok(())
}

async fn seed_balances(db: &Database) -> anyhow::Result<()> {
    match db {
        Database::Sqlite(s) => {
            sqlx::query(
                "INSERT INTO balances (tenant_id, balance, updated_at) \
                 SELECT tenant_id, SUM(delta), 1767225600000 FROM ledger_entries GROUP BY tenant_id",
            )
            .execute(&s.write)
            .await?;
        }
        Database::Postgres(p) => {
            sqlx::query(
                "INSERT INTO balances (tenant_id, balance) \
                 SELECT tenant_id, SUM(delta)::bigint FROM ledger_entries GROUP BY tenant_id",
            )
            .execute(&p.pool)
            .await?;
        }
    }
    Ok(())
}
