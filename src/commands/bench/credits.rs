//! `cognomega bench credits`: `GET /credits` (a balance-cache hit) under an open-loop constant
//! request rate.
//!
//! Request `i` is scheduled at `t0 + i / rps` by a dedicated scheduler thread (OS sleeps are
//! precise to tens of microseconds, the async runtime's timer only to a millisecond) and handed
//! to whichever of the `--connections` keep-alive connections is free. Latency runs from the
//! scheduled time to the end of the response, so a server that falls behind is charged for the
//! queue it causes (no coordinated omission). The scheduler's own lag is reported too: it is
//! the client's share of every latency figure.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use http::StatusCode;
use indicatif::ProgressBar;
use serde::Serialize;
use tokio::sync::{mpsc, Mutex};

use super::client::{self, Conn, CreditsReply, Guest, Target};
use super::server::Server;
use super::{percentile, progress, Backend, Ctx};

#[derive(Debug, clap::Args)]
pub(super) struct CreditsArgs {
    /// Store of the server this benchmark starts (a throwaway SQLite file, or a PostgreSQL
    /// database created on --database-url's server and dropped afterwards). Ignored with --url.
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    backend: Backend,
    /// Requests per second, scheduled at a constant rate (open loop).
    #[arg(long, default_value_t = 5_000)]
    rps: u32,
    /// Seconds of load.
    #[arg(long, default_value_t = 10)]
    duration: u32,
    /// Keep-alive connections in the client's pool.
    #[arg(long, default_value_t = 32)]
    connections: u32,
    /// Benchmark the server already running at this URL (http://HOST:PORT) instead of starting
    /// a `cognomega serve` child over a throwaway store. The server must run its consumers (or
    /// have workers), so the guest's grant settles.
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Credits a new guest starts with on the server (the balance every response must show);
    /// change it only for a --url server started with another --guest-grant.
    #[arg(long, default_value_t = 1000, allow_hyphen_values = true)]
    guest_grant: i64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    backend: String,
    /// `child` (a server this benchmark started) or the `--url`.
    server: String,
    target_rps: u32,
    duration_s: u32,
    connections: u32,
    /// Requests scheduled.
    requests: u64,
    /// Requests answered 200 with the right balance.
    ok: u64,
    /// Non-200 answers and failed exchanges.
    errors: u64,
    /// 200 answers whose balance was not the guest's.
    wrong_balances: u64,
    achieved_rps: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    /// Sequential GET /credits on one idle connection (closed loop), after the warm-up.
    idle_p50_ms: f64,
    loopback_floor_p50_ms: f64,
    loopback_floor_p99_ms: f64,
    /// How late the scheduler released requests: the client's share of the latencies.
    scheduler_lag_p99_ms: f64,
    scheduler_lag_max_ms: f64,
    /// CPU seconds the load generator (this process) used during the load.
    client_cpu_s: f64,
    /// CPU seconds the server child used during the load; `None` for a `--url` server.
    server_cpu_s: Option<f64>,
    server_peak_rss_mib: Option<f64>,
}

pub(super) async fn run(ctx: &Ctx, args: CreditsArgs) -> anyhow::Result<()> {
    if args.rps == 0 || args.duration == 0 || args.connections == 0 {
        bail!("--rps, --duration and --connections must be at least 1");
    }
    let server = Server::start(ctx, args.backend, args.url.as_deref()).await?;
    let result = tokio::select! {
        r = measure(&server, &args) => r.map_err(|e| server.explain(e)),
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let rss = server.peak_rss_mib();
    let stopped = server.stop().await;
    let mut report = result?;
    stopped?;
    report.server_peak_rss_mib = rss;
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_text(&report);
    }
    if report.wrong_balances > 0 {
        bail!(
            "{} responses showed another balance than the guest's {}: the cache served a wrong value",
            report.wrong_balances,
            args.guest_grant
        );
    }
    Ok(())
}

fn print_text(r: &Report) {
    println!(
        "cognomega bench credits: backend={} server={} rps={} duration={} s connections={}",
        r.backend, r.server, r.target_rps, r.duration_s, r.connections
    );
    println!(
        "  loopback floor  p50 {:.3} ms, p99 {:.3} ms (idle GET /healthz, one connection); idle GET /credits p50 {:.3} ms",
        r.loopback_floor_p50_ms, r.loopback_floor_p99_ms, r.idle_p50_ms
    );
    println!(
        "  achieved        {:>8.0} requests/s ({} of {} ok, {} errors, {} wrong balances)",
        r.achieved_rps, r.ok, r.requests, r.errors, r.wrong_balances
    );
    println!(
        "  latency         p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms (from the scheduled time)",
        r.p50_ms, r.p90_ms, r.p99_ms, r.p999_ms, r.max_ms
    );
    println!(
        "  scheduler lag   p99 {:.3} ms, max {:.3} ms (the client's share)",
        r.scheduler_lag_p99_ms, r.scheduler_lag_max_ms
    );
    match r.server_cpu_s {
        Some(server) => println!(
            "  CPU             server {server:.2} s, client {:.2} s during the load",
            r.client_cpu_s
        ),
        None => println!(
            "  CPU             client {:.2} s during the load",
            r.client_cpu_s
        ),
    }
    match r.server_peak_rss_mib {
        Some(mib) => println!("  server peak RSS {mib:.1} MiB"),
        None => println!("  server peak RSS n/a (a --url server)"),
    }
}

