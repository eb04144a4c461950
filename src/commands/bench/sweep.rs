//! `bench sweep`: the lifecycle sweeper over N objects on the local folder.
//!
//! Creates N objects through the platform's own store code — 60 % text artifacts (generated
//! HTML/JSON of a few KiB, stored at zstd 3 as the job runner stores them), 20 % already
//! compressed artifacts (PNG-like bytes), 20 % uploads — then sweeps twice with the default
//! policy: as of day 31 (text recompressed at zstd 19, uploads to Infrequent Access) and as of
//! day 91 (everything expires and is deleted). Prints objects/s of each sweep and the bytes
//! recompression saved.

use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, ensure};
use bytes::Bytes;
use cognomega_consumers::lifecycle::Sweeper;
use cognomega_r2_lifecycle::codec::{encode, CodecPolicy};
use cognomega_r2_lifecycle::policy::{Policy, DAY_MS};
use cognomega_r2_lifecycle::sweep::SweepReport;
use cognomega_stores::jobs::{self, ArtifactRow, NewJob};
use cognomega_stores::objects::{ObjectKey, ObjectStoreUrl, Objects, PutMeta};
use cognomega_stores::uploads::{self, NewUpload};
use cognomega_stores::Database;
use futures::{StreamExt, TryStreamExt};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{progress, Backend, ThrowawayStore};
use crate::commands::Ctx;

#[derive(Debug, clap::Args)]
pub struct SweepArgs {
    /// Which database holds the rows.
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    backend: Backend,
    /// Objects to create and sweep.
    #[arg(long, default_value_t = 100_000)]
    objects: u64,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    backend: Backend,
    objects: u64,
    setup_s: f64,
    day31_s: f64,
    day31_objects_per_s: f64,
    day31: SweepReport,
    day91_s: f64,
    day91_objects_per_s: f64,
    day91: SweepReport,
}

/// Artifacts per generated job.
const PER_JOB: u64 = 5;

pub async fn run(ctx: &Ctx, args: SweepArgs) -> anyhow::Result<()> {
    if args.objects < 10 {
        bail!("--objects must be at least 10");
    }
    let store = ThrowawayStore::create(args.backend, ctx.database_url.as_deref()).await?;
    let result = measure(&store, &args).await;
    store.destroy().await?;
    let r = result?;
    if args.json {
        println!("{}", serde_json::to_string(&r)?);
        return Ok(());
    }
    println!(
        "cognomega bench sweep: backend={:?} objects={} (local folder), setup {:.1} s",
        r.backend, r.objects, r.setup_s
    );
    for (day, secs, rate, rep) in [
        (31, r.day31_s, r.day31_objects_per_s, &r.day31),
        (91, r.day91_s, r.day91_objects_per_s, &r.day91),
    ] {
        println!(
            "  day {day}: {:>7} examined in {secs:>6.1} s = {rate:>8.0} objects/s; recompressed {} ({} of {} stored bytes saved), to IA {}, expired {} ({} bytes)",
            rep.examined,
            rep.recompressed.objects,
            rep.bytes_saved,
            rep.recompressed.bytes,
            rep.to_infrequent_access.objects,
            rep.expired.objects,
            rep.expired.bytes
        );
    }
    Ok(())
}

async fn measure(store: &ThrowawayStore, args: &SweepArgs) -> anyhow::Result<Report> {
    let objects = Objects::open(&ObjectStoreUrl::Local(store.dir.join("objects")))?;
    let show = !args.json;
    let started = Instant::now();
    let created_ms = chrono::Utc::now().timestamp_millis();
    populate(&store.db, &objects, args.objects, show).await?;
    let setup_s = started.elapsed().as_secs_f64();

    let sweeper = Sweeper::new(
        store.db.clone(),
        objects.clone(),
        Arc::new(Policy::default()),
    );
    let mut runs = Vec::new();
    for day in [31, 91] {
        let bar = progress(
            show,
            args.objects,
            if day == 31 { "day 31" } else { "day 91" },
        );
        let shown = bar.clone();
        let on_page = move |r: &SweepReport| shown.set_position(r.examined);
        let started = Instant::now();
        let outcome = sweeper
            .run(
                created_ms + day * DAY_MS,
                false,
                &on_page,
                &CancellationToken::new(),
            )
            .await?;
        let secs = started.elapsed().as_secs_f64();
        bar.finish_and_clear();
        #[allow(clippy::cast_precision_loss)]
        let rate = outcome.report.examined as f64 / secs;
        runs.push((secs, rate, outcome.report));
    }
    let left = objects.list_all(None).await?.len();
    ensure!(left == 0, "{left} objects survived the day-91 sweep");
    let (day91_s, day91_objects_per_s, day91) = runs.pop().unwrap_or_default();
    let (day31_s, day31_objects_per_s, day31) = runs.pop().unwrap_or_default();
    Ok(Report {
        backend: args.backend,
        objects: args.objects,
        setup_s,
        day31_s,
        day31_objects_per_s,
        day31,
        day91_s,
        day91_objects_per_s,
        day91,
    })
}

/// What the i-th object is.
enum Kind {
    Text,
    Image,
    Upload,
}

