//! The HTTP acceptance suite: one set of scenarios, run against a base URL, so the native server
//! and the Cloudflare edge stack (`wrangler/`) are held to the same contract.
//!
//! Target selection:
//! - `COGNOMEGA_ACCEPTANCE_URL` set: every scenario runs once against that base URL, with the
//!   admin key from `COGNOMEGA_ACCEPTANCE_ADMIN_KEY` (required then) and its database from
//!   `COGNOMEGA_ACCEPTANCE_DATABASE_URL` (required by the one scenario that plays a host dying
//!   mid-session by writing a stale session row).
//! - otherwise: every scenario runs against the real `cognomega serve` binary, started here on
//!   a free loopback port with a temporary data directory, an admin key, a clamd (started by
//!   `ops/clamd.sh`), a loopback fake model provider (OpenAI and Workers AI protocols) and a
//!   config file with a small `guest.usage` rate limit — once on SQLite and once on a
//!   PostgreSQL database created for the test and dropped after it.
//!
//! The ask scenario needs a model provider configured on the deployment under test; the suite
//! knows only its base URL, so it checks the answer against the contract and itself (a
//! retried Idempotency-Key replayed and billed once, a stream's tokens equal to the whole
//! answer), not against a particular provider.
//!
//! Every response checked must carry `X-Request-Id`, and every error must be the
//! `{"error":{"code","message","request_id"}}` envelope naming that same id. Timeouts are
//! generous: the edge stack is slower than the native server.

use std::cell::Cell;
use std::future::Future;
use std::process::Stdio;
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD};
use base64::Engine as _;
use cognomega_pipelines::synth::Sketch;
use cognomega_providers::fake::FakeProvider;
use cognomega_testkit::ws::{close_frame, next_json};
use cognomega_testkit::{Backend, TestDb};
use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::process::Child;
use tokio::time::{sleep, Instant};

/// The base URL of an already running deployment to test instead of the native server.
const URL_ENV: &str = "COGNOMEGA_ACCEPTANCE_URL";
/// Its admin key (`X-Admin-Key`); required when [`URL_ENV`] is set.
const ADMIN_KEY_ENV: &str = "COGNOMEGA_ACCEPTANCE_ADMIN_KEY";
/// Its database, for the scenario that plays a host dying mid-session (a session row whose
/// heart stopped); required by that scenario when [`URL_ENV`] is set.
const DATABASE_ENV: &str = "COGNOMEGA_ACCEPTANCE_DATABASE_URL";

/// The admin key of the native server started here.
const NATIVE_ADMIN_KEY: &str = "acceptance-admin-key-0123456789";

/// The config file of the native server: exactly one small bucket, so the rate-limit scenario
/// reaches 429 quickly while the other scenarios stay far below it.
const NATIVE_CONFIG: &str = "[rate_limits.guest.usage]\nrate = 1.0\nburst = 20\n";

/// The queue the poison scenario sends to, and its dead-letter queue.
const POISON_QUEUE: &str = "jobs.sketch_to_app";
const POISON_DLQ: &str = "jobs.sketch_to_app.dlq";

/// One deployment under test.
#[derive(Debug, Clone)]
struct Target {
    /// Where it is, e.g. `http://127.0.0.1:8787`, without a trailing slash.
    base: String,
    /// Its admin key.
    admin_key: String,
    /// The client every scenario uses (no compression: artifacts come back decompressed).
    client: reqwest::Client,
    /// What it is, for failure messages.
    name: String,
    /// Its database (the native server's own; for a deployment, [`DATABASE_ENV`]).
    database: Option<cognomega_stores::DatabaseUrl>,
}

impl Target {
    fn new(base: &str, admin_key: &str, name: String) -> anyhow::Result<Self> {
        // No Accept-Encoding, even if a dependency turns on a decompression feature: the
        // server must decompress artifacts itself.
        cognomega_core::tls::install();
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .no_gzip()
            .no_brotli()
            .no_zstd()
            .no_deflate()
            .build()?;
        Ok(Self {
            base: base.trim_end_matches('/').to_owned(),
            admin_key: admin_key.to_owned(),
            client,
            name,
            database: None,
        })
    }

    /// The absolute URL of `path_or_url` (a path is taken relative to the base URL).
    fn url(&self, path_or_url: &str) -> String {
        if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_owned()
        } else {
            format!("{}{path_or_url}", self.base)
        }
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    fn get(&self, path: &str) -> RequestBuilder {
        self.request(Method::GET, path)
    }

    fn post(&self, path: &str) -> RequestBuilder {
        self.request(Method::POST, path)
    }

    fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.request(method, path)
            .header("X-Admin-Key", &self.admin_key)
    }
}

/// A response, read whole and checked: it carries `X-Request-Id`, and an error is the envelope
/// naming that id.
#[derive(Debug)]
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: bytes::Bytes,
    what: String,
}

impl Answer {
    /// The body as JSON.
    fn json(&self) -> anyhow::Result<Value> {
        serde_json::from_slice(&self.body).map_err(|e| {
            anyhow::anyhow!(
                "{}: body is not JSON ({e}): {}",
                self.what,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The body as JSON, after checking the status.
    fn expect(&self, status: StatusCode) -> anyhow::Result<Value> {
        anyhow::ensure!(
            self.status == status,
            "{}: expected {status}, got {}: {}",
            self.what,
            self.status,
            String::from_utf8_lossy(&self.body)
        );
        self.json()
    }

    /// A header as text.
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The error code, after checking the status.
    fn expect_error(&self, status: StatusCode) -> anyhow::Result<String> {
        let body = self.expect(status)?;
        body["error"]["code"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| anyhow::anyhow!("{}: no error code in {body}", self.what))
    }
}

/// Sends a request and checks what every answer must satisfy.
async fn send(request: RequestBuilder) -> anyhow::Result<Answer> {
    let (client, request) = request.build_split();
    let request = request?;
    let what = format!("{} {}", request.method(), request.url().path());
    let resp = client.execute(request).await?;
    let answer = Answer {
        status: resp.status(),
        headers: resp.headers().clone(),
        body: resp.bytes().await?,
        what,
    };
    check_envelope(&answer)?;
    Ok(answer)
}

/// `X-Request-Id` on every answer; on errors, `{"error":{"code","message","request_id"}}` with
/// `request_id` equal to the header.
fn check_envelope(answer: &Answer) -> anyhow::Result<()> {
    let id = answer
        .header("x-request-id")
        .filter(|id| !id.is_empty())
        .ok_or_else(|| {
            anyhow::anyhow!(
                "{}: no X-Request-Id header on a {} answer ({:?}): {}",
                answer.what,
                answer.status,
                answer.headers,
                String::from_utf8_lossy(&answer.body[..answer.body.len().min(2_000)])
            )
        })?;
    if answer.status.is_client_error() || answer.status.is_server_error() {
        let body = answer.json()?;
        let error = &body["error"];
        anyhow::ensure!(
            body.as_object().is_some_and(|o| o.len() == 1) && error.is_object(),
            "{}: {} is not the error envelope: {body}",
            answer.what,
            answer.status
        );
        for field in ["code", "message", "request_id"] {
            anyhow::ensure!(
                error[field].as_str().is_some_and(|s| !s.is_empty()),
                "{}: error.{field} is missing: {body}",
                answer.what
            );
        }
        anyhow::ensure!(
            error["request_id"] == id,
            "{}: error.request_id {} is not X-Request-Id {id}",
            answer.what,
            error["request_id"]
        );
    }
    Ok(())
}

/// Polls `probe` until it yields a value; fails with the last observation after `timeout`.
/// An error from the probe ends the wait at once.
async fn poll<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Result<T, String>>>,
{
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(50);
    loop {
        let last = match probe().await? {
            Ok(value) => return Ok(value),
            Err(last) => last,
        };
        let now = Instant::now();
        anyhow::ensure!(
            now < deadline,
            "{what}: not reached after {timeout:?}; last seen: {last}"
        );
        sleep(pause.min(deadline - now)).await;
        pause = (pause * 2).min(Duration::from_millis(500));
    }
}

fn str_field<'v>(value: &'v Value, field: &str) -> anyhow::Result<&'v str> {
    value[field]
        .as_str()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| anyhow::anyhow!("no string {field} in {value}"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// A guest made through `POST /auth/guest`.
#[derive(Debug)]
struct Guest {
    token: String,
    tenant_id: String,
    body: Value,
    answer: Answer,
}

async fn guest(t: &Target) -> anyhow::Result<Guest> {
    let answer = send(t.post("/auth/guest").json(&json!({}))).await?;
    let body = answer.expect(StatusCode::OK)?;
    Ok(Guest {
        token: str_field(&body, "token")?.to_owned(),
        tenant_id: str_field(&body, "tenant_id")?.to_owned(),
        body,
        answer,
    })
}

/// `GET /credits`: the balance, with its contract checked.
async fn balance(t: &Target, g: &Guest) -> anyhow::Result<i64> {
    let answer = send(t.get("/credits").bearer_auth(&g.token)).await?;
    let body = answer.expect(StatusCode::OK)?;
    anyhow::ensure!(body["tenant_id"] == g.tenant_id.as_str(), "{body}");
    anyhow::ensure!(body["as_of"].is_string(), "no as_of in {body}");
    let balance = body["balance"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("no balance in {body}"))?;
    let header = answer.header("x-credits-balance");
    anyhow::ensure!(
        header.and_then(|h| h.parse::<i64>().ok()) == Some(balance),
        "X-Credits-Balance {header:?} is not the balance {balance}"
    );
    Ok(balance)
}

/// A usage event in the shape `parse_usage_request` accepts: 1,000 input tokens.
fn event(key: &str) -> Value {
    json!({"idempotency_key": key, "kind": "tokens_in", "quantity": 1000})
}

async fn post_usage(t: &Target, g: &Guest, keys: &[&str]) -> anyhow::Result<Answer> {
    let events: Vec<Value> = keys.iter().map(|k| event(k)).collect();
    send(
        t.post("/usage")
            .bearer_auth(&g.token)
            .json(&json!({ "events": events })),
    )
    .await
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

/// a. A guest token, the JWKS that verifies it, and 401 without a token.
async fn guest_token_and_jwks(t: Target) -> anyhow::Result<()> {
    let g = guest(&t).await?;
    let body = &g.body;
    assert_eq!(body["token_type"], "Bearer", "{body}");
    assert!(body["expires_in"].as_i64().is_some_and(|s| s > 0), "{body}");
    str_field(body, "user_id")?;
    assert_eq!(g.answer.header("cache-control"), Some("no-store"));

    let jwks = send(t.get("/.well-known/jwks.json"))
        .await?
        .expect(StatusCode::OK)?;
    let keys = jwks["keys"]
        .as_array()
        .filter(|k| !k.is_empty())
        .ok_or_else(|| anyhow::anyhow!("no keys in {jwks}"))?;
    for key in keys {
        assert_eq!(key["kty"], "RSA", "{key}");
        assert_eq!(key["alg"], "RS256", "{key}");
        str_field(key, "kid")?;
    }

    // The token's kid is published, and its RS256 signature verifies with that key.
    let mut parts = g.token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        anyhow::bail!("the token is not three dot-separated parts: {}", g.token);
    };
    let header: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header)?)?;
    assert_eq!(header["alg"], "RS256", "{header}");
    let kid = str_field(&header, "kid")?;
    let jwk = keys
        .iter()
        .find(|k| k["kid"] == kid)
        .ok_or_else(|| anyhow::anyhow!("kid {kid} is not in the JWKS {jwks}"))?;
    let n = URL_SAFE_NO_PAD.decode(str_field(jwk, "n")?)?;
    let e = URL_SAFE_NO_PAD.decode(str_field(jwk, "e")?)?;
    let public = rsa::PublicKey::new(
        rsa::BoxedUint::from_be_slice_vartime(&n),
        rsa::BoxedUint::from_be_slice_vartime(&e),
    )?;
    // The signature covers `header.payload`, exactly as sent.
    let (signing_input, _) = g
        .token
        .rsplit_once('.')
        .ok_or_else(|| anyhow::anyhow!("no signature in {}", g.token))?;
    let digest = Sha256::digest(signing_input.as_bytes());
    public
        .pkcs1v15_verify_prehash::<Sha256>(&digest, &URL_SAFE_NO_PAD.decode(signature)?)
        .map_err(|e| anyhow::anyhow!("the token's signature does not verify: {e}"))?;
    let claims: Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload)?)?;
    assert_eq!(claims["tenant"], g.tenant_id.as_str(), "{claims}");

