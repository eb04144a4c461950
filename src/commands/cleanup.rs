//! `cognomega cleanup`: what `POST /admin/cleanup` does, from the command line.

use std::time::Duration;

use anyhow::Context as _;
use cognomega_stores::cleanup::{self, CleanupOptions, CleanupReport};
use cognomega_stores::objects::Objects;

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only count what would be deleted.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON (the body `POST /admin/cleanup` answers).
    #[arg(long)]
    json: bool,
    /// Guest token lifetime in seconds (as `serve --token-ttl`): older guests hold no live token.
    #[arg(long, env = "COGNOMEGA_TOKEN_TTL", default_value_t = 86_400)]
    token_ttl: u64,
    /// Objects and rows younger than this many seconds are never touched.
    #[arg(long, default_value_t = 3600)]
    grace_secs: u64,
}

pub async fn run(ctx: Ctx, args: Args) -> anyhow::Result<()> {
    let db = ctx.open().await?;
    let objects =
        Objects::open(&ctx.storage()?.objects_url).context("cannot open the object store")?;
    let opts = CleanupOptions {
        dry_run: args.dry_run,
        token_ttl: Duration::from_secs(args.token_ttl),
        grace: Duration::from_secs(args.grace_secs),
    };
    let report = cleanup::run(&db, &objects, opts).await;
    db.close().await;
    let report = report?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", summary(&report));
    }
    Ok(())
}

fn summary(r: &CleanupReport) -> String {
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    let mark = if r.dry_run { "would mark" } else { "marked" };
    format!(
        "{verb} {} acked messages, {} dead messages, {} expired idempotency keys\n\
         {verb} {} expired guest tenants with zero balance\n\
         {verb} {} orphaned objects\n\
         {mark} {} rows whose object is gone as expired\n",
        r.messages.acked,
        r.messages.dead,
        r.messages.dedup_keys,
        r.guest_tenants,
        r.orphaned_objects,
        r.rows_missing_objects
    )
}
