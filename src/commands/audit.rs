//! `cognomega audit`: seals the ledger's hash chain, verifies it against the current ledger
//! rows, reconciles usage events ⇒ settlements ⇒ ledger ⇒ cached balances, and writes a proof
//! report (JSON + Markdown).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cognomega_core::queue::{QueueName, QueueStats};
use cognomega_stores::audit::{self, Counts, Finding, Problem};
use cognomega_stores::ledger_chain::{self, ChainHead};
use cognomega_stores::Database;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

use super::Ctx;

/// Audit the money path and write a proof report.
///
/// 1. Seal: append every ledger entry not yet in the hash chain (skip with --no-seal).
/// 2. Verify the chain: recompute every position's SHA-256 from the current ledger row and
///    report edited entries, deleted entries, and unsealed entries below the chain head.
/// 3. Reconcile: every billable usage event has exactly one matching ledger entry, every
///    ledger entry has its source (usage event, tenant grant, applied adjustment), every
///    applied adjustment has its entry, and every tenant's cached balance equals its ledger sum.
///    While the usage or settlement queues still hold messages the result is "pending".
///
/// Writes DIR/audit-<UTC time>.json and .md and prints the summary. Exit status: 0 clean,
/// 1 findings, 2 pending (work still queued; nothing else wrong).
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Where to write the report.
    #[arg(long, value_name = "DIR", default_value = "ops/proofs")]
    out: PathBuf,
    /// Print the JSON report instead of the summary.
    #[arg(long)]
    json: bool,
    /// Verify the chain as it is, without sealing new entries first.
    #[arg(long)]
    no_seal: bool,
    /// Wait up to SECONDS for the usage and settlement queues to drain before reconciling.
    #[arg(long, value_name = "SECONDS")]
    wait: Option<u64>,
    /// An earlier report (JSON): fail if the chain no longer holds the head it recorded, which
    /// catches a chain rewritten wholesale.
    #[arg(long, value_name = "REPORT")]
    previous: Option<PathBuf>,
}

/// Outcome of an audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Nothing wrong, nothing pending.
    Clean,
    /// Work still queued: the reconciliation cannot conclude (the chain is fine).
    Pending,
    /// At least one finding.
    Failed,
}

/// The queues whose messages the reconciliation waits for.
const MONEY_QUEUES: [&str; 2] = ["usage", "settlement"];

/// The machine-readable proof report.
#[derive(Debug, Serialize)]
pub struct Report {
    pub report: &'static str,
    pub version: &'static str,
    pub backend: &'static str,
    pub started_at: String,
    pub duration_ms: u64,
    pub status: Status,
    pub sealed_now: Option<u64>,
    pub chain: ChainSummary,
    pub reconciliation: ReconSummary,
    pub queues: Vec<QueueSummary>,
    pub previous_report: Option<PreviousCheck>,
    pub findings: Vec<Finding>,
}

#[derive(Debug, Serialize)]
pub struct ChainSummary {
    pub length: u64,
    pub head: Option<ChainHead>,
    pub unsealed_above_head: u64,
    pub problems: u64,
    pub verified: bool,
}

#[derive(Debug, Serialize)]
pub struct ReconSummary {
    pub counts: Counts,
    pub problems: u64,
    pub pending: bool,
}

#[derive(Debug, Serialize)]
pub struct QueueSummary {
    pub queue: String,
    pub depth: u64,
    pub in_flight: u64,
    pub delayed: u64,
    pub dlq_depth: u64,
}

#[derive(Debug, Serialize)]
pub struct PreviousCheck {
    pub file: String,
    pub pos: i64,
    pub hash: String,
    pub matches: bool,
}

impl QueueSummary {
    fn busy(&self) -> bool {
        self.depth + self.in_flight + self.delayed > 0
    }
}

impl From<QueueStats> for QueueSummary {
    fn from(s: QueueStats) -> Self {
        Self {
            queue: s.queue.as_str().to_owned(),
            depth: s.depth,
            in_flight: s.in_flight,
            delayed: s.delayed,
            dlq_depth: s.dlq_depth,
        }
    }
}