    // No token: 401 in the envelope (checked by `send`).
    let no_token = send(t.get("/credits")).await?;
    no_token.expect_error(StatusCode::UNAUTHORIZED)?;
    Ok(())
}

/// b. Duplicate usage events, across and within retried requests, are billed once.
async fn usage_duplicates_settle_once(t: Target) -> anyhow::Result<()> {
    let (a, b) = (guest(&t).await?, guest(&t).await?);
    // The grant settles asynchronously: wait until each guest has it.
    let grant = wait_grant(&t, &a).await?;
    let grant_b = wait_grant(&t, &b).await?;
    assert_eq!(grant, grant_b, "both guests get the same grant");

    let all = ["k1", "k2", "k3", "k4"];
    let accepted = post_usage(&t, &a, &all)
        .await?
        .expect(StatusCode::ACCEPTED)?;
    assert_eq!(accepted, json!({"accepted": 4}));
    for keys in [&all[..3], &all[1..], &all[..]] {
        let accepted = post_usage(&t, &b, keys)
            .await?
            .expect(StatusCode::ACCEPTED)?;
        assert_eq!(accepted, json!({"accepted": keys.len()}));
    }

    // Each balance drops below the grant and then holds still for 2 s.
    let (settled_a, settled_b) = tokio::try_join!(
        settled_balance(&t, &a, grant),
        settled_balance(&t, &b, grant)
    )?;
    assert_eq!(
        settled_a, settled_b,
        "B posted every key several times but must be billed once per key, as A was"
    );
    assert!(settled_a < grant, "{settled_a} < {grant}");

    // The recorded usage says the same: four events of 1,000 tokens each, for both guests,
    // charged what the balances lost.
    for (g, settled) in [(&a, settled_a), (&b, settled_b)] {
        let usage = send(t.get("/usage").bearer_auth(&g.token))
            .await?
            .expect(StatusCode::OK)?;
        assert_eq!(usage["tenant_id"], g.tenant_id.as_str(), "{usage}");
        assert_eq!(usage["totals"]["tokens_in"]["events"], 4, "{usage}");
        assert_eq!(usage["totals"]["tokens_in"]["quantity"], 4000, "{usage}");
        assert_eq!(usage["credits_charged"], grant - settled, "{usage}");
    }
    Ok(())
}

/// Waits until the guest's starting grant is in its balance, and returns it.
async fn wait_grant(t: &Target, g: &Guest) -> anyhow::Result<i64> {
    poll("the guest grant", Duration::from_secs(60), || async {
        let balance = balance(t, g).await?;
        Ok(if balance > 0 {
            Ok(balance)
        } else {
            Err(format!("balance {balance}"))
        })
    })
    .await
}

/// Waits until the balance is below `grant` and unchanged for 2 s.
async fn settled_balance(t: &Target, g: &Guest, grant: i64) -> anyhow::Result<i64> {
    const STILL: Duration = Duration::from_secs(2);
    // The first time the current value was seen, across polls.
    let seen: Cell<Option<(i64, Instant)>> = Cell::new(None);
    let seen = &seen;
    poll(
        "a settled balance",
        Duration::from_secs(60),
        || async move {
            let current = balance(t, g).await?;
            let now = Instant::now();
            match seen.get() {
                Some((value, since)) if value == current => {
                    if current < grant && now.duration_since(since) >= STILL {
                        return Ok(Ok(current));
                    }
                }
                _ => seen.set(Some((current, now))),
            }
            Ok(Err(format!("balance {current} (grant {grant})")))
        },
    )
    .await
}

/// c. A new guest's first job is accepted at once (the starting grant commits with the
/// tenant); a `sketch_to_app` job runs to `succeeded` and its HTML artifact downloads.
async fn sketch_to_app_job(t: Target) -> anyhow::Result<()> {
    // Guests made and used at once: none is refused for credits it was just granted.
    let (small, _) = Sketch::generate(3, 320, 240);
    let small = json!({"type": "sketch_to_app", "input": {"image_base64": B64.encode(&small)}});
    for _ in 0..3 {
        let g = guest(&t).await?;
        let first = send(t.post("/jobs").bearer_auth(&g.token).json(&small)).await?;
        first.expect(StatusCode::ACCEPTED)?;
    }
    let (png, _) = Sketch::generate(7, 800, 600);
    let g = guest(&t).await?;
    let body = json!({"type": "sketch_to_app", "input": {"image_base64": B64.encode(&png)}});
    let submitted = send(t.post("/jobs").bearer_auth(&g.token).json(&body)).await?;
    let job = submitted.expect(StatusCode::ACCEPTED)?;
    let id = str_field(&job, "id")?.to_owned();
    assert_eq!(job["status"], "queued", "{job}");
    str_field(&job, "status_url")?;
    assert!(submitted.header("location").is_some(), "no Location header");

    let done = poll("the job succeeded", Duration::from_secs(120), || async {
        let job = send(t.get(&format!("/jobs/{id}")).bearer_auth(&g.token))
            .await?
            .expect(StatusCode::OK)?;
        match job["status"].as_str() {
            Some("succeeded") => Ok(Ok(job)),
            Some("failed" | "dead" | "cancelled") => {
                anyhow::bail!(
                    "the job ended {} instead of succeeded: {job}",
                    job["status"]
                )
            }
            _ => Ok(Err(job.to_string())),
        }
    })
    .await?;
    let artifacts = done["artifacts"]
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| anyhow::anyhow!("no artifacts in {done}"))?;
    for artifact in artifacts {
        str_field(artifact, "name")?;
        str_field(artifact, "sha256")?;
        assert!(
            artifact["size"].as_i64().is_some_and(|s| s > 0),
            "{artifact}"
        );
    }
    let html = artifacts
        .iter()
        .find(|a| {
            a["content_type"]
                .as_str()
                .is_some_and(|c| c.starts_with("text/html"))
                || a["name"].as_str().is_some_and(|n| n.ends_with(".html"))
        })
        .ok_or_else(|| anyhow::anyhow!("no HTML artifact in {done}"))?;
    let name = str_field(html, "name")?;
    let page = send(
        t.get(&format!("/jobs/{id}/artifacts/{name}"))
            .bearer_auth(&g.token),
    )
    .await?;
    assert_eq!(page.status, StatusCode::OK, "{}", page.what);
    let text = String::from_utf8_lossy(&page.body);
    assert!(text.contains("<html"), "not an HTML page: {text:.200}");
    Ok(())
}

/// d. An upload lands, is scanned clean, and its signed link serves the exact bytes.
async fn upload_lands(t: Target) -> anyhow::Result<()> {
    let g = guest(&t).await?;
    // An upload is billable work: it is refused (402) until the grant has settled.
    wait_grant(&t, &g).await?;
    let (png, _) = Sketch::generate(11, 160, 120);
    let created = send(
        t.post("/upload/direct")
            .bearer_auth(&g.token)
            .header("X-Filename", "sketch.png")
            .header("Content-Type", "image/png")
            .body(png.clone()),
    )
    .await?
    .expect(StatusCode::CREATED)?;
    for field in ["key", "filename", "sha256", "content_type", "scan", "url"] {
        str_field(&created, field)?;
    }
    let digest = sha256_hex(&png);
    assert_eq!(created["size"].as_u64(), u64::try_from(png.len()).ok());
    assert_eq!(created["sha256"], digest.as_str(), "{created}");
    let key = str_field(&created, "key")?.to_owned();

    let meta = send(t.get(&format!("/uploads/{key}")).bearer_auth(&g.token))
        .await?
        .expect(StatusCode::OK)?;
    assert_eq!(meta["key"], key.as_str(), "{meta}");
    assert_eq!(meta["sha256"], digest.as_str(), "{meta}");
    poll(
        "the upload scanned clean",
        Duration::from_secs(60),
        || async {
            let meta = send(t.get(&format!("/uploads/{key}")).bearer_auth(&g.token))
                .await?
                .expect(StatusCode::OK)?;
            match meta["scan"].as_str() {
                Some("clean") => Ok(Ok(())),
                Some("pending") => Ok(Err(meta.to_string())),
                _ => anyhow::bail!("the scan ended other than clean: {meta}"),
            }
        },
    )
    .await?;

    let file = send(t.get(str_field(&created, "url")?)).await?;
    assert_eq!(file.status, StatusCode::OK, "{}", file.what);
    assert!(
        file.body.as_ref() == png.as_slice(),
        "the file is not the uploaded bytes"
    );
    Ok(())
}

