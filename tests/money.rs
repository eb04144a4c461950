//! The money path over HTTP on both backends: guests and their grant, JWT attacks, usage
//! validation, exactly-once settlement under duplicated and concurrent posts, adjustments,
//! the guest floor, balance rebuilds, CORS and key rotation.

use std::collections::HashSet;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use cognomega_core::auth::{ClaimsBuilder, Tier};
use cognomega_core::time::UnixMillis;
use cognomega_stores::{billing, Database};
use cognomega_testkit::{wait_for, Backend, Guest, TestApp, ADMIN_KEY};
use hmac::{KeyInit, Mac};
use serde_json::{json, Value};

async fn settled_balance(app: &TestApp, guest: &Guest, expected: i64) -> anyhow::Result<()> {
    wait_for(Duration::from_secs(30), || async {
        let b = app.balance(guest).await?;
        Ok((b == expected).then_some(()))
    })
    .await
    .map_err(|e| anyhow::anyhow!("balance never reached {expected}: {e}"))
}

async fn ledger_sum(db: &Database) -> anyhow::Result<i64> {
    Ok(match db {
        Database::Sqlite(s) => {
            sqlx::query_scalar("SELECT COALESCE(SUM(delta),0) FROM ledger_entries")
                .fetch_one(&s.read)
                .await?
        }
        Database::Postgres(p) => {
            sqlx::query_scalar("SELECT COALESCE(SUM(delta),0)::bigint FROM ledger_entries")
                .fetch_one(&p.pool)
                .await?
        }
    })
}

async fn usage_count(db: &Database) -> anyhow::Result<i64> {
    Ok(match db {
        Database::Sqlite(s) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM usage_events")
                .fetch_one(&s.read)
                .await?
        }
        Database::Postgres(p) => {
            sqlx::query_scalar("SELECT COUNT(*) FROM usage_events")
                .fetch_one(&p.pool)
                .await?
        }
    })
}

fn claims_of(token: &str) -> anyhow::Result<(Value, Value)> {
    let mut parts = token.split('.');
    let header: Value = serde_json::from_slice(&B64.decode(parts.next().unwrap_or_default())?)?;
    let claims: Value = serde_json::from_slice(&B64.decode(parts.next().unwrap_or_default())?)?;
    Ok((header, claims))
}

