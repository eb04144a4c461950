//! The public surface's cross-cutting guarantees, seen from a client: CORS allow-list and
//! exposed headers, request ids and `Cache-Control` on every response, JSON errors only (even
//! for axum's own rejections), and slow clients cut off (headers and bodies).

use std::time::Duration;

use cognomega_producers::CorsOrigins;
use cognomega_testkit::{Backend, TestApp};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

const ALLOWED: &str = "https://app.example";

async fn app() -> anyhow::Result<TestApp> {
    TestApp::spawn_custom(Backend::Sqlite, true, None, |api| {
        api.cors = CorsOrigins::List(vec![ALLOWED.to_owned()]);
        api.timeouts.header_read = Duration::from_secs(1);
        api.timeouts.body_idle = Duration::from_secs(1);
    })
    .await
}

fn header<'a>(resp: &'a reqwest::Response, name: &str) -> Option<&'a str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn cors_answers_only_allowed_origins() -> anyhow::Result<()> {
    let app = app().await?;
    let preflight = |origin: &'static str| {
        app.client
            .request(reqwest::Method::OPTIONS, app.url("/credits"))
            .header("Origin", origin)
            .header("Access-Control-Request-Method", "GET")
            .header("Access-Control-Request-Headers", "authorization")
            .send()
    };
    let ok = preflight(ALLOWED).await?;
    assert!(ok.status().is_success(), "preflight: {}", ok.status());
    assert_eq!(header(&ok, "access-control-allow-origin"), Some(ALLOWED));
    let methods = header(&ok, "access-control-allow-methods").unwrap_or_default();
    assert!(
        methods.contains("GET") && methods.contains("POST"),
        "{methods}"
    );
    let allowed_headers = header(&ok, "access-control-allow-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    assert!(
        allowed_headers.contains("authorization"),
        "{allowed_headers}"
    );

    let denied = preflight("https://evil.example").await?;
    assert!(
        denied
            .headers()
            .keys()
            .all(|k| !k.as_str().starts_with("access-control-")),
        "a disallowed origin got CORS headers: {:?}",
        denied.headers()
    );

    // A simple request from the allowed origin may read the billing and request headers.
    let guest = app.guest().await?;
    let resp = app
        .client
        .get(app.url("/credits"))
        .bearer_auth(&guest.token)
        .header("Origin", ALLOWED)
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "access-control-allow-origin"), Some(ALLOWED));
    let exposed = header(&resp, "access-control-expose-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    for name in ["x-request-id", "x-credits-used", "x-credits-balance"] {
        assert!(exposed.contains(name), "{name} not exposed: {exposed}");
    }
    let from_evil = app
        .client
        .get(app.url("/healthz"))
        .header("Origin", "https://evil.example")
        .send()
        .await?;
    assert_eq!(from_evil.status(), StatusCode::OK);
    assert!(header(&from_evil, "access-control-allow-origin").is_none());
    app.stop().await
}

#[tokio::test]
async fn every_response_has_a_request_id_and_no_store() -> anyhow::Result<()> {
    let app = app().await?;
    let kept = app
        .client
        .get(app.url("/healthz"))
        .header("X-Request-Id", "client-id_1.2:3")
        .send()
        .await?;
    assert_eq!(header(&kept, "x-request-id"), Some("client-id_1.2:3"));
    assert_eq!(header(&kept, "cache-control"), Some("no-store"));

    // A malformed id (spaces, too long) is replaced, never echoed.
    for bad in ["has space", &"a".repeat(200)] {
        let resp = app
            .client
            .get(app.url("/nope"))
            .header("X-Request-Id", bad)
            .send()
            .await?;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        let id = header(&resp, "x-request-id").unwrap_or_default().to_owned();
        assert!(!id.is_empty() && id != bad, "{id}");
        assert_eq!(header(&resp, "cache-control"), Some("no-store"));
        let body: Value = resp.json().await?;
        assert_eq!(body["error"]["request_id"], id.as_str());
    }
    app.stop().await
}

/// Rejections produced before any handler runs (body over the route's limit, a path that is
/// not UTF-8, a wrong query) still come in the envelope, with the request id.
#[tokio::test]
async fn rejections_are_json_envelopes() -> anyhow::Result<()> {
    let app = app().await?;
    let too_big = app
        .client
        .post(app.url("/auth/guest"))
        .header("Content-Type", "application/json")
        .body(vec![b' '; 200 * 1024])
        .send()
        .await?;
    assert_eq!(too_big.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_envelope(too_big, "body_too_large").await?;

    let bad_path = app
        .client
        .get(app.url("/credits/adjustments/%FF%FE"))
        .header("X-Admin-Key", cognomega_testkit::ADMIN_KEY)
        .send()
        .await?;
    assert_eq!(bad_path.status(), StatusCode::BAD_REQUEST);
    assert_envelope(bad_path, "bad_request").await?;

    let guest = app.guest().await?;
    let bad_query = app
        .client
        .get(app.url("/jobs?status=queued&status=running"))
        .bearer_auth(&guest.token)
        .send()
        .await?;
    assert_eq!(bad_query.status(), StatusCode::BAD_REQUEST);
    assert_envelope(bad_query, "invalid_query").await?;
    app.stop().await
}

async fn assert_envelope(resp: reqwest::Response, code: &str) -> anyhow::Result<()> {
    let id = header(&resp, "x-request-id").unwrap_or_default().to_owned();
    let content_type = header(&resp, "content-type").unwrap_or_default().to_owned();
    assert!(
        content_type.starts_with("application/json"),
        "{content_type}"
    );
    let body: Value = resp.json().await?;
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert_eq!(body["error"]["request_id"], id.as_str());
    Ok(())
}

/// A client that sends part of its headers and stops is disconnected after the header
/// deadline instead of holding the connection open.
#[tokio::test]
async fn trickled_headers_are_cut_off() -> anyhow::Result<()> {
    let app = app().await?;
    let mut conn = tokio::net::TcpStream::connect(app.platform().addr).await?;
    conn.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await?;
    let mut buf = Vec::new();
    // The deadline is 1 s; 10 s means the server never closed it.
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the server kept a header-trickling connection open"
    );
    let text = String::from_utf8_lossy(&buf);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "unexpected answer to incomplete headers: {text}"
    );
    app.stop().await
}

/// A body that stops arriving gets 408 in the envelope, and nothing it carried is queued.
#[tokio::test]
async fn stalled_bodies_get_408_and_write_nothing() -> anyhow::Result<()> {
    let app = app().await?;
    let guest = app.guest().await?;
    let usage = cognomega_testkit::q("usage");
    let queue = app.platform().db.queue();
    let before = queue.stats(&usage).await?;
    let mut conn = tokio::net::TcpStream::connect(app.platform().addr).await?;
    let part = br#"{"events":[{"idempotency_key":"k1","kind":"tokens_in","quantity":5}"#;
    let head = format!(
        "POST /usage HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        guest.token,
        part.len() + 100
    );
    conn.write_all(head.as_bytes()).await?;
    conn.write_all(part).await?;
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "no answer to a stalled body");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"request_timeout\""), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("x-request-id:"),
        "{text}"
    );
    let after = queue.stats(&usage).await?;
    assert_eq!(
        (after.depth, after.in_flight, after.acked_retained),
        (before.depth, before.in_flight, before.acked_retained),
        "a stalled request enqueued something"
    );
    app.stop().await
}