/// Polls a tenant's job until it reaches a final status; returns the job.
async fn final_job(t: &Target, g: &Guest, id: &str) -> anyhow::Result<Value> {
    poll("the job finished", Duration::from_secs(120), || async {
        let job = send(t.get(&format!("/jobs/{id}")).bearer_auth(&g.token))
            .await?
            .expect(StatusCode::OK)?;
        match job["status"].as_str() {
            Some("queued" | "running") => Ok(Err(job.to_string())),
            _ => Ok(Ok(job)),
        }
    })
    .await
}

/// g. Every registered job type runs on the deployment: an `image_thumbnail` job succeeds
/// with its thumbnail, billed as one job.
async fn every_job_type_runs(t: Target) -> anyhow::Result<()> {
    let g = guest(&t).await?;
    let grant = wait_grant(&t, &g).await?;
    let (png, _) = Sketch::generate(5, 640, 480);
    let body = json!({
        "type": "image_thumbnail",
        "input": {"image_base64": B64.encode(&png)},
        "params": {"sizes": [64, 128]},
    });
    let job = send(t.post("/jobs").bearer_auth(&g.token).json(&body))
        .await?
        .expect(StatusCode::ACCEPTED)?;
    let id = str_field(&job, "id")?.to_owned();
    let done = final_job(&t, &g, &id).await?;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["progress"].as_f64(), Some(1.0), "{done}");
    let artifacts = done["artifacts"].as_array().cloned().unwrap_or_default();
    assert!(!artifacts.is_empty(), "no thumbnail in {done}");
    let name = str_field(&artifacts[0], "name")?;
    let thumb = send(
        t.get(&format!("/jobs/{id}/artifacts/{name}"))
            .bearer_auth(&g.token),
    )
    .await?;
    assert_eq!(thumb.status, StatusCode::OK, "{}", thumb.what);
    assert!(
        thumb.body.starts_with(b"\x89PNG")
            || thumb.body.starts_with(&[0xff, 0xd8])
            || thumb.body.starts_with(b"RIFF"),
        "not an image: {:?}",
        &thumb.body[..thumb.body.len().min(8)]
    );
    let charged = done["credits_charged"].as_i64().unwrap_or(0);
    let settled = settled_balance(&t, &g, grant).await?;
    assert_eq!(grant - settled, charged, "billed once, as the job says");
    Ok(())
}

/// i. Jobs report their progress and stop when cancelled while running, on every host: a job
/// that fails in its first stage says which stage it reached; a long job is seen running at a
/// recorded stage with a fraction that only grows; a cancel then answers 202 and the job ends
/// `cancelled` at its next stage boundary, nothing billed; a copy of its message (an
/// operator's, a broker's redelivery) does not run it again.
async fn job_progress_and_cancel(t: Target) -> anyhow::Result<()> {
    let g = guest(&t).await?;
    let grant = wait_grant(&t, &g).await?;
    // A PNG whose header is whole but whose pixels are cut off: accepted at submit (the header
    // and dimensions are what is checked there), it fails once `decode` starts.
    let (png, _) = Sketch::generate(21, 640, 480);
    let body = json!({
        "type": "image_thumbnail",
        "input": {"image_base64": B64.encode(&png[..png.len() / 2])},
        "params": {"sizes": [64]},
    });
    let job = send(t.post("/jobs").bearer_auth(&g.token).json(&body))
        .await?
        .expect(StatusCode::ACCEPTED)?;
    let done = final_job(&t, &g, str_field(&job, "id")?).await?;
    assert_eq!(done["status"], "failed", "{done}");
    assert_eq!(done["stage"], "decode", "the stage it failed in: {done}");
    assert_eq!(done["credits_charged"].as_i64(), Some(0), "{done}");

    // A long job: a large image (a JPEG, well under the 20 MiB input bound) resized to eight
    // large sizes, one stage each. The job is cancelled as soon as it is seen resizing; a run
    // fast enough to finish before the cancel lands (409, billed as any success) is followed by
    // another, up to four.
    let (sketch, _) = Sketch::render(22, 2500, 1875);
    let large = image::imageops::resize(&sketch, 5000, 3750, image::imageops::FilterType::Triangle);
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 85).encode_image(&large)?;
    let body = json!({
        "type": "image_thumbnail",
        "input": {"image_base64": B64.encode(&jpeg)},
        "params": {"sizes": [2048, 2040, 2032, 2024, 2016, 2008, 2000, 1992]},
    });
    let mut raced_credits = 0;
    let mut tries = 0;
    let (id, cancel, started, running_after) = loop {
        tries += 1;
        let job = send(t.post("/jobs").bearer_auth(&g.token).json(&body))
            .await?
            .expect(StatusCode::ACCEPTED)?;
        let id = str_field(&job, "id")?.to_owned();
        let started = Instant::now();
        let deadline = started + Duration::from_secs(120);
        let mut seen: Vec<(String, f64)> = Vec::new();
        let running = loop {
            let job = send(t.get(&format!("/jobs/{id}")).bearer_auth(&g.token))
                .await?
                .expect(StatusCode::OK)?;
            let stage = job["stage"].as_str().unwrap_or_default().to_owned();
            let progress = job["progress"].as_f64().unwrap_or_default();
            match job["status"].as_str() {
                Some("running") if !stage.is_empty() => {
                    seen.push((stage.clone(), progress));
                    if stage == "resize" {
                        break job;
                    }
                }
                Some("queued" | "running") => {}
                _ => anyhow::bail!("the job ended before it was seen resizing: {job}"),
            }
            anyhow::ensure!(Instant::now() < deadline, "the job never ran: {job}");
            sleep(Duration::from_millis(10)).await;
        };
        assert!(
            seen.windows(2).all(|w| w[0].1 <= w[1].1),
            "progress only grows: {seen:?}"
        );
        let progress = running["progress"].as_f64().unwrap_or_default();
        assert!(progress > 0.0 && progress < 1.0, "{running}");
        let running_after = started.elapsed();
        let cancel = send(t.post(&format!("/jobs/{id}/cancel")).bearer_auth(&g.token)).await?;
        if cancel.status == StatusCode::CONFLICT && tries < 4 {
            // The run finished between the last look and the cancel.
            let done = final_job(&t, &g, &id).await?;
            assert_eq!(done["status"], "succeeded", "{done}");
            raced_credits += done["credits_charged"].as_i64().unwrap_or(0);
            continue;
        }
        break (
            id,
            cancel.expect(StatusCode::ACCEPTED)?,
            started,
            running_after,
        );
    };
    assert_eq!(cancel["cancel_requested"], true, "{cancel}");
    let job = send(t.get(&format!("/jobs/{id}")).bearer_auth(&g.token))
        .await?
        .expect(StatusCode::OK)?;
    assert!(
        job["status"] == "cancelled" || job["cancel_requested"] == true,
        "a running job says a cancel was asked for: {job}"
    );
    // A copy of its message: delivered while the job is still running, or after it ended.
    send(
        t.admin(Method::POST, "/admin/queues/jobs.image_thumbnail/messages")
            .header("content-type", "application/json")
            .body(json!({"job_id": id}).to_string()),
    )
    .await?
    .expect(StatusCode::ACCEPTED)?;
    let done = final_job(&t, &g, &id).await?;
    eprintln!(
        "{}: try {tries}: the long job was resizing after {running_after:?}, cancelled after {:?}",
        t.name,
        started.elapsed()
    );
    assert_eq!(done["status"], "cancelled", "{done}");
    assert_eq!(done["credits_charged"].as_i64(), Some(0), "{done}");
    // Time for the copy to be delivered: it finds the job cancelled and runs nothing.
    sleep(Duration::from_secs(2)).await;
    let after = send(t.get(&format!("/jobs/{id}")).bearer_auth(&g.token))
        .await?
        .expect(StatusCode::OK)?;
    assert_eq!(after["status"], "cancelled", "{after}");
    assert_eq!(after["attempts"].as_i64(), Some(1), "run once: {after}");
    // Nothing was billed for the failed or the cancelled job (a run that won the race with
    // its cancel was billed as the success it was).
    let left = if raced_credits == 0 {
        balance(&t, &g).await?
    } else {
        settled_balance(&t, &g, grant).await?
    };
    assert_eq!(left, grant - raced_credits, "nothing billed for them");
    Ok(())
}

/// h. Writes whose messages could not be sent right after their commit (on the edge: the
/// drain after the request failed, injected by the test-only `COGNOMEGA_TEST_FAULTS=drain`
/// for request ids starting `fault-drain-`; natively the messages commit in the database with
/// the rows, so there is nothing to lose) are delivered later exactly once: the upload is
/// scanned and its storage billed once, the job runs once and is billed once.
async fn failed_sends_are_delivered_later_once(t: Target) -> anyhow::Result<()> {
    let g = guest(&t).await?;
    let grant = wait_grant(&t, &g).await?;
    let fault = |what: &str| format!("fault-drain-{what}-{}", uuid::Uuid::new_v4());
    let (png, _) = Sketch::generate(13, 160, 120);
    let upload = send(
        t.post("/upload/direct")
            .bearer_auth(&g.token)
            .header("X-Request-Id", fault("upload"))
            .header("X-Filename", "late.png")
            .header("Content-Type", "image/png")
            .body(png.clone()),
    )
    .await?
    .expect(StatusCode::CREATED)?;
    let key = str_field(&upload, "key")?.to_owned();
    let (sketch, _) = Sketch::generate(17, 320, 240);
    let body = json!({"type": "sketch_to_app", "input": {"image_base64": B64.encode(&sketch)}});
    let job = send(
        t.post("/jobs")
            .bearer_auth(&g.token)
            .header("X-Request-Id", fault("job"))
            .json(&body),
    )
    .await?
    .expect(StatusCode::ACCEPTED)?;
    let id = str_field(&job, "id")?.to_owned();
    // Any later write relays what is unsent (on the edge its drain; the relay cron would too).
    poll(
        "the upload scanned and the job finished",
        Duration::from_secs(120),
        || async {
            let nudge = send(
                t.post("/usage")
                    .bearer_auth(&g.token)
                    .json(&json!({"events": [event(&format!("nudge-{}", uuid::Uuid::new_v4()))]})),
            )
            .await?;
            let _ = nudge;
            let meta = send(t.get(&format!("/uploads/{key}")).bearer_auth(&g.token))
                .await?
                .expect(StatusCode::OK)?;
            let job = send(t.get(&format!("/jobs/{id}")).bearer_auth(&g.token))
                .await?
                .expect(StatusCode::OK)?;
            let scanned = meta["scan"].as_str() != Some("pending");
            let finished = !matches!(job["status"].as_str(), Some("queued" | "running"));
            Ok(if scanned && finished {
                Ok((meta, job))
            } else {
                Err(format!("{meta} {job}"))
            })
        },
    )
    .await
    .map(|(meta, job)| {
        assert_eq!(meta["scan"], "clean", "{meta}");
        assert_eq!(job["status"], "succeeded", "{job}");
        assert_eq!(job["attempts"], 1, "run once: {job}");
    })?;
    // Billed once each: the upload's bytes once, the job once.
    poll(
        "the storage billed once",
        Duration::from_secs(60),
        || async {
            let usage = send(t.get("/usage").bearer_auth(&g.token))
                .await?
                .expect(StatusCode::OK)?;
            let storage = &usage["totals"]["storage_bytes"];
            let jobs = &usage["totals"]["job"];
            Ok(if storage["events"] == 1 && jobs["events"] == 1 {
                assert_eq!(
                    storage["quantity"].as_u64(),
                    u64::try_from(png.len()).ok(),
                    "{usage}"
                );
                Ok(())
            } else {
                Err(usage.to_string())
            })
        },
    )
    .await?;
    let settled = settled_balance(&t, &g, grant).await?;
    assert!(settled < grant, "the work was billed");
    Ok(())
}

