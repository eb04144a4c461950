//! Jobs end to end over HTTP on both backends: submit a generated sketch, poll to `succeeded`,
//! download and verify every artifact; idempotent submit; tenant isolation; cancel; bad input;
//! zstd passthrough and conditional GET; pagination; the thumbnail type; 402 without credits.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use cognomega_pipelines::synth::Sketch;
use cognomega_testkit::{wait_for, Backend, Guest, TestApp, ADMIN_KEY};
use futures::StreamExt as _;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

fn sketch_b64(seed: u64) -> String {
    let (png, _) = Sketch::generate(seed, 800, 600);
    B64.encode(png)
}

async fn submit(
    app: &TestApp,
    g: &Guest,
    body: &Value,
    key: Option<&str>,
) -> anyhow::Result<reqwest::Response> {
    let mut req = app
        .client
        .post(app.url("/jobs"))
        .bearer_auth(&g.token)
        .json(body);
    if let Some(k) = key {
        req = req.header("Idempotency-Key", k);
    }
    Ok(req.send().await?)
}

async fn job(app: &TestApp, g: &Guest, id: &str) -> anyhow::Result<Value> {
    Ok(app
        .client
        .get(app.url(&format!("/jobs/{id}")))
        .bearer_auth(&g.token)
        .send()
        .await?
        .json()
        .await?)
}

