//! `POST /api/si/ask` against fake providers that are real HTTP servers on loopback speaking
//! the OpenAI and Workers AI protocols: routing and fallback, no fallback on 4xx, circuit
//! breaking, streaming (including a client hanging up mid-stream), cost levers, and exact
//! balances after many concurrent asks.

use std::time::Duration;

use cognomega_core::ai::ProviderId;
use cognomega_producers::ApiConfig;
use cognomega_providers::fake::{Behaviour, FakeProvider};
use cognomega_providers::{ProviderSettings, ProvidersConfig};
use cognomega_testkit::{both_backends, wait_for, Backend, Guest, TestApp};
use futures::StreamExt as _;
use reqwest::StatusCode;
use serde_json::{json, Value};

both_backends!(
    answers_and_settles_once,
    falls_back_on_500_timeout_and_429_but_not_400,
    circuit_opens_after_repeated_failures,
    streams_and_bills_a_cut_stream_once,
    cost_levers_are_enforced,
    balances_exact_after_1000_concurrent_asks,
    idempotency_key_replays_the_first_answer_billed_once,
    a_new_guest_asks_at_once
);

fn provider(id: ProviderId, fake: &FakeProvider) -> ProviderSettings {
    ProviderSettings {
        id,
        base_url: match id {
            ProviderId::Cfai => fake.cfai_base(),
            ProviderId::Groq | ProviderId::Openai => fake.openai_base(),
        },
        api_key: format!("key-{id}"),
        account_id: (id == ProviderId::Cfai).then(|| "acct-1".to_owned()),
    }
}

fn providers(list: &[(ProviderId, &FakeProvider)]) -> ProvidersConfig {
    ProvidersConfig {
        providers: list.iter().map(|(id, f)| provider(*id, f)).collect(),
        timeout: Duration::from_secs(2),
        breaker_threshold: 2,
        breaker_cooldown: Duration::from_secs(60),
        ..ProvidersConfig::default()
    }
}

async fn spawn(
    backend: Backend,
    edit: impl FnOnce(&mut ApiConfig) + Send + 'static,
) -> anyhow::Result<TestApp> {
    TestApp::spawn_custom(backend, true, None, edit).await
}

async fn ask(app: &TestApp, guest: &Guest, body: Value) -> anyhow::Result<reqwest::Response> {
    Ok(app
        .client
        .post(app.url("/api/si/ask"))
        .bearer_auth(&guest.token)
        .json(&body)
        .send()
        .await?)
}