/// The poison queue's dead message whose body contains `marker`, if listed, and the listing.
async fn dead_letter_with(t: &Target, marker: &str) -> anyhow::Result<(Option<Value>, Value)> {
    let answer = send(t.admin(
        Method::GET,
        &format!("/admin/queues/{POISON_QUEUE}/dlq?limit=1000"),
    ))
    .await?
    .expect(StatusCode::OK)?;
    let found = answer["messages"].as_array().and_then(|m| {
        m.iter()
            .find(|m| {
                m["body_preview"]
                    .as_str()
                    .is_some_and(|b| b.contains(marker))
            })
            .cloned()
    });
    Ok((found, answer))
}

/// e. A message the jobs consumer cannot read is retried and then dead-lettered.
async fn poison_reaches_dlq(t: Target) -> anyhow::Result<()> {
    let marker = uuid::Uuid::new_v4().to_string();
    let sent = send(
        t.admin(
            Method::POST,
            &format!("/admin/queues/{POISON_QUEUE}/messages"),
        )
        .body(format!("poison {marker} not json")),
    )
    .await?
    .expect(StatusCode::ACCEPTED)?;
    assert_eq!(sent["queue"], POISON_QUEUE, "{sent}");
    // Natively the queue row's id; Cloudflare Queues assign ids only at delivery, so the edge
    // answers null.
    assert!(sent["id"].is_number() || sent["id"].is_null(), "{sent}");

    let (dead, answer) = poll(
        "the poison message in the DLQ",
        Duration::from_secs(90),
        || async {
            let (found, answer) = dead_letter_with(&t, &marker).await?;
            Ok(match found {
                Some(dead) => Ok((dead, answer)),
                None => Err(answer.to_string()),
            })
        },
    )
    .await?;
    assert_eq!(answer["dead_letter_queue"], POISON_DLQ, "{answer}");
    assert_eq!(
        dead["attempts"], 4,
        "one delivery and max_retries (3) retries: {dead}"
    );

    // Replay: an empty id list is refused; the dead message goes back to its queue (out of
    // the DLQ at once), is delivered again, and, still poison, dies again.
    let replay = format!("/admin/queues/{POISON_QUEUE}/dlq/replay");
    let code = send(t.admin(Method::POST, &replay).json(&json!({ "ids": [] })))
        .await?
        .expect_error(StatusCode::BAD_REQUEST)?;
    assert_eq!(code, "invalid_body");
    let replayed = send(
        t.admin(Method::POST, &replay)
            .json(&json!({ "ids": [dead["id"]] })),
    )
    .await?
    .expect(StatusCode::OK)?;
    assert_eq!(replayed["replayed"], 1, "{replayed}");
    assert_eq!(replayed["dead_letter_queue"], POISON_DLQ, "{replayed}");
    let listed = send(t.admin(
        Method::GET,
        &format!("/admin/queues/{POISON_QUEUE}/dlq?limit=1000"),
    ))
    .await?
    .expect(StatusCode::OK)?;
    let still_dead = listed["messages"]
        .as_array()
        .is_some_and(|m| m.iter().any(|m| m["id"] == dead["id"]));
    assert!(!still_dead, "replayed, yet still listed as dead: {listed}");
    // Three more deliveries, each after the queue's retry delay: on a loaded two-core machine
    // the local Queues simulator has taken longer than 90 s for them.
    poll(
        "the replayed poison message dead again",
        Duration::from_secs(180),
        || async {
            let (found, answer) = dead_letter_with(&t, &marker).await?;
            Ok(if found.is_some() {
                Ok(())
            } else {
                Err(answer.to_string())
            })
        },
    )
    .await?;
    Ok(())
}

/// h. The operator's surface answers the same on every shape: the OpenAPI document, the
/// Prometheus figures, the queue list, the configuration snapshot without secrets, and CORS
/// for browser clients.
async fn operator_surface(t: Target) -> anyhow::Result<()> {
    let doc = send(t.get("/openapi.json")).await?.expect(StatusCode::OK)?;
    assert!(
        doc["openapi"]
            .as_str()
            .is_some_and(|v| v.starts_with("3.1")),
        "{}",
        doc["openapi"]
    );
    for path in ["/api/si/ask", "/upload/direct", "/admin/queues", "/metrics"] {
        assert!(
            doc["paths"].get(path).is_some(),
            "{path} not in the document"
        );
    }

    // A guest exists, so the ledger has a grant to report.
    let g = guest(&t).await?;
    wait_grant(&t, &g).await?;
    let metrics = send(t.get("/metrics")).await?;
    assert_eq!(
        metrics.status,
        StatusCode::OK,
        "{}",
        String::from_utf8_lossy(&metrics.body)
    );
    assert!(
        metrics
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/plain")),
        "{:?}",
        metrics.header("content-type")
    );
    let text = String::from_utf8_lossy(&metrics.body);
    let granted = text
        .lines()
        .find_map(|l| l.strip_prefix("cognomega_credits_granted_total "))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .ok_or_else(|| anyhow::anyhow!("no cognomega_credits_granted_total in:\n{text}"))?;
    assert!(granted > 0, "granted {granted}");
    for series in [
        "cognomega_queue_dlq_depth{queue=\"usage\"} ",
        "cognomega_uploads_scanned_total{result=\"clean\"} ",
        "cognomega_lifecycle_objects{tier=\"hot\"} ",
    ] {
        assert!(text.contains(series), "no {series} in:\n{text}");
    }

    let code = send(t.get("/admin/queues"))
        .await?
        .expect_error(StatusCode::UNAUTHORIZED)?;
    assert_eq!(code, "invalid_admin_key");
    let queues = send(t.admin(Method::GET, "/admin/queues"))
        .await?
        .expect(StatusCode::OK)?;
    let list = queues["queues"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no queues in {queues}"))?;
    for name in ["usage", "settlement", "av-scan", "etl", POISON_QUEUE] {
        let q = list
            .iter()
            .find(|q| q["queue"] == name)
            .ok_or_else(|| anyhow::anyhow!("no queue {name} in {queues}"))?;
        assert!(q["dlq_depth"].is_u64(), "{q}");
    }

    let snapshot = send(t.admin(Method::GET, "/admin/env-snapshot")).await?;
    let body = snapshot.expect(StatusCode::OK)?;
    assert!(body["version"].is_string(), "{body}");
    assert!(body["auth"]["issuer"].is_string(), "{body}");
    assert!(body["rate_limits"]["enabled"].is_boolean(), "{body}");
    assert!(body["cost_guards"]["guest"].is_object(), "{body}");
    assert!(
        !String::from_utf8_lossy(&snapshot.body).contains(&t.admin_key),
        "the snapshot shows the admin key"
    );

    // CORS: a preflight from a browser, and the headers a browser may read on an answer.
    let origin = "https://app.example";
    let pre = t
        .client
        .request(Method::OPTIONS, t.url("/api/si/ask"))
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type",
        )
        .send()
        .await?;
    assert!(pre.status().is_success(), "preflight: {}", pre.status());
    let h = |name: &str| {
        pre.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_ascii_lowercase()
    };
    assert!(matches!(
        h("access-control-allow-origin").as_str(),
        "*" | "https://app.example"
    ));
    assert!(
        h("access-control-allow-methods").contains("post"),
        "{:?}",
        pre.headers()
    );
    assert!(
        h("access-control-allow-headers").contains("authorization"),
        "{:?}",
        pre.headers()
    );
    let health = send(t.get("/healthz").header("Origin", origin)).await?;
    let exposed = health
        .header("access-control-expose-headers")
        .unwrap_or_default()
        .to_ascii_lowercase();
    for name in [
        "x-request-id",
        "x-credits-balance",
        "server-timing",
        "retry-after",
    ] {
        assert!(exposed.contains(name), "{name} not exposed: {exposed:?}");
    }
    Ok(())
}

/// The Server-Sent Events of a body: `(event, data)` pairs.
fn sse_events(body: &[u8]) -> Vec<(String, String)> {
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    text.split("\n\n")
        .filter_map(|block| {
            let mut event = "message".to_owned();
            let mut data: Vec<&str> = Vec::new();
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event:") {
                    event = e.trim().to_owned();
                } else if let Some(d) = line.strip_prefix("data:") {
                    data.push(d.strip_prefix(' ').unwrap_or(d));
                }
            }
            (!data.is_empty()).then(|| (event, data.join("\n")))
        })
        .collect()
}

fn int_header(answer: &Answer, name: &str) -> anyhow::Result<i64> {
    answer
        .header(name)
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("{}: no integer {name} header", answer.what))
}