async fn guest_gets_a_token_and_its_grant(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn(backend).await?;
    let resp = app
        .client
        .post(app.url("/auth/guest"))
        .json(&json!({"email": "ada@example.com"}))
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await?;
    assert_eq!(body["token_type"], "Bearer");
    assert_eq!(body["expires_in"], 86_400);
    let token = body["token"].as_str().unwrap_or_default();
    let (header, claims) = claims_of(token)?;
    assert_eq!(header["alg"], "RS256");
    let jwks: Value = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await?
        .json()
        .await?;
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .map(|k| k.iter().filter_map(|k| k["kid"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        kids.contains(&header["kid"].as_str().unwrap_or("?")),
        "token kid is published"
    );
    for field in ["kty", "kid", "use", "alg", "n", "e"] {
        assert!(jwks["keys"][0][field].is_string(), "jwks key has {field}");
    }
    assert_eq!(claims["tenant"], body["tenant_id"]);
    assert_eq!(claims["sub"], body["user_id"]);
    assert_eq!(claims["tier"], "guest");
    for field in ["iss", "aud", "iat", "exp", "jti"] {
        assert!(!claims[field].is_null(), "claim {field}");
    }
    let guest = Guest {
        token: token.to_owned(),
        tenant_id: body["tenant_id"].as_str().unwrap_or_default().to_owned(),
        user_id: body["user_id"].as_str().unwrap_or_default().to_owned(),
    };
    settled_balance(&app, &guest, 1000).await?;
    let resp = app
        .client
        .get(app.url("/credits"))
        .bearer_auth(token)
        .send()
        .await?;
    assert_eq!(resp.headers()["x-credits-balance"], "1000");
    let credits: Value = resp.json().await?;
    assert_eq!(credits["tenant_id"], guest.tenant_id.as_str());
    assert!(credits["as_of"]
        .as_str()
        .is_some_and(|s| chrono::DateTime::parse_from_rfc3339(s).is_ok()));

    // No body is fine; a bad email is not.
    assert_eq!(
        app.client
            .post(app.url("/auth/guest"))
            .send()
            .await?
            .status(),
        200
    );
    let resp = app
        .client
        .post(app.url("/auth/guest"))
        .json(&json!({"email": "nope"}))
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await?;
    assert_eq!(err["error"]["code"], "invalid_email");
    let resp = app
        .client
        .post(app.url("/auth/guest"))
        .body("{not json")
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    app.stop().await
}

fn b64json(v: &Value) -> String {
    B64.encode(serde_json::to_vec(v).unwrap_or_default())
}

async fn jwt_attacks_get_401(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn(backend).await?;
    let guest = app.guest().await?;
    let (header, claims) = claims_of(&guest.token)?;
    let parts: Vec<&str> = guest.token.split('.').collect();
    let ring = cognomega_stores::keys::load(app.tdb.db())
        .await?
        .ok_or_else(|| anyhow::anyhow!("no ring"))?;
    let now = UnixMillis(chrono::Utc::now().timestamp_millis());

    // alg: none
    let none = format!(
        "{}.{}.",
        b64json(&json!({"alg": "none", "typ": "JWT"})),
        parts[1]
    );
    // HS256 keyed with the public key (the confusion attack)
    let hs_header = b64json(&json!({"alg": "HS256", "typ": "JWT", "kid": header["kid"]}));
    let signing_input = format!("{hs_header}.{}", parts[1]);
    let public_pem = ring.current().public_jwk().to_public_key_pem()?;
    let mut mac = hmac::Hmac::<rsa::sha2::Sha256>::new_from_slice(public_pem.as_bytes())?;
    mac.update(signing_input.as_bytes());
    let hs256 = format!(
        "{signing_input}.{}",
        B64.encode(mac.finalize().into_bytes())
    );
    // Unknown kid
    let unknown = format!(
        "{}.{}.{}",
        b64json(&json!({"alg": "RS256", "typ": "JWT", "kid": "k-nobody"})),
        parts[1],
        parts[2]
    );
    // Tampered payload (another tenant)
    let mut evil = claims.clone();
    evil["tenant"] = json!("someone-else");
    let tampered = format!("{}.{}.{}", parts[0], b64json(&evil), parts[2]);
    // Expired, properly signed
    let expired_claims = ClaimsBuilder::new("cognomega", "cognomega-api", Duration::from_secs(60))
        .build(
            &guest.user_id,
            &guest.tenant_id,
            Tier::Guest,
            "jti-expired",
            UnixMillis(now.0 - 3_600_000),
        );
    let expired = ring.issue(&expired_claims)?;
    // Wrong audience, properly signed
    let other_aud = ring.issue(
        &ClaimsBuilder::new("cognomega", "elsewhere", Duration::from_secs(600)).build(
            &guest.user_id,
            &guest.tenant_id,
            Tier::Guest,
            "jti-aud",
            now,
        ),
    )?;

    for (name, token, code) in [
        ("alg none", none.as_str(), "token_alg_none"),
        (
            "hs256 with public key",
            hs256.as_str(),
            "token_alg_symmetric",
        ),
        ("unknown kid", unknown.as_str(), "token_kid_unknown"),
        ("tampered", tampered.as_str(), "token_signature_invalid"),
        ("expired", expired.as_str(), "token_expired"),
        (
            "wrong audience",
            other_aud.as_str(),
            "token_audience_invalid",
        ),
        ("garbage", "abc", "token_malformed"),
    ] {
        let resp = app
            .client
            .get(app.url("/credits"))
            .bearer_auth(token)
            .send()
            .await?;
        assert_eq!(resp.status(), 401, "{name}");
        assert!(resp.headers().contains_key("www-authenticate"));
        let body: Value = resp.json().await?;
        assert_eq!(body["error"]["code"], code, "{name}");
    }
    let resp = app.client.get(app.url("/credits")).send().await?;
    assert_eq!(resp.status(), 401);
    let body: Value = resp.json().await?;
    assert_eq!(body["error"]["code"], "missing_token");
    app.stop().await
}

async fn bad_usage_is_refused_whole(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn(backend).await?;
    let guest = app.guest().await?;
    let mut events: Vec<Value> = (0..5)
        .map(|i| json!({"idempotency_key": format!("k{i}"), "kind": "job", "quantity": 1}))
        .collect();
    events[3]["quantity"] = json!(-2);
    let resp = app
        .client
        .post(app.url("/usage"))
        .bearer_auth(&guest.token)
        .json(&json!({"events": events}))
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await?;
    assert_eq!(body["error"]["code"], "invalid_usage");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("events[3].quantity")),
        "{body}"
    );
    let resp = app
        .client
        .post(app.url("/usage"))
        .bearer_auth(&guest.token)
        .body("[]")
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    let resp = app
        .client
        .post(app.url("/usage"))
        .json(&json!({"idempotency_key":"a","kind":"job","quantity":1}))
        .send()
        .await?;
    assert_eq!(resp.status(), 401);
    app.wait_idle(Duration::from_secs(30)).await?;
    assert_eq!(usage_count(app.tdb.db()).await?, 0, "nothing accepted");
    app.stop().await
}

