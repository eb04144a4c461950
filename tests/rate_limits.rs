//! Rate limits and cost guards through the real server, on both backends: an exhausted burst
//! gets 429 `rate_limited` with `Retry-After` and the `RateLimit-*` headers; waiting the
//! advertised time lets the next request through; tenants and emails have their own buckets;
//! two servers on one PostgreSQL database share them; cost caps refuse work before it is
//! enqueued; and switched off, nothing is limited or advertised.

use std::time::Duration;

use cognomega::app::Platform;
use cognomega::config::{ServeConfig, StorageConfig};
use cognomega_consumers::RuntimeOptions;
use cognomega_core::auth::Tier;
use cognomega_core::limits::{CostCaps, Rate, RouteClass};
use cognomega_producers::ApiConfig;
use cognomega_testkit::{q, Backend, Guest, TestApp, ADMIN_KEY};
use reqwest::{Response, StatusCode};
use serde_json::{json, Value};

fn rate(per_sec: f64, burst: u32) -> Rate {
    Rate::new(per_sec, burst).unwrap_or_else(|| panic!("invalid test rate {per_sec}/{burst}"))
}

fn header(resp: &Response, name: &str) -> Option<u64> {
    resp.headers().get(name).map(|v| {
        v.to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("{name}: {v:?} is not an integer"))
    })
}

/// The three `RateLimit-*` headers, all required.
fn ratelimit(resp: &Response) -> (u64, u64, u64) {
    let get = |name| header(resp, name).unwrap_or_else(|| panic!("no {name} header"));
    (
        get("ratelimit-limit"),
        get("ratelimit-remaining"),
        get("ratelimit-reset"),
    )
}

async fn credits(base: &str, client: &reqwest::Client, g: &Guest) -> anyhow::Result<Response> {
    Ok(client
        .get(format!("{base}/credits"))
        .bearer_auth(&g.token)
        .send()
        .await?)
}

/// A guest with its own email, so guest issuance (per email) never limits the test's setup.
async fn guest(app: &TestApp, email: &str) -> anyhow::Result<Guest> {
    let resp = app
        .client
        .post(app.url("/auth/guest"))
        .json(&json!({ "email": email }))
        .send()
        .await?;
    anyhow::ensure!(resp.status() == 200, "POST /auth/guest: {}", resp.status());
    let body: Value = resp.json().await?;
    let field = |name: &str| body[name].as_str().unwrap_or_default().to_owned();
    Ok(Guest {
        token: field("token"),
        tenant_id: field("tenant_id"),
        user_id: field("user_id"),
    })
}

/// A 429 `rate_limited` in the envelope with every header; returns its `Retry-After`.
async fn assert_rate_limited(resp: Response) -> anyhow::Result<u64> {
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry = header(&resp, "retry-after").expect("Retry-After on a 429");
    assert!(retry >= 1, "Retry-After is at least 1 s");
    let (_, remaining, reset) = ratelimit(&resp);
    assert_eq!(remaining, 0);
    assert!(
        reset >= retry,
        "the bucket is full no sooner than one token is back"
    );
    let id = resp.headers()["x-request-id"].to_str()?.to_owned();
    let body: Value = resp.json().await?;
    assert_eq!(body["error"]["code"], "rate_limited", "{body}");
    assert_eq!(body["error"]["request_id"], id.as_str());
    assert!(body["error"]["message"]
        .as_str()
        .is_some_and(|m| m.contains("retry after")));
    Ok(retry)
}

fn small_reads(api: &mut ApiConfig) {
    api.rate_limits
        .set(Tier::Guest, RouteClass::Read, rate(1.0, 3));
}

