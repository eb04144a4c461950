//! The voice service on the embedded default's local engines (espeak-ng, sox, PocketSphinx),
//! over HTTP on loopback, on SQLite and PostgreSQL: speech measured by sox against
//! `X-Audio-Seconds`, transcription of what was spoken (word error rate), `audio_seconds`
//! settled once per request, and every refusal precise, before any engine runs, billing
//! nothing.

use std::time::Duration;

use cognomega_testkit::{both_backends, Backend, Guest, TestApp};
use reqwest::StatusCode;
use serde_json::{json, Value};

both_backends!(
    speaks_measured_and_billed_once,
    transcribes_what_was_spoken,
    refusals_bill_nothing,
    an_empty_balance_is_refused_before_speaking,
    cartesia_protocol_and_fallback
);

async fn spawn(backend: Backend) -> anyhow::Result<TestApp> {
    TestApp::spawn(backend).await
}

async fn tts(app: &TestApp, guest: &Guest, body: Value) -> anyhow::Result<reqwest::Response> {
    Ok(app
        .client
        .post(app.url("/voice/tts"))
        .bearer_auth(&guest.token)
        .json(&body)
        .send()
        .await?)
}

async fn stt(
    app: &TestApp,
    guest: &Guest,
    audio: Vec<u8>,
    query: &str,
) -> anyhow::Result<reqwest::Response> {
    Ok(app
        .client
        .post(app.url(&format!("/voice/stt{query}")))
        .bearer_auth(&guest.token)
        .header("content-type", "application/octet-stream")
        .body(audio)
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

/// `audio_seconds` usage of the guest: (events, quantity).
async fn audio_usage(app: &TestApp, guest: &Guest) -> anyhow::Result<(i64, i64)> {
    let body: Value = app
        .client
        .get(app.url("/usage"))
        .bearer_auth(&guest.token)
        .send()
        .await?
        .json()
        .await?;
    let t = &body["totals"]["audio_seconds"];
    Ok((
        t["events"].as_i64().unwrap_or(0),
        t["quantity"].as_i64().unwrap_or(0),
    ))
}

/// The length of an audio file as sox reads it (an independent decoder).
fn sox_seconds(audio: &[u8], ext: &str) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(format!("a.{ext}"));
    std::fs::write(&path, audio)?;
    let out = std::process::Command::new("soxi")
        .arg("-D")
        .arg(&path)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "soxi: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().parse()?)
}

/// A WAV of silence made by sox.
fn silence(seconds: f64) -> anyhow::Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("s.wav");
    let out = std::process::Command::new("sox")
        .args(["-n", "-r", "16000", "-c", "1", "-b", "16"])
        .arg(&path)
        .args(["trim", "0", &seconds.to_string()])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "sox: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(std::fs::read(&path)?)
}

