//! `cognomega probe`: end-to-end check of the workers consuming a database.

use std::time::{Duration, Instant};

use anyhow::bail;
use cognomega_consumers::probe::{self, Probe};
use cognomega_core::queue::OutgoingMessage;
use cognomega_stores::Database;

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Probe messages to send.
    #[arg(long, default_value_t = 100)]
    messages: usize,
    /// Seconds to wait for every effect.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

pub async fn run(ctx: Ctx, args: Args) -> anyhow::Result<()> {
    let db = ctx.open().await?;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let msgs = (0..args.messages)
        .map(|i| {
            OutgoingMessage::json(&Probe {
                key: format!("{run_id}-{i}"),
                work_ms: 0,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let started = Instant::now();
    db.queue().send_batch(&probe::queue(), msgs).await?;
    let deadline = started + Duration::from_secs(args.timeout);
    loop {
        let done = count_effects(&db, &run_id).await?;
        if done >= args.messages as i64 {
            println!(
                "{} probes applied in {:.1} ms",
                args.messages,
                started.elapsed().as_secs_f64() * 1e3
            );
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "only {done} of {} probes applied after {}s: is a `cognomega worker` (or `serve`) running against this database?",
                args.messages,
                args.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    db.close().await;
    Ok(())
}

async fn count_effects(db: &Database, run_id: &str) -> anyhow::Result<i64> {
    let pattern = format!("{run_id}-%");
    Ok(match db {
        Database::Sqlite(s) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM queue_probe_effects WHERE key LIKE ?1")
                .bind(pattern)
                .fetch_one(&s.read)
                .await?
        }
        Database::Postgres(pg) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM queue_probe_effects WHERE key LIKE $1")
                .bind(pattern)
                .fetch_one(&pg.pool)
                .await?
        }
    })
}