fn header(resp: &reqwest::Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Usage events recorded for the tenant, by kind: (events, quantity).
async fn token_usage(app: &TestApp, guest: &Guest) -> anyhow::Result<(i64, i64)> {
    let resp = app
        .client
        .get(app.url("/usage"))
        .bearer_auth(&guest.token)
        .send()
        .await?;
    let body: Value = resp.json().await?;
    let events = body["totals"]["tokens_in"]["events"].as_i64().unwrap_or(0)
        + body["totals"]["tokens_out"]["events"].as_i64().unwrap_or(0);
    let quantity = body["totals"]["tokens_in"]["quantity"]
        .as_i64()
        .unwrap_or(0)
        + body["totals"]["tokens_out"]["quantity"]
            .as_i64()
            .unwrap_or(0);
    Ok((events, quantity))
}

async fn drained(app: &TestApp) -> anyhow::Result<()> {
    app.wait_idle(Duration::from_secs(60)).await
}

async fn answers_and_settles_once(backend: Backend) -> anyhow::Result<()> {
    let fake = FakeProvider::start().await?;
    let cfg = providers(&[(ProviderId::Openai, &fake)]);
    let app = spawn(backend, move |api| api.providers = cfg).await?;
    let guest = app.guest().await?;
    drained(&app).await?;
    let before = app.balance(&guest).await?;

    // Bad bodies never reach a provider.
    for bad in [
        json!({}),
        json!({"prompt": ""}),
        json!({"messages": [{"role": "x", "content": "y"}]}),
    ] {
        let resp = ask(&app, &guest, bad).await?;
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
        let body: Value = resp.json().await?;
        assert_eq!(body["error"]["code"], "invalid_body");
    }
    assert!(fake.calls().is_empty());

    let resp = app
        .client
        .post(app.url("/api/si/ask"))
        .bearer_auth(&guest.token)
        .header("X-Request-Id", "ask-retry-1")
        .json(&json!({"prompt": "say hello to the test suite"}))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "x-provider"), "openai");
    assert_eq!(header(&resp, "x-model"), "gpt-4o-mini");
    let tokens_in: i64 = header(&resp, "x-tokens-in").parse()?;
    let tokens_out: i64 = header(&resp, "x-tokens-out").parse()?;
    let credits: i64 = header(&resp, "x-credits-used").parse()?;
    let balance_header: i64 = header(&resp, "x-credits-balance").parse()?;
    // Where the handler spent the time, stage by stage, in milliseconds.
    let timing = header(&resp, "server-timing");
    let stages: Vec<&str> = timing
        .split(", ")
        .map(|e| e.split(";dur=").next().unwrap_or(""))
        .collect();
    assert_eq!(stages, ["standing", "provider", "bill"], "{timing}");
    for entry in timing.split(", ") {
        let ms: f64 = entry.split(";dur=").nth(1).unwrap_or("").parse()?;
        assert!(ms >= 0.0, "{timing}");
    }
    let body: Value = resp.json().await?;
    assert_eq!(body["output"], "hello from the fake provider");
    assert_eq!(body["usage"]["tokens_in"], tokens_in);
    assert_eq!(body["usage"]["tokens_out"], 5);
    assert_eq!(body["usage"]["estimated"], false);
    assert_eq!(body["credits_used"], credits);
    assert_eq!(tokens_out, 5);
    assert!(credits > 0);
    assert_eq!(balance_header, before - credits);
    let calls = fake.calls();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].authorization.as_deref(), Some("Bearer key-openai"));

    // The same request again with the same X-Request-Id: a request id traces, it does not
    // bill. Without an Idempotency-Key the request is asked and billed again.
    let again = app
        .client
        .post(app.url("/api/si/ask"))
        .bearer_auth(&guest.token)
        .header("X-Request-Id", "ask-retry-1")
        .json(&json!({"prompt": "say hello to the test suite"}))
        .send()
        .await?;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(header(&again, "idempotent-replayed"), "");
    assert_eq!(fake.calls().len(), 2, "asked again");
    drained(&app).await?;
    assert_eq!(
        token_usage(&app, &guest).await?,
        (4, 2 * (tokens_in + tokens_out))
    );
    assert_eq!(app.balance(&guest).await?, before - 2 * credits);

    // A provider that reports no usage: counted with the tokenizer and marked estimated.
    fake.set(Behaviour::Answer {
        text: "no usage here".into(),
        usage: false,
        chunk_delay: Duration::ZERO,
    });
    let resp = ask(&app, &guest, json!({"prompt": "count me"})).await?;
    let body: Value = resp.json().await?;
    assert_eq!(body["usage"]["estimated"], true);
    assert_eq!(body["usage"]["tokens_out"], 3);
    app.stop().await
}

async fn falls_back_on_500_timeout_and_429_but_not_400(backend: Backend) -> anyhow::Result<()> {
    let first = FakeProvider::start().await?;
    let second = FakeProvider::start().await?;
    let cfg = providers(&[(ProviderId::Cfai, &first), (ProviderId::Groq, &second)]);
    let app = spawn(backend, move |api| {
        api.providers = ProvidersConfig {
            breaker_threshold: 100,
            ..cfg
        };
    })
    .await?;
    let guest = app.guest().await?;
    drained(&app).await?;

    // Healthy first provider: Workers AI answers.
    let resp = ask(&app, &guest, json!({"prompt": "hi"})).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "x-provider"), "cfai");
    assert_eq!(header(&resp, "x-model"), "@cf/meta/llama-3.1-8b-instruct");
    assert_eq!(first.calls()[0].model, "@cf/meta/llama-3.1-8b-instruct");

    for behaviour in [
        Behaviour::Status(500),
        Behaviour::Status(503),
        Behaviour::Status(429),
        Behaviour::Hang(Duration::from_secs(5)),
    ] {
        first.set(behaviour.clone());
        let resp = ask(&app, &guest, json!({"prompt": "hi"})).await?;
        assert_eq!(resp.status(), StatusCode::OK, "{behaviour:?}");
        assert_eq!(header(&resp, "x-provider"), "groq", "{behaviour:?}");
        assert_eq!(header(&resp, "x-model"), "llama-3.1-8b-instant");
    }

    // 400 from the first provider: the request is wrong; the second is not tried.
    first.set(Behaviour::Status(400));
    let second_calls = second.calls().len();
    let resp = ask(&app, &guest, json!({"prompt": "hi"})).await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let body: Value = resp.json().await?;
    assert_eq!(body["error"]["code"], "provider_rejected");
    assert!(body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .contains("cfai"));
    assert_eq!(second.calls().len(), second_calls);

    // Everything down: 502 naming each provider's failure.
    first.set(Behaviour::Status(500));
    second.set(Behaviour::Status(502));
    let resp = ask(&app, &guest, json!({"prompt": "hi"})).await?;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    let body: Value = resp.json().await?;
    assert_eq!(body["error"]["code"], "all_providers_failed");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("cfai: HTTP 500") && message.contains("groq: HTTP 502"),
        "{message}"
    );

    // No provider at all: 503.
    let bare = spawn(backend, |_| {}).await?;
    let g = bare.guest().await?;
    let resp = ask(&bare, &g, json!({"prompt": "hi"})).await?;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = resp.json().await?;
    assert_eq!(body["error"]["code"], "no_provider_configured");
    bare.stop().await?;
    app.stop().await
}

