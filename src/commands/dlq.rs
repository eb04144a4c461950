//! `cognomega dlq list|replay`.

use cognomega_core::queue::{MessageId, QueueName};

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    action: Action,
}

#[derive(Debug, clap::Subcommand)]
enum Action {
    /// List dead messages in a dead-letter queue (oldest first).
    List {
        /// The dead-letter queue.
        queue: String,
        /// Most messages to show.
        #[arg(long, default_value_t = 50)]
        limit: usize,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Move dead messages back to the queue they failed in, with fresh attempts.
    Replay {
        /// The dead-letter queue.
        queue: String,
        /// Only these message ids (default: all).
        #[arg(long = "id")]
        ids: Vec<i64>,
    },
}

fn parse_queue(raw: &str) -> anyhow::Result<QueueName> {
    QueueName::parse(raw).map_err(|e| anyhow::anyhow!("{e}; `cognomega queues` lists the queues"))
}

pub async fn run(ctx: Ctx, args: Args) -> anyhow::Result<()> {
    let db = ctx.open().await?;
    let driver = db.queue();
    match args.action {
        Action::List { queue, limit, json } => {
            let dead = driver.dead_letters(&parse_queue(&queue)?, limit).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&dead)?);
            } else if dead.is_empty() {
                println!("{queue} is empty");
            } else {
                for m in dead {
                    println!(
                        "{}\tfrom={}\tattempts={}\terror={}\tbody={}",
                        m.id,
                        m.original_queue
                            .map_or_else(|| "-".into(), |q| q.to_string()),
                        m.attempts,
                        m.error.unwrap_or_default(),
                        m.body_preview.chars().take(120).collect::<String>()
                    );
                }
            }
        }
        Action::Replay { queue, ids } => {
            let ids: Vec<MessageId> = ids.into_iter().map(MessageId).collect();
            let filter = if ids.is_empty() {
                None
            } else {
                Some(ids.as_slice())
            };
            let moved = driver.replay(&parse_queue(&queue)?, filter).await?;
            println!("replayed {moved} messages from {queue}");
        }
    }
    db.close().await;
    Ok(())
}
