//! `POST /admin/cleanup` and `cognomega cleanup` on both backends, over the local folder and
//! the S3-compatible server: each kind of garbage is made for real, a dry run reports exact
//! counts and changes nothing, the real run deletes exactly those, live data stays, and a
//! second run finds nothing.

use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use bytes::Bytes;
use cognomega_core::queue::{HandlerError, OutgoingMessage, QueueDriver, Settlement};
use cognomega_pipelines::synth::Sketch;
use cognomega_stores::objects::{ObjectKey, Objects, PutMeta};
use cognomega_stores::Database;
use cognomega_testkit::{q, s3, settings, wait_for, Backend, Guest, TestApp, ADMIN_KEY};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_local_folder() -> anyhow::Result<()> {
    cognomega_testkit::init_tracing();
    cleanup_end_to_end(Backend::Sqlite, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_local_folder() -> anyhow::Result<()> {
    cognomega_testkit::init_tracing();
    cleanup_end_to_end(Backend::Postgres, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_s3() -> anyhow::Result<()> {
    cognomega_testkit::init_tracing();
    cleanup_end_to_end(Backend::Sqlite, true).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_s3() -> anyhow::Result<()> {
    cognomega_testkit::init_tracing();
    cleanup_end_to_end(Backend::Postgres, true).await
}

async fn cleanup(app: &TestApp, query: &str) -> anyhow::Result<(StatusCode, Value)> {
    let resp = app
        .client
        .post(app.url(&format!("/admin/cleanup{query}")))
        .header("X-Admin-Key", ADMIN_KEY)
        .send()
        .await?;
    let status = resp.status();
    Ok((status, resp.json().await?))
}

/// A report's counts, without the `dry_run` flag.
fn counts(report: &Value) -> Value {
    let mut r = report.clone();
    if let Some(o) = r.as_object_mut() {
        o.remove("dry_run");
    }
    r
}

fn expect(acked: u64, dead: u64, keys: u64, guests: u64, orphans: u64, rows: u64) -> Value {
    json!({
        "messages": {"acked": acked, "dead": dead, "dedup_keys": keys},
        "guest_tenants": guests,
        "orphaned_objects": orphans,
        "rows_missing_objects": rows,
    })
}

async fn scalar(db: &Database, sqlite: &str, postgres: &str, bind: &str) -> anyhow::Result<i64> {
    Ok(match db {
        Database::Sqlite(s) => {
            sqlx::query_scalar(sqlite)
                .bind(bind)
                .fetch_one(&s.read)
                .await?
        }
        Database::Postgres(p) => {
            sqlx::query_scalar(postgres)
                .bind(bind)
                .fetch_one(&p.pool)
                .await?
        }
    })
}

/// Moves a tenant's creation two days back: its guest token expired long ago.
async fn age_tenant(db: &Database, tenant: &str) -> anyhow::Result<()> {
    match db {
        Database::Sqlite(s) => {
            sqlx::query("UPDATE tenants SET created_at = created_at - 172800000 WHERE id = ?1")
                .bind(tenant)
                .execute(&s.write)
                .await?;
        }
        Database::Postgres(p) => {
            sqlx::query(
                "UPDATE tenants SET created_at = created_at - interval '2 days' WHERE id = $1",
            )
            .bind(tenant)
            .execute(&p.pool)
            .await?;
        }
    }
    Ok(())
}

async fn tenant_rows(db: &Database, tenant: &str) -> anyhow::Result<(i64, i64, i64)> {
    let tenants = scalar(
        db,
        "SELECT COUNT(*) FROM tenants WHERE id = ?1",
        "SELECT COUNT(*) FROM tenants WHERE id = $1",
        tenant,
    )
    .await?;
    let users = scalar(
        db,
        "SELECT COUNT(*) FROM users WHERE tenant_id = ?1",
        "SELECT COUNT(*) FROM users WHERE tenant_id = $1",
        tenant,
    )
    .await?;
    let ledger = scalar(
        db,
        "SELECT COUNT(*) FROM ledger_entries WHERE tenant_id = ?1",
        "SELECT COUNT(*) FROM ledger_entries WHERE tenant_id = $1",
        tenant,
    )
    .await?;
    Ok((tenants, users, ledger))
}

async fn adjust(app: &TestApp, g: &Guest, delta: i64, key: &str) -> anyhow::Result<()> {
    let resp = app
        .client
        .post(app.url("/credits/adjust"))
        .header("X-Admin-Key", ADMIN_KEY)
        .header("Idempotency-Key", key)
        .json(&json!({"tenant_id": g.tenant_id, "delta": delta, "reason": "test"}))
        .send()
        .await?;
    anyhow::ensure!(resp.status() == 202, "adjust: {}", resp.status());
    Ok(())
}

async fn wait_balance(app: &TestApp, g: &Guest, want: i64) -> anyhow::Result<()> {
    wait_for(Duration::from_secs(30), || async {
        Ok((app.balance(g).await? == want).then_some(()))
    })
    .await
}

async fn get_json(app: &TestApp, g: &Guest, path: &str) -> anyhow::Result<(StatusCode, Value)> {
    let resp = app
        .client
        .get(app.url(path))
        .bearer_auth(&g.token)
        .send()
        .await?;
    let status = resp.status();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

async fn exists(objects: &Objects, key: &str) -> anyhow::Result<bool> {
    Ok(objects.head(&ObjectKey::parse(key)?).await?.is_some())
}

/// Acked and dead messages past a short retention and an expired idempotency key, next to a
/// queue whose long retention keeps the same kinds.
async fn queue_garbage(driver: &dyn QueueDriver) -> anyhow::Result<()> {
    let short = settings(|s| {
        s.max_retries = 0;
        s.retain_acked = Duration::from_millis(200);
        s.dead_retention = Duration::from_millis(200);
        s.dedup_window = Duration::from_millis(200);
        s.dead_letter_queue = Some(q("cleanup-short.dlq"));
    });
    let long = settings(|s| {
        s.max_retries = 0;
        s.retain_acked = Duration::from_secs(3600);
        s.dead_letter_queue = Some(q("cleanup-long.dlq"));
    });
    for (name, s) in [("cleanup-short", &short), ("cleanup-long", &long)] {
        let queue = q(name);
        driver.declare(&queue, s).await?;
        let key = cognomega_core::queue::IdempotencyKey::parse("only-once")?;
        driver
            .send_batch(
                &queue,
                vec![
                    OutgoingMessage::new(b"a".to_vec()).idempotency_key(key),
                    OutgoingMessage::new(b"b".to_vec()),
                    OutgoingMessage::new(b"c".to_vec()),
                ],
            )
            .await?;
        let claim = driver.claim(&queue, s, 10).await?;
        anyhow::ensure!(claim.messages.len() == 3, "claimed {:?}", claim.messages);
        let mut items: Vec<Settlement> = claim.messages[..2]
            .iter()
            .map(|m| Settlement::Ack {
                id: m.id,
                token: claim.token,
            })
            .collect();
        items.push(Settlement::DeadLetter {
            id: claim.messages[2].id,
            token: claim.token,
            error: HandlerError::fatal("test").to_string(),
        });
        driver.settle(&queue, s, &items).await?;
    }
    // Past the short retentions, well inside the long ones.
    tokio::time::sleep(Duration::from_millis(600)).await;
    Ok(())
}

#[allow(clippy::too_many_lines)]
async fn cleanup_end_to_end(backend: Backend, on_s3: bool) -> anyhow::Result<()> {
    let bucket = on_s3.then(|| s3().bucket().0);
    let app = TestApp::spawn_on(backend, bucket.clone(), true, None, |_| {}).await?;
    let db = app.tdb.db().clone();
    let objects = app.objects()?;

    // Refusals first: they must change nothing either.
    let resp = app.client.post(app.url("/admin/cleanup")).send().await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    for (query, code) in [
        ("?dry_run=maybe", "invalid_dry_run"),
        ("?grace_secs=-1", "invalid_grace"),
        ("?grace_secs=soon", "invalid_grace"),
        ("?dryrun=true", "invalid_query"),
    ] {
        let (status, body) = cleanup(&app, query).await?;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (StatusCode::BAD_REQUEST, Some(code)),
            "{query}: {body}"
        );
    }

    // Guests: one expired with zero balance (grant spent by an adjustment: two ledger rows that
    // must survive), one expired with credits, one fresh with zero balance.
    let expired = app.guest().await?;
    let rich = app.guest().await?;
    let fresh = app.guest().await?;
    let owner = app.guest().await?;
    for g in [&expired, &rich, &fresh, &owner] {
        wait_balance(&app, g, 1000).await?;
    }
    adjust(&app, &expired, -1000, "spend-expired").await?;
    adjust(&app, &fresh, -1000, "spend-fresh").await?;
    wait_balance(&app, &expired, 0).await?;
    wait_balance(&app, &fresh, 0).await?;
    age_tenant(&db, &expired.tenant_id).await?;
    age_tenant(&db, &rich.tenant_id).await?;

    // Live data of a fresh tenant: two uploads and a job with two artifacts. One upload's
    // object and one artifact's object then disappear behind the rows' backs.
    let mut upload_keys = Vec::new();
    for name in ["kept.txt", "lost.txt"] {
        let resp = app
            .client
            .post(app.url("/upload/direct"))
            .bearer_auth(&owner.token)
            .header("Content-Type", "text/plain")
            .header("X-Filename", name)
            .body(format!("the bytes of {name}"))
            .send()
            .await?;
        assert_eq!(resp.status(), StatusCode::CREATED);
        let body: Value = resp.json().await?;
        upload_keys.push((
            body["key"].as_str().unwrap_or_default().to_owned(),
            app.url(body["url"].as_str().unwrap_or_default()),
        ));
    }
    let (png, _) = Sketch::generate(3, 320, 240);
    let body = json!({"type": "image_thumbnail", "input": {"image_base64": B64.encode(png)},
        "params": {"sizes": [32, 64], "format": "png"}});
    let resp = app
        .client
        .post(app.url("/jobs"))
        .bearer_auth(&owner.token)
        .json(&body)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let job_id = resp.json::<Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    wait_for(Duration::from_secs(120), || async {
        let (_, j) = get_json(&app, &owner, &format!("/jobs/{job_id}")).await?;
        anyhow::ensure!(j["status"] != "failed" && j["status"] != "dead", "{j}");
        Ok((j["status"] == "succeeded").then_some(()))
    })
    .await?;
    app.wait_idle(Duration::from_secs(30)).await?;
    let lost_upload = upload_keys[1].0.clone();
    objects.delete(&ObjectKey::parse(&lost_upload)?).await?;
    let lost_artifact = format!("artifacts/{}/{job_id}/thumb-32.png", owner.tenant_id);
    objects.delete(&ObjectKey::parse(&lost_artifact)?).await?;

    // Objects no row refers to, under each row-owned prefix; one outside them stays anyway.
    let orphans = [
        format!(
            "uploads/{}/0190aaaa-0000-7000-8000-000000000001",
            owner.tenant_id
        ),
        format!(
            "artifacts/{}/0190aaaa-0000-7000-8000-000000000002/a.txt",
            owner.tenant_id
        ),
        format!(
            "inputs/{}/0190aaaa-0000-7000-8000-000000000003",
            owner.tenant_id
        ),
    ];
    let outside = "exports/manual/notes.txt";
    for key in orphans.iter().map(String::as_str).chain([outside]) {
        objects
            .put(
                &ObjectKey::parse(key)?,
                Bytes::from_static(b"garbage"),
                &PutMeta::content_type("text/plain"),
            )
            .await?;
    }

    queue_garbage(app.platform().db.queue().as_ref()).await?;

    // Dry run with the default grace: every object and row is younger than an hour.
    let (status, dry) = cleanup(&app, "?dry_run=true").await?;
    assert_eq!(status, StatusCode::OK, "{dry}");
    assert_eq!(dry["dry_run"], true);
    assert_eq!(counts(&dry), expect(2, 1, 1, 1, 0, 0), "{dry}");

    // Dry run without grace: everything counted, nothing changed.
    let (status, dry) = cleanup(&app, "?dry_run=true&grace_secs=0").await?;
    assert_eq!(status, StatusCode::OK, "{dry}");
    assert_eq!(counts(&dry), expect(2, 1, 1, 1, 3, 2), "{dry}");
    // The command line computes the same report over the same stores.
    let objects_url = match &bucket {
        Some(url) => url.to_string(),
        None => app.tdb.data_dir().join("objects").display().to_string(),
    };
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_cognomega"))
        .args(["--log", "warn", "--database-url", app.tdb.url().expose()])
        .args(["--objects-url", &objects_url])
        .args(["cleanup", "--dry-run", "--json", "--grace-secs", "0"])
        .output()
        .await?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli: Value = serde_json::from_slice(&out.stdout)?;
    assert_eq!(cli, dry, "the command line reports what the route reports");
    let (status, again) = cleanup(&app, "?dry_run=1&grace_secs=0").await?;
    assert_eq!((status, counts(&again)), (StatusCode::OK, counts(&dry)));
    for key in &orphans {
        assert!(exists(&objects, key).await?, "dry run deleted {key}");
    }
    assert_eq!(tenant_rows(&db, &expired.tenant_id).await?, (1, 1, 2));
    let short_dlq = app
        .platform()
        .db
        .queue()
        .dead_letters(&q("cleanup-short.dlq"), 10)
        .await?;
    assert_eq!(short_dlq.len(), 1, "dry run pruned a dead message");
    let (_, j) = get_json(&app, &owner, &format!("/jobs/{job_id}")).await?;
    assert!(
        j["artifacts"]
            .as_array()
            .into_iter()
            .flatten()
            .all(|a| a["tier"] == "hot"),
        "{j}"
    );

    // The real run deletes exactly what the dry run counted.
    let (status, done) = cleanup(&app, "?grace_secs=0").await?;
    assert_eq!(status, StatusCode::OK, "{done}");
    assert_eq!(done["dry_run"], false);
    assert_eq!(counts(&done), counts(&dry), "{done}");

    // Garbage gone.
    for key in &orphans {
        assert!(!exists(&objects, key).await?, "{key} was not deleted");
    }
    assert_eq!(
        tenant_rows(&db, &expired.tenant_id).await?,
        (0, 0, 2),
        "ledger kept"
    );
    assert!(app
        .platform()
        .db
        .queue()
        .dead_letters(&q("cleanup-short.dlq"), 10)
        .await?
        .is_empty());
    // Rows whose object went are expired: the API says 410, consistently.
    let (_, j) = get_json(&app, &owner, &format!("/jobs/{job_id}")).await?;
    let tiers: Vec<(String, String)> = j["artifacts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| {
            (
                a["name"].as_str().unwrap_or_default().to_owned(),
                a["tier"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let mut tiers = tiers;
    tiers.sort();
    assert_eq!(
        tiers,
        [
            ("thumb-32.png".to_owned(), "expired".to_owned()),
            ("thumb-64.png".to_owned(), "hot".to_owned())
        ],
        "{j}"
    );
    let (status, body) = get_json(
        &app,
        &owner,
        &format!("/jobs/{job_id}/artifacts/thumb-32.png"),
    )
    .await?;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (StatusCode::GONE, Some("artifact_expired"))
    );
    let resp = app.client.get(&upload_keys[1].1).send().await?;
    assert_eq!(resp.status(), StatusCode::GONE);

    // Live data untouched.
    assert!(exists(&objects, outside).await?);
    assert_eq!(tenant_rows(&db, &rich.tenant_id).await?.0, 1);
    assert_eq!(tenant_rows(&db, &fresh.tenant_id).await?.0, 1);
    assert_eq!(app.balance(&rich).await?, 1000);
    assert_eq!(app.balance(&fresh).await?, 0);
    let (status, _) = get_json(
        &app,
        &owner,
        &format!("/jobs/{job_id}/artifacts/thumb-64.png"),
    )
    .await?;
    assert_eq!(status, StatusCode::OK);
    let resp = app.client.get(&upload_keys[0].1).send().await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.text().await?, "the bytes of kept.txt");
    assert_eq!(
        app.platform()
            .db
            .queue()
            .dead_letters(&q("cleanup-long.dlq"), 10)
            .await?
            .len(),
        1
    );
    assert_eq!(
        app.platform()
            .db
            .queue()
            .stats(&q("cleanup-long"))
            .await?
            .acked_retained,
        2
    );

    // Nothing left to do.
    let (status, second) = cleanup(&app, "?grace_secs=0").await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(counts(&second), expect(0, 0, 0, 0, 0, 0), "{second}");
    app.stop().await
}
