//! The operator's HTTP surface: queue statistics, dead-letter inspection and replay, raw
//! messages sent to a queue, and the environment snapshot with every secret left out.

use std::time::Duration;

use cognomega_core::queue::OutgoingMessage;
use cognomega_stores::Database;
use cognomega_testkit::{both_backends, q, wait_for, Backend, TestApp, ADMIN_KEY};
use reqwest::StatusCode;
use serde_json::Value;

both_backends!(
    dead_letters_are_listed_and_replayed,
    messages_are_sent_to_a_declared_queue,
    env_snapshot_redacts_every_secret
);

async fn admin_get(app: &TestApp, path: &str) -> anyhow::Result<(StatusCode, Value)> {
    let resp = app
        .client
        .get(app.url(path))
        .header("X-Admin-Key", ADMIN_KEY)
        .send()
        .await?;
    let status = resp.status();
    Ok((status, resp.json().await?))
}

async fn dead_letters_are_listed_and_replayed(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn(backend).await?;
    // A message the usage-writer cannot read is dead-lettered at once.
    let id = app
        .platform()
        .db
        .queue()
        .send(&q("usage"), OutgoingMessage::new(b"not json".to_vec()))
        .await?
        .id;
    let (status, dead) = wait_for(Duration::from_secs(20), || async {
        let (status, body) = admin_get(&app, "/admin/queues/usage/dlq?limit=10").await?;
        let found = body["messages"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["id"] == id.0));
        Ok(found.then_some((status, body)))
    })
    .await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(dead["dead_letter_queue"], "usage.dlq");
    let msg = &dead["messages"][0];
    assert!(
        msg["error"]
            .as_str()
            .is_some_and(|e| e.contains("not a usage message")),
        "{msg}"
    );
    assert!(msg["attempts"].as_u64().is_some_and(|a| a >= 1), "{msg}");
    assert_eq!(msg["original_queue"], "usage");

    // The statistics show it.
    let (status, all) = admin_get(&app, "/admin/queues").await?;
    assert_eq!(status, StatusCode::OK);
    let usage = all["queues"]
        .as_array()
        .and_then(|qs| qs.iter().find(|s| s["queue"] == "usage"))
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("{all}"))?;
    assert_eq!(usage["dlq_depth"], 1, "{usage}");

    // Precise refusals.
    let no_key = app.client.get(app.url("/admin/queues")).send().await?;
    assert_eq!(no_key.status(), StatusCode::UNAUTHORIZED);
    let (status, body) = admin_get(&app, "/admin/queues/usage/dlq?limit=0").await?;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, "invalid_limit".into()),
        "{body}"
    );
    let (status, body) = admin_get(&app, "/admin/queues/NOT%20A%20QUEUE/dlq").await?;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::BAD_REQUEST, "invalid_queue".into()),
        "{body}"
    );
    let (status, body) = admin_get(&app, "/admin/queues/probe/dlq").await?;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (StatusCode::NOT_FOUND, "no_dead_letter_queue".into()),
        "{body}"
    );
    let bad = app
        .client
        .post(app.url("/admin/queues/usage/dlq/replay"))
        .header("X-Admin-Key", ADMIN_KEY)
        .body(r#"{"ids": []}"#)
        .send()
        .await?;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);

    // Replay by id: it goes back to `usage`, fails again, and is dead once more (same id).
    let replayed: Value = app
        .client
        .post(app.url("/admin/queues/usage/dlq/replay"))
        .header("X-Admin-Key", ADMIN_KEY)
        .body(format!(r#"{{"ids": [{}]}}"#, id.0))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(replayed["replayed"], 1, "{replayed}");
    wait_for(Duration::from_secs(20), || async {
        let (_, body) = admin_get(&app, "/admin/queues/usage/dlq").await?;
        let back = body["messages"]
            .as_array()
            .is_some_and(|m| m.iter().any(|m| m["id"] == id.0));
        Ok(back.then_some(()))
    })
    .await?;
    // Replaying an id that is not dead moves nothing.
    let none: Value = app
        .client
        .post(app.url("/admin/queues/usage/dlq/replay"))
        .header("X-Admin-Key", ADMIN_KEY)
        .body(r#"{"ids": [999999999]}"#)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(none["replayed"], 0, "{none}");
    app.stop().await
}

async fn admin_send(
    app: &TestApp,
    queue: &str,
    body: impl Into<reqwest::Body>,
    headers: &[(&str, &str)],
) -> anyhow::Result<(StatusCode, Value)> {
    let mut req = app
        .client
        .post(app.url(&format!("/admin/queues/{queue}/messages")))
        .header("X-Admin-Key", ADMIN_KEY)
        .body(body);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let resp = req.send().await?;
    let status = resp.status();
    Ok((status, resp.json().await?))
}

async fn stored_content_type(db: &Database, id: i64) -> anyhow::Result<Option<String>> {
    Ok(match db {
        Database::Sqlite(s) => {
            sqlx::query_scalar("SELECT content_type FROM queue_messages WHERE id = ?1")
                .bind(id)
                .fetch_one(&s.read)
                .await?
        }
        Database::Postgres(p) => {
            sqlx::query_scalar("SELECT content_type FROM queue_messages WHERE id = $1")
                .bind(id)
                .fetch_one(&p.pool)
                .await?
        }
    })
}

async fn messages_are_sent_to_a_declared_queue(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn(backend).await?;
    let g = app.guest().await?;
    wait_for(Duration::from_secs(30), || async {
        Ok((app.balance(&g).await? == 1000).then_some(()))
    })
    .await?;

    // A corrected usage message, re-injected by an operator, is consumed like any other.
    let fixed = serde_json::json!({
        "tenant_id": g.tenant_id,
        "events": [{"idempotency_key": "fix-1", "kind": "tokens_in", "quantity": 5000}],
        "received_at_ms": 1_700_000_000_000_i64,
    });
    let (status, sent) = admin_send(
        &app,
        "usage",
        fixed.to_string(),
        &[("Content-Type", "application/json")],
    )
    .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{sent}");
    assert_eq!(sent["queue"], "usage");
    assert!(sent["id"].is_i64(), "{sent}");
    wait_for(Duration::from_secs(30), || async {
        Ok((app.balance(&g).await? == 995).then_some(()))
    })
    .await?;

    // The raw bytes, content type and idempotency key are kept; a repeated key sends nothing.
    let headers = [
        ("Content-Type", "text/plain"),
        ("Idempotency-Key", "poison-1"),
    ];
    let (status, first) = admin_send(&app, "usage", "not json", &headers).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let (status, again) = admin_send(&app, "usage", "not json", &headers).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(first["id"], again["id"]);
    let id = first["id"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("no id in {first}"))?;
    let dead = wait_for(Duration::from_secs(20), || async {
        let (_, body) = admin_get(&app, "/admin/queues/usage/dlq").await?;
        Ok(body["messages"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["id"] == id).cloned()))
    })
    .await?;
    assert_eq!(dead["body_preview"], "not json");
    assert_eq!(
        stored_content_type(app.tdb.db(), id).await?.as_deref(),
        Some("text/plain")
    );

    // Precise refusals, as for the other queue routes.
    let no_key = app
        .client
        .post(app.url("/admin/queues/usage/messages"))
        .body("x")
        .send()
        .await?;
    assert_eq!(no_key.status(), StatusCode::UNAUTHORIZED);
    for (queue, body, headers, expected, code) in [
        (
            "usage",
            "",
            &[][..],
            StatusCode::BAD_REQUEST,
            "empty_message",
        ),
        (
            "NOT%20A%20QUEUE",
            "x",
            &[][..],
            StatusCode::BAD_REQUEST,
            "invalid_queue",
        ),
        (
            "nobody.declared",
            "x",
            &[][..],
            StatusCode::NOT_FOUND,
            "unknown_queue",
        ),
        (
            "usage",
            "x",
            &[("Idempotency-Key", "has space")][..],
            StatusCode::BAD_REQUEST,
            "invalid_idempotency_key",
        ),
    ] {
        let (status, answer) = admin_send(&app, queue, body, headers).await?;
        assert_eq!(
            (status, answer["error"]["code"].as_str()),
            (expected, Some(code)),
            "{queue} {body:?}: {answer}"
        );
    }
    let (status, answer) = admin_send(&app, "usage", vec![b'x'; 64 * 1024 + 1], &[]).await?;
    assert_eq!(
        (status, answer["error"]["code"].as_str()),
        (StatusCode::PAYLOAD_TOO_LARGE, Some("body_too_large")),
        "{answer}"
    );
    let (status, answer) = admin_send(&app, "usage", vec![b'x'; 64 * 1024], &[]).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "64 KiB is allowed: {answer}");
    app.stop().await
}