/// What to run.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub seal: bool,
    pub wait: Option<Duration>,
    pub previous: Option<(String, i64, String)>,
    pub progress: bool,
}

pub async fn run(ctx: Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let previous = args.previous.as_deref().map(read_previous).transpose()?;
    let db = ctx.open().await?;
    let options = Options {
        seal: !args.no_seal,
        wait: args.wait.map(Duration::from_secs),
        previous,
        progress: true,
    };
    let result = audit(&db, &options).await;
    db.close().await;
    let report = result?;
    let (json_path, md_path) = write(&args.out, &report)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", markdown(&report));
        println!();
    }
    println!("report: {}", json_path.display());
    println!("summary: {}", md_path.display());
    Ok(match report.status {
        Status::Clean => ExitCode::SUCCESS,
        Status::Pending => {
            eprintln!(
                "audit pending: the usage/settlement queues still hold messages; rerun with \
                 --wait SECONDS, or once `cognomega queues` shows them drained"
            );
            ExitCode::from(2)
        }
        Status::Failed => {
            eprintln!(
                "audit FAILED: {} finding(s), listed in {}.\n{}",
                report.findings.len(),
                md_path.display(),
                next_steps(&report.findings).join("\n")
            );
            ExitCode::FAILURE
        }
    })
}

/// Seals (unless told not to), verifies, reconciles.
pub async fn audit(db: &Database, options: &Options) -> anyhow::Result<Report> {
    let started_at = chrono::Utc::now();
    let clock = Instant::now();
    let sealed_now = if options.seal {
        let bar = bar(options.progress, "seal");
        let sealed = ledger_chain::seal(db, &|n| bar.inc(n))
            .await
            .context("sealing the ledger")?;
        bar.finish_and_clear();
        Some(sealed.sealed)
    } else {
        None
    };
    let bar = bar(options.progress, "verify");
    let chain = ledger_chain::verify(db, &|n| bar.inc(n))
        .await
        .context("verifying the hash chain")?;
    bar.finish_and_clear();
    let mut findings = chain.findings.clone();
    let mut chain_problems = chain.problems;
    let previous_report = match &options.previous {
        None => None,
        Some((file, pos, hash)) => {
            let now = ledger_chain::hash_at(db, *pos).await?;
            let matches = now.as_deref() == Some(hash.as_str());
            if !matches {
                chain_problems += 1;
                findings.push(Finding {
                    problem: Problem::ChainRewritten,
                    pos: Some(*pos),
                    seq: None,
                    id: None,
                    tenant_id: None,
                    detail: format!(
                        "{file} recorded hash {hash} at position {pos}; the chain now holds {}",
                        now.as_deref().unwrap_or("no such position")
                    ),
                });
            }
            Some(PreviousCheck {
                file: file.clone(),
                pos: *pos,
                hash: hash.clone(),
                matches,
            })
        }
    };
    let queues = queue_state(db, options.wait).await?;
    let pending = queues.iter().any(QueueSummary::busy);
    let recon = audit::reconcile(db).await.context("reconciling")?;
    let recon_problems = recon.findings.len() as u64;
    findings.extend(recon.findings);
    let status = if chain_problems > 0 || (recon_problems > 0 && !pending) {
        Status::Failed
    } else if pending {
        Status::Pending
    } else {
        Status::Clean
    };
    Ok(Report {
        report: "cognomega audit",
        version: env!("CARGO_PKG_VERSION"),
        backend: db.backend(),
        started_at: started_at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        duration_ms: u64::try_from(clock.elapsed().as_millis()).unwrap_or(u64::MAX),
        status,
        sealed_now,
        chain: ChainSummary {
            length: chain.length,
            head: chain.head,
            unsealed_above_head: chain.unsealed_above_head,
            problems: chain_problems,
            verified: chain_problems == 0,
        },
        reconciliation: ReconSummary {
            counts: recon.counts,
            problems: recon_problems,
            pending,
        },
        queues,
        previous_report,
        findings,
    })
}