/// What a connection task learned.
#[derive(Default)]
pub(super) struct Tally {
    /// Latencies in ms from each request's scheduled time (sorted once the load is done).
    pub(super) latencies: Vec<f64>,
    pub(super) ok: u64,
    pub(super) errors: u64,
    pub(super) wrong: u64,
    pub(super) last: Option<Instant>,
}

/// What the load phase sends: `GET path`, request `i` as `guests[i % len]` (no
/// `Authorization` when there are none); a 200 must show `expected` as its balance, if set.
pub(super) struct Work {
    pub(super) path: &'static str,
    pub(super) guests: Vec<Guest>,
    pub(super) expected: Option<i64>,
}

async fn measure(server: &Server, args: &CreditsArgs) -> anyhow::Result<Report> {
    let target = &server.target;
    let show = !args.json;
    let mut control = target.connect().await?;
    let backend = client::health(&mut control).await?;
    let floor = client::loopback_floor(&mut control, 200).await?;

    let guest = client::create_guest(&mut control).await?;
    client::wait_for_balances(
        &mut control,
        std::slice::from_ref(&guest),
        args.guest_grant,
        Duration::from_secs(60),
    )
    .await?;
    // Warm the cache (and both processes' allocators), then time idle requests.
    for _ in 0..100 {
        client::balance(&mut control, &guest).await?;
    }
    let mut idle = Vec::with_capacity(200);
    for _ in 0..200 {
        let started = Instant::now();
        client::balance(&mut control, &guest).await?;
        idle.push(started.elapsed().as_secs_f64() * 1e3);
    }
    idle.sort_by(f64::total_cmp);

    let total = u64::from(args.rps) * u64::from(args.duration);
    let load = Load {
        target: target.clone(),
        work: Work {
            path: "/credits",
            guests: vec![guest],
            expected: Some(args.guest_grant),
        },
        rps: u64::from(args.rps),
        total,
        connections: args.connections as usize,
        bar: progress(show, total, "requests"),
    };
    let cpu_before = (super::cpu_seconds("self"), server.cpu_seconds());
    let (tally, lag, t0) = load.start().await?;
    let cpu_after = (super::cpu_seconds("self"), server.cpu_seconds());
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
    Ok(Report {
        backend,
        server: if server.is_child() {
            "child".to_owned()
        } else {
            target.base_url.clone()
        },
        target_rps: args.rps,
        duration_s: args.duration,
        connections: args.connections,
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
        idle_p50_ms: percentile(&idle, 0.50),
        loopback_floor_p50_ms: floor.0,
        loopback_floor_p99_ms: floor.1,
        scheduler_lag_p99_ms: percentile(&lag, 0.99),
        scheduler_lag_max_ms: lag.last().copied().unwrap_or_default(),
        client_cpu_s: cpu_after.0.zip(cpu_before.0).map_or(0.0, |(a, b)| a - b),
        server_cpu_s: cpu_after.1.zip(cpu_before.1).map(|(a, b)| a - b),
        server_peak_rss_mib: None,
    })
}

/// The load phase. It runs on a thread of its own with a single-threaded runtime: every
/// connection task and its hyper connection share that one thread, so a request costs no
/// wake-ups of idle runtime workers (on a multi-threaded runtime, those cost the client about
/// as much CPU as the server spends answering).
pub(super) struct Load {
    pub(super) target: Target,
    pub(super) work: Work,
    pub(super) rps: u64,
    pub(super) total: u64,
    pub(super) connections: usize,
    pub(super) bar: ProgressBar,
}

impl Load {
    /// Runs the load on its own thread; returns what the connections saw (latencies sorted),
    /// the scheduler's lags (ms, sorted) and `t0`.
    pub(super) async fn start(self) -> anyhow::Result<(Tally, Vec<f64>, Instant)> {
        let bar = self.bar.clone();
        let thread = std::thread::Builder::new()
            .name("bench-load".into())
            .spawn(move || self.run())
            .context("cannot start the load generator thread")?;
        let (mut tally, mut lag, t0) =
            tokio::task::spawn_blocking(move || thread.join())
                .await?
                .map_err(|_| anyhow::anyhow!("the load generator thread panicked"))??;
        bar.finish_and_clear();
        tally.latencies.sort_by(f64::total_cmp);
        lag.sort_by(f64::total_cmp);
        Ok((tally, lag, t0))
    }

