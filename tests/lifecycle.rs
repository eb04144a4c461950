//! The lifecycle sweeper end to end, on SQLite and PostgreSQL, over the local folder and a real
//! S3-compatible server (s3s-fs): real jobs and uploads made through the HTTP API, aged by
//! handing the sweeper a later clock (never by sleeping), then checked through the API, the
//! object store and `/metrics`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use cognomega_consumers::lifecycle::{self, SweepMessage, SweepOutcome, Sweeper};
use cognomega_core::queue::OutgoingMessage;
use cognomega_pipelines::synth::Sketch;
use cognomega_r2_lifecycle::policy::{Policy, Tier, DAY_MS};
use cognomega_r2_lifecycle::sweep::SweepReport;
use cognomega_stores::objects::{ObjectKey, Objects, PutMeta};
use cognomega_stores::sql::Reader;
use cognomega_testkit::{wait_for, Backend, Guest, TestApp};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Copy)]
enum Store {
    Local,
    S3,
}

async fn app(backend: Backend, store: Store) -> anyhow::Result<(TestApp, Guest)> {
    let objects = match store {
        Store::Local => None,
        Store::S3 => Some(cognomega_testkit::s3().bucket().0),
    };
    let app = TestApp::spawn_on(backend, objects, true, None, |_| {}).await?;
    let g = app.guest().await?;
    wait_for(Duration::from_secs(30), || async {
        Ok((app.balance(&g).await? == 1000).then_some(()))
    })
    .await?;
    Ok((app, g))
}

fn sweeper(app: &TestApp) -> anyhow::Result<Sweeper> {
    Ok(Sweeper::new(
        app.tdb.db().clone(),
        app.objects()?,
        Arc::new(Policy::default()),
    ))
}

