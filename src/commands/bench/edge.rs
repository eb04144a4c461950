//! `bench edge`: the Cloudflare edge shape under local workerd (`ops/edge.sh bench` starts it)
//! beside the native server on the same machine: requests/s and p50/p99 of `GET /credits` (a
//! KV hit on the edge, the in-process cache natively) and `POST /usage` (one event, enqueued),
//! each driven closed-loop by the same client with the same number of connections, and the
//! edge/native ratio of each figure.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use http::Method;
use serde::Serialize;

use super::client::{self, Conn, Guest, Target};
use super::server::Server;
use super::{percentile, Backend};
use crate::commands::Ctx;

#[derive(Debug, clap::Args)]
pub(super) struct EdgeArgs {
    /// The edge gateway (e.g. http://127.0.0.1:8787 from `ops/edge.sh dev`).
    #[arg(long)]
    edge_url: String,
    /// A running native server; default: a `serve` child over a throwaway store.
    #[arg(long)]
    native_url: Option<String>,
    /// The native child's backend (PostgreSQL is the edge's store too).
    #[arg(long, value_enum, default_value_t = Backend::Postgres)]
    backend: Backend,
    /// Concurrent connections per phase.
    #[arg(long, default_value_t = 16)]
    connections: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Phase {
    target: &'static str,
    route: &'static str,
    requests: u64,
    errors: u64,
    per_s: f64,
    p50_ms: f64,
    p99_ms: f64,
}

#[derive(Debug, Serialize)]
struct Report {
    connections: usize,
    duration_s: u64,
    phases: Vec<Phase>,
    /// edge ÷ native, per route: requests/s and p99.
    ratios: Vec<(String, f64, f64)>,
}

pub(super) async fn run(ctx: &Ctx, args: EdgeArgs) -> anyhow::Result<()> {
    if args.connections == 0 || args.duration == 0 {
        bail!("--connections and --duration must be at least 1");
    }
    let edge = Target::parse(&args.edge_url).await.with_context(|| {
        format!(
            "the edge stack at {} (start it with ops/edge.sh dev)",
            args.edge_url
        )
    })?;
    // The native server gets the same rate-limit setting as the edge bench: off.
    let server = Server::start_with_env(
        ctx,
        args.backend,
        args.native_url.as_deref(),
        &[],
        &[("COGNOMEGA_RATE_LIMITS".into(), "off".into())],
    )
    .await?;
    let result = async {
        let mut phases = Vec::new();
        for (name, target) in [("native", &server.target), ("edge", &edge)] {
            let guest = prepare(target)
                .await
                .with_context(|| format!("{name}: set-up"))?;
            phases.push(drive(name, "GET /credits", target, &guest, &args, false).await?);
            phases.push(drive(name, "POST /usage", target, &guest, &args, true).await?);
        }
        Ok::<_, anyhow::Error>(phases)
    }
    .await;
    server.stop().await?;
    let phases = result?;
    let ratios = ["GET /credits", "POST /usage"]
        .iter()
        .filter_map(|route| {
            let find = |t| phases.iter().find(|p| p.target == t && p.route == *route);
            let (n, e) = (find("native")?, find("edge")?);
            Some((
                (*route).to_owned(),
                e.per_s / n.per_s.max(f64::MIN_POSITIVE),
                e.p99_ms / n.p99_ms.max(f64::MIN_POSITIVE),
            ))
        })
        .collect();
    let report = Report {
        connections: args.connections,
        duration_s: args.duration,
        phases,
        ratios,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "edge (local workerd) vs native, {} connections, {} s per phase",
            report.connections, report.duration_s
        );
        println!(
            "{:<8} {:<14} {:>10} {:>8} {:>10} {:>10}",
            "target", "route", "requests", "errors", "req/s", "p50/p99 ms"
        );
        for p in &report.phases {
            println!(
                "{:<8} {:<14} {:>10} {:>8} {:>10.0} {:>5.2}/{:.2}",
                p.target, p.route, p.requests, p.errors, p.per_s, p.p50_ms, p.p99_ms
            );
        }
        for (route, per_s, p99) in &report.ratios {
            println!("edge/native {route}: requests/s ×{per_s:.3}, p99 ×{p99:.2}");
        }
    }
    Ok(())
}

/// A guest whose balance is settled (so `GET /credits` is a cache hit on both shapes).
async fn prepare(target: &Target) -> anyhow::Result<Guest> {
    let mut conn = target.connect().await?;
    let guest = client::create_guest(&mut conn).await?;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if client::balance(&mut conn, &guest).await? > 0 {
            return Ok(guest);
        }
        if Instant::now() > deadline {
            bail!("the new guest's grant did not settle within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn drive(
    target_name: &'static str,
    route: &'static str,
    target: &Target,
    guest: &Guest,
    args: &EdgeArgs,
    usage: bool,
) -> anyhow::Result<Phase> {
    let conns = target.connect_many(args.connections).await?;
    let until = Instant::now() + Duration::from_secs(args.duration);
    let started = Instant::now();
    let run = uuid::Uuid::now_v7().simple().to_string();
    let mut tasks = Vec::with_capacity(conns.len());
    for (i, conn) in conns.into_iter().enumerate() {
        let auth = guest.auth.clone();
        let prefix = format!("bench-{run}-{i}");
        tasks.push(tokio::spawn(worker(conn, auth, until, usage, prefix)));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await??;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let requests = latencies.len() as u64 + errors;
    Ok(Phase {
        target: target_name,
        route,
        requests,
        errors,
        per_s: latencies.len() as f64 / elapsed,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
    })
}

async fn worker(
    mut conn: Conn,
    auth: http::HeaderValue,
    until: Instant,
    usage: bool,
    prefix: String,
) -> anyhow::Result<(Vec<f64>, u64)> {
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut n = 0u64;
    while Instant::now() < until {
        n += 1;
        let started = Instant::now();
        let reply = if usage {
            let body = format!(
                r#"{{"events":[{{"idempotency_key":"{prefix}-{n}","kind":"tokens_in","quantity":1}}]}}"#
            );
            conn.send(Method::POST, "/usage", Some(&auth), Some(Bytes::from(body)))
                .await?
        } else {
            conn.get("/credits", Some(&auth)).await?
        };
        let ok = if usage {
            reply.status == http::StatusCode::ACCEPTED
        } else {
            reply.status == http::StatusCode::OK
        };
        if ok {
            latencies.push(started.elapsed().as_secs_f64() * 1000.0);
        } else {
            errors += 1;
        }
    }
    Ok((latencies, errors))
}
