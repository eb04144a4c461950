//! `cognomega bench upload`: a large streamed upload into the embedded store (MB/s and the
//! server's peak RSS), then many small uploads and, with `--clamd`, the time until the
//! `av-scan` queue has scanned them all.

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use serde::Serialize;
use serde_json::Value;

use super::server::Server;
use super::{Backend, Ctx};

#[derive(Debug, clap::Args)]
pub(super) struct UploadArgs {
    /// Which store the server uses.
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    backend: Backend,
    /// Size of the large upload, in MiB.
    #[arg(long, default_value_t = 1024)]
    size_mib: u64,
    /// Small uploads after the large one.
    #[arg(long, default_value_t = 1000)]
    small: usize,
    /// Size of each small upload, in KiB.
    #[arg(long, default_value_t = 4)]
    small_kib: usize,
    /// Concurrent small uploads.
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// clamd for the server (tcp://HOST:PORT or unix:/path): measures the scan drain too.
    #[arg(long)]
    clamd: Option<String>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    backend: Backend,
    large_mib: u64,
    large_mb_per_s: f64,
    server_peak_rss_mib: Option<f64>,
    small: usize,
    small_kib: usize,
    small_uploads_per_s: f64,
    scan_drain_s: Option<f64>,
}

pub(super) async fn run(ctx: &Ctx, args: UploadArgs) -> anyhow::Result<()> {
    if args.size_mib == 0 || args.connections == 0 {
        bail!("--size-mib and --connections must be at least 1");
    }
    let large = args.size_mib << 20;
    let small_total = (args.small * args.small_kib * 1024) as u64;
    let mut extra = vec![
        "--max-upload-bytes".to_owned(),
        (large + (1 << 20)).to_string(),
        "--upload-quota-bytes".to_owned(),
        ((large + small_total) * 2 + (1 << 20)).to_string(),
        "--guest-grant".to_owned(),
        "1000000000".to_owned(),
    ];
    if let Some(c) = &args.clamd {
        extra.extend(["--clamd".to_owned(), c.clone()]);
    }
    let server = Server::start_with(ctx, args.backend, None, &extra).await?;
    let result = measure(&server, &args, large).await;
    let rss = server.peak_rss_mib();
    let result = result.map_err(|e| server.explain(e));
    server.stop().await?;
    let (large_mb_per_s, small_uploads_per_s, scan_drain_s) = result?;
    let report = Report {
        backend: args.backend,
        large_mib: args.size_mib,
        large_mb_per_s,
        server_peak_rss_mib: rss,
        small: args.small,
        small_kib: args.small_kib,
        small_uploads_per_s,
        scan_drain_s,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!("cognomega bench upload: backend={:?}", report.backend);
        println!(
            "  {} MiB streamed upload  {:.0} MB/s, server peak RSS {:.1} MiB",
            report.large_mib,
            report.large_mb_per_s,
            report.server_peak_rss_mib.unwrap_or(0.0)
        );
        println!(
            "  {} × {} KiB uploads      {:.0} uploads/s",
            report.small, report.small_kib, report.small_uploads_per_s
        );
        if let Some(d) = report.scan_drain_s {
            println!("  av-scan drain           {d:.2} s until every small upload was scanned");
        }
    }
    Ok(())
}

async fn measure(
    server: &Server,
    args: &UploadArgs,
    large: u64,
) -> anyhow::Result<(f64, f64, Option<f64>)> {
    let base = server.target.base_url.clone();
    cognomega_core::tls::install();
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3600))
        .build()?;
    let guest: Value = client
        .post(format!("{base}/auth/guest"))
        .send()
        .await?
        .json()
        .await?;
    let token = guest["token"]
        .as_str()
        .context("no token from /auth/guest")?
        .to_owned();
    // The grant must settle before uploads (402 otherwise).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let c: Value = client
            .get(format!("{base}/credits"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        if c["balance"].as_i64().unwrap_or(0) > 0 {
            break;
        }
        if Instant::now() > deadline {
            bail!("the guest's grant did not settle within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    const CHUNK: usize = 1 << 20;
    let chunk = bytes::Bytes::from(
        b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcde\n".repeat(CHUNK / 64),
    );
    let chunks = usize::try_from(large).unwrap_or(usize::MAX) / CHUNK;
    let body =
        futures::stream::iter((0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())));
    let started = Instant::now();
    let resp = client
        .post(format!("{base}/upload/direct?filename=large.txt"))
        .bearer_auth(&token)
        .header("Content-Type", "text/plain")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await?;
    if resp.status() != 201 {
        bail!(
            "large upload: {} {}",
            resp.status(),
            resp.text().await.unwrap_or_default()
        );
    }
    #[allow(clippy::cast_precision_loss)]
    let large_mb_per_s = large as f64 / 1e6 / started.elapsed().as_secs_f64();

    let started = Instant::now();
    let mut keys = Vec::with_capacity(args.small);
    let mut pending = futures::stream::FuturesUnordered::new();
    for i in 0..args.small {
        let body = format!("{i:08}\n")
            .repeat(args.small_kib * 1024 / 9 + 1)
            .into_bytes();
        let (client, url, token) = (
            client.clone(),
            format!("{base}/upload/direct?filename=s{i}.txt"),
            token.clone(),
        );
        pending.push(async move {
            let resp = client
                .post(url)
                .bearer_auth(token)
                .header("Content-Type", "text/plain")
                .body(body)
                .send()
                .await?;
            anyhow::ensure!(resp.status() == 201, "small upload: {}", resp.status());
            let v: Value = resp.json().await?;
            Ok::<_, anyhow::Error>(v["key"].as_str().unwrap_or_default().to_owned())
        });
        if pending.len() >= args.connections {
            if let Some(k) = futures::StreamExt::next(&mut pending).await {
                keys.push(k?);
            }
        }
    }
    while let Some(k) = futures::StreamExt::next(&mut pending).await {
        keys.push(k?);
    }
    #[allow(clippy::cast_precision_loss)]
    let small_per_s = args.small as f64 / started.elapsed().as_secs_f64();
    let drain = if args.clamd.is_some() {
        let deadline = Instant::now() + Duration::from_secs(600);
        let mut remaining = keys.clone();
        while !remaining.is_empty() {
            let mut still = Vec::new();
            for k in remaining {
                let v: Value = client
                    .get(format!("{base}/uploads/{k}"))
                    .bearer_auth(&token)
                    .send()
                    .await?
                    .json()
                    .await?;
                if v["scan"] == "pending" {
                    still.push(k);
                }
            }
            remaining = still;
            if Instant::now() > deadline {
                bail!(
                    "{} uploads still pending a scan after 600 s",
                    remaining.len()
                );
            }
            if !remaining.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Some(started.elapsed().as_secs_f64())
    } else {
        None
    };
    Ok((large_mb_per_s, small_per_s, drain))
}