async fn burst_then_429_then_refill(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn_custom(backend, true, None, small_reads).await?;
    let a = guest(&app, "a@example.com").await?;
    let b = guest(&app, "b@example.com").await?;
    for expected_remaining in [2, 1, 0] {
        let resp = credits(&app.base_url, &app.client, &a).await?;
        assert_eq!(resp.status(), 200);
        let (limit, remaining, reset) = ratelimit(&resp);
        assert_eq!((limit, remaining), (3, expected_remaining));
        assert!(reset >= 1);
        assert!(resp.headers().get("retry-after").is_none());
    }
    let retry = assert_rate_limited(credits(&app.base_url, &app.client, &a).await?).await?;
    // Other tenants have buckets of their own.
    let other = credits(&app.base_url, &app.client, &b).await?;
    assert_eq!(other.status(), 200);
    assert_eq!(ratelimit(&other).1, 2);
    // The other read routes share the tenant's read bucket.
    let listed = app
        .client
        .get(app.url("/jobs"))
        .bearer_auth(&a.token)
        .send()
        .await?;
    assert_eq!(listed.status(), StatusCode::TOO_MANY_REQUESTS);
    // Routes of another class do not.
    let usage = app
        .client
        .post(app.url("/usage"))
        .bearer_auth(&a.token)
        .json(&json!({"idempotency_key": "k1", "kind": "job", "quantity": 1}))
        .send()
        .await?;
    assert_eq!(usage.status(), 202);
    assert!(ratelimit(&usage).0 > 3);

    tokio::time::sleep(Duration::from_secs(retry)).await;
    let resp = credits(&app.base_url, &app.client, &a).await?;
    assert_eq!(
        resp.status(),
        200,
        "after the advertised Retry-After a token is back"
    );
    // Unlimited routes carry no rate-limit headers.
    let health = app.client.get(app.url("/healthz")).send().await?;
    assert!(health.headers().get("ratelimit-limit").is_none());
    // A bad token is still a 401, not a 429.
    let bad = app
        .client
        .get(app.url("/credits"))
        .bearer_auth("not-a-token")
        .send()
        .await?;
    assert_eq!(bad.status(), 401);
    app.stop().await
}

async fn guest_issuance_is_limited_per_email_and_address(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn_custom(backend, false, None, |api| {
        api.rate_limits
            .set(Tier::Guest, RouteClass::Guest, rate(0.5, 2));
    })
    .await?;
    let issue = |body: Option<Value>| {
        let req = app.client.post(app.url("/auth/guest"));
        let req = match body {
            Some(b) => req.json(&b),
            None => req,
        };
        req.send()
    };
    for remaining in [1, 0] {
        let resp = issue(Some(json!({"email": "Someone@Example.com"}))).await?;
        assert_eq!(resp.status(), 200);
        assert_eq!(ratelimit(&resp), (2, remaining, ratelimit(&resp).2));
    }
    // The same mailbox in other letters shares the bucket.
    let retry =
        assert_rate_limited(issue(Some(json!({"email": "someone@example.COM"}))).await?).await?;
    assert_eq!(retry, 2, "one token at 0.5/s");
    assert_eq!(
        issue(Some(json!({"email": "other@example.com"})))
            .await?
            .status(),
        200
    );
    // Without an email: per client address.
    assert_eq!(issue(None).await?.status(), 200);
    assert_eq!(issue(None).await?.status(), 200);
    assert_rate_limited(issue(None).await?).await?;
    // A malformed email is a 400 whatever the bucket says.
    let bad = issue(Some(json!({"email": "nope"}))).await?;
    assert_eq!(bad.status(), 400);
    app.stop().await
}

