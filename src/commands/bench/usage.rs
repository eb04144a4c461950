//! `cognomega bench usage`: `POST /usage` ingest over HTTP, and end to end into the ledger.
//!
//! 1. create `--tenants` guests and wait until each shows its grant;
//! 2. post `--events` `job` events (quantity 1, unique idempotency keys) in batches of `--batch`
//!    over `--connections` keep-alive connections, tenants round-robin; every answer must be
//!    `202 {"accepted": n}`;
//! 3. poll `GET /credits` until every tenant's balance is its grant minus the expected charges
//!    (priced with the default price table), which works against any server.
//!
//! Accepted events/s runs from the first request sent to the last 202 received; end-to-end
//! events/s from the first request to the moment the last tenant's balance is final.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use cognomega_core::billing::{PriceTable, UsageKind, MAX_EVENTS};
use http::{Method, StatusCode};
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};

use super::client::{self, Conn, Guest};
use super::server::Server;
use super::{percentile, progress, Backend, Ctx};

#[derive(Debug, clap::Args)]
pub(super) struct UsageArgs {
    /// Store of the server this benchmark starts (a throwaway SQLite file, or a PostgreSQL
    /// database created on --database-url's server and dropped afterwards). Ignored with --url.
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    backend: Backend,
    /// Usage events to post in total.
    #[arg(long, default_value_t = 200_000)]
    events: u64,
    /// Events per POST /usage request (1..=1000).
    #[arg(long, default_value_t = 100)]
    batch: u32,
    /// Concurrent keep-alive connections posting.
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// Guest tenants the requests are spread over, round-robin.
    #[arg(long, default_value_t = 20)]
    tenants: u32,
    /// Benchmark the server already running at this URL (http://HOST:PORT) instead of starting
    /// a `cognomega serve` child over a throwaway store. The server must run its consumers (or
    /// have workers) and the default prices (a job costs 10 credits).
    #[arg(long, value_name = "URL")]
    url: Option<String>,
    /// Credits a new guest starts with on the server; change it only for a --url server started
    /// with another --guest-grant.
    #[arg(long, default_value_t = 1000, allow_hyphen_values = true)]
    guest_grant: i64,
    /// Seconds to wait for every accepted event to settle into the ledger.
    #[arg(long, default_value_t = 600)]
    settle_timeout: u64,
    /// Measure the ingest only: do not wait for settlement (the end-to-end figures stay empty).
    /// For a --url server started with --no-consumers (and --guest-grant 0, passed here too).
    #[arg(long)]
    ingest_only: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    backend: String,
    /// `child` (a server this benchmark started) or the `--url`.
    server: String,
    events: u64,
    batch: u32,
    connections: u32,
    tenants: u32,
    requests: u64,
    loopback_floor_p50_ms: f64,
    loopback_floor_p99_ms: f64,
    ingest_s: f64,
    accepted_events_per_s: f64,
    requests_per_s: f64,
    request_p50_ms: f64,
    request_p99_ms: f64,
    request_max_ms: f64,
    /// `None` with --ingest-only.
    e2e_s: Option<f64>,
    /// `None` with --ingest-only.
    e2e_events_per_s: Option<f64>,
    /// From the last 202 to the last balance being final; `None` with --ingest-only.
    settle_lag_s: Option<f64>,
    /// CPU seconds this process (the load generator and the balance polling) used from the
    /// first request to the last settlement.
    client_cpu_s: f64,
    /// CPU seconds the server child used in that window; `None` for a `--url` server.
    server_cpu_s: Option<f64>,
    server_peak_rss_mib: Option<f64>,
}

#[derive(Deserialize)]
struct Accepted {
    accepted: u64,
}