async fn speaks_measured_and_billed_once(backend: Backend) -> anyhow::Result<()> {
    let app = spawn(backend).await?;
    let guest = app.guest().await?;
    app.wait_idle(Duration::from_secs(60)).await?;
    let before = app.balance(&guest).await?;

    let voices: Value = app
        .client
        .get(app.url("/voice/voices"))
        .bearer_auth(&guest.token)
        .send()
        .await?
        .json()
        .await?;
    let local = &voices["providers"][0];
    assert_eq!(local["provider"], "local");
    assert!(local["voices"]
        .as_array()
        .is_some_and(|v| v.iter().any(|v| v["id"] == "en-us")));

    let mut billed = 0;
    let mut charged = 0;
    for (format, ext, ctype) in [
        ("wav", "wav", "audio/wav"),
        ("ogg", "ogg", "audio/ogg"),
        ("mp3", "mp3", "audio/mpeg"),
    ] {
        let resp = tts(
            &app,
            &guest,
            json!({"text": "The platform speaks. One, two, three.", "format": format, "voice": "en-us"}),
        )
        .await?;
        assert_eq!(resp.status(), StatusCode::OK, "{format}");
        assert_eq!(header(&resp, "content-type"), ctype);
        assert_eq!(header(&resp, "x-provider"), "local");
        assert_eq!(header(&resp, "x-voice"), "en-us");
        assert!(!header(&resp, "x-request-id").is_empty());
        let claimed: f64 = header(&resp, "x-audio-seconds").parse()?;
        let used: i64 = header(&resp, "x-credits-used").parse()?;
        let audio = resp.bytes().await?.to_vec();
        let measured = sox_seconds(&audio, ext)?;
        // Lossy encoders pad a frame or two; the claim is the speech's own length.
        assert!(
            (claimed - measured).abs() <= measured * 0.05,
            "{format}: X-Audio-Seconds {claimed} vs sox {measured}"
        );
        billed += claimed.ceil() as i64;
        charged += used;
    }
    let resp = tts(
        &app,
        &guest,
        json!({"text": "Sampled.", "sample_rate": 8000}),
    )
    .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    billed += header(&resp, "x-audio-seconds").parse::<f64>()?.ceil() as i64;
    charged += header(&resp, "x-credits-used").parse::<i64>()?;
    let audio = resp.bytes().await?.to_vec();
    assert_eq!(
        cognomega_core::voice::wav_info(&audio)
            .map_err(anyhow::Error::msg)?
            .sample_rate,
        8000
    );

    app.wait_idle(Duration::from_secs(60)).await?;
    assert_eq!(audio_usage(&app, &guest).await?, (4, billed));
    assert_eq!(app.balance(&guest).await?, before - charged);
    app.stop().await
}

/// The sentences of the round trip (also `cognomega bench voice`'s).
const SENTENCES: &[&str] = cognomega_core::voice::ROUND_TRIP_SENTENCES;

async fn transcribes_what_was_spoken(backend: Backend) -> anyhow::Result<()> {
    let app = spawn(backend).await?;
    let guest = app.guest().await?;
    app.wait_idle(Duration::from_secs(60)).await?;
    let mut errors = 0.0;
    let mut billed = 0;
    for sentence in SENTENCES {
        let resp = tts(&app, &guest, json!({"text": sentence})).await?;
        assert_eq!(resp.status(), StatusCode::OK);
        let audio = resp.bytes().await?.to_vec();
        let resp = stt(&app, &guest, audio.clone(), "?language=en").await?;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(header(&resp, "x-provider"), "local");
        let body: Value = resp.json().await?;
        let seconds = body["audio_seconds"].as_f64().unwrap_or(0.0);
        assert!((seconds - sox_seconds(&audio, "wav")?).abs() < 0.01);
        billed += 2 * seconds.ceil() as i64;
        assert_eq!(body["provider"], "local");
        assert_eq!(body["language"], "en-US");
        let segments = body["segments"].as_array().cloned().unwrap_or_default();
        let mut last = 0.0;
        for s in &segments {
            let (start, end) = (
                s["start"].as_f64().unwrap_or(-1.0),
                s["end"].as_f64().unwrap_or(-1.0),
            );
            assert!(
                start >= last && end >= start && end <= seconds + 0.1,
                "{segments:?}"
            );
            last = end;
        }
        errors += cognomega_core::voice::word_error_rate(
            sentence,
            body["text"].as_str().unwrap_or_default(),
        );
    }
    let mean = errors / SENTENCES.len() as f64;
    eprintln!("local round trip: word error rate {:.1} %", mean * 100.0);
    // Measured 2026-12-07 on this platform's CI machine kind: see the README. The bound has
    // margin; it catches a broken pipeline (wrong sample rate, garbage in), not drift.
    assert!(
        mean < cognomega_core::voice::ROUND_TRIP_WER_BOUND,
        "word error rate {mean}"
    );

    // A language the local transcriber lacks: no provider can answer.
    let resp = stt(&app, &guest, silence(1.0)?, "?language=fr").await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let err: Value = resp.json().await?;
    assert_eq!(err["error"]["code"], "unsupported_language");

    app.wait_idle(Duration::from_secs(60)).await?;
    assert_eq!(audio_usage(&app, &guest).await?.1, billed);
    app.stop().await
}