async fn sweep(s: &Sweeper, now_ms: i64, dry_run: bool) -> anyhow::Result<SweepOutcome> {
    Ok(s.run(
        now_ms,
        dry_run,
        &|_: &SweepReport| {},
        &CancellationToken::new(),
    )
    .await?)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

async fn get_json(app: &TestApp, g: &Guest, path: &str) -> anyhow::Result<Value> {
    let resp = app
        .client
        .get(app.url(path))
        .bearer_auth(&g.token)
        .send()
        .await?;
    anyhow::ensure!(resp.status() == 200, "GET {path}: {}", resp.status());
    Ok(resp.json().await?)
}

/// Submits a generated sketch and waits for the job to succeed; returns its JSON.
async fn finished_job(app: &TestApp, g: &Guest, seed: u64) -> anyhow::Result<Value> {
    let (png, _) = Sketch::generate(seed, 800, 600);
    let body = json!({"type": "sketch_to_app", "input": {"image_base64": B64.encode(png)}});
    let resp = app
        .client
        .post(app.url("/jobs"))
        .bearer_auth(&g.token)
        .json(&body)
        .send()
        .await?;
    anyhow::ensure!(resp.status() == 202, "POST /jobs: {}", resp.status());
    let id = resp.json::<Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    wait_for(Duration::from_secs(120), || async {
        let j = get_json(app, g, &format!("/jobs/{id}")).await?;
        match j["status"].as_str() {
            Some("succeeded") => Ok(Some(j)),
            Some("queued" | "running") => Ok(None),
            other => anyhow::bail!("job ended {other:?}: {j}"),
        }
    })
    .await
}

fn artifacts(job: &Value) -> Vec<Value> {
    job["artifacts"].as_array().cloned().unwrap_or_default()
}

fn is_text(a: &Value) -> bool {
    cognomega_r2_lifecycle::codec::is_text(a["content_type"].as_str().unwrap_or_default())
}

/// Stored bytes under `prefix`.
async fn stored(objects: &Objects, prefix: &str) -> anyhow::Result<(usize, u64)> {
    let all = objects.list_all(Some(&ObjectKey::parse(prefix)?)).await?;
    Ok((all.len(), all.iter().map(|m| m.size).sum()))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn metric(app: &TestApp, line_prefix: &str) -> anyhow::Result<String> {
    let text = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    text.lines()
        .find(|l| l.starts_with(line_prefix))
        .map(|l| l[line_prefix.len()..].trim().to_owned())
        .ok_or_else(|| anyhow::anyhow!("no {line_prefix} in /metrics:\n{text}"))
}

async fn artifacts_recompress_then_move_then_expire(
    backend: Backend,
    store: Store,
) -> anyhow::Result<()> {
    let (app, g) = app(backend, store).await?;
    let job = finished_job(&app, &g, 3).await?;
    let id = job["id"].as_str().unwrap_or_default().to_owned();
    let all = artifacts(&job);
    let texts = all.iter().filter(|a| is_text(a)).count() as u64;
    assert!(texts >= 3 && (all.len() as u64) > texts, "{job}");
    let objects = app.objects()?;
    let s = sweeper(&app)?;
    let t0 = now_ms();
    let day = |n: i64| t0 + n * DAY_MS;

    // Young: nothing is even looked at.
    let young = sweep(&s, day(10), false).await?.report;
    assert!(young.is_noop() && young.examined == 0, "{young:?}");

    // A dry run reports the recompression and changes nothing.
    let (n0, bytes0) = stored(&objects, "artifacts").await?;
    let dry = sweep(&s, day(31), true).await?.report;
    assert_eq!(dry.recompressed.objects, texts, "{dry:?}");
    assert!(dry.bytes_saved > 0, "{dry:?}");
    assert_eq!(stored(&objects, "artifacts").await?, (n0, bytes0));
    assert_eq!(get_json(&app, &g, &format!("/jobs/{id}")).await?, job);

    // Day 31: text recompressed at zstd 19; what the dry run said, byte for byte.
    let r = sweep(&s, day(31), false).await?.report;
    assert_eq!(r.recompressed, dry.recompressed);
    assert_eq!(r.bytes_saved, dry.bytes_saved);
    let (n1, bytes1) = stored(&objects, "artifacts").await?;
    assert_eq!(n1, n0);
    assert_eq!(
        bytes0 - bytes1,
        r.bytes_saved,
        "the store shrank by what the report says"
    );
    let after = get_json(&app, &g, &format!("/jobs/{id}")).await?;
    let mut saved_in_rows = 0;
    for (a, b) in all.iter().zip(artifacts(&after)) {
        assert_eq!(a["name"], b["name"]);
        assert_eq!(b["tier"], "hot");
        let (was, now) = (a["stored_size"].as_i64(), b["stored_size"].as_i64());
        saved_in_rows += was.unwrap_or(0) - now.unwrap_or(0);
        if is_text(a) {
            assert_eq!(b["compression"], "zstd");
        } else {
            assert_eq!(a, &b, "binary artifacts are left alone");
        }
        // Content round-trips: the download is the original bytes.
        let resp = app
            .client
            .get(app.url(b["url"].as_str().unwrap_or_default()))
            .bearer_auth(&g.token)
            .send()
            .await?;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            sha256_hex(&resp.bytes().await?),
            a["sha256"].as_str().unwrap_or_default()
        );
    }
    assert_eq!(u64::try_from(saved_in_rows)?, r.bytes_saved);

    // Again on the same day: nothing left to do.
    let again = sweep(&s, day(31), false).await?.report;
    assert!(
        again.is_noop() && again.examined == all.len() as u64,
        "{again:?}"
    );
    assert_eq!(stored(&objects, "artifacts").await?, (n1, bytes1));

    // Day 61: Infrequent Access, recorded.
    let r = sweep(&s, day(61), false).await?.report;
    assert_eq!(r.to_infrequent_access.objects, all.len() as u64, "{r:?}");
    assert_eq!(r.to_infrequent_access.bytes, bytes1);
    let after = get_json(&app, &g, &format!("/jobs/{id}")).await?;
    assert!(
        artifacts(&after)
            .iter()
            .all(|a| a["tier"] == "infrequent_access"),
        "{after}"
    );

    // Day 91: deleted; the job says `expired` instead of offering a broken link.
    let r = sweep(&s, day(91), false).await?.report;
    assert_eq!(r.expired.objects, all.len() as u64, "{r:?}");
    assert_eq!(r.expired.bytes, bytes1);
    assert_eq!(stored(&objects, "artifacts").await?, (0, 0));
    let after = get_json(&app, &g, &format!("/jobs/{id}")).await?;
    assert_eq!(after["status"], "succeeded");
    for a in artifacts(&after) {
        assert_eq!(a["tier"], "expired", "{after}");
        assert!(a["url"].is_null(), "{after}");
    }
    let name = all[0]["name"].as_str().unwrap_or_default();
    let resp = app
        .client
        .get(app.url(&format!("/jobs/{id}/artifacts/{name}")))
        .bearer_auth(&g.token)
        .send()
        .await?;
    assert_eq!(resp.status(), 410);
    assert!(sweep(&s, day(400), false).await?.report.is_noop());

    // /metrics reads the sweeps back.
    let expired = all.len().to_string();
    assert_eq!(
        metric(&app, "cognomega_lifecycle_expired_objects_total ").await?,
        expired
    );
    assert_eq!(
        metric(&app, "cognomega_lifecycle_compression_saved_bytes_total ").await?,
        dry.bytes_saved.to_string()
    );
    assert_eq!(
        metric(&app, "cognomega_lifecycle_objects{tier=\"expired\"} ").await?,
        expired
    );
    assert_eq!(
        metric(&app, "cognomega_lifecycle_objects{tier=\"hot\"} ").await?,
        "0"
    );
    app.stop().await
}

async fn uploads_quarantine_and_exports_follow_their_rules(
    backend: Backend,
    store: Store,
) -> anyhow::Result<()> {
    let (app, g) = app(backend, store).await?;
    let objects = app.objects()?;
    let upload = |name: &'static str| {
        let (app, g) = (&app, &g);
        async move {
            let resp = app
                .client
                .post(app.url("/upload/direct"))
                .bearer_auth(&g.token)
                .header("Content-Type", "text/csv")
                .header("X-Filename", name)
                .body("a,b\n1,2\n")
                .send()
                .await?;
            anyhow::ensure!(resp.status() == 201, "upload: {}", resp.status());
            Ok::<Value, anyhow::Error>(resp.json().await?)
        }
    };
    let kept = upload("kept.csv").await?;
    let infected = upload("infected.csv").await?;
    // Quarantined the way the av-scan consumer does it.
    let key = infected["key"].as_str().unwrap_or_default();
    let quarantine = ObjectKey::parse(&format!("quarantine/{key}"))?;
    cognomega_stores::uploads::set_scan(
        app.tdb.db(),
        key,
        "infected",
        Some("Test.Marker"),
        None,
        Some(quarantine.as_str()),
    )
    .await?;
    objects.rename(&ObjectKey::parse(key)?, &quarantine).await?;
    // An export: no row owns it, so its age is the store's last-modified.
    let export = ObjectKey::parse("exports/usage/dt=2026-01-01/part-0000.ndjson")?;
    objects
        .put(&export, b"{}\n".to_vec().into(), &PutMeta::default())
        .await?;

    let s = sweeper(&app)?;
    let t0 = now_ms();
    let r = sweep(&s, t0 + 31 * DAY_MS, false).await?.report;
    assert_eq!(
        r.to_infrequent_access.objects, 2,
        "upload and export: {r:?}"
    );
    assert_eq!(r.expired.objects, 1, "the quarantined upload: {r:?}");
    assert!(objects.head(&quarantine).await?.is_none());
    assert!(objects.head(&export).await?.is_some());
    let census = |r: &SweepReport, t: Tier| r.census.get(&t).copied().unwrap_or_default().objects;
    assert_eq!(census(&r, Tier::InfrequentAccess), 2, "{r:?}");
    assert_eq!(census(&r, Tier::Expired), 1, "{r:?}");
    assert!(sweep(&s, t0 + 31 * DAY_MS, false).await?.report.is_noop());

    let r = sweep(&s, t0 + 91 * DAY_MS, false).await?.report;
    assert_eq!(r.expired.objects, 1, "the clean upload: {r:?}");
    let kept_key = ObjectKey::parse(kept["key"].as_str().unwrap_or_default())?;
    assert!(objects.head(&kept_key).await?.is_none());
    // Its signed link now says the file is gone.
    let resp = app
        .client
        .get(app.url(kept["url"].as_str().unwrap_or_default()))
        .send()
        .await?;
    assert_eq!(resp.status(), 410);
    // Exports are kept, whatever their age.
    assert!(sweep(&s, t0 + 5000 * DAY_MS, false).await?.report.is_noop());
    assert!(objects.head(&export).await?.is_some());
    app.stop().await
}