async fn circuit_opens_after_repeated_failures(backend: Backend) -> anyhow::Result<()> {
    let first = FakeProvider::start().await?;
    let second = FakeProvider::start().await?;
    let cfg = providers(&[(ProviderId::Groq, &first), (ProviderId::Openai, &second)]);
    let app = spawn(backend, move |api| api.providers = cfg).await?;
    let guest = app.guest().await?;
    drained(&app).await?;
    first.set(Behaviour::Status(500));
    for _ in 0..2 {
        let resp = ask(&app, &guest, json!({"prompt": "hi"})).await?;
        assert_eq!(header(&resp, "x-provider"), "openai");
    }
    assert_eq!(first.calls().len(), 2);
    // Open now (threshold 2): skipped without a call.
    for _ in 0..3 {
        let resp = ask(&app, &guest, json!({"prompt": "hi"})).await?;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, "x-provider"), "openai");
    }
    assert_eq!(
        first.calls().len(),
        2,
        "an open circuit still called the provider"
    );
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("cognomega_ai_errors_total{provider=\"groq\",model=\"llama-3.1-8b-instant\",kind=\"circuit_open\"} 3"),
        "{metrics}"
    );
    assert!(metrics.contains("cognomega_ai_fallbacks_total{provider=\"openai\"} 5"));
    app.stop().await
}

/// Reads SSE events (`event`, `data`) from a response until `stop` says so.
async fn read_events(
    resp: reqwest::Response,
    mut stop: impl FnMut(&[(String, Value)]) -> bool,
) -> anyhow::Result<Vec<(String, Value)>> {
    let mut bytes = resp.bytes_stream();
    let mut buf = String::new();
    let mut events = Vec::new();
    while let Some(chunk) = bytes.next().await {
        buf.push_str(&String::from_utf8_lossy(&chunk?));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let mut name = "message".to_owned();
            let mut data = String::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push_str(v.trim_start());
                }
            }
            if !data.is_empty() {
                events.push((name, serde_json::from_str(&data)?));
            }
            if stop(&events) {
                return Ok(events);
            }
        }
    }
    Ok(events)
}