/// g. `POST /api/si/ask`: an answer with every header; the same `Idempotency-Key` retried is
/// replayed (the same answer, `Idempotent-Replayed: true`) and billed once, the same key with
/// another body is 409; the same `X-Request-Id` without a key is asked and billed again (a
/// request id traces, it does not bill); a streamed answer ends with a `done` event carrying
/// its usage; a guest may not ask for a large model.
async fn ask_billed_once(t: Target) -> anyhow::Result<()> {
    let g = guest(&t).await?;
    let denied = send(
        t.post("/api/si/ask")
            .bearer_auth(&g.token)
            .json(&json!({"prompt": "hi", "model": "gpt-4o"})),
    )
    .await?;
    assert_eq!(denied.expect_error(StatusCode::FORBIDDEN)?, "model_denied");
    let grant = wait_grant(&t, &g).await?;

    let request_id = format!("acceptance-ask-{}", uuid::Uuid::new_v4());
    let key = format!("acceptance-key-{}", uuid::Uuid::new_v4());
    let ask = || {
        t.post("/api/si/ask")
            .bearer_auth(&g.token)
            .header("X-Request-Id", &request_id)
            .header("Idempotency-Key", &key)
            .json(&json!({"prompt": "say hello to the acceptance suite", "max_tokens": 64}))
    };
    let first = send(ask()).await?;
    let answer = first.expect(StatusCode::OK)?;
    assert_eq!(first.header("x-request-id"), Some(request_id.as_str()));
    assert_eq!(answer["id"], request_id.as_str(), "{answer}");
    let provider = first
        .header("x-provider")
        .ok_or_else(|| anyhow::anyhow!("no X-Provider"))?;
    assert!(
        ["cfai", "groq", "openai"].contains(&provider),
        "X-Provider {provider}"
    );
    assert_eq!(answer["provider"], provider, "{answer}");
    assert_eq!(
        answer["model"].as_str(),
        first.header("x-model"),
        "{answer}"
    );
    assert!(
        answer["output"].as_str().is_some_and(|o| !o.is_empty()),
        "{answer}"
    );
    let usage = &answer["usage"];
    assert!(usage["estimated"].is_boolean(), "{answer}");
    let tokens_in = int_header(&first, "x-tokens-in")?;
    let tokens_out = int_header(&first, "x-tokens-out")?;
    let credits = int_header(&first, "x-credits-used")?;
    assert_eq!(usage["tokens_in"], tokens_in, "{answer}");
    assert_eq!(usage["tokens_out"], tokens_out, "{answer}");
    assert_eq!(answer["credits_used"], credits, "{answer}");
    assert!(tokens_in > 0 && tokens_out > 0 && credits > 0, "{answer}");
    assert_eq!(
        int_header(&first, "x-credits-balance")?,
        grant - credits,
        "X-Credits-Balance is the balance minus this charge"
    );
    // Where the answer's time went, stage by stage.
    let timing = first.header("server-timing").unwrap_or_default();
    for stage in ["standing;dur=", "provider;dur=", "bill;dur="] {
        assert!(
            timing.contains(stage),
            "Server-Timing {timing:?} lacks {stage}"
        );
    }

    assert_eq!(first.header("idempotent-replayed"), None);
    // The same request again with its key: the first answer replayed, not asked or billed.
    let again = send(ask()).await?;
    let replayed = again.expect(StatusCode::OK)?;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(replayed, answer, "the replay is the first answer");
    for h in [
        "x-provider",
        "x-model",
        "x-tokens-in",
        "x-tokens-out",
        "x-credits-used",
    ] {
        assert_eq!(again.header(h), first.header(h), "{h} replayed");
    }
    // The key with another body: refused, nothing asked.
    let reused = send(
        t.post("/api/si/ask")
            .bearer_auth(&g.token)
            .header("Idempotency-Key", &key)
            .json(&json!({"prompt": "another question", "max_tokens": 64})),
    )
    .await?;
    assert_eq!(
        reused.expect_error(StatusCode::CONFLICT)?,
        "idempotency_key_reused"
    );
    // The same request id without the key: a request id only traces, so it is asked and
    // billed again.
    let traced = send(
        t.post("/api/si/ask")
            .bearer_auth(&g.token)
            .header("X-Request-Id", &request_id)
            .json(&json!({"prompt": "say hello to the acceptance suite", "max_tokens": 64})),
    )
    .await?;
    traced.expect(StatusCode::OK)?;
    assert_eq!(traced.header("idempotent-replayed"), None);
    let traced_credits = int_header(&traced, "x-credits-used")?;

    // A streamed answer: token events, then done with usage and credits.
    let streamed = send(
        t.post("/api/si/ask")
            .bearer_auth(&g.token)
            .json(&json!({"prompt": "say hello to the acceptance suite", "stream": true})),
    )
    .await?;
    assert_eq!(streamed.status, StatusCode::OK, "{}", streamed.what);
    assert!(
        streamed
            .header("content-type")
            .is_some_and(|c| c.starts_with("text/event-stream")),
        "content type {:?}",
        streamed.header("content-type")
    );
    assert_eq!(streamed.header("x-provider"), Some(provider));
    let events = sse_events(&streamed.body);
    let text: String = events
        .iter()
        .filter(|(e, _)| e == "token")
        .map(|(_, d)| {
            serde_json::from_str::<Value>(d)
                .ok()
                .and_then(|v| v["text"].as_str().map(str::to_owned))
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        text, answer["output"],
        "the streamed tokens make the same answer: {events:?}"
    );
    let (last, done) = events
        .last()
        .ok_or_else(|| anyhow::anyhow!("no events in the stream"))?;
    assert_eq!(last, "done", "the stream ends with done: {events:?}");
    let done: Value = serde_json::from_str(done)?;
    assert_eq!(done["finish"], "stop", "{done}");
    let streamed_credits = done["credits_used"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("no credits_used in {done}"))?;
    assert!(
        done["usage"]["tokens_in"].as_i64().is_some_and(|n| n > 0),
        "{done}"
    );
    assert!(
        done["usage"]["tokens_out"].as_i64().is_some_and(|n| n > 0),
        "{done}"
    );
    assert!(done["credits_balance"].is_i64(), "{done}");

    // Billed once per answer: the balance and the recorded usage agree.
    let settled = settled_balance(&t, &g, grant).await?;
    assert_eq!(
        settled,
        grant - credits - traced_credits - streamed_credits,
        "three answers billed (the replay was not)"
    );
    let usage = send(t.get("/usage").bearer_auth(&g.token))
        .await?
        .expect(StatusCode::OK)?;
    assert_eq!(usage["totals"]["tokens_in"]["events"], 3, "{usage}");
    assert_eq!(usage["totals"]["tokens_out"]["events"], 3, "{usage}");
    assert_eq!(usage["credits_charged"], grant - settled, "{usage}");
    Ok(())
}

/// f. A guest that keeps posting usage is refused with 429.
async fn rate_limited(t: Target) -> anyhow::Result<()> {
    let g = guest(&t).await?;
    for i in 0..200 {
        let answer = post_usage(&t, &g, &[&format!("rl-{i}")]).await?;
        if answer.status == StatusCode::ACCEPTED {
            continue;
        }
        assert_eq!(
            answer.expect_error(StatusCode::TOO_MANY_REQUESTS)?,
            "rate_limited"
        );
        let retry_after = answer.header("retry-after");
        assert!(
            retry_after
                .and_then(|r| r.parse::<u64>().ok())
                .is_some_and(|r| r >= 1),
            "Retry-After {retry_after:?}"
        );
        assert!(
            answer.header("ratelimit-limit").is_some(),
            "no RateLimit-Limit header"
        );
        return Ok(());
    }
    anyhow::bail!("200 usage posts of one guest were all accepted: no 429")
}

/// g. Usage reaches an analytics export: `POST /admin/exports` queues it, `GET /exports` lists
/// the Parquet parts covering the rows, and each part downloads by its url as the Parquet file
/// the manifest describes (magic, size, SHA-256, row count), holding the guest's events.
async fn usage_exported(t: Target) -> anyhow::Result<()> {
    let g = guest(&t).await?;
    let keys = ["export-1", "export-2", "export-3"];
    post_usage(&t, &g, &keys)
        .await?
        .expect(StatusCode::ACCEPTED)?;
    // The events are rows once GET /usage counts them.
    poll("the usage recorded", Duration::from_secs(60), || async {
        let usage = send(t.get("/usage").bearer_auth(&g.token))
            .await?
            .expect(StatusCode::OK)?;
        let events = usage["totals"]["tokens_in"]["events"].as_i64().unwrap_or(0);
        Ok(if events == 3 {
            Ok(())
        } else {
            Err(format!("{usage}"))
        })
    })
    .await?;

    // The admin gate and the body's checks come first.
    let refused = send(
        t.post("/admin/exports")
            .json(&json!({"dataset": "usage_events"})),
    )
    .await?;
    assert_eq!(
        refused.expect_error(StatusCode::UNAUTHORIZED)?,
        "invalid_admin_key"
    );
    for (body, code) in [
        (json!({"dataset": "nope"}), "invalid_dataset"),
        (
            json!({"dataset": "usage_events", "format": "csv"}),
            "invalid_format",
        ),
    ] {
        let answer = send(t.admin(Method::POST, "/admin/exports").json(&body)).await?;
        assert_eq!(
            answer.expect_error(StatusCode::BAD_REQUEST)?,
            code,
            "{body}"
        );
    }
    let queued = send(
        t.admin(Method::POST, "/admin/exports")
            .json(&json!({"dataset": "usage_events"})),
    )
    .await?
    .expect(StatusCode::ACCEPTED)?;
    let queued = queued["queued"]
        .as_array()
        .ok_or_else(|| anyhow::anyhow!("no queued list in {queued}"))?;
    assert_eq!(queued.len(), 1, "{queued:?}");
    assert_eq!(queued[0]["dataset"], "usage_events");
    assert_eq!(queued[0]["format"], "parquet");
    // Natively the queue's id; on the edge null (Cloudflare assigns ids at delivery).
    assert!(
        queued[0]
            .as_object()
            .is_some_and(|o| o.contains_key("message_id")),
        "{queued:?}"
    );

    // Poll the listing; read every new Parquet part of usage_events until the guest's three
    // events were all found.
    let checked: std::cell::RefCell<std::collections::BTreeSet<String>> = Default::default();
    let found: std::cell::RefCell<std::collections::BTreeSet<String>> = Default::default();
    let (checked, found) = (&checked, &found);
    let (t, g) = (&t, &g);
    poll(
        "the export listing the events",
        Duration::from_secs(120),
        || async move {
            let list = send(t.get("/exports")).await?;
            assert_eq!(
                list.expect_error(StatusCode::UNAUTHORIZED)?,
                "invalid_admin_key"
            );
            let list = send(t.admin(Method::GET, "/exports"))
                .await?
                .expect(StatusCode::OK)?;
            let datasets = list["datasets"]
                .as_array()
                .ok_or_else(|| anyhow::anyhow!("no datasets in {list}"))?;
            let names: Vec<&str> = datasets
                .iter()
                .filter_map(|d| d["dataset"].as_str())
                .collect();
            assert_eq!(
                names,
                ["usage_events", "ledger_entries", "jobs", "uploads"],
                "{list}"
            );
            let usage = &datasets[0];
            assert_eq!(usage["manifest_key"], "exports/usage_events/_manifest.json");
            let parts = usage["parts"]
                .as_array()
                .ok_or_else(|| anyhow::anyhow!("no parts in {usage}"))?;
            for part in parts {
                let key = str_field(part, "key")?;
                if part["format"] != "parquet" || checked.borrow().contains(key) {
                    continue;
                }
                let mine = check_export_part(t, part, &g.tenant_id).await?;
                found.borrow_mut().extend(mine);
                checked.borrow_mut().insert(key.to_owned());
            }
            let found = found.borrow();
            Ok(if keys.iter().all(|k| found.contains(*k)) {
                Ok(())
            } else {
                Err(format!(
                    "found {found:?} of {keys:?} in {} parts",
                    parts.len()
                ))
            })
        },
    )
    .await
}

/// Downloads one listed Parquet part and checks it against its listing; returns the
/// idempotency keys of `tenant`'s rows in it (each checked: 1,000 input tokens).
async fn check_export_part(t: &Target, part: &Value, tenant: &str) -> anyhow::Result<Vec<String>> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let key = str_field(part, "key")?;
    let dt = str_field(part, "dt")?;
    let (from, to) = (
        part["from"].as_i64().unwrap_or(-1),
        part["to"].as_i64().unwrap_or(-1),
    );
    assert_eq!(
        key,
        format!("exports/usage_events/dt={dt}/part-{from:020}-{to:020}.parquet"),
        "the key layout: {part}"
    );
    let answer = send(t.get(str_field(part, "url")?)).await?;
    anyhow::ensure!(
        answer.status == StatusCode::OK,
        "GET {key}: {} {}",
        answer.status,
        String::from_utf8_lossy(&answer.body)
    );
    let bytes = answer.body;
    assert!(
        bytes.len() > 8 && bytes.starts_with(b"PAR1") && bytes.ends_with(b"PAR1"),
        "{key} is not a Parquet file ({} bytes)",
        bytes.len()
    );
    assert_eq!(Some(bytes.len() as i64), part["bytes"].as_i64(), "{part}");
    assert_eq!(sha256_hex(&bytes), str_field(part, "sha256")?, "{part}");
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)?.build()?;
    let mut rows = Vec::new();
    let mut count = 0;
    for batch in reader {
        let batch = batch?;
        count += batch.num_rows() as i64;
        let text = |name: &str| -> anyhow::Result<arrow_array::StringArray> {
            let column = batch
                .column_by_name(name)
                .ok_or_else(|| anyhow::anyhow!("{key}: no column {name}"))?;
            let strings = column
                .as_any()
                .downcast_ref::<arrow_array::StringArray>()
                .ok_or_else(|| anyhow::anyhow!("{key}: {name} is not text"))?;
            Ok(strings.clone())
        };
        let (tenants, keys, kinds) = (text("tenant_id")?, text("idempotency_key")?, text("kind")?);
        let quantities = batch
            .column_by_name("quantity")
            .and_then(|c| {
                c.as_any()
                    .downcast_ref::<arrow_array::Int64Array>()
                    .cloned()
            })
            .ok_or_else(|| anyhow::anyhow!("{key}: no 64-bit quantity column"))?;
        for i in 0..batch.num_rows() {
            if tenants.value(i) != tenant {
                continue;
            }
            assert_eq!(kinds.value(i), "tokens_in", "{key} row {i}");
            assert_eq!(quantities.value(i), 1000, "{key} row {i}");
            rows.push(keys.value(i).to_owned());
        }
    }
    assert_eq!(Some(count), part["rows"].as_i64(), "row count of {part}");
    Ok(rows)
}