async fn an_interrupted_sweep_resumes_where_it_stopped(
    backend: Backend,
    store: Store,
) -> anyhow::Result<()> {
    let (app, g) = app(backend, store).await?;
    let mut all = Vec::new();
    for seed in [4, 5] {
        all.extend(artifacts(&finished_job(&app, &g, seed).await?));
    }
    let texts = all.iter().filter(|a| is_text(a)).count() as u64;
    let s = sweeper(&app)?.with_page_size(3);
    let t0 = now_ms();

    // Stop after the first page, as a crash between pages would.
    let cancel = CancellationToken::new();
    let pages = AtomicU32::new(0);
    let stop_after_one = |_: &SweepReport| {
        pages.fetch_add(1, Ordering::SeqCst);
        cancel.cancel();
    };
    let first = s
        .run(t0 + 31 * DAY_MS, false, &stop_after_one, &cancel)
        .await?;
    assert!(first.interrupted && !first.resumed, "{first:?}");
    assert_eq!(first.report.examined, 3);
    assert_eq!(pages.load(Ordering::SeqCst), 1);

    // The next sweep resumes it, with the clock it started with (day 200 would expire all).
    let second = sweep(&s, t0 + 200 * DAY_MS, false).await?;
    assert!(second.resumed && !second.interrupted, "{second:?}");
    assert_eq!(second.now_ms, t0 + 31 * DAY_MS);
    assert_eq!(second.report.examined, all.len() as u64, "{second:?}");
    assert_eq!(second.report.recompressed.objects, texts, "{second:?}");
    assert_eq!(second.report.expired.objects, 0);
    let whole = sweep(&sweeper(&app)?, t0 + 31 * DAY_MS, true).await?.report;
    assert!(whole.is_noop(), "nothing left for a full sweep: {whole:?}");

    // Every artifact was recompressed exactly once and still reads back.
    for job in get_json(&app, &g, "/jobs").await?["jobs"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        let id = job["id"].as_str().unwrap_or_default();
        for a in artifacts(&get_json(&app, &g, &format!("/jobs/{id}")).await?) {
            let body = app
                .client
                .get(app.url(a["url"].as_str().unwrap_or_default()))
                .bearer_auth(&g.token)
                .send()
                .await?
                .bytes()
                .await?;
            assert_eq!(sha256_hex(&body), a["sha256"].as_str().unwrap_or_default());
        }
    }
    // The next one starts afresh and has nothing to do.
    let third = sweep(&s, t0 + 31 * DAY_MS, false).await?;
    assert!(!third.resumed && third.report.is_noop(), "{third:?}");
    app.stop().await
}