    /// Runs the load; returns what the connections saw, the scheduler's lags (ms) and `t0`.
    fn run(self) -> anyhow::Result<(Tally, Vec<f64>, Instant)> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the load generator's runtime")?;
        rt.block_on(self.drive())
    }

    async fn drive(self) -> anyhow::Result<(Tally, Vec<f64>, Instant)> {
        let conns = self.target.connect_many(self.connections).await?;
        let (tx, rx) = mpsc::unbounded_channel::<(u64, Instant)>();
        let rx = Arc::new(Mutex::new(rx));
        let plan = Arc::new(self.work);
        let workers: Vec<_> = conns
            .into_iter()
            .map(|conn| {
                tokio::spawn(work(
                    conn,
                    self.target.clone(),
                    rx.clone(),
                    plan.clone(),
                    self.bar.clone(),
                ))
            })
            .collect();
        // Give the workers a moment to reach their receive before the first request is due.
        let t0 = Instant::now() + Duration::from_millis(50);
        let (rps, total) = (self.rps, self.total);
        let scheduler = std::thread::Builder::new()
            .name("bench-scheduler".into())
            .spawn(move || schedule(&tx, t0, rps, total))
            .context("cannot start the scheduler thread")?;
        let mut tally = Tally::default();
        for w in workers {
            let t = w.await.context("a connection task panicked")?;
            tally.latencies.extend(t.latencies);
            tally.ok += t.ok;
            tally.errors += t.errors;
            tally.wrong += t.wrong;
            tally.last = tally.last.max(t.last);
        }
        // The workers only end once the scheduler has dropped its sender: it is done.
        let lag = scheduler
            .join()
            .map_err(|_| anyhow::anyhow!("the scheduler thread panicked"))?;
        Ok((tally, lag, t0))
    }
}

/// The scheduler thread: releases request `i` at `t0 + i / rps` (all that are due at each
/// wake-up) and returns how late each was released, in ms. Ends early when every connection
/// task is gone.
fn schedule(
    tx: &mpsc::UnboundedSender<(u64, Instant)>,
    t0: Instant,
    rps: u64,
    total: u64,
) -> Vec<f64> {
    let at = |i: u64| t0 + Duration::from_nanos(i.saturating_mul(1_000_000_000) / rps);
    let mut lag = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    let mut i = 0;
    while i < total {
        let due = at(i);
        let now = Instant::now();
        if now < due {
            std::thread::sleep(due - now);
            continue;
        }
        // Everything due by now goes out at once.
        while i < total && at(i) <= now {
            let scheduled = at(i);
            if tx.send((i, scheduled)).is_err() {
                return lag;
            }
            lag.push(now.saturating_duration_since(scheduled).as_secs_f64() * 1e3);
            i += 1;
        }
    }
    lag
}

/// A connection's loop: takes the next scheduled request, sends it, checks the answer. A
/// failed exchange counts as an error and the connection is reopened.
async fn work(
    mut conn: Conn,
    target: Target,
    queue: Arc<Mutex<mpsc::UnboundedReceiver<(u64, Instant)>>>,
    plan: Arc<Work>,
    bar: ProgressBar,
) -> Tally {
    let mut tally = Tally::default();
    loop {
        let next = queue.lock().await.recv().await;
        let Some((i, scheduled)) = next else {
            break;
        };
        let guests = &plan.guests;
        #[allow(clippy::cast_possible_truncation)]
        let auth = (!guests.is_empty()).then(|| &guests[(i % guests.len() as u64) as usize].auth);
        match conn.get(plan.path, auth).await {
            Ok(reply) => {
                let done = Instant::now();
                tally.last = Some(done);
                tally
                    .latencies
                    .push(done.saturating_duration_since(scheduled).as_secs_f64() * 1e3);
                if reply.status != StatusCode::OK {
                    tally.errors += 1;
                } else if let Some(expected) = plan.expected {
                    match serde_json::from_slice::<CreditsReply>(&reply.body) {
                        Ok(c) if c.balance == expected => tally.ok += 1,
                        _ => tally.wrong += 1,
                    }
                } else {
                    tally.ok += 1;
                }
            }
            Err(_) => {
                tally.errors += 1;
                tally.last = Some(Instant::now());
                if let Ok(fresh) = target.connect().await {
                    conn = fresh;
                }
            }
        }
        bar.inc(1);
    }
    tally
}