async fn duplicated_concurrent_usage_settles_exactly_once(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn(backend).await?;
    let a = app.guest().await?;
    let b = app.guest().await?;
    // 200 distinct keys per tenant, each a `job` (10 credits); sent as overlapping windows of 50,
    // each window posted twice concurrently, plus a single-event retry storm.
    let mut tasks = Vec::new();
    for guest in [&a, &b] {
        for start in (0..200).step_by(25) {
            let end = (start + 50).min(200);
            let events: Vec<Value> = (start..end)
                .map(|i| json!({"idempotency_key": format!("job-{i}"), "kind": "job", "quantity": 1}))
                .collect();
            for _ in 0..2 {
                let (client, url, token, body) = (
                    app.client.clone(),
                    app.url("/usage"),
                    guest.token.clone(),
                    json!({"events": events}),
                );
                tasks.push(tokio::spawn(async move {
                    client.post(url).bearer_auth(token).json(&body).send().await
                }));
            }
        }
        for _ in 0..10 {
            let (client, url, token) = (app.client.clone(), app.url("/usage"), guest.token.clone());
            tasks.push(tokio::spawn(async move {
                client
                    .post(url)
                    .bearer_auth(token)
                    .json(&json!({"idempotency_key": "job-7", "kind": "job", "quantity": 1}))
                    .send()
                    .await
            }));
        }
    }
    for t in tasks {
        assert_eq!(t.await??.status(), 202);
    }
    app.wait_idle(Duration::from_secs(60)).await?;
    settled_balance(&app, &a, 1000 - 2000).await?;
    settled_balance(&app, &b, 1000 - 2000).await?;
    assert_eq!(usage_count(app.tdb.db()).await?, 400);
    assert_eq!(ledger_sum(app.tdb.db()).await?, 2 * (1000 - 2000));
    let usage: Value = app
        .client
        .get(app.url("/usage"))
        .bearer_auth(&a.token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(usage["totals"]["job"]["events"], 200);
    assert_eq!(usage["totals"]["job"]["credits"], 2000);
    assert_eq!(usage["credits_charged"], 2000);
    // Below the floor: flagged for 402 on new billable work.
    assert_eq!(
        billing::tenant_status(app.tdb.db(), &a.tenant_id).await?,
        Some(true)
    );
    // The derived balances agree with the ledger.
    let rebuilt: Value = app
        .client
        .post(app.url("/admin/rebuild-balance-cache"))
        .header("X-Admin-Key", ADMIN_KEY)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(rebuilt["changed"], 0);
    assert_eq!(rebuilt["tenants"], 2);
    app.stop().await
}

async fn usage_window_and_pricing(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn(backend).await?;
    let g = app.guest().await?;
    let body = json!({"events": [
        {"idempotency_key": "in", "kind": "tokens_in", "quantity": 1500, "occurred_at": "2026-03-01T10:00:00Z"},
        {"idempotency_key": "out", "kind": "tokens_out", "quantity": 1000, "occurred_at": "2026-03-01T11:00:00Z"},
        {"idempotency_key": "old", "kind": "audio_seconds", "quantity": 95, "occurred_at": "2025-01-01T00:00:00Z", "meta": {"voice": "x"}},
    ]});
    let resp = app
        .client
        .post(app.url("/usage"))
        .bearer_auth(&g.token)
        .json(&body)
        .send()
        .await?;
    assert_eq!(resp.status(), 202);
    assert_eq!(resp.json::<Value>().await?["accepted"], 3);
    // tokens_in 1500 → 2 credits, tokens_out 1000 → 3, audio 95 s → 10.
    settled_balance(&app, &g, 1000 - 2 - 3 - 10).await?;
    let url = app.url("/usage?from=2026-03-01T00:00:00Z&to=2026-03-02T00:00:00Z");
    let usage: Value = app
        .client
        .get(url)
        .bearer_auth(&g.token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(usage["totals"]["tokens_in"]["quantity"], 1500);
    assert_eq!(usage["credits_charged"], 5);
    assert!(usage["totals"].get("audio_seconds").is_none());
    let resp = app
        .client
        .get(app.url("/usage?from=yesterday"))
        .bearer_auth(&g.token)
        .send()
        .await?;
    assert_eq!(resp.status(), 400);
    app.stop().await
}

/// One event's quantity is bounded (10^12), so no charge, ledger sum or balance can leave
/// `i64`: a larger one is refused whole with the field named; the largest one is billed exactly.
async fn quantities_are_bounded(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn(backend).await?;
    let g = app.guest().await?;
    let at = "2026-03-01T10:00:00Z";
    let max = cognomega_core::billing::MAX_QUANTITY;
    let post = |body: Value| {
        app.client
            .post(app.url("/usage"))
            .bearer_auth(&g.token)
            .json(&body)
            .send()
    };
    let resp = post(json!({"events": [
        {"idempotency_key": "ok", "kind": "job", "quantity": 1, "occurred_at": at},
        {"idempotency_key": "big", "kind": "job", "quantity": max + 1, "occurred_at": at},
    ]}))
    .await?;
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await?;
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("events[1].quantity")),
        "{body}"
    );
    let resp = post(json!({"events": [
        {"idempotency_key": "a", "kind": "job", "quantity": max, "occurred_at": at},
        {"idempotency_key": "b", "kind": "audio_seconds", "quantity": max, "occurred_at": at},
    ]}))
    .await?;
    assert_eq!(resp.status(), 202);
    let db = &app.platform().db;
    wait_for(Duration::from_secs(30), || async {
        Ok((usage_count(db).await? == 2).then_some(()))
    })
    .await?;
    let resp = app
        .client
        .get(app.url("/usage?from=2026-03-01T00:00:00Z&to=2026-03-02T00:00:00Z"))
        .bearer_auth(&g.token)
        .send()
        .await?;
    assert_eq!(resp.status(), 200);
    let usage: Value = resp.json().await?;
    assert_eq!(usage["totals"]["job"]["quantity"], max);
    // job: 10 credits each; audio_seconds: 1 credit per 10 s, rounded up.
    assert_eq!(usage["totals"]["job"]["credits"], max * 10);
    assert_eq!(usage["totals"]["audio_seconds"]["credits"], max / 10);
    assert_eq!(usage["credits_charged"], max * 10 + max / 10);
    app.stop().await
}