fn kind(i: u64) -> Kind {
    match i % 10 {
        0..=5 => Kind::Text,
        6 | 7 => Kind::Image,
        _ => Kind::Upload,
    }
}

/// Creates `n` objects and their rows, a thousand rows per transaction.
async fn populate(db: &Database, objects: &Objects, n: u64, show: bool) -> anyhow::Result<()> {
    let bar = progress(show, n, "create");
    let tenant = "bench-tenant";
    let mut i = 0;
    while i < n {
        let chunk: Vec<u64> = (i..(i + 1000).min(n)).collect();
        // Bytes first (in parallel), rows after: the order the platform writes them in.
        let written: Vec<(u64, ObjectKey, Written)> = futures::stream::iter(chunk)
            .map(|i| async move {
                let (key, body, w) = object(tenant, i);
                objects.put(&key, body, &PutMeta::default()).await?;
                Ok::<_, anyhow::Error>((i, key, w))
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        let mut tx = db.begin().await?;
        let mut by_job: std::collections::BTreeMap<String, Vec<ArtifactRow>> =
            std::collections::BTreeMap::new();
        for (i, key, w) in written {
            match w {
                Written::Artifact(row) => by_job.entry(job_id(i)).or_default().push(row),
                Written::Upload { size, sha256 } => {
                    uploads::insert(
                        &mut tx,
                        &NewUpload {
                            key: key.as_str(),
                            tenant_id: tenant,
                            filename: "data.csv",
                            content_type: "text/csv",
                            size,
                            sha256: &sha256,
                            scan: "skipped",
                            request_id: None,
                        },
                    )
                    .await?;
                }
            }
        }
        for (job, rows) in by_job {
            let (id, _) = jobs::insert(
                &mut tx,
                &NewJob {
                    id: &job,
                    tenant_id: tenant,
                    job_type: "sketch_to_app",
                    idempotency_key: Some(&job),
                    params: "{}",
                    input_key: "inputs/bench",
                    request_id: None,
                },
            )
            .await?;
            let now = i64::try_from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)?
                    .as_millis(),
            )?;
            cognomega_core::jobs::succeed(&mut tx, &id, None, &rows, 0, now).await?;
        }
        tx.commit().await?;
        i += 1000;
        bar.set_position(i.min(n));
    }
    bar.finish_and_clear();
    Ok(())
}

enum Written {
    Artifact(ArtifactRow),
    Upload { size: i64, sha256: String },
}

fn job_id(i: u64) -> String {
    format!("bench-job-{:08}", i / PER_JOB)
}

/// The i-th object: its key, stored bytes, and what its row records.
fn object(tenant: &str, i: u64) -> (ObjectKey, Bytes, Written) {
    let parse = |raw: String| ObjectKey::parse(&raw).unwrap_or_else(|e| unreachable!("{e}"));
    match kind(i) {
        Kind::Upload => {
            let body = text(i, 2_000);
            let sha256 = cognomega_r2_lifecycle::codec::sha256_hex(&body);
            let size = i64::try_from(body.len()).unwrap_or(i64::MAX);
            (
                parse(format!("uploads/{tenant}/u{i:08}")),
                body.into(),
                Written::Upload { size, sha256 },
            )
        }
        k => {
            let (name, content_type, body) = match k {
                Kind::Text if i.is_multiple_of(2) => {
                    (format!("f{i}.html"), "text/html", text(i, 6_000))
                }
                Kind::Text => (format!("f{i}.json"), "application/json", json(i, 4_000)),
                _ => (format!("f{i}.png"), "image/png", noise(i, 3_000)),
            };
            let encoded = encode(&body, content_type, &CodecPolicy::default());
            let key = parse(format!("artifacts/{tenant}/{}/{name}", job_id(i)));
            let row = ArtifactRow {
                name,
                content_type: content_type.to_owned(),
                size: i64::try_from(encoded.original_size).unwrap_or(i64::MAX),
                stored_size: i64::try_from(encoded.stored_size).unwrap_or(i64::MAX),
                compression: encoded.compression.as_str().to_owned(),
                sha256: encoded.sha256.clone(),
                tier: "hot".to_owned(),
                object_key: key.as_str().to_owned(),
            };
            (key, encoded.bytes.into(), Written::Artifact(row))
        }
    }
}

/// Generated HTML-like text: repetitive markup with varying content, like a scaffold.
fn text(seed: u64, len: usize) -> Vec<u8> {
    let mut out = String::from("<!doctype html><html><body>\n");
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.push_str(&format!(
            "<div class=\"card card-{}\"><h2>Item {}</h2><p>Row {} of {}</p></div>\n",
            state % 7,
            state % 997,
            state % 10_007,
            seed
        ));
    }
    out.into_bytes()
}

fn json(seed: u64, len: usize) -> Vec<u8> {
    let mut out = String::from("{\"nodes\":[");
    let mut k = seed;
    while out.len() < len {
        k = k.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        out.push_str(&format!(
            "{{\"id\":{},\"kind\":\"box\",\"x\":{},\"y\":{},\"w\":{},\"h\":{}}},",
            k % 100_000,
            k % 1600,
            (k >> 8) % 1200,
            (k >> 16) % 400,
            (k >> 24) % 300
        ));
    }
    out.push_str("{}]}");
    out.into_bytes()
}

fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}