async fn admin_routes_are_limited_per_address(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn_custom(backend, false, None, |api| {
        api.rate_limits
            .set(Tier::Guest, RouteClass::Admin, rate(1.0, 2));
        small_reads(api);
    })
    .await?;
    let snapshot = || {
        app.client
            .get(app.url("/admin/env-snapshot"))
            .header("X-Admin-Key", ADMIN_KEY)
            .send()
    };
    let first = snapshot().await?;
    assert_eq!(first.status(), 200);
    let snap: Value = first.json().await?;
    // The snapshot shows the effective limits.
    let limits = &snap["rate_limits"];
    assert_eq!(limits["enabled"], true);
    assert_eq!(
        limits["buckets"],
        match backend {
            Backend::Sqlite => "in_process",
            Backend::Postgres => "postgres",
        }
    );
    assert_eq!(
        limits["limits"]["guest"]["read"],
        json!({"rate": 1.0, "burst": 3})
    );
    assert_eq!(limits["limits"]["guest"]["admin"]["burst"], 2);
    assert!(
        limits["limits"]["pro"]["admin"].is_null(),
        "admin is per address, not per tier"
    );
    assert_eq!(snap["cost_guards"]["guest"]["job_runs_per_hour"], 1000);
    assert!(snap["cost_guards"]["pro"]["tokens_per_day"].is_null());
    // Wrong keys take from the same bucket: guessing the key is slow.
    let wrong = app
        .client
        .get(app.url("/admin/queues"))
        .header("X-Admin-Key", "guess")
        .send()
        .await?;
    assert_eq!(wrong.status(), 401);
    assert_rate_limited(snapshot().await?).await?;
    app.stop().await
}

async fn switched_off_nothing_is_limited(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn_custom(backend, true, None, |api| {
        api.rate_limits
            .set(Tier::Guest, RouteClass::Read, rate(0.01, 1));
        api.rate_limits
            .set(Tier::Guest, RouteClass::Guest, rate(0.01, 1));
        api.rate_limits.enabled = false;
    })
    .await?;
    let g = app.guest().await?;
    let _ = app.guest().await?;
    for _ in 0..10 {
        let resp = credits(&app.base_url, &app.client, &g).await?;
        assert_eq!(resp.status(), 200);
        for name in ["ratelimit-limit", "ratelimit-remaining", "ratelimit-reset"] {
            assert!(resp.headers().get(name).is_none(), "{name} while off");
        }
    }
    app.stop().await
}

async fn job_runs_cap_refuses_before_enqueueing(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn_custom(backend, false, None, |api| {
        api.cost_guards.guest = CostCaps {
            tokens_per_day: None,
            job_runs_per_hour: Some(2),
        };
    })
    .await?;
    let g = guest(&app, "jobs@example.com").await?;
    // Settle the starting grant, so the submits are not refused for credits.
    app.drain(&["settlement"]).await?;
    let png = cognomega_pipelines::synth::Sketch::generate(1, 200, 150).0;
    let b64 = {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.encode(png)
    };
    let body = json!({"type": "sketch_to_app", "input": {"image_base64": b64}});
    let submit = |key: &'static str| {
        app.client
            .post(app.url("/jobs"))
            .bearer_auth(&g.token)
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
    };
    assert_eq!(submit("one").await?.status(), 202);
    assert_eq!(submit("two").await?.status(), 202);
    // A repeated key returns its job and counts nothing.
    assert_eq!(submit("one").await?.status(), 200);
    let refused = submit("three").await?;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry = header(&refused, "retry-after").expect("Retry-After");
    assert!(
        (1..=3600).contains(&retry),
        "seconds to the hour's end: {retry}"
    );
    let err: Value = refused.json().await?;
    assert_eq!(err["error"]["code"], "cost_cap_exceeded");
    let message = err["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("job_runs_per_hour") && message.contains("UTC hour"),
        "{message}"
    );
    let stats = app.tdb.db().queue().stats(&q("jobs.sketch_to_app")).await?;
    assert_eq!(stats.depth, 2, "the refused job was not enqueued");
    let list: Value = app
        .client
        .get(app.url("/jobs"))
        .bearer_auth(&g.token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(list["jobs"].as_array().map(Vec::len), Some(2), "no job row");
    // Another tenant has its own count.
    let other = guest(&app, "jobs2@example.com").await?;
    app.drain(&["settlement"]).await?;
    let resp = app
        .client
        .post(app.url("/jobs"))
        .bearer_auth(&other.token)
        .json(&body)
        .send()
        .await?;
    assert_eq!(resp.status(), 202);
    app.stop().await
}

