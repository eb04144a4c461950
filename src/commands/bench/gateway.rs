//! `cognomega bench gateway`: the cost of the gateway itself and of its rate limiting.
//!
//! For each setting of `--rate-limits` (off, then on, by default), a `cognomega serve` child
//! over a throwaway store takes three open-loop phases at a constant rate (the client of
//! [`super::credits`]: latency from each request's scheduled time):
//! 1. `GET /healthz` (no tenant, not rate-limited: the router, the layers and a `SELECT 1`);
//! 2. `GET /credits` of one guest, a balance-cache hit (and one bucket check when on);
//! 3. `GET /credits` of `--miss-requests` fresh guests, one request each: every one a cache
//!    miss (the balance is read from the database) and, when on, a new bucket.
//!
//! It prints each phase's percentiles, the overhead of rate limiting in %, and the ratios to
//! the seed SLOs (gateway p90 60 ms; `/credits` p90 150 ms on a hit, 500 ms on a miss).

use std::time::Duration;

use anyhow::bail;
use serde::Serialize;

use super::client;
use super::credits::{Load, Work};
use super::server::Server;
use super::{percentile, progress, Backend, Ctx};

/// The balance a new guest of the child server starts with (its default `--guest-grant`).
const GRANT: i64 = 1000;
/// Seed SLOs, p90 in ms.
const SLO_GATEWAY_MS: f64 = 60.0;
const SLO_CREDITS_HIT_MS: f64 = 150.0;
const SLO_CREDITS_MISS_MS: f64 = 500.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(super) enum Limits {
    /// Off, then on, on two fresh servers: the overhead in %.
    Both,
    On,
    Off,
}