/// The money queues' statistics, after waiting up to `wait` for them to drain.
async fn queue_state(db: &Database, wait: Option<Duration>) -> anyhow::Result<Vec<QueueSummary>> {
    let driver = db.queue();
    let deadline = wait.map(|w| Instant::now() + w);
    loop {
        let mut out = Vec::new();
        for name in MONEY_QUEUES {
            let q = QueueName::parse(name).map_err(|e| anyhow::anyhow!("{e}"))?;
            out.push(QueueSummary::from(driver.stats(&q).await?));
        }
        let busy = out.iter().any(QueueSummary::busy);
        match deadline {
            Some(d) if busy && Instant::now() < d => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            _ => return Ok(out),
        }
    }
}

fn bar(show: bool, what: &'static str) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::no_length();
    bar.set_style(
        ProgressStyle::with_template("{prefix:>7} {pos} entries ({per_sec}, {elapsed})")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_prefix(what);
    bar
}

/// Reads an earlier report's chain head: (file, pos, hash).
fn read_previous(path: &Path) -> anyhow::Result<(String, i64, String)> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the earlier report {}", path.display()))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a JSON audit report", path.display()))?;
    let head = &v["chain"]["head"];
    match (head["pos"].as_i64(), head["hash"].as_str()) {
        (Some(pos), Some(hash)) => Ok((path.display().to_string(), pos, hash.to_owned())),
        _ => anyhow::bail!(
            "{} records no chain head (chain.head.pos and chain.head.hash)",
            path.display()
        ),
    }
}

/// Writes DIR/audit-<time>.json and .md (a numbered suffix when that second is taken).
fn write(dir: &Path, report: &Report) -> anyhow::Result<(PathBuf, PathBuf)> {
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create the report directory {}", dir.display()))?;
    let stamp = chrono::DateTime::parse_from_rfc3339(&report.started_at).map_or_else(
        |_| "unknown".into(),
        |t| t.format("%Y%m%dT%H%M%SZ").to_string(),
    );
    let json = serde_json::to_string_pretty(report)? + "\n";
    let md = markdown(report);
    for n in 1..1000 {
        let base = if n == 1 {
            format!("audit-{stamp}")
        } else {
            format!("audit-{stamp}-{n}")
        };
        let json_path = dir.join(format!("{base}.json"));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&json_path)
        {
            Ok(mut f) => {
                use std::io::Write as _;
                f.write_all(json.as_bytes())
                    .with_context(|| format!("cannot write {}", json_path.display()))?;
                let md_path = dir.join(format!("{base}.md"));
                std::fs::write(&md_path, &md)
                    .with_context(|| format!("cannot write {}", md_path.display()))?;
                return Ok((json_path, md_path));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(e).with_context(|| format!("cannot write {}", json_path.display()))
            }
        }
    }
    anyhow::bail!("{} already holds 999 reports for {stamp}", dir.display())
}

