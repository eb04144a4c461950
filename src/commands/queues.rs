//! `cognomega queues`: the statistics table of every queue.

use cognomega_core::queue::QueueStats;

use super::Ctx;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

pub async fn run(ctx: Ctx, args: Args) -> anyhow::Result<()> {
    let db = ctx.open().await?;
    let driver = db.queue();
    let mut all = Vec::new();
    for q in driver.queues().await? {
        all.push(driver.stats(&q).await?);
    }
    db.close().await;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&all)?);
    } else {
        print!("{}", table(&all));
    }
    Ok(())
}

fn fmt_ms(ms: Option<i64>) -> String {
    match ms {
        None => "-".into(),
        Some(ms) if ms < 1000 => format!("≤{ms}ms"),
        Some(ms) => format!("≤{}s", ms / 1000),
    }
}

fn table(stats: &[QueueStats]) -> String {
    let header = [
        "QUEUE",
        "DEPTH",
        "IN-FLIGHT",
        "DELAYED",
        "DLQ",
        "OLDEST",
        "ACKED",
        "DRAIN p50",
        "DRAIN p99",
    ];
    let rows: Vec<[String; 9]> = stats
        .iter()
        .map(|s| {
            [
                s.queue.to_string(),
                s.depth.to_string(),
                s.in_flight.to_string(),
                s.delayed.to_string(),
                s.dlq_depth.to_string(),
                if s.oldest_age_ms == 0 {
                    "-".into()
                } else {
                    format!("{:.1}s", s.oldest_age_ms as f64 / 1000.0)
                },
                s.drain.count().to_string(),
                fmt_ms(s.drain.quantile_upper_ms(0.5)),
                fmt_ms(s.drain.quantile_upper_ms(0.99)),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let line = |cells: Vec<&str>, out: &mut String| {
        let parts: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(parts.join("  ").trim_end());
        out.push('\n');
    };
    line(header.to_vec(), &mut out);
    for row in &rows {
        line(row.iter().map(String::as_str).collect(), &mut out);
    }
    if rows.is_empty() {
        out.push_str(
            "(no queues yet: start `cognomega serve` or `cognomega worker` to declare them)\n",
        );
    }
    out
}