async fn adjustments_apply_once(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn(backend).await?;
    let g = app.guest().await?;
    settled_balance(&app, &g, 1000).await?;
    let url = app.url("/credits/adjust");
    let body = json!({"tenant_id": g.tenant_id, "delta": 250, "reason": "goodwill"});
    let post = |key: Option<&'static str>, admin: Option<&'static str>, body: Value| {
        let mut req = app.client.post(url.clone()).json(&body);
        if let Some(k) = key {
            req = req.header("Idempotency-Key", k);
        }
        if let Some(a) = admin {
            req = req.header("X-Admin-Key", a);
        }
        req.send()
    };
    assert_eq!(post(Some("k1"), None, body.clone()).await?.status(), 401);
    assert_eq!(
        post(Some("k1"), Some("wrong"), body.clone())
            .await?
            .status(),
        401
    );
    let resp = post(None, Some(ADMIN_KEY), body.clone()).await?;
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.json::<Value>().await?["error"]["code"],
        "missing_idempotency_key"
    );
    // A delta past ±10^12 would overflow balances and ledger sums: refused, nothing recorded.
    for delta in [
        0,
        1_000_000_000_001_i64,
        -1_000_000_000_001,
        i64::MAX,
        i64::MIN,
    ] {
        let huge = json!({"tenant_id": g.tenant_id, "delta": delta, "reason": "typo"});
        let resp = post(Some("k-huge"), Some(ADMIN_KEY), huge).await?;
        assert_eq!(resp.status(), 400, "delta {delta}");
        assert_eq!(
            resp.json::<Value>().await?["error"]["code"],
            "invalid_delta"
        );
    }
    let first: Value = post(Some("k1"), Some(ADMIN_KEY), body.clone())
        .await?
        .json()
        .await?;
    // Read back after the commit: the settlement consumer may already have applied it.
    assert!(
        matches!(first["status"].as_str(), Some("queued" | "applied")),
        "{first}"
    );
    let mut ids = HashSet::new();
    for _ in 0..5 {
        let resp = post(Some("k1"), Some(ADMIN_KEY), body.clone()).await?;
        assert_eq!(resp.status(), 202);
        ids.insert(
            resp.json::<Value>().await?["adjustment_id"]
                .as_str()
                .unwrap_or_default()
                .to_owned(),
        );
    }
    assert_eq!(ids.len(), 1);
    assert!(ids.contains(first["adjustment_id"].as_str().unwrap_or_default()));
    settled_balance(&app, &g, 1250).await?;
    let id = first["adjustment_id"].as_str().unwrap_or_default();
    let status: Value = app
        .client
        .get(app.url(&format!("/credits/adjustments/{id}")))
        .header("X-Admin-Key", ADMIN_KEY)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(status["status"], "applied");
    assert_eq!(status["delta"], 250);
    // Same key, different adjustment: refused; unknown tenant: 404; zero delta: 400.
    let resp = post(
        Some("k1"),
        Some(ADMIN_KEY),
        json!({"tenant_id": g.tenant_id, "delta": 9, "reason": "x"}),
    )
    .await?;
    assert_eq!(resp.status(), 409);
    let resp = post(
        Some("k2"),
        Some(ADMIN_KEY),
        json!({"tenant_id": "nobody", "delta": 9, "reason": "x"}),
    )
    .await?;
    assert_eq!(resp.status(), 404);
    let resp = post(
        Some("k3"),
        Some(ADMIN_KEY),
        json!({"tenant_id": g.tenant_id, "delta": 0, "reason": "x"}),
    )
    .await?;
    assert_eq!(resp.status(), 400);
    // A negative adjustment works too, and the ledger stays consistent.
    let resp = post(
        Some("k4"),
        Some(ADMIN_KEY),
        json!({"tenant_id": g.tenant_id, "delta": -300, "reason": "clawback"}),
    )
    .await?;
    assert_eq!(resp.status(), 202);
    settled_balance(&app, &g, 950).await?;
    let resp = app
        .client
        .get(app.url("/credits/adjustments/none"))
        .header("X-Admin-Key", ADMIN_KEY)
        .send()
        .await?;
    assert_eq!(resp.status(), 404);
    app.stop().await
}