async fn tokens_cap_refuses_before_enqueueing(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn_custom(backend, false, None, |api| {
        api.cost_guards.guest = CostCaps {
            tokens_per_day: Some(1_000),
            job_runs_per_hour: None,
        };
    })
    .await?;
    let g = guest(&app, "tokens@example.com").await?;
    let post = |body: Value| {
        app.client
            .post(app.url("/usage"))
            .bearer_auth(&g.token)
            .json(&body)
            .send()
    };
    let depth = || async { anyhow::Ok(app.tdb.db().queue().stats(&q("usage")).await?.depth) };
    let ok = post(json!({"events": [
        {"idempotency_key": "a", "kind": "tokens_in", "quantity": 400},
        {"idempotency_key": "b", "kind": "tokens_out", "quantity": 200},
    ]}))
    .await?;
    assert_eq!(ok.status(), 202);
    let refused =
        post(json!({"idempotency_key": "c", "kind": "tokens_out", "quantity": 401})).await?;
    assert_eq!(refused.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry = header(&refused, "retry-after").expect("Retry-After");
    assert!(
        (1..=86_400).contains(&retry),
        "seconds to the day's end: {retry}"
    );
    let err: Value = refused.json().await?;
    assert_eq!(err["error"]["code"], "cost_cap_exceeded");
    let message = err["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("tokens_per_day")
            && message.contains("1000")
            && message.contains("600 used"),
        "{message}"
    );
    assert_eq!(depth().await?, 1, "the refused batch was not enqueued");
    // Other kinds are not tokens; exactly up to the cap still fits.
    assert_eq!(
        post(json!({"idempotency_key": "d", "kind": "job", "quantity": 5000}))
            .await?
            .status(),
        202
    );
    assert_eq!(
        post(json!({"idempotency_key": "e", "kind": "tokens_in", "quantity": 400}))
            .await?
            .status(),
        202
    );
    assert_eq!(
        post(json!({"idempotency_key": "f", "kind": "tokens_in", "quantity": 1}))
            .await?
            .status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(depth().await?, 3);
    app.stop().await
}

/// The scale-out shape: two API servers over one PostgreSQL database take from one bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_servers_share_buckets() -> anyhow::Result<()> {
    cognomega_testkit::init_tracing();
    let app = TestApp::spawn_custom(Backend::Postgres, true, None, small_reads).await?;
    let data = tempfile::tempdir()?;
    let mut api = ApiConfig::with_admin_key(cognomega_producers::Secret::new(ADMIN_KEY));
    small_reads(&mut api);
    let second = Platform::start(
        &ServeConfig {
            storage: StorageConfig::resolve(data.path(), Some(app.tdb.url().expose()))?,
            listen: ([127, 0, 0, 1], 0).into(),
            consumers: false,
            api,
            clamd: None,
            schedules: None,
            lifecycle: std::sync::Arc::default(),
        },
        RuntimeOptions::default(),
    )
    .await?;
    let bases = [app.base_url.clone(), second.base_url()];
    let g = guest(&app, "shared@example.com").await?;
    for (i, expected_remaining) in [2, 1, 0].into_iter().enumerate() {
        let resp = credits(&bases[i % 2], &app.client, &g).await?;
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(ratelimit(&resp).1, expected_remaining, "request {i}");
    }
    // Both servers now refuse: the bucket is the database's, not a process's.
    assert_rate_limited(credits(&bases[1], &app.client, &g).await?).await?;
    let retry = assert_rate_limited(credits(&bases[0], &app.client, &g).await?).await?;
    tokio::time::sleep(Duration::from_secs(retry)).await;
    assert_eq!(credits(&bases[1], &app.client, &g).await?.status(), 200);
    second.stop(Duration::from_secs(5)).await?;
    app.stop().await
}

cognomega_testkit::both_backends!(
    burst_then_429_then_refill,
    guest_issuance_is_limited_per_email_and_address,
    admin_routes_are_limited_per_address,
    switched_off_nothing_is_limited,
    job_runs_cap_refuses_before_enqueueing,
    tokens_cap_refuses_before_enqueueing,
);