async fn refusals_bill_nothing(backend: Backend) -> anyhow::Result<()> {
    let app = spawn(backend).await?;
    let guest = app.guest().await?;
    app.wait_idle(Duration::from_secs(60)).await?;
    let before = app.balance(&guest).await?;
    let cap = cognomega_core::voice::VoicePolicy::default()
        .guest
        .max_tts_chars;
    let cases = [
        (json!({}), 400, "invalid_body"),
        (json!({"text": "  "}), 400, "empty_text"),
        (json!({"text": "x".repeat(cap + 1)}), 413, "text_too_long"),
        (
            json!({"text": "hi", "format": "flac"}),
            415,
            "unsupported_format",
        ),
        (
            json!({"text": "hi", "sample_rate": 200000}),
            400,
            "invalid_sample_rate",
        ),
        (
            json!({"text": "hi", "voice": "no-such-voice"}),
            400,
            "unknown_voice",
        ),
        (
            json!({"text": "hi", "provider": "cartesia"}),
            400,
            "unknown_provider",
        ),
    ];
    for (body, status, code) in cases {
        let resp = tts(&app, &guest, body.clone()).await?;
        assert_eq!(resp.status().as_u16(), status, "{body}");
        let err: Value = resp.json().await?;
        assert_eq!(err["error"]["code"], code, "{body}");
    }
    let wav = silence(2.0)?;
    let truncated = wav[..wav.len() / 2].to_vec();
    let over = silence(
        f64::from(
            cognomega_core::voice::VoicePolicy::default()
                .guest
                .max_stt_seconds,
        ) + 1.0,
    )?;
    let cases: [(Vec<u8>, &str, u16, &str); 6] = [
        (Vec::new(), "", 400, "empty_audio"),
        (
            b"%PDF-1.7 not audio".to_vec(),
            "",
            415,
            "unsupported_format",
        ),
        (truncated, "", 400, "invalid_audio"),
        (b"OggS\0\x02garbage".to_vec(), "", 400, "invalid_audio"),
        (over, "", 413, "audio_too_long"),
        (wav, "?language=en%20US", 400, "invalid_language"),
    ];
    for (audio, query, status, code) in cases {
        let resp = stt(&app, &guest, audio, query).await?;
        assert_eq!(resp.status().as_u16(), status, "{code}");
        let err: Value = resp.json().await?;
        assert_eq!(err["error"]["code"], code);
    }
    let resp = app
        .client
        .post(app.url("/voice/tts"))
        .json(&json!({"text": "hi"}))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    app.wait_idle(Duration::from_secs(60)).await?;
    assert_eq!(audio_usage(&app, &guest).await?, (0, 0));
    assert_eq!(app.balance(&guest).await?, before);
    app.stop().await
}

async fn an_empty_balance_is_refused_before_speaking(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn_custom(backend, true, None, |api| api.billing.guest_grant = 0).await?;
    let guest = app.guest().await?;
    app.wait_idle(Duration::from_secs(60)).await?;
    let resp = tts(&app, &guest, json!({"text": "hello"})).await?;
    assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    let err: Value = resp.json().await?;
    assert_eq!(err["error"]["code"], "insufficient_credits");
    let resp = stt(&app, &guest, silence(1.0)?, "").await?;
    assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    app.wait_idle(Duration::from_secs(60)).await?;
    assert_eq!(audio_usage(&app, &guest).await?, (0, 0));
    app.stop().await
}