async fn cors_exposes_billing_headers(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn(backend).await?;
    let g = app.guest().await?;
    let resp = app
        .client
        .get(app.url("/credits"))
        .bearer_auth(&g.token)
        .header("Origin", "https://app.example")
        .send()
        .await?;
    let exposed = resp.headers()["access-control-expose-headers"]
        .to_str()?
        .to_ascii_lowercase();
    for h in ["x-credits-balance", "x-credits-used", "x-request-id"] {
        assert!(exposed.contains(h), "{h} exposed: {exposed}");
    }
    let resp = app
        .client
        .request(reqwest::Method::OPTIONS, app.url("/usage"))
        .header("Origin", "https://app.example")
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type",
        )
        .send()
        .await?;
    assert!(resp.status().is_success());
    assert!(resp.headers().contains_key("access-control-allow-origin"));
    app.stop().await
}

async fn rotation_keeps_live_tokens(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn(backend).await?;
    let before = app.guest().await?;
    let old_kid = claims_of(&before.token)?.0["kid"].clone();
    cognomega_stores::keys::rotate(app.tdb.db()).await?;
    app.platform().state().auth.reload().await;
    assert_eq!(
        app.client
            .get(app.url("/credits"))
            .bearer_auth(&before.token)
            .send()
            .await?
            .status(),
        200
    );
    let after = app.guest().await?;
    let new_kid = claims_of(&after.token)?.0["kid"].clone();
    assert_ne!(old_kid, new_kid);
    let jwks: Value = app
        .client
        .get(app.url("/.well-known/jwks.json"))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(2));
    app.stop().await
}

cognomega_testkit::both_backends!(
    guest_gets_a_token_and_its_grant,
    jwt_attacks_get_401,
    bad_usage_is_refused_whole,
    duplicated_concurrent_usage_settles_exactly_once,
    usage_window_and_pricing,
    quantities_are_bounded,
    adjustments_apply_once,
    cors_exposes_billing_headers,
    rotation_keeps_live_tokens,
);