async fn streams_and_bills_a_cut_stream_once(backend: Backend) -> anyhow::Result<()> {
    let fake = FakeProvider::start().await?;
    let cfg = providers(&[(ProviderId::Openai, &fake)]);
    let app = spawn(backend, move |api| api.providers = cfg).await?;
    let guest = app.guest().await?;
    drained(&app).await?;
    let before = app.balance(&guest).await?;

    // A whole stream: tokens as they come, then `done` with the provider's usage.
    let resp = ask(
        &app,
        &guest,
        json!({"prompt": "stream please", "stream": true}),
    )
    .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(header(&resp, "content-type").starts_with("text/event-stream"));
    assert_eq!(header(&resp, "x-provider"), "openai");
    let events = read_events(resp, |_| false).await?;
    let text: String = events
        .iter()
        .filter(|(n, _)| n == "token")
        .filter_map(|(_, v)| v["text"].as_str())
        .collect();
    assert_eq!(text, "hello from the fake provider");
    let (name, done) = events.last().cloned().unwrap_or_default();
    assert_eq!(name, "done");
    assert_eq!(done["finish"], "stop");
    assert_eq!(done["usage"]["estimated"], false);
    assert_eq!(done["usage"]["tokens_out"], 5);
    let first_credits = done["credits_used"].as_i64().unwrap_or(-1);
    assert!(first_credits > 0);

    // A slow stream the client abandons after two tokens: still billed, exactly once.
    let long: Vec<String> = (0..200).map(|i| format!("w{i}")).collect();
    fake.set(Behaviour::Answer {
        text: long.join(" "),
        usage: true,
        chunk_delay: Duration::from_millis(20),
    });
    let resp = app
        .client
        .post(app.url("/api/si/ask"))
        .bearer_auth(&guest.token)
        .header("X-Request-Id", "cut-stream-1")
        .json(&json!({"prompt": "a long answer", "stream": true}))
        .send()
        .await?;
    let got = read_events(resp, |e| {
        e.iter().filter(|(n, _)| n == "token").count() >= 2
    })
    .await?;
    assert_eq!(got.len(), 2);
    // The response (and its connection) is dropped here: the client hung up.
    let (events, quantity) = wait_for(Duration::from_secs(30), || async {
        drained(&app).await?;
        let usage = token_usage(&app, &guest).await?;
        Ok((usage.0 >= 4).then_some(usage))
    })
    .await?;
    assert_eq!(events, 4, "one tokens_in and one tokens_out event per ask");
    tokio::time::sleep(Duration::from_millis(500)).await;
    drained(&app).await?;
    assert_eq!(token_usage(&app, &guest).await?, (events, quantity));
    let after = app.balance(&guest).await?;
    let cut_credits = before - first_credits - after;
    assert!(cut_credits > 0, "the cut stream was not billed");
    // It was cut early: far fewer output tokens than the 200 words it would have sent.
    let resp = app
        .client
        .get(app.url("/usage"))
        .bearer_auth(&guest.token)
        .send()
        .await?;
    let body: Value = resp.json().await?;
    let out = body["totals"]["tokens_out"]["quantity"]
        .as_i64()
        .unwrap_or(0);
    assert!(out > 5 && out < 5 + 150, "tokens_out {out}");
    app.stop().await
}

async fn cost_levers_are_enforced(backend: Backend) -> anyhow::Result<()> {
    let fake = FakeProvider::start().await?;
    let cfg = providers(&[(ProviderId::Openai, &fake)]);
    let app = spawn(backend, move |api| {
        api.providers = cfg;
        api.ask.guest.daily_tokens = Some(20);
    })
    .await?;
    let guest = app.guest().await?;
    drained(&app).await?;

    // Guests: max_tokens capped at the tier's cap.
    let resp = ask(&app, &guest, json!({"prompt": "hi", "max_tokens": 100000})).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(fake.calls()[0].max_tokens, Some(1024));

    // Heavy intents and models: 403 before any provider call.
    let calls = fake.calls().len();
    let resp = ask(
        &app,
        &guest,
        json!({"prompt": "hi", "intent": "image_generation"}),
    )
    .await?;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        resp.json::<Value>().await?["error"]["code"],
        "intent_denied"
    );
    let resp = ask(&app, &guest, json!({"prompt": "hi", "model": "gpt-4o"})).await?;
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    assert_eq!(resp.json::<Value>().await?["error"]["code"], "model_denied");
    assert_eq!(fake.calls().len(), calls);

    // The daily budget (20 tokens): once used up, 429 with Retry-After.
    let long = "a long prompt that uses up the tiny daily budget of twenty tokens quickly";
    let resp = ask(&app, &guest, json!({"prompt": long})).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    drained(&app).await?;
    let resp = ask(&app, &guest, json!({"prompt": "one more"})).await?;
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry: u64 = header(&resp, "retry-after").parse()?;
    assert!((1..=86_400).contains(&retry));
    assert_eq!(
        resp.json::<Value>().await?["error"]["code"],
        "token_budget_exceeded"
    );

    // Out of credits: 402 before any provider is called.
    let broke = spawn(backend, {
        let cfg = providers(&[(ProviderId::Openai, &fake)]);
        move |api| {
            api.providers = cfg;
            api.billing.guest_grant = 0;
        }
    })
    .await?;
    let poor = broke.guest().await?;
    let calls = fake.calls().len();
    let resp = ask(&broke, &poor, json!({"prompt": "hi"})).await?;
    assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    assert_eq!(fake.calls().len(), calls);
    broke.stop().await?;
    app.stop().await
}

