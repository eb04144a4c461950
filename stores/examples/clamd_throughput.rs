//! Scan throughput of a running clamd through the `INSTREAM` client: sends TOTAL_MIB of clean,
//! incompressible data as STREAM_MIB-sized streams, CONCURRENCY scans at a time, and prints MB/s.
//!
//! ```sh
//! ops/clamd.sh        # a clamd on 127.0.0.1:3310 with StreamMaxLength 100M
//! cargo run --release -p cognomega-stores --example clamd_throughput -- \
//!     tcp://127.0.0.1:3310 [TOTAL_MIB=64] [STREAM_MIB=1] [CONCURRENCY=1] [CHUNK_KIB=256]
//! ```
//!
//! Every stream differs (its own seed), so clamd's cache of clean results is never what is being
//! measured.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;
use cognomega_stores::clamd::{Clamd, ClamdAddr, ScanVerdict};
use futures::stream::{self, StreamExt, TryStreamExt};

const MIB: usize = 1024 * 1024;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: usize| -> anyhow::Result<usize> {
        args.get(i).map_or(Ok(default), |a| {
            a.parse()
                .with_context(|| format!("argument {} `{a}`", i + 1))
        })
    };
    let addr = ClamdAddr::parse(args.first().map_or("tcp://127.0.0.1:3310", String::as_str))?;
    let total_mib = arg(1, 64)?;
    let stream_mib = arg(2, 1)?.max(1);
    let concurrency = arg(3, 1)?.max(1);
    let chunk_kib = arg(4, 256)?.max(1);
    let streams = (total_mib / stream_mib).max(1);
    let client = Clamd::new(addr.clone()).with_chunk_size(chunk_kib * 1024);
    client.ping().await.context("clamd does not answer PING")?;
    // One scan outside the measurement: clamd's first stream pays for its temporary folder and
    // cold caches.
    client
        .scan_stream(stream::iter([Ok::<_, std::io::Error>(Bytes::from(noise(
            u64::MAX,
            MIB,
        )))]))
        .await
        .context("the warm-up scan")?;

    // Data generated up front, so the figure is clamd's and the client's, not the generator's.
    let data: Vec<Bytes> = (0..streams)
        .map(|seed| Bytes::from(noise(seed as u64, stream_mib * MIB)))
        .collect();
    let started = Instant::now();
    let latencies: Vec<Duration> = stream::iter(data)
        .map(|bytes| {
            let client = &client;
            async move {
                let began = Instant::now();
                let pieces = (0..bytes.len()).step_by(64 * 1024).map(|at| {
                    Ok::<_, std::io::Error>(bytes.slice(at..(at + 64 * 1024).min(bytes.len())))
                });
                match client.scan_stream(stream::iter(pieces)).await? {
                    ScanVerdict::Clean => Ok(began.elapsed()),
                    ScanVerdict::Infected { signature } => {
                        bail!("random data matched {signature}")
                    }
                }
            }
        })
        .buffer_unordered(concurrency)
        .try_collect()
        .await?;
    let elapsed = started.elapsed();

    let mut sorted = latencies;
    sorted.sort();
    let bytes = (streams * stream_mib * MIB) as f64;
    println!(
        "clamd {addr}: {streams} streams x {stream_mib} MiB, concurrency {concurrency}, chunks {chunk_kib} KiB"
    );
    println!(
        "  {:.1} MB/s ({:.1} MiB/s), {:.2} s total, per scan p50 {:?} max {:?}",
        bytes / 1e6 / elapsed.as_secs_f64(),
        bytes / MIB as f64 / elapsed.as_secs_f64(),
        elapsed.as_secs_f64(),
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1],
    );
    Ok(())
}

/// Incompressible bytes from a xorshift generator: no signature matches them, and no two
/// streams are alike.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}
