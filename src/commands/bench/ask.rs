//! `cognomega bench ask`: the orchestrator's own cost. A fake OpenAI-compatible provider runs on
//! loopback (answering at once); the same request is timed straight to the provider and through
//! `POST /api/si/ask` of a `cognomega serve` child routed to it, one at a time, so the
//! difference is what the platform adds (auth, policy, the credit and budget read, routing,
//! token accounting, the usage enqueue). Then closed-loop load over several connections gives
//! asks per second, and the balances are checked to settle to the exact charge.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use cognomega_providers::fake::FakeProvider;
use http::{Method, StatusCode};
use serde::Serialize;
use serde_json::{json, Value};

use super::client::{self, Conn};
use super::server::Server;
use super::{percentile, progress, Backend, Ctx};

#[derive(Debug, clap::Args)]
pub(super) struct AskArgs {
    /// Store of the server this benchmark starts.
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    backend: Backend,
    /// Sequential requests timed each way (direct and through the API).
    #[arg(long, default_value_t = 2_000)]
    samples: u32,
    /// Connections of the throughput phase.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Seconds of the throughput phase.
    #[arg(long, default_value_t = 10)]
    duration: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    backend: String,
    samples: u32,
    direct_p50_ms: f64,
    direct_p99_ms: f64,
    ask_p50_ms: f64,
    ask_p99_ms: f64,
    added_p50_ms: f64,
    added_p99_ms: f64,
    connections: u32,
    asks_per_s: f64,
    asks: u64,
    errors: u64,
    credits_settled: bool,
    /// p50 of each stage the server reported in `Server-Timing` during the sequential phase.
    server_stages_p50_ms: std::collections::BTreeMap<String, f64>,
}

const GRANT: i64 = 1_000_000_000;
const PROMPT: &str = "Summarize the queue-first design of this platform in one sentence.";

pub(super) async fn run(ctx: &Ctx, args: AskArgs) -> anyhow::Result<()> {
    if args.samples == 0 || args.connections == 0 || args.duration == 0 {
        bail!("--samples, --connections and --duration must be at least 1");
    }
    let fake = FakeProvider::start()
        .await
        .context("cannot start the loopback provider")?;
    // A guest policy like the default but with a budget the load cannot reach, so every ask
    // still checks the budget.
    let config = tempfile_config()?;
    let extra = [
        "--guest-grant".to_owned(),
        GRANT.to_string(),
        "--provider-order".to_owned(),
        "openai".to_owned(),
        "--config".to_owned(),
        config.display().to_string(),
        // One guest asks as fast as it can; `bench gateway` measures the limiter on its own.
        "--rate-limits".to_owned(),
        "off".to_owned(),
    ];
    let env = [
        ("OPENAI_API_KEY".to_owned(), "bench-key".to_owned()),
        ("OPENAI_BASE_URL".to_owned(), fake.openai_base()),
    ];
    let server = Server::start_with_env(ctx, args.backend, None, &extra, &env).await?;
    let result = measure(&server, &fake, &args).await;
    let stopped = server.stop().await;
    let _ = std::fs::remove_file(&config);
    let report = result?;
    stopped?;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "ask overhead ({}, fake provider on loopback, {} sequential samples each way)\n  \
             direct to provider  p50 {:.3} ms  p99 {:.3} ms\n  \
             via /api/si/ask     p50 {:.3} ms  p99 {:.3} ms\n  \
             added               p50 {:.3} ms  p99 {:.3} ms   (target p50 <= 1 ms)\n\
             server stages p50   {}\n\
             throughput: {:.0} asks/s over {} connections ({} asks, {} errors); balances settled exactly: {}",
            report.backend,
            report.samples,
            report.direct_p50_ms,
            report.direct_p99_ms,
            report.ask_p50_ms,
            report.ask_p99_ms,
            report.added_p50_ms,
            report.added_p99_ms,
            report
                .server_stages_p50_ms
                .iter()
                .map(|(name, ms)| format!("{name} {ms:.3} ms"))
                .collect::<Vec<_>>()
                .join(", "),
            report.asks_per_s,
            report.connections,
            report.asks,
            report.errors,
            report.credits_settled,
        );
    }
    Ok(())
}

fn tempfile_config() -> anyhow::Result<std::path::PathBuf> {
    let path =
        std::env::temp_dir().join(format!("cognomega-bench-ask-{}.toml", uuid::Uuid::new_v4()));
    std::fs::write(
        &path,
        "[ai.policy.guest]\nmax_tokens = 1024\ndaily_tokens = 1000000000000\n",
    )?;
    Ok(path)
}

async fn timed(
    conn: &mut Conn,
    path: &'static str,
    auth: Option<&http::HeaderValue>,
    body: &Bytes,
) -> anyhow::Result<(f64, client::Reply)> {
    let started = Instant::now();
    let reply = conn
        .send(Method::POST, path, auth, Some(body.clone()))
        .await?;
    Ok((started.elapsed().as_secs_f64() * 1000.0, reply))
}