async fn cartesia_protocol_and_fallback(backend: Backend) -> anyhow::Result<()> {
    use cognomega_providers::fake::{FakeCartesia, CARTESIA_TRANSCRIPT};
    let fake = FakeCartesia::start("ck-test").await?;
    let base = fake.base();
    let app = TestApp::spawn_custom(backend, true, None, move |api| {
        api.voice_providers =
            cognomega_providers::voice::VoiceConfig::from_vars(None, |k| match k {
                "CARTESIA_API_KEY" => Some("ck-test".into()),
                "CARTESIA_BASE_URL" => Some(base.clone()),
                "CARTESIA_VERSION" => Some("2025-04-16".into()),
                _ => None,
            });
    })
    .await?;
    let guest = app.guest().await?;
    app.wait_idle(Duration::from_secs(60)).await?;

    // Cartesia first: its protocol, as Cartesia reads it.
    let resp = tts(
        &app,
        &guest,
        json!({"text": "twenty chars of text", "sample_rate": 16000}),
    )
    .await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "x-provider"), "cartesia");
    assert_eq!(header(&resp, "x-provider-fallback"), "");
    let seconds: f64 = header(&resp, "x-audio-seconds").parse()?;
    // 50 ms per character, measured from the bytes, not taken from the provider.
    assert!((seconds - 1.0).abs() < 0.01, "{seconds}");
    let audio = resp.bytes().await?.to_vec();
    assert!((sox_seconds(&audio, "wav")? - seconds).abs() < 0.01);
    let call = fake
        .calls()
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no call"))?;
    assert_eq!(call.path, "/tts/bytes");
    assert_eq!(call.version.as_deref(), Some("2025-04-16"));
    assert_eq!(call.authorization.as_deref(), Some("Bearer ck-test"));
    assert_eq!(call.body["transcript"], "twenty chars of text");
    assert_eq!(call.body["voice"]["mode"], "id");
    assert_eq!(
        call.body["output_format"],
        json!({"container": "wav", "encoding": "pcm_s16le", "sample_rate": 16000})
    );

    let resp = tts(&app, &guest, json!({"text": "mp3 please", "format": "mp3"})).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "x-provider"), "cartesia");
    assert_eq!(header(&resp, "content-type"), "audio/mpeg");
    // Ogg is not Cartesia's: the next provider speaks.
    let resp = tts(&app, &guest, json!({"text": "ogg please", "format": "ogg"})).await?;
    assert_eq!(header(&resp, "x-provider"), "local");
    assert_eq!(header(&resp, "x-provider-fallback"), "cartesia");

    // Its voices, then the local ones.
    let voices: Value = app
        .client
        .get(app.url("/voice/voices"))
        .bearer_auth(&guest.token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(voices["providers"][0]["provider"], "cartesia");
    assert_eq!(voices["providers"][0]["voices"][0]["id"], "fake-voice-1");
    assert_eq!(voices["providers"][1]["provider"], "local");

    // Transcription: multipart with the model and word timestamps.
    let resp = stt(&app, &guest, silence(2.0)?, "?language=en-US").await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await?;
    assert_eq!(body["provider"], "cartesia");
    assert_eq!(body["text"], CARTESIA_TRANSCRIPT);
    assert!(!body["segments"].as_array().is_none_or(Vec::is_empty));
    let call = fake
        .calls()
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no call"))?;
    assert_eq!(call.path, "/stt");
    assert_eq!(call.body["model"], "ink-whisper");
    assert_eq!(call.body["language"], "en");
    assert_eq!(call.body["timestamp_granularities[]"], "word");

    // 5xx and 429 fall back to the local engines, visibly; the bill follows who answered.
    for status in [500, 503, 429] {
        fake.fail_with(Some(status));
        let resp = tts(&app, &guest, json!({"text": "fall back"})).await?;
        assert_eq!(resp.status(), StatusCode::OK, "{status}");
        assert_eq!(header(&resp, "x-provider"), "local");
        assert_eq!(header(&resp, "x-provider-fallback"), "cartesia");
    }
    // Naming Cartesia means no fallback: its failure is the answer.
    let resp = tts(
        &app,
        &guest,
        json!({"text": "only cartesia", "provider": "cartesia"}),
    )
    .await?;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    fake.fail_with(None);
    // A request Cartesia refuses (a voice it lacks is still a 4xx of its own) is not retried
    // elsewhere.
    let before = fake.calls().len();
    let resp = tts(&app, &guest, json!({"text": "rate", "sample_rate": 11025})).await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let err: Value = resp.json().await?;
    assert_eq!(err["error"]["code"], "provider_rejected");
    assert_eq!(fake.calls().len(), before + 1);
    app.stop().await
}