/// h. A multipart upload is stored from its file part (its name and type), a form without one
/// is refused, and a clean upload is a job's input by its key, for its own tenant only. (The
/// cost guards' 429 needs a cap far below the defaults: `tests/rate_limits.rs` covers it.)
async fn uploads_and_guards(t: Target) -> anyhow::Result<()> {
    use reqwest::multipart::{Form, Part};
    let g = guest(&t).await?;
    // Uploads and jobs are billable work: refused (402) until the grant has settled.
    wait_grant(&t, &g).await?;
    let (png, _) = Sketch::generate(13, 800, 600);
    // A plain field first: the file is the first part with a filename.
    let form = Form::new().text("note", "a sketch").part(
        "file",
        Part::bytes(png.clone())
            .file_name("form-sketch.png")
            .mime_str("image/png")?,
    );
    let created = send(
        t.post("/upload/direct")
            .bearer_auth(&g.token)
            .multipart(form),
    )
    .await?
    .expect(StatusCode::CREATED)?;
    assert_eq!(created["filename"], "form-sketch.png", "{created}");
    assert_eq!(created["content_type"], "image/png", "{created}");
    assert_eq!(created["size"].as_u64(), u64::try_from(png.len()).ok());
    assert_eq!(created["sha256"], sha256_hex(&png).as_str(), "{created}");
    let created_at = str_field(&created, "created_at")?;
    chrono::DateTime::parse_from_rfc3339(created_at)
        .map_err(|e| anyhow::anyhow!("created_at {created_at:?} is not RFC 3339: {e}"))?;
    str_field(&created, "url")?;
    let key = str_field(&created, "key")?.to_owned();

    // A form without a file part.
    let no_file = send(
        t.post("/upload/direct")
            .bearer_auth(&g.token)
            .multipart(Form::new().text("note", "no file here")),
    )
    .await?;
    assert_eq!(
        no_file.expect_error(StatusCode::BAD_REQUEST)?,
        "missing_file"
    );

    // The upload is a job input once its scan let it through.
    let meta = poll(
        "the upload scanned clean (or skipped)",
        Duration::from_secs(60),
        || async {
            let meta = send(t.get(&format!("/uploads/{key}")).bearer_auth(&g.token))
                .await?
                .expect(StatusCode::OK)?;
            match meta["scan"].as_str() {
                Some("clean" | "skipped") => Ok(Ok(meta)),
                Some("pending") => Ok(Err(meta.to_string())),
                _ => anyhow::bail!("the scan ended other than clean: {meta}"),
            }
        },
    )
    .await?;
    assert_eq!(
        meta["created_at"], created["created_at"],
        "the 201 and GET /uploads/{{key}} tell the same created_at"
    );
    let by_key = |key: &str| json!({"type": "sketch_to_app", "input": {"upload_key": key}});
    let job = send(t.post("/jobs").bearer_auth(&g.token).json(&by_key(&key)))
        .await?
        .expect(StatusCode::ACCEPTED)?;
    let id = str_field(&job, "id")?.to_owned();
    poll("the job succeeded", Duration::from_secs(120), || async {
        let job = send(t.get(&format!("/jobs/{id}")).bearer_auth(&g.token))
            .await?
            .expect(StatusCode::OK)?;
        match job["status"].as_str() {
            Some("succeeded") => Ok(Ok(())),
            Some("failed" | "dead" | "cancelled") => {
                anyhow::bail!(
                    "the job ended {} instead of succeeded: {job}",
                    job["status"]
                )
            }
            _ => Ok(Err(job.to_string())),
        }
    })
    .await?;

    // Another tenant's upload, and one that does not exist, are not found.
    let other = guest(&t).await?;
    let missing = format!("uploads/{}/{}", g.tenant_id, uuid::Uuid::new_v4());
    for (who, key) in [(&other, key.as_str()), (&g, missing.as_str())] {
        let refused = send(t.post("/jobs").bearer_auth(&who.token).json(&by_key(key))).await?;
        assert_eq!(
            refused.expect_error(StatusCode::NOT_FOUND)?,
            "upload_not_found",
            "{key}"
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------------------------

/// The native server, started for one scenario; killed (and its database dropped) on
/// [`Native::stop`] or drop.
struct Native {
    child: Child,
    target: Target,
    /// Holds the data directory (and, on PostgreSQL, the database) until the child is gone.
    _tdb: TestDb,
    /// The server's model provider.
    _fake: FakeProvider,
}

impl Native {
    async fn start(backend: Backend) -> anyhow::Result<Self> {
        let clamd =
            tokio::task::spawn_blocking(|| cognomega_testkit::clamd::clamd().tcp.to_string())
                .await?;
        let tdb = TestDb::new(backend).await?;
        let config = tdb.data_dir().join("acceptance.toml");
        std::fs::write(&config, NATIVE_CONFIG)?;
        let fake = FakeProvider::start().await?;
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_cognomega"));
        // Only what is set here configures the server.
        for (name, _) in std::env::vars_os() {
            let name_text = name.to_string_lossy();
            if ["COGNOMEGA_", "CF_", "GROQ_", "OPENAI_"]
                .iter()
                .any(|p| name_text.starts_with(p))
            {
                cmd.env_remove(name);
            }
        }
        // Both REST protocols, as on the edge stack (Workers AI first, the default order).
        cmd.env("CF_ACCOUNT_ID", "acceptance")
            .env("CF_API_TOKEN", "acceptance-token")
            .env("CF_AI_BASE_URL", fake.cfai_base())
            .env("OPENAI_API_KEY", "acceptance-key")
            .env("OPENAI_BASE_URL", fake.openai_base());
        cmd.args(["--log", "warn", "--data-dir"])
            .arg(tdb.data_dir())
            .arg("--config")
            .arg(&config);
        if backend == Backend::Postgres {
            cmd.args(["--database-url", tdb.url().expose()]);
        }
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-key",
            NATIVE_ADMIN_KEY,
            "--clamd",
            &clamd,
        ])
        .stdout(Stdio::null())
        .kill_on_drop(true);
        let (child, url) = cognomega_testkit::spawn_serve(cmd).await?;
        let mut target = Target::new(&url, NATIVE_ADMIN_KEY, format!("native {backend}"))?;
        target.database = Some(tdb.url().clone());
        Ok(Self {
            child,
            target,
            _tdb: tdb,
            _fake: fake,
        })
    }

    async fn stop(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }
}

/// `POST /admin/cleanup`: admin only, its query checked (400 `invalid_dry_run`,
/// `invalid_query`), a dry run reports every count, a real run with the default grace answers
/// the same shape. Counts are only checked for their type: scenarios running at the same time
/// change them, and the grace (an hour) keeps their fresh data out of reach.
async fn cleanup_reports(t: Target) -> anyhow::Result<()> {
    let code = send(t.post("/admin/cleanup?dry_run=true"))
        .await?
        .expect_error(StatusCode::UNAUTHORIZED)?;
    assert_eq!(code, "invalid_admin_key");
    for (query, expected) in [
        ("?dry_run=maybe", "invalid_dry_run"),
        ("?bogus=1", "invalid_query"),
        ("?grace_secs=soon", "invalid_grace"),
    ] {
        let code = send(t.admin(Method::POST, &format!("/admin/cleanup{query}")))
            .await?
            .expect_error(StatusCode::BAD_REQUEST)?;
        assert_eq!(code, expected, "{query}");
    }
    let check = |report: &Value, dry_run: bool| {
        assert_eq!(report["dry_run"], dry_run, "{report}");
        for field in ["acked", "dead", "dedup_keys"] {
            assert!(
                report["messages"][field].is_u64(),
                "messages.{field}: {report}"
            );
        }
        for field in ["guest_tenants", "orphaned_objects", "rows_missing_objects"] {
            assert!(report[field].is_u64(), "{field}: {report}");
        }
        assert_eq!(
            report.as_object().map(serde_json::Map::len),
            Some(5),
            "unexpected fields: {report}"
        );
    };
    let dry = send(t.admin(Method::POST, "/admin/cleanup?dry_run=true"))
        .await?
        .expect(StatusCode::OK)?;
    check(&dry, true);
    let real = send(t.admin(Method::POST, "/admin/cleanup?grace_secs=3600"))
        .await?
        .expect(StatusCode::OK)?;
    check(&real, false);
    Ok(())
}

/// Runs `scenario` against the deployment at [`URL_ENV`] when it is set, else against the
/// native server on every backend (at the same time).
async fn run<F, Fut>(scenario: F) -> anyhow::Result<()>
where
    F: Fn(Target) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    cognomega_testkit::init_tracing();
    if let Some(base) = std::env::var_os(URL_ENV) {
        let base = base
            .into_string()
            .map_err(|b| anyhow::anyhow!("{URL_ENV} is not UTF-8: {b:?}"))?;
        let key = std::env::var(ADMIN_KEY_ENV).map_err(|_| {
            anyhow::anyhow!("{URL_ENV} is set, so {ADMIN_KEY_ENV} must be too (its admin key)")
        })?;
        let mut target = Target::new(&base, &key, base.clone())?;
        if let Ok(url) = std::env::var(DATABASE_ENV) {
            target.database = Some(cognomega_stores::DatabaseUrl::parse(&url)?);
        }
        return scenario(target).await;
    }
    let on = |backend: Backend| {
        let scenario = &scenario;
        async move {
            let native = Native::start(backend).await?;
            let name = native.target.name.clone();
            let outcome = scenario(native.target.clone()).await;
            native.stop().await?;
            outcome.map_err(|e| e.context(format!("on the {name} server")))
        }
    };
    tokio::try_join!(on(Backend::Sqlite), on(Backend::Postgres))?;
    Ok(())
}