/// The readable summary.
#[must_use]
pub fn markdown(r: &Report) -> String {
    use std::fmt::Write as _;
    let c = &r.reconciliation.counts;
    let mut s = String::new();
    let status = match r.status {
        Status::Clean => "CLEAN (exit 0)",
        Status::Failed => "FAILED (exit 1)",
        Status::Pending => "PENDING (exit 2: work still queued)",
    };
    let _ = writeln!(s, "# Cognomega audit, {}\n", r.started_at);
    let _ = writeln!(s, "**Result: {status}**\n");
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(
        s,
        "| backend | {} (cognomega {}), {} ms |",
        r.backend, r.version, r.duration_ms
    );
    let head = r.chain.head.as_ref().map_or_else(
        || "empty".to_owned(),
        |h| format!("position {} seals seq {}, `{}`", h.pos, h.entry_seq, h.hash),
    );
    let _ = writeln!(
        s,
        "| hash chain | {} positions, {} problem(s); head: {head} |",
        r.chain.length, r.chain.problems
    );
    let _ = writeln!(
        s,
        "| sealed now | {} (unsealed above the head: {}) |",
        r.sealed_now
            .map_or_else(|| "skipped (--no-seal)".to_owned(), |n| n.to_string()),
        r.chain.unsealed_above_head
    );
    let kinds: Vec<String> = c
        .ledger_by_kind
        .iter()
        .map(|(k, v)| format!("{k} {} ({:+})", v.entries, v.delta))
        .collect();
    let _ = writeln!(
        s,
        "| ledger | {} entries: {} |",
        c.ledger_entries,
        if kinds.is_empty() {
            "none".to_owned()
        } else {
            kinds.join(", ")
        }
    );
    let _ = writeln!(
        s,
        "| usage events | {} ({} billable) |",
        c.usage_events, c.billable_usage_events
    );
    let _ = writeln!(
        s,
        "| tenants / balance rows | {} / {} |",
        c.tenants, c.balances
    );
    let _ = writeln!(
        s,
        "| ledger total / cached balances | {} / {} credits |",
        c.ledger_total, c.balance_total
    );
    let adjustments: Vec<String> = c
        .adjustments
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    let _ = writeln!(
        s,
        "| adjustments | {} |",
        if adjustments.is_empty() {
            "none".to_owned()
        } else {
            adjustments.join(", ")
        }
    );
    for q in &r.queues {
        let _ = writeln!(
            s,
            "| queue `{}` | {} ready, {} in flight, {} delayed, {} dead |",
            q.queue, q.depth, q.in_flight, q.delayed, q.dlq_depth
        );
    }
    if let Some(p) = &r.previous_report {
        let _ = writeln!(
            s,
            "| earlier report | {}: position {} {} |",
            p.file,
            p.pos,
            if p.matches { "matches" } else { "DIFFERS" }
        );
    }
    let _ = writeln!(s, "\n## Findings ({})\n", r.findings.len());
    if r.findings.is_empty() {
        let _ = writeln!(
            s,
            "None: every sealed entry matches its hash, every billable usage event has its ledger \
             entry, every entry its source, and every cached balance its ledger sum."
        );
    } else {
        let _ = writeln!(
            s,
            "| problem | seq | id | tenant | detail |\n|---|---|---|---|---|"
        );
        for f in &r.findings {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                serde_json::to_value(f.problem)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default(),
                f.seq.map_or_else(String::new, |n| n.to_string()),
                f.id.as_deref().unwrap_or(""),
                f.tenant_id.as_deref().unwrap_or(""),
                f.detail.replace('|', "\\|")
            );
        }
        let _ = writeln!(s, "\n## What to check next\n");
        for step in next_steps(&r.findings) {
            let _ = writeln!(s, "- {step}");
        }
    }
    s
}

/// One hint per kind of problem found.
fn next_steps(findings: &[Finding]) -> Vec<&'static str> {
    let has = |p: &[Problem]| findings.iter().any(|f| p.contains(&f.problem));
    let mut out = Vec::new();
    if has(&[
        Problem::Altered,
        Problem::Deleted,
        Problem::Unsealed,
        Problem::PositionMissing,
        Problem::ChainRewritten,
    ]) {
        out.push(
            "The ledger (or its chain) was changed outside the settlement path: compare the named \
             entries with a backup or the ledger_entries export, and check who had write access \
             to the database.",
        );
    }
    if has(&[Problem::Unsettled, Problem::AdjustmentUnsettled]) {
        out.push(
            "Settlements are missing: look for dead settlement messages (`cognomega dlq list \
             settlement.dlq`, then `cognomega dlq replay settlement.dlq`).",
        );
    }
    if has(&[Problem::SettlementMismatch, Problem::NoSource]) {
        out.push(
            "Ledger entries disagree with (or lack) their usage event, grant or adjustment: \
             inspect the named entries and sources.",
        );
    }
    if has(&[Problem::BalanceMismatch]) {
        out.push(
            "Cached balances drifted from the ledger: once the ledger checks are clean, \
             `POST /admin/rebuild-balance-cache` recomputes them.",
        );
    }
    out
}