async fn wait_status(app: &TestApp, g: &Guest, id: &str, status: &str) -> anyhow::Result<Value> {
    wait_for(Duration::from_secs(120), || async {
        let j = job(app, g, id).await?;
        if j["status"] == status {
            return Ok(Some(j));
        }
        anyhow::ensure!(
            !matches!(
                j["status"].as_str(),
                Some("failed" | "dead" | "cancelled" | "succeeded")
            ),
            "job reached {} instead of {status}: {j}",
            j["status"]
        );
        Ok(None)
    })
    .await
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

async fn sketch_to_app_end_to_end(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn(backend).await?;
    let g = app.guest().await?;
    wait_for(Duration::from_secs(30), || async {
        Ok((app.balance(&g).await? == 1000).then_some(()))
    })
    .await?;
    let body = json!({"type": "sketch_to_app", "input": {"image_base64": sketch_b64(7)}, "params": {"title": "Demo"}});
    let resp = submit(&app, &g, &body, None).await?;
    assert_eq!(resp.status(), 202);
    let location = resp.headers()["location"].to_str()?.to_owned();
    let accepted: Value = resp.json().await?;
    let id = accepted["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(accepted["status"], "queued");
    assert_eq!(accepted["status_url"], format!("/jobs/{id}"));
    assert_eq!(location, format!("/jobs/{id}"));

    let done = wait_status(&app, &g, &id, "succeeded").await?;
    assert_eq!(done["type"], "sketch_to_app");
    assert_eq!(done["progress"], 1.0);
    assert_eq!(done["credits_charged"], 10);
    for field in ["created_at", "started_at", "finished_at"] {
        assert!(done[field].is_string(), "{field}");
    }
    let artifacts = done["artifacts"].as_array().cloned().unwrap_or_default();
    let names: Vec<&str> = artifacts
        .iter()
        .filter_map(|a| a["name"].as_str())
        .collect();
    for expected in [
        "README.md",
        "index.html",
        "layout.json",
        "preview.png",
        "styles.css",
    ] {
        assert!(names.contains(&expected), "{expected} in {names:?}");
    }
    for a in &artifacts {
        let resp = app
            .client
            .get(app.url(a["url"].as_str().unwrap_or_default()))
            .bearer_auth(&g.token)
            .send()
            .await?;
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"],
            a["content_type"].as_str().unwrap_or_default()
        );
        let etag = resp.headers()["etag"].to_str()?.to_owned();
        let bytes = resp.bytes().await?;
        assert_eq!(sha256_hex(&bytes), a["sha256"], "{}", a["name"]);
        assert_eq!(bytes.len() as u64, a["size"].as_u64().unwrap_or_default());
        assert_eq!(
            etag,
            format!("\"{}\"", a["sha256"].as_str().unwrap_or_default())
        );
        let resp = app
            .client
            .get(app.url(a["url"].as_str().unwrap_or_default()))
            .bearer_auth(&g.token)
            .header("If-None-Match", &etag)
            .send()
            .await?;
        assert_eq!(resp.status(), 304);
        match a["name"].as_str() {
            Some("index.html") => {
                assert_eq!(a["compression"], "zstd");
                assert!(a["stored_size"].as_u64() < a["size"].as_u64());
                let html = String::from_utf8(bytes.to_vec())?;
                assert!(html.to_ascii_lowercase().starts_with("<!doctype html>"));
                let doc = scraper::Html::parse_document(&html);
                assert!(
                    doc.errors.is_empty(),
                    "index.html parses cleanly: {:?}",
                    doc.errors
                );
                let title =
                    scraper::Selector::parse("title").map_err(|e| anyhow::anyhow!("{e}"))?;
                assert_eq!(
                    doc.select(&title)
                        .next()
                        .map(|t| t.text().collect::<String>()),
                    Some("Demo".into())
                );
                // The stored zstd bytes, when the client takes them.
                let resp = app
                    .client
                    .get(app.url(a["url"].as_str().unwrap_or_default()))
                    .bearer_auth(&g.token)
                    .header("Accept-Encoding", "zstd")
                    .send()
                    .await?;
                assert_eq!(resp.headers()["content-encoding"], "zstd");
                let raw = resp.bytes().await?;
                assert_eq!(
                    raw.len() as u64,
                    a["stored_size"].as_u64().unwrap_or_default()
                );
                assert_eq!(zstd::decode_all(&raw[..])?, bytes.to_vec());
            }
            Some("layout.json") => {
                let layout: Value = serde_json::from_slice(&bytes)?;
                assert!(layout.is_object());
            }
            Some("preview.png") => {
                assert_eq!(a["compression"], "none");
                assert!(bytes.starts_with(b"\x89PNG"));
            }
            _ => {}
        }
    }
    // Exactly one `job` usage event, settled once.
    wait_for(Duration::from_secs(30), || async {
        Ok((app.balance(&g).await? == 990).then_some(()))
    })
    .await?;
    let usage: Value = app
        .client
        .get(app.url("/usage"))
        .bearer_auth(&g.token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(usage["totals"]["job"]["events"], 1);

    // Same input ⇒ byte-identical artifacts.
    let again = submit(&app, &g, &body, None).await?.json::<Value>().await?;
    let again = wait_status(
        &app,
        &g,
        again["id"].as_str().unwrap_or_default(),
        "succeeded",
    )
    .await?;
    let shas = |j: &Value| -> Vec<String> {
        let mut v: Vec<String> = j["artifacts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| a["sha256"].to_string())
            .collect();
        v.sort();
        v
    };
    assert_eq!(shas(&done), shas(&again));
    app.stop().await
}

/// An app without in-process consumers, whose guests' grants are settled: jobs stay queued
/// until the test drains their queue.
async fn paused_app(backend: Backend) -> anyhow::Result<(TestApp, Guest, Guest)> {
    let app = TestApp::spawn_with(backend, false).await?;
    let g = app.guest().await?;
    let other = app.guest().await?;
    app.drain(&["settlement"]).await?;
    Ok((app, g, other))
}

async fn idempotent_submit_isolation_and_cancel(backend: Backend) -> anyhow::Result<()> {
    let (app, g, other) = paused_app(backend).await?;
    let body = json!({"type": "sketch_to_app", "input": {"image_base64": sketch_b64(3)}});
    let first = submit(&app, &g, &body, Some("order-1")).await?;
    assert_eq!(first.status(), 202);
    let id = first.json::<Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    for _ in 0..3 {
        let again = submit(&app, &g, &body, Some("order-1")).await?;
        assert_eq!(again.status(), 200, "same key ⇒ same job, 200");
        assert_eq!(again.json::<Value>().await?["id"], id.as_str());
    }
    // Another tenant with the same key gets its own job.
    let theirs = submit(&app, &other, &body, Some("order-1")).await?;
    assert_eq!(theirs.status(), 202);
    assert_ne!(theirs.json::<Value>().await?["id"], id.as_str());
    // Another tenant cannot see, cancel or download this one.
    for (method, path) in [
        ("GET", format!("/jobs/{id}")),
        ("POST", format!("/jobs/{id}/cancel")),
        ("GET", format!("/jobs/{id}/artifacts/index.html")),
    ] {
        let req = if method == "GET" {
            app.client.get(app.url(&path))
        } else {
            app.client.post(app.url(&path))
        };
        let resp = req.bearer_auth(&other.token).send().await?;
        assert_eq!(resp.status(), 404, "{method} {path}");
    }
    let list: Value = app
        .client
        .get(app.url("/jobs"))
        .bearer_auth(&g.token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(1));

    // Queued ⇒ cancelled at once; cancelling again ⇒ 409.
    let resp = app
        .client
        .post(app.url(&format!("/jobs/{id}/cancel")))
        .bearer_auth(&g.token)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.json::<Value>().await?["status"], "cancelled");
    let resp = app
        .client
        .post(app.url(&format!("/jobs/{id}/cancel")))
        .bearer_auth(&g.token)
        .send()
        .await?;
    assert_eq!(resp.status(), 409);
    assert_eq!(resp.json::<Value>().await?["error"]["code"], "job_finished");
    // The consumer finds it cancelled and leaves it so; nothing is charged.
    app.drain(&["jobs.sketch_to_app", "usage", "settlement"])
        .await?;
    let j = job(&app, &g, &id).await?;
    assert_eq!(j["status"], "cancelled");
    assert_eq!(j["artifacts"].as_array().map(Vec::len), Some(0));
    assert_eq!(app.balance(&g).await?, 1000);
    app.stop().await
}

async fn bad_input_is_refused_before_queueing(backend: Backend) -> anyhow::Result<()> {
    let (app, g, _) = paused_app(backend).await?;
    // A PNG header claiming 50000×50000: a decompression bomb.
    let mut bomb = b"\x89PNG\r\n\x1a\n\x00\x00\x00\x0dIHDR".to_vec();
    bomb.extend_from_slice(&50_000u32.to_be_bytes());
    bomb.extend_from_slice(&50_000u32.to_be_bytes());
    bomb.extend_from_slice(&[8, 0, 0, 0, 0, 0, 0, 0, 0]);
    let cases = [
        (
            json!({"type": "no_such_type", "input": {"image_base64": sketch_b64(1)}}),
            400,
            "unknown_job_type",
        ),
        (
            json!({"type": "sketch_to_app", "input": {"image_base64": sketch_b64(1)}, "params": {"bogus": 1}}),
            400,
            "invalid_params",
        ),
        (
            json!({"type": "sketch_to_app", "input": {"image_base64": "%%% not base64"}}),
            400,
            "invalid_input",
        ),
        (
            json!({"type": "sketch_to_app", "input": {"image_base64": B64.encode(b"just some text, not an image")}}),
            400,
            "invalid_input",
        ),
        (
            json!({"type": "sketch_to_app", "input": {"image_base64": B64.encode(&bomb)}}),
            400,
            "invalid_input",
        ),
        (
            json!({"type": "sketch_to_app", "input": {}}),
            400,
            "invalid_input",
        ),
        (
            json!({"type": "sketch_to_app", "input": {"image_base64": "", "upload_key": "x"}}),
            400,
            "invalid_input",
        ),
        (
            json!({"type": "sketch_to_app", "input": {"upload_key": "uploads/nobody/x"}}),
            404,
            "upload_not_found",
        ),
        (json!({"input": {}}), 400, "invalid_body"),
    ];
    for (body, status, code) in cases {
        let resp = submit(&app, &g, &body, None).await?;
        assert_eq!(resp.status(), status, "{body}");
        let err: Value = resp.json().await?;
        assert_eq!(err["error"]["code"], code, "{body}");
    }
    let resp = app
        .client
        .post(app.url("/jobs"))
        .bearer_auth(&g.token)
        .body("{")
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    let stats = app
        .tdb
        .db()
        .queue()
        .stats(&cognomega_testkit::q("jobs.sketch_to_app"))
        .await?;
    assert_eq!(stats.depth, 0, "nothing enqueued");
    let list: Value = app
        .client
        .get(app.url("/jobs"))
        .bearer_auth(&g.token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        list["jobs"].as_array().map(Vec::len),
        Some(0),
        "no job rows"
    );

    // A PNG whose header is fine but whose data is truncated passes submit and fails the run.
    let (png, _) = Sketch::generate(5, 400, 300);
    let truncated = &png[..png.len() / 2];
    let resp = submit(
        &app,
        &g,
        &json!({"type": "sketch_to_app", "input": {"image_base64": B64.encode(truncated)}}),
        None,
    )
    .await?;
    assert_eq!(resp.status(), 202);
    let id = resp.json::<Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    app.drain(&["jobs.sketch_to_app", "usage", "settlement"])
        .await?;
    let j = job(&app, &g, &id).await?;
    assert_eq!(j["status"], "failed");
    assert!(j["error"].as_str().is_some_and(|e| !e.is_empty()), "{j}");
    assert_eq!(j["credits_charged"], 0);
    assert_eq!(app.balance(&g).await?, 1000, "a failed job is not charged");
    app.stop().await
}

async fn listing_is_newest_first_with_cursors(backend: Backend) -> anyhow::Result<()> {
    let (app, g, _) = paused_app(backend).await?;
    let mut ids = Vec::new();
    for seed in 0..5 {
        let kind = if seed % 2 == 0 {
            "sketch_to_app"
        } else {
            "image_thumbnail"
        };
        let params = if kind == "image_thumbnail" {
            json!({"sizes": [32]})
        } else {
            json!({})
        };
        let resp = submit(
            &app,
            &g,
            &json!({"type": kind, "input": {"image_base64": sketch_b64(seed)}, "params": params}),
            None,
        )
        .await?;
        assert_eq!(resp.status(), 202);
        ids.push(
            resp.json::<Value>().await?["id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    ids.reverse();
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = app.url("/jobs?limit=2");
        if let Some(c) = &cursor {
            url.push_str(&format!("&cursor={c}"));
        }
        let page: Value = app
            .client
            .get(url)
            .bearer_auth(&g.token)
            .send()
            .await?
            .json()
            .await?;
        seen.extend(
            page["jobs"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|j| j["id"].as_str().map(str::to_owned)),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, ids, "newest first, every job once");
    let thumbs: Value = app
        .client
        .get(app.url("/jobs?type=image_thumbnail&status=queued"))
        .bearer_auth(&g.token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(thumbs["jobs"].as_array().map(Vec::len), Some(2));
    for bad in [
        "/jobs?limit=0",
        "/jobs?limit=101",
        "/jobs?limit=x",
        "/jobs?status=weird",
    ] {
        assert_eq!(
            app.client
                .get(app.url(bad))
                .bearer_auth(&g.token)
                .send()
                .await?
                .status(),
            400,
            "{bad}"
        );
    }
    app.stop().await
}

async fn thumbnails_and_payment_required(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn(backend).await?;
    let g = app.guest().await?;
    wait_for(Duration::from_secs(30), || async {
        Ok((app.balance(&g).await? == 1000).then_some(()))
    })
    .await?;
    let body = json!({"type": "image_thumbnail", "input": {"image_base64": sketch_b64(11)}, "params": {"sizes": [32, 64], "format": "png"}});
    let id = submit(&app, &g, &body, None).await?.json::<Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let done = wait_status(&app, &g, &id, "succeeded").await?;
    let mut names: Vec<String> = done["artifacts"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|a| a["name"].as_str().map(str::to_owned))
        .collect();
    names.sort();
    assert_eq!(names, ["thumb-32.png", "thumb-64.png"]);
    // Out of credits ⇒ 402 before anything is stored or queued.
    let resp = app
        .client
        .post(app.url("/credits/adjust"))
        .header("X-Admin-Key", ADMIN_KEY)
        .header("Idempotency-Key", "drain-all")
        .json(&json!({"tenant_id": g.tenant_id, "delta": -2000, "reason": "test"}))
        .send()
        .await?;
    assert_eq!(resp.status(), 202);
    wait_for(Duration::from_secs(30), || async {
        Ok((app.balance(&g).await? < 0).then_some(()))
    })
    .await?;
    let resp = submit(&app, &g, &body, None).await?;
    assert_eq!(resp.status(), 402);
    assert_eq!(
        resp.json::<Value>().await?["error"]["code"],
        "insufficient_credits"
    );
    app.stop().await
}

/// A new guest's first job, right after `POST /auth/guest`, is never refused for credits: the
/// starting grant commits with the tenant (it used to wait for the settlement consumer, and
/// most first jobs got 402). 200 guests, each submitting at once, ten at a time.
async fn a_new_guests_first_job_is_accepted(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn_custom(backend, true, None, |api| {
        api.rate_limits.enabled = false;
    })
    .await?;
    let (png, _) = Sketch::generate(3, 320, 240);
    let body = json!({"type": "image_thumbnail", "input": {"image_base64": B64.encode(png)}, "params": {"sizes": [16], "format": "png"}});
    let statuses: Vec<u16> = futures::stream::iter(0..200)
        .map(|_| async {
            let g = app.guest().await?;
            let resp = submit(&app, &g, &body, None).await?;
            let status = resp.status().as_u16();
            anyhow::ensure!(status == 202, "{status}: {}", resp.text().await?);
            Ok::<_, anyhow::Error>(status)
        })
        .buffer_unordered(10)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(statuses.len(), 200);
    app.stop().await
}

cognomega_testkit::both_backends!(
    a_new_guests_first_job_is_accepted,
    sketch_to_app_end_to_end,
    idempotent_submit_isolation_and_cancel,
    bad_input_is_refused_before_queueing,
    listing_is_newest_first_with_cursors,
    thumbnails_and_payment_required,
);