async fn balances_exact_after_1000_concurrent_asks(backend: Backend) -> anyhow::Result<()> {
    let fake = FakeProvider::start().await?;
    let cfg = providers(&[(ProviderId::Openai, &fake)]);
    let app = spawn(backend, move |api| {
        api.providers = cfg;
        api.billing.guest_grant = 1_000_000;
    })
    .await?;
    let mut guests = Vec::new();
    for _ in 0..10 {
        guests.push(app.guest().await?);
    }
    drained(&app).await?;
    let results: Vec<anyhow::Result<(usize, i64)>> = futures::stream::iter(0..1000)
        .map(|i| {
            let app = &app;
            let guests = &guests;
            async move {
                let g = i % guests.len();
                let prompt = "x".repeat(1 + (i * 7) % 50);
                let resp = ask(app, &guests[g], json!({"prompt": prompt})).await?;
                anyhow::ensure!(
                    resp.status() == StatusCode::OK,
                    "ask {i}: {}",
                    resp.status()
                );
                let body: Value = resp.json().await?;
                Ok((g, body["credits_used"].as_i64().unwrap_or(0)))
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let mut charged = vec![0_i64; guests.len()];
    for r in results {
        let (g, c) = r?;
        charged[g] += c;
    }
    drained(&app).await?;
    for (g, guest) in guests.iter().enumerate() {
        assert!(charged[g] > 0);
        assert_eq!(
            app.balance(guest).await?,
            1_000_000 - charged[g],
            "guest {g}"
        );
        assert_eq!(token_usage(&app, guest).await?.0, 200, "two events per ask");
    }
    app.stop().await
}

/// The headers that describe an answer (who answered, what it cost).
fn answer_headers(resp: &reqwest::Response) -> Vec<String> {
    [
        "x-provider",
        "x-model",
        "x-tokens-in",
        "x-tokens-out",
        "x-credits-used",
    ]
    .iter()
    .map(|h| header(resp, h))
    .collect()
}

async fn ask_with_key(
    app: &TestApp,
    guest: &Guest,
    key: &str,
    body: &Value,
) -> anyhow::Result<reqwest::Response> {
    Ok(app
        .client
        .post(app.url("/api/si/ask"))
        .bearer_auth(&guest.token)
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await?)
}

/// A retried ask (same Idempotency-Key, same body) is replayed, not re-asked: the provider is
/// called once and the answer billed once, however many retries, sequential or concurrent,
/// JSON or streamed. The same key with another body ⇒ 409; a refused ask releases its key.
async fn idempotency_key_replays_the_first_answer_billed_once(
    backend: Backend,
) -> anyhow::Result<()> {
    let fake = FakeProvider::start().await?;
    let cfg = providers(&[(ProviderId::Openai, &fake)]);
    let app = spawn(backend, move |api| api.providers = cfg).await?;
    let guest = app.guest().await?;
    drained(&app).await?;
    let before = app.balance(&guest).await?;
    let body = json!({"prompt": "an expensive question"});

    let first = ask_with_key(&app, &guest, "retry-me", &body).await?;
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(header(&first, "idempotent-replayed"), "");
    let credits: i64 = header(&first, "x-credits-used").parse()?;
    let first_headers = answer_headers(&first);
    let first_body = first.text().await?;
    for _ in 0..19 {
        let again = ask_with_key(&app, &guest, "retry-me", &body).await?;
        assert_eq!(again.status(), StatusCode::OK);
        assert_eq!(header(&again, "idempotent-replayed"), "true");
        assert_eq!(header(&again, "content-type"), "application/json");
        assert_eq!(answer_headers(&again), first_headers);
        assert_eq!(again.text().await?, first_body);
    }
    assert_eq!(fake.calls().len(), 1, "one provider call for 20 requests");

    // The same key with another body is a client error, and asks nothing.
    let other = ask_with_key(
        &app,
        &guest,
        "retry-me",
        &json!({"prompt": "something else"}),
    )
    .await?;
    assert_eq!(other.status(), StatusCode::CONFLICT);
    assert_eq!(
        other.json::<Value>().await?["error"]["code"],
        "idempotency_key_reused"
    );
    // A malformed key is refused before anything happens.
    let bad = ask_with_key(&app, &guest, &"k".repeat(129), &body).await?;
    assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        bad.json::<Value>().await?["error"]["code"],
        "invalid_idempotency_key"
    );
    assert_eq!(fake.calls().len(), 1);

    // Concurrent retries of one new key: one provider call; every other request gets the
    // replay or 409 in flight (with Retry-After), never a second answer.
    let concurrent_body = json!({"prompt": "asked ten times at once"});
    let sends = (0..10).map(|_| ask_with_key(&app, &guest, "at-once", &concurrent_body));
    let mut fresh = 0;
    let mut at_once_credits = 0;
    for resp in futures::future::join_all(sends).await {
        let resp = resp?;
        match resp.status() {
            StatusCode::OK if header(&resp, "idempotent-replayed") == "true" => {}
            StatusCode::OK => {
                fresh += 1;
                at_once_credits = header(&resp, "x-credits-used").parse()?;
            }
            StatusCode::CONFLICT => {
                assert!(!header(&resp, "retry-after").is_empty());
                assert_eq!(
                    resp.json::<Value>().await?["error"]["code"],
                    "idempotency_key_in_flight"
                );
            }
            other => anyhow::bail!("unexpected {other}"),
        }
    }
    assert_eq!(fresh, 1, "exactly one request was answered by the provider");
    assert_eq!(fake.calls().len(), 2);

    // A stream is recorded and replayed as it was sent.
    let stream_body = json!({"prompt": "stream it", "stream": true});
    let streamed = ask_with_key(&app, &guest, "stream-me", &stream_body).await?;
    assert_eq!(streamed.status(), StatusCode::OK);
    let streamed_text = streamed.text().await?;
    assert!(streamed_text.contains("event: done"), "{streamed_text}");
    let replayed = wait_for(Duration::from_secs(10), || async {
        let resp = ask_with_key(&app, &guest, "stream-me", &stream_body).await?;
        if resp.status() == StatusCode::CONFLICT {
            return Ok(None);
        }
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, "idempotent-replayed"), "true");
        assert!(header(&resp, "content-type").starts_with("text/event-stream"));
        Ok(Some(resp.text().await?))
    })
    .await?;
    assert_eq!(replayed, streamed_text);
    assert_eq!(fake.calls().len(), 3);

    // A provider failure bills nothing and releases the key: the retry asks afresh.
    fake.set(Behaviour::Status(500));
    let failed = ask_with_key(&app, &guest, "after-failure", &body).await?;
    assert_eq!(failed.status(), StatusCode::BAD_GATEWAY);
    fake.set(Behaviour::default());
    let retried = ask_with_key(&app, &guest, "after-failure", &body).await?;
    assert_eq!(retried.status(), StatusCode::OK);
    assert_eq!(header(&retried, "idempotent-replayed"), "");

    // Billed once per key: four answered keys, two usage events each.
    drained(&app).await?;
    let (events, _) = token_usage(&app, &guest).await?;
    assert_eq!(events, 8, "one tokens_in and one tokens_out event per key");
    let after = app.balance(&guest).await?;
    assert_eq!(
        before - after,
        credits + at_once_credits + stream_credits(&streamed_text)? + credits,
        "each key billed once"
    );
    app.stop().await
}