async fn env_snapshot_redacts_every_secret(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn(backend).await?;
    let no_key = app
        .client
        .get(app.url("/admin/env-snapshot"))
        .send()
        .await?;
    assert_eq!(no_key.status(), StatusCode::UNAUTHORIZED);
    let resp = app
        .client
        .get(app.url("/admin/env-snapshot"))
        .header("X-Admin-Key", ADMIN_KEY)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = resp.text().await?;
    let snap: Value = serde_json::from_str(&text)?;
    assert_eq!(snap["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(
        snap["backends"]["database"],
        match backend {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    );
    assert!(snap["queues"]["usage"]["max_retries"].is_number(), "{snap}");
    assert!(snap["billing"]["prices"]["job"].is_object(), "{snap}");
    // No secret value appears anywhere in the answer.
    let state = app.platform().state();
    let url_secret_hex: String = state
        .url_secret
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let url_secret_b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(state.url_secret.as_slice())
    };
    for secret in [
        ADMIN_KEY,
        url_secret_hex.as_str(),
        url_secret_b64.as_str(),
        "PRIVATE KEY",
    ] {
        assert!(!text.contains(secret), "env-snapshot leaks {secret:?}");
    }
    assert_eq!(snap["auth"]["admin_key"], "[redacted]");
    app.stop().await
}
