//! The HTTP surface at this stage: health, metrics, request ids, `Cache-Control`, and the one
//! error envelope — on both backends, through the real server on a loopback port.

use std::time::Duration;

use cognomega_consumers::probe::{self, Probe};
use cognomega_core::queue::OutgoingMessage;
use cognomega_testkit::{Backend, TestApp};
use serde_json::Value;

fn assert_common_headers(resp: &reqwest::Response) -> String {
    assert_eq!(resp.headers()["cache-control"], "no-store");
    let id = resp.headers()["x-request-id"]
        .to_str()
        .expect("ascii")
        .to_owned();
    assert!(!id.is_empty());
    id
}

async fn healthz_reports_backend(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn(backend).await?;
    let resp = app.client.get(app.url("/healthz")).send().await?;
    assert_eq!(resp.status(), 200);
    let id = assert_common_headers(&resp);
    assert!(
        uuid::Uuid::parse_str(&id).is_ok(),
        "a generated request id is a UUID: {id}"
    );
    let body: Value = resp.json().await?;
    assert_eq!(body["status"], "ok");
    assert_eq!(body["backend"], backend.to_string());
    app.stop().await
}

async fn request_ids_are_echoed_only_when_well_formed(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn(backend).await?;
    let resp = app
        .client
        .get(app.url("/healthz"))
        .header("X-Request-Id", "client-42.a_b")
        .send()
        .await?;
    assert_eq!(resp.headers()["x-request-id"], "client-42.a_b");
    let resp = app
        .client
        .get(app.url("/healthz"))
        .header("X-Request-Id", "two words")
        .send()
        .await?;
    let id = assert_common_headers(&resp);
    assert_ne!(id, "two words");
    assert!(uuid::Uuid::parse_str(&id).is_ok());
    let long = "x".repeat(200);
    let resp = app
        .client
        .get(app.url("/healthz"))
        .header("X-Request-Id", &long)
        .send()
        .await?;
    assert_ne!(assert_common_headers(&resp), long);
    app.stop().await
}

async fn errors_use_the_envelope(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn(backend).await?;
    let resp = app.client.get(app.url("/no/such/route")).send().await?;
    assert_eq!(resp.status(), 404);
    let id = assert_common_headers(&resp);
    assert!(resp.headers()["content-type"]
        .to_str()?
        .starts_with("application/json"));
    let body: Value = resp.json().await?;
    assert_eq!(body["error"]["code"], "not_found");
    assert_eq!(
        body["error"]["request_id"], id,
        "the envelope carries the same request id as the header"
    );
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));

    let resp = app.client.post(app.url("/healthz")).send().await?;
    assert_eq!(resp.status(), 405);
    assert_common_headers(&resp);
    let body: Value = resp.json().await?;
    assert_eq!(body["error"]["code"], "method_not_allowed");
    app.stop().await
}

async fn metrics_expose_queue_statistics(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn(backend).await?;
    let msgs = (0..25)
        .map(|i| {
            OutgoingMessage::json(&Probe {
                key: format!("m{i}"),
                work_ms: 0,
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    app.tdb
        .db()
        .queue()
        .send_batch(&probe::queue(), msgs)
        .await?;
    app.wait_idle(Duration::from_secs(30)).await?;
    let resp = app.client.get(app.url("/metrics")).send().await?;
    assert_eq!(resp.status(), 200);
    assert_common_headers(&resp);
    assert!(resp.headers()["content-type"]
        .to_str()?
        .starts_with("text/plain"));
    let text = resp.text().await?;
    for line in [
        "cognomega_queue_depth{queue=\"probe\"} 0",
        "cognomega_queue_in_flight{queue=\"probe\"} 0",
        "cognomega_queue_dlq_depth{queue=\"probe\"} 0",
        "cognomega_queue_drain_latency_seconds_count{queue=\"probe\"} 25",
        "cognomega_consumer_messages_total{queue=\"probe\",outcome=\"acked\"} 25",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    assert!(text.contains("# TYPE cognomega_queue_drain_latency_seconds histogram"));
    assert!(text
        .contains("cognomega_queue_drain_latency_seconds_bucket{queue=\"probe\",le=\"+Inf\"} 25"));
    app.stop().await
}

cognomega_testkit::both_backends!(
    healthz_reports_backend,
    request_ids_are_echoed_only_when_well_formed,
    errors_use_the_envelope,
    metrics_expose_queue_statistics,
);
