//! `cognomega schedules`: the periodic schedules, their last and next runs, and the leader.

use cognomega_core::time::UnixMillis;
use cognomega_stores::schedules;

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

fn now() -> UnixMillis {
    UnixMillis(chrono::Utc::now().timestamp_millis())
}

fn rfc3339(t: UnixMillis) -> String {
    chrono::DateTime::<chrono::Utc>::from_timestamp_millis(t.0).map_or_else(
        || t.0.to_string(),
        |d| d.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    )
}

pub async fn run(ctx: Ctx, args: Args) -> anyhow::Result<()> {
    let all = ctx.file_config()?.schedules()?;
    let db = ctx.open().await?;
    let last = schedules::last_ticks(&db).await?;
    let leader = schedules::leader(&db).await?;
    db.close().await;
    let t = now();
    let rows: Vec<serde_json::Value> = all
        .iter()
        .map(|s| {
            let last = last.get(&s.name);
            serde_json::json!({
                "name": s.name,
                "cron": s.spec.cron,
                "queue": s.queue.as_str(),
                "body": s.spec.body,
                "enabled": s.spec.enabled,
                "last_tick": last.map(|l| rfc3339(l.tick_at)),
                "last_enqueued_at": last.map(|l| rfc3339(l.enqueued_at)),
                "last_message_id": last.and_then(|l| l.message_id).map(|m| m.0),
                "next_run": if s.spec.enabled { s.next_after(t).map(rfc3339) } else { None },
            })
        })
        .collect();
    let leader_json = leader.as_ref().map(|l| {
        serde_json::json!({
            "holder": l.holder,
            "term": l.term,
            "expires_at": rfc3339(l.expires_at),
            "live": l.expires_at > t,
        })
    });
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({
                "schedules": rows,
                "leader": leader_json,
            }))?
        );
        return Ok(());
    }
    println!(
        "{:<20} {:<18} {:<12} {:<8} {:<22} {:<22}",
        "NAME", "CRON", "QUEUE", "ENABLED", "LAST RUN", "NEXT RUN"
    );
    for s in &all {
        let last = last
            .get(&s.name)
            .map_or_else(|| "never".to_owned(), |l| rfc3339(l.tick_at));
        let next = if s.spec.enabled {
            s.next_after(t).map_or_else(|| "never".to_owned(), rfc3339)
        } else {
            "disabled".to_owned()
        };
        println!(
            "{:<20} {:<18} {:<12} {:<8} {:<22} {:<22}",
            s.name,
            s.spec.cron,
            s.queue.as_str(),
            if s.spec.enabled { "yes" } else { "no" },
            last,
            next
        );
    }
    match leader {
        Some(l) if l.expires_at > t => println!(
            "\nleader: {} (term {}, lease until {})",
            l.holder,
            l.term,
            rfc3339(l.expires_at)
        ),
        Some(l) => println!(
            "\nleader: none live (last: {}, lapsed {}); start `cognomega serve` or `cognomega worker` to run the schedules",
            l.holder,
            rfc3339(l.expires_at)
        ),
        None => println!(
            "\nleader: none yet; schedules run inside `cognomega serve` and `cognomega worker`"
        ),
    }
    Ok(())
}