#[derive(Debug, clap::Args)]
pub(super) struct GatewayArgs {
    /// Store of the server this benchmark starts (a throwaway SQLite file, or a PostgreSQL
    /// database created on --database-url's server and dropped afterwards).
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    backend: Backend,
    /// Requests per second, scheduled at a constant rate (open loop).
    #[arg(long, default_value_t = 5_000)]
    rps: u32,
    /// Seconds of load of the /healthz and the cache-hit phases.
    #[arg(long, default_value_t = 10)]
    duration: u32,
    /// Fresh guests of the cache-miss phase: one GET /credits each, at --rps.
    #[arg(long, default_value_t = 2_000)]
    miss_requests: u32,
    /// Keep-alive connections in the client's pool.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Rate limiting of the servers measured.
    #[arg(long, value_enum, default_value_t = Limits::Both)]
    rate_limits: Limits,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Phase {
    requests: u64,
    ok: u64,
    errors: u64,
    wrong_balances: u64,
    achieved_rps: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    scheduler_lag_p99_ms: f64,
}

#[derive(Debug, Serialize)]
struct Run {
    rate_limits: bool,
    healthz: Phase,
    credits_hit: Phase,
    credits_miss: Phase,
    /// CPU seconds the server child used during the three phases.
    server_cpu_s: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Slo {
    /// `GET /healthz` p90 / 60 ms.
    gateway_p90_ratio: f64,
    /// `GET /credits` (hit) p90 / 150 ms.
    credits_hit_p90_ratio: f64,
    /// `GET /credits` (miss) p90 / 500 ms.
    credits_miss_p90_ratio: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    backend: Backend,
    target_rps: u32,
    duration_s: u32,
    connections: u32,
    runs: Vec<Run>,
    /// (on − off) / off of the cache-hit phase's p50, p90 and p99, in %.
    overhead_pct: Option<Overhead>,
    /// Of the last run (rate limits on, unless only off was measured).
    slo: Slo,
}

#[derive(Debug, Serialize)]
struct Overhead {
    credits_hit_p50: f64,
    credits_hit_p90: f64,
    credits_hit_p99: f64,
    credits_miss_p90: f64,
    healthz_p99: f64,
}

pub(super) async fn run(ctx: &Ctx, args: GatewayArgs) -> anyhow::Result<()> {
    if args.rps == 0 || args.duration == 0 || args.connections == 0 || args.miss_requests == 0 {
        bail!("--rps, --duration, --miss-requests and --connections must be at least 1");
    }
    let modes: &[bool] = match args.rate_limits {
        Limits::Both => &[false, true],
        Limits::On => &[true],
        Limits::Off => &[false],
    };
    let mut runs = Vec::new();
    for &on in modes {
        let flag = vec![
            "--rate-limits".to_owned(),
            (if on { "on" } else { "off" }).to_owned(),
        ];
        let server = Server::start_with(ctx, args.backend, None, &flag).await?;
        let result = tokio::select! {
            r = measure(&server, &args, on) => r.map_err(|e| server.explain(e)),
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        let stopped = server.stop().await;
        runs.push(result?);
        stopped?;
    }
    let pct = |on: f64, off: f64| {
        if off > 0.0 {
            (on - off) / off * 100.0
        } else {
            0.0
        }
    };
    let overhead = match runs.as_slice() {
        [off, on] => Some(Overhead {
            credits_hit_p50: pct(on.credits_hit.p50_ms, off.credits_hit.p50_ms),
            credits_hit_p90: pct(on.credits_hit.p90_ms, off.credits_hit.p90_ms),
            credits_hit_p99: pct(on.credits_hit.p99_ms, off.credits_hit.p99_ms),
            credits_miss_p90: pct(on.credits_miss.p90_ms, off.credits_miss.p90_ms),
            healthz_p99: pct(on.healthz.p99_ms, off.healthz.p99_ms),
        }),
        _ => None,
    };
    let last = runs
        .last()
        .ok_or_else(|| anyhow::anyhow!("no run measured"))?;
    let slo = Slo {
        gateway_p90_ratio: last.healthz.p90_ms / SLO_GATEWAY_MS,
        credits_hit_p90_ratio: last.credits_hit.p90_ms / SLO_CREDITS_HIT_MS,
        credits_miss_p90_ratio: last.credits_miss.p90_ms / SLO_CREDITS_MISS_MS,
    };
    let report = Report {
        backend: args.backend,
        target_rps: args.rps,
        duration_s: args.duration,
        connections: args.connections,
        runs,
        overhead_pct: overhead,
        slo,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_text(&report);
    }
    let wrong: u64 = report
        .runs
        .iter()
        .map(|r| r.credits_hit.wrong_balances)
        .sum();
    if wrong > 0 {
        bail!("{wrong} cache hits showed another balance than the guest's {GRANT}");
    }
    Ok(())
}

fn print_phase(name: &str, p: &Phase) {
    println!(
        "  {name:<14} p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms; {:.0} req/s, {} of {} ok, {} errors (scheduler lag p99 {:.3} ms)",
        p.p50_ms, p.p90_ms, p.p99_ms, p.p999_ms, p.max_ms, p.achieved_rps, p.ok, p.requests, p.errors, p.scheduler_lag_p99_ms
    );
}

fn print_text(r: &Report) {
    println!(
        "cognomega bench gateway: backend={} rps={} duration={} s connections={}",
        serde_json::to_value(r.backend)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        r.target_rps,
        r.duration_s,
        r.connections
    );
    for run in &r.runs {
        println!(
            "rate limits {}{}",
            if run.rate_limits { "on" } else { "off" },
            run.server_cpu_s
                .map(|c| format!(" (server CPU {c:.2} s)"))
                .unwrap_or_default()
        );
        print_phase("GET /healthz", &run.healthz);
        print_phase("/credits hit", &run.credits_hit);
        print_phase("/credits miss", &run.credits_miss);
    }
    if let Some(o) = &r.overhead_pct {
        println!(
            "rate-limit overhead: /credits hit p50 {:+.1} %, p90 {:+.1} %, p99 {:+.1} %; /credits miss p90 {:+.1} %; /healthz p99 {:+.1} % (not limited: noise)",
            o.credits_hit_p50, o.credits_hit_p90, o.credits_hit_p99, o.credits_miss_p90, o.healthz_p99
        );
    }
    println!(
        "seed SLOs (p90 / SLO): gateway {:.4} of 60 ms, /credits hit {:.4} of 150 ms, /credits miss {:.4} of 500 ms",
        r.slo.gateway_p90_ratio, r.slo.credits_hit_p90_ratio, r.slo.credits_miss_p90_ratio
    );
}

async fn measure(server: &Server, args: &GatewayArgs, on: bool) -> anyhow::Result<Run> {
    let target = &server.target;
    let show = !args.json;
    let mut control = target.connect().await?;
    client::health(&mut control).await?;
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let hit =
        client::create_guest_with_email(&mut control, &format!("hit-{run_id}@bench.test")).await?;
    client::wait_for_balances(
        &mut control,
        std::slice::from_ref(&hit),
        GRANT,
        Duration::from_secs(60),
    )
    .await?;
    for _ in 0..100 {
        client::balance(&mut control, &hit).await?;
    }
    // Fresh guests for the miss phase, plus one more whose settled grant shows that the
    // settlements before it (theirs) have landed: only that one is read before the phase.
    let mut fresh = Vec::with_capacity(args.miss_requests as usize + 1);
    let bar = progress(show, u64::from(args.miss_requests) + 1, "guests");
    for i in 0..=args.miss_requests {
        fresh.push(
            client::create_guest_with_email(&mut control, &format!("miss-{run_id}-{i}@bench.test"))
                .await?,
        );
        bar.inc(1);
    }
    bar.finish_and_clear();
    if let Some(last) = fresh.pop() {
        client::wait_for_balances(&mut control, &[last], GRANT, Duration::from_secs(120)).await?;
    }

    let cpu_before = server.cpu_seconds();
    let seconds = u64::from(args.rps) * u64::from(args.duration);
    let healthz = phase(
        server,
        args,
        Work {
            path: "/healthz",
            guests: Vec::new(),
            expected: None,
        },
        seconds,
        show,
    )
    .await?;
    let credits_hit = phase(
        server,
        args,
        Work {
            path: "/credits",
            guests: vec![hit],
            expected: Some(GRANT),
        },
        seconds,
        show,
    )
    .await?;
    let credits_miss = phase(
        server,
        args,
        Work {
            path: "/credits",
            guests: fresh,
            expected: None,
        },
        u64::from(args.miss_requests),
        show,
    )
    .await?;
    let cpu_after = server.cpu_seconds();
    Ok(Run {
        rate_limits: on,
        healthz,
        credits_hit,
        credits_miss,
        server_cpu_s: cpu_after.zip(cpu_before).map(|(a, b)| a - b),
    })
}

async fn phase(
    server: &Server,
    args: &GatewayArgs,
    work: Work,
    total: u64,
    show: bool,
) -> anyhow::Result<Phase> {
    let load = Load {
        target: server.target.clone(),
        work,
        rps: u64::from(args.rps),
        total,
        connections: args.connections as usize,
        bar: progress(show, total, "requests"),
    };
    let (tally, lag, t0) = load.start().await?;
    let elapsed = tally
        .last
        .map_or(0.0, |last| last.saturating_duration_since(t0).as_secs_f64());
    #[allow(clippy::cast_precision_loss)]
    let achieved_rps = if elapsed > 0.0 {
        tally.ok as f64 / elapsed
    } else {
        0.0
    };
    let pct = |q| percentile(&tally.latencies, q);
    Ok(Phase {
        requests: total,
        ok: tally.ok,
        errors: tally.errors,
        wrong_balances: tally.wrong,
        achieved_rps,
        p50_ms: pct(0.50),
        p90_ms: pct(0.90),
        p99_ms: pct(0.99),
        p999_ms: pct(0.999),
        max_ms: tally.latencies.last().copied().unwrap_or_default(),
        scheduler_lag_p99_ms: percentile(&lag, 0.99),
    })
}