/// n. The voice service: the voices listed, a synthesis in wav and in mp3 whose
/// `X-Audio-Seconds` is the length of the audio sent, a transcription of it, bad input refused
/// precisely, and every answered request settled once as `audio_seconds`.
async fn voice_speaks_hears_and_bills_once(t: Target) -> anyhow::Result<()> {
    use cognomega_core::voice::AudioFormat;
    let g = guest(&t).await?;
    let grant = wait_grant(&t, &g).await?;
    let voices = send(t.get("/voice/voices").bearer_auth(&g.token))
        .await?
        .expect(StatusCode::OK)?;
    let listed = voices["providers"].as_array().cloned().unwrap_or_default();
    assert!(
        listed
            .iter()
            .any(|p| p["voices"].as_array().is_some_and(|v| !v.is_empty())),
        "{voices}"
    );

    let mut billed = 0;
    let mut spoken = Vec::new();
    for (format, ctype) in [("wav", "audio/wav"), ("mp3", "audio/mpeg")] {
        let answer = send(
            t.post("/voice/tts")
                .bearer_auth(&g.token)
                .json(&json!({"text": "Hello from the acceptance suite.", "format": format})),
        )
        .await?;
        anyhow::ensure!(answer.status == StatusCode::OK, "{format}: {answer:?}");
        assert_eq!(answer.header("content-type"), Some(ctype));
        assert!(answer.header("x-provider").is_some_and(|p| !p.is_empty()));
        let claimed: f64 = answer.header("x-audio-seconds").unwrap_or("").parse()?;
        let kind = AudioFormat::sniff(&answer.body)
            .ok_or_else(|| anyhow::anyhow!("{format}: not audio"))?;
        let measured =
            cognomega_core::audio::duration(&answer.body, kind).map_err(anyhow::Error::msg)?;
        assert!(
            (claimed - measured).abs() <= measured * 0.05 + 0.03,
            "{format}: X-Audio-Seconds {claimed} vs the audio's {measured}"
        );
        billed += claimed.ceil() as i64;
        spoken.push(answer.body.to_vec());
    }

    let wav = spoken[0].clone();
    let heard = send(
        t.post("/voice/stt?language=en")
            .bearer_auth(&g.token)
            .header("content-type", "audio/wav")
            .body(wav.clone()),
    )
    .await?
    .expect(StatusCode::OK)?;
    for field in ["text", "segments", "language", "audio_seconds", "provider"] {
        assert!(!heard[field].is_null(), "{field}: {heard}");
    }
    let seconds = heard["audio_seconds"].as_f64().unwrap_or(0.0);
    let wav_seconds = cognomega_core::voice::wav_info(&wav)
        .map_err(anyhow::Error::msg)?
        .seconds;
    assert!((seconds - wav_seconds).abs() < 0.01, "{heard}");
    billed += seconds.ceil() as i64;

    // Refused precisely, before any provider is asked, and never billed.
    let code = send(
        t.post("/voice/tts")
            .bearer_auth(&g.token)
            .json(&json!({"text": "   "})),
    )
    .await?
    .expect_error(StatusCode::BAD_REQUEST)?;
    assert_eq!(code, "empty_text");
    let code = send(
        t.post("/voice/stt")
            .bearer_auth(&g.token)
            .body("this is not audio"),
    )
    .await?
    .expect_error(StatusCode::UNSUPPORTED_MEDIA_TYPE)?;
    assert_eq!(code, "unsupported_format");
    let code = send(
        t.post("/voice/stt")
            .bearer_auth(&g.token)
            .body(wav[..wav.len() / 2].to_vec()),
    )
    .await?
    .expect_error(StatusCode::BAD_REQUEST)?;
    assert_eq!(code, "invalid_audio");
    let code = send(t.post("/voice/tts").json(&json!({"text": "hi"})))
        .await?
        .expect_error(StatusCode::UNAUTHORIZED)?;
    assert!(!code.is_empty());
    let code = send(t.get("/voice/tts").bearer_auth(&g.token))
        .await?
        .expect_error(StatusCode::METHOD_NOT_ALLOWED)?;
    assert_eq!(code, "method_not_allowed");

    // Three answers, each settled once as its rounded-up seconds.
    audio_settled(&t, &g, 3, Some((billed, grant))).await
}

/// Polls the guest's `audio_seconds` usage until it counts `events` events and, when given
/// `(quantity, grant)`, that many seconds with the balance below the grant.
async fn audio_settled(
    t: &Target,
    g: &Guest,
    events: i64,
    billed: Option<(i64, i64)>,
) -> anyhow::Result<()> {
    poll(
        "the audio usage settled",
        Duration::from_secs(90),
        || async {
            let usage = send(t.get("/usage").bearer_auth(&g.token))
                .await?
                .expect(StatusCode::OK)?;
            let audio = &usage["totals"]["audio_seconds"];
            let done = audio["events"] == events
                && match billed {
                    None => true,
                    Some((quantity, grant)) => {
                        audio["quantity"] == quantity && balance(t, g).await? < grant
                    }
                };
            Ok(if done { Ok(()) } else { Err(usage.to_string()) })
        },
    )
    .await
}