fn stream_credits(sse: &str) -> anyhow::Result<i64> {
    let done = sse
        .split("\n\n")
        .find(|frame| frame.starts_with("event: done"))
        .and_then(|frame| frame.lines().find_map(|l| l.strip_prefix("data: ")))
        .ok_or_else(|| anyhow::anyhow!("no done event in {sse}"))?;
    let done: Value = serde_json::from_str(done)?;
    done["credits_used"]
        .as_i64()
        .ok_or_else(|| anyhow::anyhow!("no credits_used in {done}"))
}

/// A new guest's first ask, right after `POST /auth/guest`, is never refused for credits: the
/// starting grant commits with the tenant.
async fn a_new_guest_asks_at_once(backend: Backend) -> anyhow::Result<()> {
    let fake = FakeProvider::start().await?;
    let cfg = providers(&[(ProviderId::Openai, &fake)]);
    let app = spawn(backend, move |api| {
        api.providers = cfg;
        api.rate_limits.enabled = false;
    })
    .await?;
    for _ in 0..50 {
        let guest = app.guest().await?;
        let resp = ask(&app, &guest, json!({"prompt": "first thing"})).await?;
        assert_eq!(resp.status(), StatusCode::OK, "{}", resp.text().await?);
    }
    app.stop().await
}
