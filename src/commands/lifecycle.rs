//! `cognomega lifecycle plan|apply|sweep`: the lifecycle policy as bucket rules, sent to the
//! provider, and the sweeper that does what the provider cannot.

use std::sync::Arc;

use anyhow::Context as _;
use cognomega_consumers::lifecycle::{SweepOutcome, Sweeper};
use cognomega_r2_lifecycle::plan::{bucket_lifecycle_xml, sweeper_only};
use cognomega_r2_lifecycle::policy::Tier;
use cognomega_r2_lifecycle::sweep::SweepReport;
use cognomega_stores::objects::{LifecycleApplied, Objects};
use indicatif::{ProgressBar, ProgressStyle};
use tokio_util::sync::CancellationToken;

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, clap::Subcommand)]
enum What {
    /// Print the policy as an S3/R2 bucket lifecycle configuration (the
    /// PutBucketLifecycleConfiguration body); sweeper-only actions are listed in a comment.
    Plan,
    /// Send that configuration to the S3/R2 bucket of --objects-url (PUT /BUCKET?lifecycle,
    /// SigV4-signed). On a local folder nothing is sent: the sweeper enforces the policy.
    Apply,
    /// Run one sweep now: recompress cold text artifacts, record tiers, delete what expired
    /// (on the local folder; on S3/R2 as a backstop to the bucket rules).
    Sweep(SweepArgs),
}

#[derive(Debug, clap::Args)]
struct SweepArgs {
    /// Report what would change; change nothing.
    #[arg(long)]
    dry_run: bool,
    /// Decide as if it were this time (RFC 3339), e.g. to preview what a date will expire.
    /// Default: now. A resumed sweep keeps the time it started with.
    #[arg(long, value_name = "RFC3339")]
    as_of: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub async fn run(ctx: Ctx, args: Args) -> anyhow::Result<()> {
    let policy = ctx.lifecycle_policy()?;
    match args.what {
        What::Plan => {
            print!("{}", bucket_lifecycle_xml(&policy));
            for line in sweeper_only(&policy) {
                eprintln!("sweeper-only: {line}");
            }
            Ok(())
        }
        What::Apply => apply(&ctx, &policy).await,
        What::Sweep(args) => sweep(&ctx, policy, args).await,
    }
}

async fn apply(ctx: &Ctx, policy: &cognomega_r2_lifecycle::policy::Policy) -> anyhow::Result<()> {
    let storage = ctx.storage()?;
    let objects = Objects::open(&storage.objects_url).context("cannot open the object store")?;
    let xml = bucket_lifecycle_xml(policy);
    match objects
        .put_bucket_lifecycle(&xml)
        .await
        .with_context(|| format!("lifecycle apply to {}", storage.objects_url))?
    {
        LifecycleApplied::Applied { status, url } => {
            println!("applied the bucket lifecycle configuration: {url} answered HTTP {status}");
            for line in sweeper_only(policy) {
                println!(
                    "sweeper-only (run `cognomega lifecycle sweep` or the lifecycle queue): {line}"
                );
            }
        }
        LifecycleApplied::LocalFolder => {
            println!(
                "{} is a local folder: it has no lifecycle rules of its own, so nothing was sent. \
                 The sweeper enforces the whole policy there (Infrequent Access is recorded as a \
                 tier, expired objects are deleted): run `cognomega lifecycle sweep`, or send \
                 {{\"dry_run\":false}} to the `lifecycle` queue on a schedule.",
                storage.objects_url
            );
        }
    }
    Ok(())
}

async fn sweep(
    ctx: &Ctx,
    policy: cognomega_r2_lifecycle::policy::Policy,
    args: SweepArgs,
) -> anyhow::Result<()> {
    let now_ms = match &args.as_of {
        Some(raw) => chrono::DateTime::parse_from_rfc3339(raw)
            .with_context(|| format!("--as-of {raw:?} is not an RFC 3339 time"))?
            .timestamp_millis(),
        None => chrono::Utc::now().timestamp_millis(),
    };
    let db = ctx.open().await?;
    let objects = Objects::open(&ctx.storage()?.objects_url)?;
    let sweeper = Sweeper::new(db.clone(), objects, Arc::new(policy));
    let bar = if args.json {
        ProgressBar::hidden()
    } else {
        // Rows not yet expired; row-less objects (exports/) add to it as they are listed.
        let bar = ProgressBar::new(cognomega_stores::lifecycle::live_rows(&db).await?);
        bar.set_style(
            ProgressStyle::with_template("   sweep [{bar:40}] {pos}/{len} ({per_sec}) {msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar
    };
    let shown = bar.clone();
    let progress = move |r: &SweepReport| {
        if r.examined > shown.length().unwrap_or(0) {
            shown.set_length(r.examined);
        }
        shown.set_position(r.examined);
        shown.set_message(format!(
            "{} recompressed, {} to IA, {} expired",
            r.recompressed.objects, r.to_infrequent_access.objects, r.expired.objects
        ));
    };
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let on_signal = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            stop.cancel();
        }
    });
    let outcome = sweeper.run(now_ms, args.dry_run, &progress, &cancel).await;
    on_signal.abort();
    bar.finish_and_clear();
    db.close().await;
    let outcome = outcome?;
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "dry_run": args.dry_run,
                "resumed": outcome.resumed,
                "interrupted": outcome.interrupted,
                "as_of_ms": outcome.now_ms,
                "report": outcome.report,
            })
        );
    } else {
        print!("{}", render(&outcome, args.dry_run));
    }
    Ok(())
}

fn render(outcome: &SweepOutcome, dry_run: bool) -> String {
    use std::fmt::Write as _;
    let r = &outcome.report;
    let verb = if dry_run { "would change" } else { "changed" };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "lifecycle sweep{}{}{}: {} objects examined; {verb}:",
        if dry_run { " (dry run)" } else { "" },
        if outcome.resumed { " (resumed)" } else { "" },
        if outcome.interrupted {
            " (interrupted: the next sweep resumes)"
        } else {
            ""
        },
        r.examined
    );
    let _ = writeln!(
        out,
        "  recompressed       {:>9} objects {:>14} bytes before, {} bytes saved",
        r.recompressed.objects, r.recompressed.bytes, r.bytes_saved
    );
    let _ = writeln!(
        out,
        "  → infrequent_access {:>8} objects {:>14} bytes",
        r.to_infrequent_access.objects, r.to_infrequent_access.bytes
    );
    let _ = writeln!(
        out,
        "  → expired          {:>9} objects {:>14} bytes",
        r.expired.objects, r.expired.bytes
    );
    if !r.census.is_empty() {
        let _ = writeln!(
            out,
            "recorded tiers{}:",
            if dry_run { " (as they stand)" } else { "" }
        );
        for tier in Tier::ALL {
            let c = r.census.get(&tier).copied().unwrap_or_default();
            let _ = writeln!(
                out,
                "  {:<18} {:>9} objects {:>14} bytes",
                tier.as_str(),
                c.objects,
                c.bytes
            );
        }
    }
    let _ = writeln!(out, "bytes saved: {}", r.bytes_saved);
    out
}