async fn the_lifecycle_queue_runs_a_sweep(backend: Backend, store: Store) -> anyhow::Result<()> {
    let (app, _g) = app(backend, store).await?;
    let db = app.tdb.db().clone();
    db.queue()
        .send(
            &lifecycle::queue(),
            OutgoingMessage::json(&SweepMessage { dry_run: false })?,
        )
        .await?;
    let totals = wait_for(Duration::from_secs(30), || async {
        let t = cognomega_workflows::metrics::lifecycle(&mut Reader(&db)).await?;
        Ok(t.last_finished_ms.is_some().then_some(t))
    })
    .await?;
    assert_eq!(totals.objects_expired, 0);
    assert_ne!(
        metric(&app, "cognomega_lifecycle_last_sweep_timestamp_seconds ").await?,
        "0"
    );
    app.stop().await
}

macro_rules! matrix {
    ($($name:ident),* $(,)?) => {
        mod sqlite_local {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() -> anyhow::Result<()> {
                cognomega_testkit::init_tracing();
                super::$name(super::Backend::Sqlite, super::Store::Local).await
            })*
        }
        mod sqlite_s3 {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() -> anyhow::Result<()> {
                cognomega_testkit::init_tracing();
                super::$name(super::Backend::Sqlite, super::Store::S3).await
            })*
        }
        mod postgres_local {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() -> anyhow::Result<()> {
                cognomega_testkit::init_tracing();
                super::$name(super::Backend::Postgres, super::Store::Local).await
            })*
        }
        mod postgres_s3 {
            $(#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $name() -> anyhow::Result<()> {
                cognomega_testkit::init_tracing();
                super::$name(super::Backend::Postgres, super::Store::S3).await
            })*
        }
    };
}

matrix!(
    artifacts_recompress_then_move_then_expire,
    uploads_quarantine_and_exports_follow_their_rules,
    an_interrupted_sweep_resumes_where_it_stopped,
    the_lifecycle_queue_runs_a_sweep,
);