async fn measure(server: &Server, fake: &FakeProvider, args: &AskArgs) -> anyhow::Result<Report> {
    let mut api = server.target.connect().await?;
    let backend = client::health(&mut api).await?;
    let guest = client::create_guest(&mut api).await?;
    client::wait_for_balances(
        &mut api,
        std::slice::from_ref(&guest),
        GRANT,
        Duration::from_secs(30),
    )
    .await?;
    let provider = client::Target::parse(&fake.openai_base().replace("/v1", "")).await?;
    let mut direct = provider.connect().await?;
    let direct_body = Bytes::from(
        json!({"model": "gpt-4o-mini", "messages": [{"role": "user", "content": PROMPT}], "max_tokens": 1024, "stream": false})
            .to_string(),
    );
    let ask_body = Bytes::from(json!({ "prompt": PROMPT }).to_string());
    let mut charged = 0_i64;
    // Warm both paths (connections, caches, the tokenizer) before timing.
    for _ in 0..100 {
        timed(&mut direct, "/v1/chat/completions", None, &direct_body).await?;
        let (_, reply) = timed(&mut api, "/api/si/ask", Some(&guest.auth), &ask_body).await?;
        charged += credits_of(&reply)?;
    }
    let bar = progress(true, u64::from(args.samples) * 2, "timing");
    let mut direct_ms = Vec::with_capacity(args.samples as usize);
    let mut ask_ms = Vec::with_capacity(args.samples as usize);
    let mut stages: std::collections::BTreeMap<String, Vec<f64>> = Default::default();
    // Interleaved, so drift in the machine's load hits both series alike.
    for _ in 0..args.samples {
        let (ms, reply) = timed(&mut direct, "/v1/chat/completions", None, &direct_body).await?;
        if reply.status != StatusCode::OK {
            bail!(
                "the fake provider answered {}: {}",
                reply.status,
                reply.snippet()
            );
        }
        direct_ms.push(ms);
        let (ms, reply) = timed(&mut api, "/api/si/ask", Some(&guest.auth), &ask_body).await?;
        charged += credits_of(&reply)?;
        for (name, dur) in reply
            .server_timing
            .as_deref()
            .map(parse_timing)
            .unwrap_or_default()
        {
            stages.entry(name).or_default().push(dur);
        }
        ask_ms.push(ms);
        bar.inc(2);
    }
    bar.finish_and_clear();
    direct_ms.sort_by(f64::total_cmp);
    ask_ms.sort_by(f64::total_cmp);

    // Throughput: every connection asks back to back for the duration.
    let conns = server
        .target
        .connect_many(args.connections as usize)
        .await?;
    let deadline = Instant::now() + Duration::from_secs(u64::from(args.duration));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut conn in conns {
        let auth = guest.auth.clone();
        let body = ask_body.clone();
        tasks.push(tokio::spawn(async move {
            let (mut n, mut errors, mut credits) = (0_u64, 0_u64, 0_i64);
            while Instant::now() < deadline {
                match conn
                    .send(Method::POST, "/api/si/ask", Some(&auth), Some(body.clone()))
                    .await
                {
                    Ok(reply) if reply.status == StatusCode::OK => {
                        n += 1;
                        credits += credits_of(&reply).unwrap_or(0);
                    }
                    _ => errors += 1,
                }
            }
            (n, errors, credits)
        }));
    }
    let (mut asks, mut errors) = (0_u64, 0_u64);
    for t in tasks {
        let (n, e, c) = t.await?;
        asks += n;
        errors += e;
        charged += c;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let credits_settled = client::wait_for_balances(
        &mut api,
        std::slice::from_ref(&guest),
        GRANT - charged,
        Duration::from_secs(120),
    )
    .await
    .is_ok();
    let (d50, d99) = (percentile(&direct_ms, 0.5), percentile(&direct_ms, 0.99));
    let (a50, a99) = (percentile(&ask_ms, 0.5), percentile(&ask_ms, 0.99));
    #[allow(clippy::cast_precision_loss)]
    let asks_per_s = asks as f64 / elapsed;
    Ok(Report {
        backend,
        samples: args.samples,
        direct_p50_ms: d50,
        direct_p99_ms: d99,
        ask_p50_ms: a50,
        ask_p99_ms: a99,
        added_p50_ms: a50 - d50,
        added_p99_ms: a99 - d99,
        connections: args.connections,
        asks_per_s,
        asks,
        errors,
        credits_settled,
        server_stages_p50_ms: stages
            .into_iter()
            .map(|(name, mut v)| {
                v.sort_by(f64::total_cmp);
                (name, percentile(&v, 0.5))
            })
            .collect(),
    })
}

/// `name;dur=1.5, other;dur=0.2` ⇒ `[("name", 1.5), ("other", 0.2)]` (entries without a
/// duration are skipped).
fn parse_timing(header: &str) -> Vec<(String, f64)> {
    header
        .split(',')
        .filter_map(|entry| {
            let mut parts = entry.trim().split(';');
            let name = parts.next()?.trim();
            let dur = parts.find_map(|p| p.trim().strip_prefix("dur="))?;
            Some((name.to_owned(), dur.parse().ok()?))
        })
        .collect()
}

fn credits_of(reply: &client::Reply) -> anyhow::Result<i64> {
    if reply.status != StatusCode::OK {
        bail!(
            "POST /api/si/ask answered {}: {}",
            reply.status,
            reply.snippet()
        );
    }
    let v: Value = serde_json::from_slice(&reply.body)?;
    v["credits_used"]
        .as_i64()
        .context("no credits_used in the answer")
}

#[cfg(test)]
mod tests {
    use super::parse_timing;

    #[test]
    fn server_timing_entries_are_parsed() {
        assert_eq!(
            parse_timing("standing;dur=0.120, provider;desc=\"x\";dur=1.5, bill, bad;dur=x"),
            vec![("standing".to_owned(), 0.12), ("provider".to_owned(), 1.5)]
        );
        assert!(parse_timing("").is_empty());
    }
}
