//! Uploads scanned by a real clamd on the `av-scan` queue (both backends): EICAR is infected and
//! quarantined, a clean file is served, a pending one is not; with clamd stopped the scan is
//! retried, ends `scan_failed` with its message in the DLQ, and after clamd is back a replay of
//! that message makes the upload clean.

use std::time::Duration;

use cognomega_consumers::av_scan::{self, Scanner};
use cognomega_consumers::{Runtime, RuntimeOptions};
use cognomega_core::queue::QueueName;
use cognomega_stores::clamd::Clamd;
use cognomega_stores::objects::{ObjectKey, ObjectStoreUrl, Objects};
use cognomega_testkit::clamd::ClamdServer;
use cognomega_testkit::{Backend, Guest, TestApp};
use serde_json::{json, Value};

/// EICAR, assembled at run time so this file itself trips no scanner.
fn eicar() -> Vec<u8> {
    let parts = [
        "X5O!P%@AP[4\\PZX54(P^)7CC)7}$",
        "EICAR-STANDARD-ANTIVIRUS-TEST-FILE!$H+H*",
    ];
    parts.concat().into_bytes()
}

async fn upload(app: &TestApp, g: &Guest, name: &str, body: Vec<u8>) -> anyhow::Result<Value> {
    let resp = app
        .client
        .post(app.url("/upload/direct"))
        .bearer_auth(&g.token)
        .header("Content-Type", "text/plain")
        .header("X-Filename", name)
        .body(body)
        .send()
        .await?;
    anyhow::ensure!(resp.status() == 201, "upload: {}", resp.status());
    Ok(resp.json().await?)
}

async fn scan_status(app: &TestApp, g: &Guest, key: &str) -> anyhow::Result<Value> {
    Ok(app
        .client
        .get(app.url(&format!("/uploads/{key}")))
        .bearer_auth(&g.token)
        .send()
        .await?
        .json()
        .await?)
}

async fn objects_under(app: &TestApp, prefix: &str) -> anyhow::Result<usize> {
    let objects = Objects::open(&ObjectStoreUrl::Local(app.tdb.data_dir().join("objects")))?;
    Ok(objects
        .list_all(Some(&ObjectKey::parse(prefix)?))
        .await?
        .len())
}

async fn infected_is_quarantined_and_clean_is_served(backend: Backend) -> anyhow::Result<()> {
    let clamd = ClamdServer::start("100M").map_err(|e| anyhow::anyhow!(e))?;
    let app =
        TestApp::spawn_custom(backend, false, Some(Clamd::new(clamd.tcp.clone())), |_| {}).await?;
    let g = app.guest().await?;
    app.drain(&["settlement"]).await?;

    let bad = upload(&app, &g, "eicar.txt", eicar()).await?;
    let good = upload(&app, &g, "notes.txt", b"just some notes\n".to_vec()).await?;
    assert_eq!(bad["scan"], "pending");
    assert_eq!(good["scan"], "pending");
    // Pending: neither served nor usable as a job input.
    let resp = app
        .client
        .get(app.url(good["url"].as_str().unwrap_or_default()))
        .send()
        .await?;
    assert_eq!(resp.status(), 409);
    assert_eq!(resp.json::<Value>().await?["error"]["code"], "scan_pending");
    let job = app
        .client
        .post(app.url("/jobs"))
        .bearer_auth(&g.token)
        .json(&json!({"type": "image_thumbnail", "input": {"upload_key": good["key"]}, "params": {"sizes": [16]}}))
        .send()
        .await?;
    assert_eq!(job.status(), 409);

    app.drain(&["av-scan"]).await?;
    let bad_key = bad["key"].as_str().unwrap_or_default();
    let status = scan_status(&app, &g, bad_key).await?;
    assert_eq!(status["scan"], "infected");
    assert_eq!(status["signature"], "Cognomega.Test.EICAR.UNOFFICIAL");
    let resp = app
        .client
        .get(app.url(bad["url"].as_str().unwrap_or_default()))
        .send()
        .await?;
    assert_eq!(resp.status(), 403);
    assert_eq!(
        resp.json::<Value>().await?["error"]["code"],
        "file_infected"
    );
    assert_eq!(
        objects_under(&app, "quarantine").await?,
        1,
        "moved under quarantine/"
    );

    let good_key = good["key"].as_str().unwrap_or_default();
    assert_eq!(scan_status(&app, &g, good_key).await?["scan"], "clean");
    let resp = app
        .client
        .get(app.url(good["url"].as_str().unwrap_or_default()))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.bytes().await?.as_ref(), b"just some notes\n");
    app.stop().await
}

async fn clamd_down_then_back_via_dlq_replay(backend: Backend) -> anyhow::Result<()> {
    let clamd = ClamdServer::start("100M").map_err(|e| anyhow::anyhow!(e))?;
    let client = Clamd::new(clamd.tcp.clone());
    let app = TestApp::spawn_custom(backend, false, Some(client.clone()), |_| {}).await?;
    let g = app.guest().await?;
    app.drain(&["settlement"]).await?;
    let up = upload(&app, &g, "report.txt", b"quarterly numbers\n".to_vec()).await?;
    let key = up["key"].as_str().unwrap_or_default().to_owned();

    clamd.stop();
    // A scanner with fast retries: two retries, then the DLQ.
    let settings = cognomega_core::queue::QueueSettings {
        retry_delay: Duration::from_millis(50),
        max_retries: 2,
        ..av_scan::settings()
    };
    let run_scanner = |settings: cognomega_core::queue::QueueSettings| {
        let objects = Objects::open(&ObjectStoreUrl::Local(app.tdb.data_dir().join("objects")));
        let db = app.tdb.db().clone();
        let client = client.clone();
        async move {
            let scanner = Scanner::new(db.clone(), objects?, client)
                .with_max_deliveries(settings.max_deliveries());
            let mut rt = Runtime::new(
                db.queue(),
                RuntimeOptions {
                    poll_interval: Duration::from_millis(20),
                    ..Default::default()
                },
            );
            rt.consume(av_scan::queue(), settings, scanner)?;
            let running = rt.start().await?;
            let idle = running.wait_idle(Duration::from_secs(60)).await;
            running.stop().await;
            anyhow::ensure!(idle, "av-scan still busy");
            Ok::<_, anyhow::Error>(())
        }
    };
    run_scanner(settings.clone()).await?;
    let status = scan_status(&app, &g, &key).await?;
    assert_eq!(
        status["scan"], "scan_failed",
        "never clean while clamd is down: {status}"
    );
    let resp = app
        .client
        .get(app.url(up["url"].as_str().unwrap_or_default()))
        .send()
        .await?;
    assert_eq!(resp.status(), 409);
    let dlq = QueueName::parse("av-scan.dlq")?;
    let dead = app.tdb.db().queue().dead_letters(&dlq, 10).await?;
    assert_eq!(dead.len(), 1);
    assert!(
        dead[0]
            .error
            .as_deref()
            .is_some_and(|e| e.contains("unavailable")),
        "{:?}",
        dead[0].error
    );

    clamd.restart();
    assert_eq!(app.tdb.db().queue().replay(&dlq, None).await?, 1);
    run_scanner(settings).await?;
    assert_eq!(scan_status(&app, &g, &key).await?["scan"], "clean");
    let resp = app
        .client
        .get(app.url(up["url"].as_str().unwrap_or_default()))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    app.stop().await
}

cognomega_testkit::both_backends!(
    infected_is_quarantined_and_clean_is_served,
    clamd_down_then_back_via_dlq_replay
);