/// o. A realtime voice session (`GET /voice/sessions`, a WebSocket): admitted with the token as
/// a subprotocol (a bad one refused 401, a plain GET 426), speech streamed as 16 kHz PCM frames
/// of at most 100 ms whose length is what `spoken` says, in order and whole to a client that
/// stops reading for two seconds, what the client sends back transcribed
/// on `flush`, a frame that is not the protocol closed with 4400 and a text over the tier's cap
/// with 4413, and the session's audio settled once after the client hangs up without a word.
async fn voice_session_streams_and_settles_once(t: Target) -> anyhow::Result<()> {
    use cognomega_core::voice::session::{BYTES_PER_SECOND, FRAME_BYTES, SAMPLE_RATE};
    use futures::SinkExt as _;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    use tokio_tungstenite::tungstenite::{Error as WsError, Message};
    let g = guest(&t).await?;
    let grant = wait_grant(&t, &g).await?;
    let code = send(t.get("/voice/sessions").bearer_auth(&g.token))
        .await?
        .expect_error(StatusCode::UPGRADE_REQUIRED)?;
    assert_eq!(code, "websocket_required");

    let url = format!("{}/voice/sessions", t.base.replacen("http", "ws", 1));
    let request = |protocols: &str| -> anyhow::Result<_> {
        let mut req = url.as_str().into_client_request()?;
        req.headers_mut()
            .insert("sec-websocket-protocol", protocols.parse()?);
        Ok(req)
    };
    match tokio_tungstenite::connect_async(request("cognomega, bearer.not-a-token")?).await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status().as_u16(), 401),
        other => anyhow::bail!("a bad token was let in: {:?}", other.map(|_| ())),
    }
    let offer = format!("cognomega, bearer.{}", g.token);
    let (mut ws, resp) = tokio_tungstenite::connect_async(request(&offer)?).await?;
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.as_bytes()),
        Some(&b"cognomega"[..])
    );
    let (_, ready) = next_json(&mut ws).await?;
    assert_eq!(ready["type"], "ready", "{ready}");
    assert_eq!(ready["format"], "pcm_s16le");
    assert_eq!(ready["sample_rate"], SAMPLE_RATE);
    assert!(ready["session_id"].as_str().is_some_and(|s| !s.is_empty()));

    // A reader that stops for two seconds (the server pauses or paces, and loses nothing).
    let text = json!({"type": "text", "text": "Hello from the session. It speaks in order."});
    ws.send(Message::Text(text.to_string().into())).await?;
    sleep(Duration::from_secs(2)).await;
    let (frames, spoken) = next_json(&mut ws).await?;
    assert_eq!(spoken["type"], "spoken", "{spoken}");
    assert!(!frames.is_empty());
    for f in &frames {
        assert!(
            f.len() <= FRAME_BYTES && f.len() % 2 == 0,
            "a frame of {} bytes",
            f.len()
        );
    }
    let pcm = frames.concat();
    let seconds = pcm.len() as f64 / BYTES_PER_SECOND as f64;
    assert!(seconds > 0.5, "{seconds} s of speech");
    let said = spoken["seconds"].as_f64().unwrap_or(0.0);
    assert!(
        (said - seconds).abs() < 0.01,
        "spoken {said} s, received {seconds} s"
    );
    let first_sentence = pcm.clone();

    for chunk in pcm.chunks(BYTES_PER_SECOND) {
        ws.send(Message::Binary(chunk.to_vec().into())).await?;
    }
    ws.send(Message::Text(json!({"type": "flush"}).to_string().into()))
        .await?;
    let (_, heard) = next_json(&mut ws).await?;
    assert_eq!(heard["type"], "transcript", "{heard}");
    let heard_seconds = heard["seconds"].as_f64().unwrap_or(0.0);
    assert!((heard_seconds - seconds).abs() < 0.01, "{heard}");
    let total_ms = (spoken["audio_seconds"].as_f64().unwrap_or(0.0) * 1000.0).round()
        + (heard_seconds * 1000.0).round();
    let billed = (total_ms / 1000.0).ceil() as i64;
    // Hung up without a close frame: the session settles all the same.
    drop(ws);

    // Not the protocol: 4400; over the tier's characters per text (a guest's 1,000): 4413.
    // The reason names it, and nothing is billed for either.
    let too_long = json!({"type": "text", "text": "a".repeat(1_001)}).to_string();
    for (frame, code, reason) in [
        ("hello".to_owned(), 4400, "invalid_message"),
        (too_long, 4413, "text_too_long"),
    ] {
        let (mut other, _) = tokio_tungstenite::connect_async(request(&offer)?).await?;
        next_json(&mut other).await?;
        other.send(Message::Text(frame.into())).await?;
        let closed = close_frame(&mut other).await?;
        assert_eq!(closed.0, code, "{closed:?}");
        assert!(closed.1.starts_with(reason), "{closed:?}");
    }

    audio_settled(&t, &g, 1, Some((billed, grant))).await?;

    // In order: the stream starts with the first sentence's speech, sample for sample what a
    // synthesis of that sentence alone at 16 kHz answers.
    let alone = send(t.post("/voice/tts").bearer_auth(&g.token).json(
        &json!({"text": "Hello from the session.", "format": "wav", "sample_rate": SAMPLE_RATE}),
    ))
    .await?;
    assert_eq!(alone.status, StatusCode::OK, "{}", alone.what);
    let alone = cognomega_core::voice::session::pcm_of_wav(&alone.body)
        .map_err(anyhow::Error::msg)?
        .to_vec();
    assert!(first_sentence.len() > alone.len());
    assert!(
        first_sentence[..alone.len()] == alone[..],
        "the stream does not start with the first sentence"
    );
    Ok(())
}

/// p. A text sent with `Prefer: respond-async` renders as a `tts_render` job (202, the ordinary
/// jobs API): it succeeds with `speech.wav` at the rate asked and `render.json` whose
/// `audio_seconds` is that audio's length, its progress reaches 1, and it is billed once as
/// those seconds (`credits_charged`, the usage's `audio_seconds`).
async fn tts_renders_as_a_job(t: Target) -> anyhow::Result<()> {
    let g = guest(&t).await?;
    let grant = wait_grant(&t, &g).await?;
    let text = "A text rendered by a job. It is spoken in chunks. Then it is billed once.";
    let answer = send(
        t.post("/voice/tts")
            .bearer_auth(&g.token)
            .header("prefer", "respond-async")
            .json(&json!({"text": text, "format": "wav", "sample_rate": 16_000})),
    )
    .await?;
    let queued = answer.expect(StatusCode::ACCEPTED)?;
    assert_eq!(queued["status"], "queued", "{queued}");
    let id = str_field(&queued, "id")?.to_owned();
    assert!(
        answer.header("location").is_some_and(|l| l.ends_with(&id)),
        "Location: {:?}",
        answer.header("location")
    );
    let done = final_job(&t, &g, &id).await?;
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["progress"].as_f64(), Some(1.0), "{done}");
    let get = |name: &str| {
        t.get(&format!("/jobs/{id}/artifacts/{name}"))
            .bearer_auth(&g.token)
    };
    let wav = send(get("speech.wav")).await?;
    assert_eq!(wav.status, StatusCode::OK, "{}", wav.what);
    let info = cognomega_core::voice::wav_info(&wav.body).map_err(anyhow::Error::msg)?;
    assert_eq!((info.sample_rate, info.channels), (16_000, 1));
    let report = send(get("render.json")).await?.expect(StatusCode::OK)?;
    let seconds = report["audio_seconds"].as_f64().unwrap_or(0.0);
    assert!(
        (seconds - info.seconds).abs() < 0.01,
        "{report} vs {} s",
        info.seconds
    );
    assert_eq!(report["format"], "wav", "{report}");
    assert_eq!(report["sample_rate"], 16_000, "{report}");
    let billed = seconds.ceil() as i64;
    audio_settled(&t, &g, 1, Some((billed, grant))).await?;
    let charged = done["credits_charged"].as_i64().unwrap_or(0);
    let settled = settled_balance(&t, &g, grant).await?;
    assert_eq!(grant - settled, charged, "billed once, as the job says");
    Ok(())
}

/// q. A voice session whose host died (its row open, its heart stopped: natively a killed
/// process, on the edge an evicted Durable Object) is settled by the sweep — natively the
/// server's own, on the edge the relay cron (`POST /admin/outbox/relay` runs it) — once, as the
/// audio it had recorded, however often the sweep runs.
async fn stale_voice_session_settles_once(t: Target) -> anyhow::Result<()> {
    use cognomega_core::sql::Executor as _;
    let url = t.database.clone().ok_or_else(|| {
        anyhow::anyhow!("this scenario plays a host dying mid-session: set {DATABASE_ENV}")
    })?;
    let g = guest(&t).await?;
    let grant = wait_grant(&t, &g).await?;
    let mut db = cognomega_stores::Database::connect(&url).await?;
    let id = uuid::Uuid::now_v7().to_string();
    let ten_minutes_ago = chrono::Utc::now().timestamp_millis() - 600_000;
    db.execute(
        cognomega_core::voice::session::OPEN,
        &[
            id.as_str().into(),
            g.tenant_id.as_str().into(),
            ten_minutes_ago.into(),
        ],
    )
    .await?;
    db.execute(
        "UPDATE voice_sessions SET audio_ms = $2 WHERE id = $1",
        &[id.as_str().into(), 2_500i64.into()],
    )
    .await?;
    let sweep = || async {
        // The edge's sweep runs with the relay; the native server sweeps on its own (404 here).
        send(t.admin(Method::POST, "/admin/outbox/relay"))
            .await
            .map(|_| ())
    };
    poll(
        "the stale session settled",
        Duration::from_secs(90),
        || async {
            sweep().await?;
            let usage = send(t.get("/usage").bearer_auth(&g.token))
                .await?
                .expect(StatusCode::OK)?;
            let audio = &usage["totals"]["audio_seconds"];
            Ok(if audio["events"] == 1 && audio["quantity"] == 3 {
                Ok(())
            } else {
                Err(usage.to_string())
            })
        },
    )
    .await?;
    let closed = db
        .query_opt(
            "SELECT COUNT(*) FROM voice_sessions WHERE id = $1 AND closed_at IS NOT NULL",
            &[id.as_str().into()],
        )
        .await?
        .map(|r| r.int(0))
        .transpose()?;
    assert_eq!(closed, Some(1), "the session row is closed");
    // Swept again: nothing more to bill.
    sweep().await?;
    sleep(Duration::from_secs(3)).await;
    let usage = send(t.get("/usage").bearer_auth(&g.token))
        .await?
        .expect(StatusCode::OK)?;
    assert_eq!(usage["totals"]["audio_seconds"]["events"], 1, "{usage}");
    let settled = settled_balance(&t, &g, grant).await?;
    assert!(settled < grant, "the session's credits were charged");
    Ok(())
}

/// r. A client that floods a speaking session with audio is bounded, never buffered without
/// limit: natively TCP backpressure pauses it and the audio it sent is over what one flush may
/// hold (4413 `audio_too_long`); on the edge, which has no transport backpressure, the session
/// holds at most 16 MiB unread (4413 `too_much_unread`). Either way the speech it got is billed
/// once.
async fn voice_session_flood_is_bounded(t: Target) -> anyhow::Result<()> {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    use tokio_tungstenite::tungstenite::Message;
    let g = guest(&t).await?;
    wait_grant(&t, &g).await?;
    let mut req = format!("{}/voice/sessions", t.base.replacen("http", "ws", 1))
        .as_str()
        .into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {}", g.token).parse()?);
    let (ws, _) = tokio_tungstenite::connect_async(req).await?;
    let (mut sink, mut stream) = ws.split();
    let text = "This sentence is spoken while the client floods the session. ".repeat(12);
    sink.send(Message::Text(
        json!({"type": "text", "text": text}).to_string().into(),
    ))
    .await?;
    // 48 frames of 512 KiB (24 MiB), sent as fast as the server takes them.
    let flood = tokio::spawn(async move {
        for _ in 0..48 {
            if sink
                .send(Message::Binary(vec![0u8; 512 * 1024].into()))
                .await
                .is_err()
            {
                break;
            }
        }
        sink
    });
    let closed = close_frame(&mut stream).await?;
    flood.abort();
    assert_eq!(closed.0, 4413, "{closed:?}");
    assert!(
        closed.1.starts_with("audio_too_long") || closed.1.starts_with("too_much_unread"),
        "{closed:?}"
    );
    audio_settled(&t, &g, 1, None).await
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        mod scenarios {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::run(super::$name).await
                }
            )*
        }
    };
}

scenarios!(
    guest_token_and_jwks,
    usage_duplicates_settle_once,
    sketch_to_app_job,
    upload_lands,
    poison_reaches_dlq,
    rate_limited,
    usage_exported,
    ask_billed_once,
    uploads_and_guards,
    operator_surface,
    cleanup_reports,
    every_job_type_runs,
    failed_sends_are_delivered_later_once,
    job_progress_and_cancel,
    voice_speaks_hears_and_bills_once,
    voice_session_streams_and_settles_once,
    tts_renders_as_a_job,
    stale_voice_session_settles_once,
    voice_session_flood_is_bounded,
);