pub(super) async fn run(ctx: &Ctx, args: UsageArgs) -> anyhow::Result<()> {
    if args.events == 0 {
        bail!("--events must be at least 1");
    }
    if args.batch == 0 || args.batch as usize > MAX_EVENTS {
        bail!("--batch must be 1..={MAX_EVENTS} (the most events one POST /usage takes)");
    }
    if args.connections == 0 || args.tenants == 0 {
        bail!("--connections and --tenants must be at least 1");
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
    Ok(())
}

fn print_text(r: &Report) {
    println!(
        "cognomega bench usage: backend={} server={} events={} batch={} connections={} tenants={}",
        r.backend, r.server, r.events, r.batch, r.connections, r.tenants
    );
    println!(
        "  loopback floor  p50 {:.3} ms, p99 {:.3} ms (idle GET /healthz, one connection)",
        r.loopback_floor_p50_ms, r.loopback_floor_p99_ms
    );
    println!(
        "  accepted        {:>10.0} events/s ({:.0} requests/s in {:.2} s; request p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms)",
        r.accepted_events_per_s,
        r.requests_per_s,
        r.ingest_s,
        r.request_p50_ms,
        r.request_p99_ms,
        r.request_max_ms
    );
    if let (Some(rate), Some(e2e), Some(lag)) = (r.e2e_events_per_s, r.e2e_s, r.settle_lag_s) {
        println!(
            "  end to end      {rate:>10.0} events/s into the ledger (all settled {e2e:.2} s after the first request, {lag:.2} s after the last 202)"
        );
    } else {
        println!("  end to end      not measured (--ingest-only)");
    }
    let window = if r.e2e_s.is_some() {
        "first request → all settled"
    } else {
        "first request → last 202"
    };
    match r.server_cpu_s {
        Some(server) => println!(
            "  CPU             server {server:.2} s, client {:.2} s ({window})",
            r.client_cpu_s
        ),
        None => println!(
            "  CPU             client {:.2} s ({window})",
            r.client_cpu_s
        ),
    }
    match r.server_peak_rss_mib {
        Some(mib) => println!("  server peak RSS {mib:.1} MiB"),
        None => println!("  server peak RSS n/a (a --url server)"),
    }
}

async fn measure(server: &Server, args: &UsageArgs) -> anyhow::Result<Report> {
    let target = &server.target;
    let show = !args.json;
    let mut control = target.connect().await?;
    let backend = client::health(&mut control).await?;
    let floor = client::loopback_floor(&mut control, 200).await?;

    // 1. Tenants, each with its grant settled.
    let bar = progress(show, u64::from(args.tenants), "tenants");
    let mut guests = Vec::with_capacity(args.tenants as usize);
    for _ in 0..args.tenants {
        guests.push(client::create_guest(&mut control).await?);
        bar.inc(1);
    }
    client::wait_for_balances(
        &mut control,
        &guests,
        args.guest_grant,
        Duration::from_secs(60),
    )
    .await?;
    bar.finish_and_clear();

    // 2. Ingest.
    let batch = u64::from(args.batch);
    let batches = args.events.div_ceil(batch);
    let tenants = u64::from(args.tenants);
    let conns = target.connect_many(args.connections as usize).await?;
    let bar = progress(show, args.events, "ingest");
    let plan = Arc::new(Plan {
        tag: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
        events: args.events,
        batch,
        batches,
        guests: guests.clone(),
        next: AtomicU64::new(0),
        failed: AtomicBool::new(false),
        bar: bar.clone(),
    });
    let cpu_before = (super::cpu_seconds("self"), server.cpu_seconds());
    let started = Instant::now();
    let tasks: Vec<_> = conns
        .into_iter()
        .map(|conn| tokio::spawn(post_batches(plan.clone(), conn)))
        .collect();
    let mut latencies = Vec::with_capacity(batches as usize);
    let mut last_202 = started;
    let mut first_error = None;
    for task in tasks {
        match task.await.context("a posting task panicked")? {
            Ok((lat, last)) => {
                latencies.extend(lat);
                last_202 = last_202.max(last);
            }
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let ingest_s = last_202.duration_since(started).as_secs_f64();
    bar.finish_and_clear();

    // 3. Settlement: every balance at grant − charges.
    let price = PriceTable::default().charge(UsageKind::Job, 1);
    let expected: Vec<(u64, i64)> = (0..tenants)
        .map(|t| {
            let events: u64 = (t..batches)
                .step_by(args.tenants as usize)
                .map(|b| batch.min(args.events - b * batch))
                .sum();
            let charge = i64::try_from(events)
                .unwrap_or(i64::MAX)
                .saturating_mul(price);
            (events, args.guest_grant.saturating_sub(charge))
        })
        .collect();
    let e2e_s = if args.ingest_only {
        None
    } else {
        let bar = progress(show, args.events, "settle");
        wait_settled(
            &mut control,
            &guests,
            &expected,
            args.guest_grant,
            Duration::from_secs(args.settle_timeout),
            &bar,
        )
        .await?;
        bar.finish_and_clear();
        Some(started.elapsed().as_secs_f64())
    };
    let cpu_after = (super::cpu_seconds("self"), server.cpu_seconds());

    latencies.sort_by(f64::total_cmp);
    #[allow(clippy::cast_precision_loss)]
    let (events, requests) = (args.events as f64, batches as f64);
    Ok(Report {
        backend,
        server: if server.is_child() {
            "child".to_owned()
        } else {
            target.base_url.clone()
        },
        events: args.events,
        batch: args.batch,
        connections: args.connections,
        tenants: args.tenants,
        requests: batches,
        loopback_floor_p50_ms: floor.0,
        loopback_floor_p99_ms: floor.1,
        ingest_s,
        accepted_events_per_s: events / ingest_s,
        requests_per_s: requests / ingest_s,
        request_p50_ms: percentile(&latencies, 0.50),
        request_p99_ms: percentile(&latencies, 0.99),
        request_max_ms: latencies.last().copied().unwrap_or_default(),
        e2e_s,
        e2e_events_per_s: e2e_s.map(|s| events / s),
        settle_lag_s: e2e_s.map(|s| s - ingest_s),
        client_cpu_s: cpu_after.0.zip(cpu_before.0).map_or(0.0, |(a, b)| a - b),
        server_cpu_s: cpu_after.1.zip(cpu_before.1).map(|(a, b)| a - b),
        server_peak_rss_mib: None,
    })
}

/// What the posting tasks share.
struct Plan {
    /// Makes this run's idempotency keys unique, so runs against one --url server never dedup.
    tag: String,
    events: u64,
    batch: u64,
    batches: u64,
    guests: Vec<Guest>,
    /// The next batch to post.
    next: AtomicU64,
    /// Set by the first failure: the others stop.
    failed: AtomicBool,
    bar: ProgressBar,
}

impl Plan {
    /// `{"events":[…]}` of batch `b`: `job` events of quantity 1, keys `TAG-b-i`.
    fn body(&self, b: u64, size: u64) -> Bytes {
        let mut s = String::with_capacity(24 + size as usize * 72);
        s.push_str("{\"events\":[");
        for i in 0..size {
            if i > 0 {
                s.push(',');
            }
            let _ = write!(
                s,
                "{{\"idempotency_key\":\"{}-{b}-{i}\",\"kind\":\"job\",\"quantity\":1}}",
                self.tag
            );
        }
        s.push_str("]}");
        Bytes::from(s)
    }
}

/// One connection's loop: takes the next batch until none are left; returns its request
/// latencies (ms) and when its last 202 arrived.
async fn post_batches(plan: Arc<Plan>, mut conn: Conn) -> anyhow::Result<(Vec<f64>, Instant)> {
    let mut lat = Vec::new();
    let mut last = Instant::now();
    let tenants = plan.guests.len() as u64;
    let fail = |e: anyhow::Error| {
        plan.failed.store(true, Ordering::Relaxed);
        Err(e)
    };
    while !plan.failed.load(Ordering::Relaxed) {
        let b = plan.next.fetch_add(1, Ordering::Relaxed);
        if b >= plan.batches {
            break;
        }
        let size = plan.batch.min(plan.events - b * plan.batch);
        #[allow(clippy::cast_possible_truncation)]
        let guest = &plan.guests[(b % tenants) as usize];
        let body = plan.body(b, size);
        let sent = Instant::now();
        let reply = match conn
            .send(Method::POST, "/usage", Some(&guest.auth), Some(body))
            .await
        {
            Ok(r) => r,
            Err(e) => return fail(e.context(format!("POST /usage (batch {b})"))),
        };
        last = Instant::now();
        if reply.status != StatusCode::ACCEPTED {
            return fail(anyhow::anyhow!(
                "POST /usage (batch {b}, tenant {}) answered {} instead of 202: {}",
                guest.tenant_id,
                reply.status,
                reply.snippet()
            ));
        }
        match serde_json::from_slice::<Accepted>(&reply.body) {
            Ok(a) if a.accepted == size => {}
            _ => {
                return fail(anyhow::anyhow!(
                    "POST /usage (batch {b}) accepted something else than its {size} events: {}",
                    reply.snippet()
                ))
            }
        }
        lat.push(last.duration_since(sent).as_secs_f64() * 1e3);
        plan.bar.inc(size);
    }
    Ok((lat, last))
}

/// Polls `GET /credits` until every tenant's balance is final. Tenants are checked in order and
/// a round stops at the first one still settling, so polling costs about one request per round
/// (and stays out of the way of the server it measures).
async fn wait_settled(
    conn: &mut Conn,
    guests: &[Guest],
    expected: &[(u64, i64)],
    grant: i64,
    timeout: Duration,
    bar: &ProgressBar,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut done_events = 0u64;
    let mut remaining_events: u64 = expected.iter().map(|(e, _)| e).sum();
    for (guest, &(events, want)) in guests.iter().zip(expected) {
        loop {
            let balance = client::balance(conn, guest).await?;
            if balance == want {
                break;
            }
            if balance < want {
                bail!(
                    "tenant {}'s balance is {balance}, below the expected {want}: usage was \
                     charged more than once (or the server prices a job above 10 credits)",
                    guest.tenant_id
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "tenant {}'s balance is still {balance}, not {want}, {timeout:?} after the \
                     ingest: are the consumers running and keeping up (`cognomega queues` shows \
                     the backlog)? Against --url, the server must use the default prices; raise \
                     --settle-timeout for a slow server",
                    guest.tenant_id
                );
            }
            // Progress: assume the other unfinished tenants are as far along as this one.
            let total = grant.saturating_sub(want);
            if total > 0 {
                #[allow(
                    clippy::cast_precision_loss,
                    clippy::cast_possible_truncation,
                    clippy::cast_sign_loss
                )]
                let partial = (remaining_events as f64
                    * ((grant - balance) as f64 / total as f64).clamp(0.0, 1.0))
                    as u64;
                bar.set_position(done_events + partial);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        done_events += events;
        remaining_events -= events;
        bar.set_position(done_events);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_are_valid_usage_requests() {
        let plan = Plan {
            tag: "t".into(),
            events: 5,
            batch: 3,
            batches: 2,
            guests: Vec::new(),
            next: AtomicU64::new(0),
            failed: AtomicBool::new(false),
            bar: ProgressBar::hidden(),
        };
        let body = plan.body(7, 3);
        let events =
            cognomega_core::billing::parse_usage_request(&body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(events.len(), 3);
        assert_eq!(events[2].idempotency_key.as_str(), "t-7-2");
        assert_eq!(events[0].kind, UsageKind::Job);
        assert_eq!(events[0].quantity, 1);
    }
}
