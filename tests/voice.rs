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
    compressed_audio_is_transcribed,
    cartesia_protocol_and_fallback,
    cartesia_streams_session_speech,
    workers_ai_protocol_and_fallback,
    session_streams_in_order_and_settles_once,
    session_refusals_and_caps,
    session_disconnect_settles_once,
    session_close_interrupts_speech,
    session_pauses_for_a_slow_client,
    session_settles_after_a_sigkill,
    long_texts_render_as_jobs
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

/// Runs a command-line tool; its standard output, or its standard error as the failure.
fn tool(cmd: &mut std::process::Command) -> anyhow::Result<Vec<u8>> {
    let out = cmd.output()?;
    anyhow::ensure!(
        out.status.success(),
        "{:?}: {}",
        cmd.get_program(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}

/// The length of an audio file as sox reads it (an independent decoder).
fn sox_seconds(audio: &[u8], ext: &str) -> anyhow::Result<f64> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join(format!("a.{ext}"));
    std::fs::write(&path, audio)?;
    let out = tool(std::process::Command::new("soxi").arg("-D").arg(&path))?;
    Ok(String::from_utf8_lossy(&out).trim().parse()?)
}

/// A 16-bit mono WAV made by sox from nothing: `format` (e.g. the rate) and then `effects`.
fn sox_made(format: &[&str], effects: &[&str]) -> anyhow::Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("made.wav");
    tool(
        std::process::Command::new("sox")
            .arg("-n")
            .args(format)
            .args(["-c", "1", "-b", "16"])
            .arg(&path)
            .args(effects),
    )?;
    Ok(std::fs::read(&path)?)
}

/// A WAV of silence made by sox.
fn silence(seconds: f64) -> anyhow::Result<Vec<u8>> {
    sox_made(&["-r", "16000"], &["trim", "0", &seconds.to_string()])
}

async fn speaks_measured_and_billed_once(backend: Backend) -> anyhow::Result<()> {
    let app = spawn(backend).await?;
    let guest = app.guest().await?;
    app.wait_idle(Duration::from_secs(60)).await?;
    let before = app.balance(&guest).await?;

    // A browser may read the voice headers.
    let resp = app
        .client
        .post(app.url("/voice/tts"))
        .bearer_auth(&guest.token)
        .header("origin", "https://app.example")
        .json(&json!({"text": "Browser."}))
        .send()
        .await?;
    let exposed = header(&resp, "access-control-expose-headers").to_ascii_lowercase();
    for name in [
        "x-audio-seconds",
        "x-voice",
        "x-provider",
        "x-provider-fallback",
        "x-credits-used",
    ] {
        assert!(exposed.contains(name), "{name} not exposed: {exposed}");
    }
    let mut billed = header(&resp, "x-audio-seconds").parse::<f64>()?.ceil() as i64;
    let mut charged = header(&resp, "x-credits-used").parse::<i64>()?;

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
    assert_eq!(audio_usage(&app, &guest).await?, (5, billed));
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
    // A render is refused before it is queued.
    let resp = app
        .client
        .post(app.url("/voice/tts"))
        .bearer_auth(&guest.token)
        .header("prefer", "respond-async")
        .json(&json!({"text": "hello"}))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::PAYMENT_REQUIRED);
    let jobs: Value = app
        .client
        .get(app.url("/jobs"))
        .bearer_auth(&guest.token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(jobs["jobs"], json!([]));
    app.wait_idle(Duration::from_secs(60)).await?;
    assert_eq!(audio_usage(&app, &guest).await?, (0, 0));
    app.stop().await
}

/// A fake Cartesia accepting `ck-test`, and a server with it first in its provider order.
async fn spawn_with_cartesia(
    backend: Backend,
) -> anyhow::Result<(cognomega_providers::fake::FakeCartesia, TestApp)> {
    let fake = cognomega_providers::fake::FakeCartesia::start("ck-test").await?;
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
    Ok((fake, app))
}

async fn cartesia_protocol_and_fallback(backend: Backend) -> anyhow::Result<()> {
    use cognomega_providers::fake::CARTESIA_TRANSCRIPT;
    let (fake, app) = spawn_with_cartesia(backend).await?;
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
    // The fallbacks are counted: the ogg one and these three.
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains(r#"cognomega_voice_fallbacks_total{provider="cartesia",op="tts"} 4"#),
        "{metrics}"
    );
    assert!(metrics.contains(
        r#"cognomega_voice_requests_total{provider="local",op="tts",outcome="answered"} 4"#
    ));
    assert!(metrics.contains(
        r#"cognomega_voice_requests_total{provider="cartesia",op="stt",outcome="answered"} 1"#
    ));
    assert!(
        metrics.contains("cognomega_voice_audio_seconds_total{provider=\"cartesia\",op=\"tts\"}")
    );
    assert!(metrics.contains("cognomega_voice_sessions_open 0"));
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

use cognomega_testkit::ws::{close_frame, next_json, Ws};
use futures::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::Message;

async fn connect(base: &str, token: &str, query: &str) -> anyhow::Result<Result<Ws, u16>> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let url = format!("{}/voice/sessions{query}", base.replacen("http", "ws", 1));
    let mut req = url.into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, _)) => Ok(Ok(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => Ok(Err(resp.status().as_u16())),
        Err(e) => Err(e.into()),
    }
}

/// A session opened with the bearer header, past its `ready` frame.
async fn open_ready(base: &str, token: &str) -> anyhow::Result<Ws> {
    let mut ws = connect(base, token, "")
        .await?
        .map_err(|s| anyhow::anyhow!("the session was refused: {s}"))?;
    next_json(&mut ws).await?;
    Ok(ws)
}

async fn session_streams_in_order_and_settles_once(backend: Backend) -> anyhow::Result<()> {
    use cognomega_core::voice::session::{BYTES_PER_SECOND, FRAME_BYTES};
    let app = spawn(backend).await?;
    let guest = app.guest().await?;
    app.wait_idle(Duration::from_secs(60)).await?;
    let before = app.balance(&guest).await?;
    let mut ws = connect(&app.base_url, &guest.token, "?voice=en-us")
        .await?
        .map_err(|s| anyhow::anyhow!("{s}"))?;
    let (_, ready) = next_json(&mut ws).await?;
    assert_eq!(ready["type"], "ready");
    assert_eq!(ready["format"], "pcm_s16le");
    assert_eq!(ready["sample_rate"], 16_000);
    let metrics = app
        .client
        .get(app.url("/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert!(
        metrics.contains("cognomega_voice_sessions_open 1"),
        "{metrics}"
    );

    ws.send(Message::text(
        json!({"type": "text", "text": "First sentence. Second one! And a third."}).to_string(),
    ))
    .await?;
    let (frames, spoken) = next_json(&mut ws).await?;
    assert_eq!(spoken["type"], "spoken");
    assert!(frames.len() > 10);
    // Every frame is 100 ms but the last of each sentence; their bytes are the seconds spoken.
    assert!(frames
        .iter()
        .all(|f| f.len() <= FRAME_BYTES && f.len() % 2 == 0));
    let bytes: usize = frames.iter().map(Vec::len).sum();
    let seconds = spoken["seconds"].as_f64().unwrap_or(0.0);
    assert!(
        (bytes as f64 / BYTES_PER_SECOND as f64 - seconds).abs() < 0.01,
        "{bytes} bytes, {seconds} s"
    );
    // In order: the speech of the first sentence starts the stream (what the engine makes of it alone).
    let first = tts(
        &app,
        &guest,
        json!({"text": "First sentence.", "sample_rate": 16000}),
    )
    .await?
    .bytes()
    .await?
    .to_vec();
    let first_pcm = cognomega_core::voice::session::pcm_of_wav(&first)
        .map_err(anyhow::Error::msg)?
        .to_vec();
    let streamed: Vec<u8> = frames.concat();
    assert!(streamed.len() > first_pcm.len());
    assert!(
        streamed[..first_pcm.len()] == first_pcm[..],
        "the stream does not start with the first sentence"
    );

    // Audio in, a transcript out.
    for chunk in first_pcm.chunks(4000) {
        ws.send(Message::binary(chunk.to_vec())).await?;
    }
    ws.send(Message::text(r#"{"type":"flush"}"#)).await?;
    let (_, transcript) = next_json(&mut ws).await?;
    assert_eq!(transcript["type"], "transcript", "{transcript}");
    let heard = first_pcm.len() as f64 / BYTES_PER_SECOND as f64;
    assert!((transcript["seconds"].as_f64().unwrap_or(0.0) - heard).abs() < 0.01);

    ws.send(Message::text(r#"{"type":"close"}"#)).await?;
    let (_, closed) = next_json(&mut ws).await?;
    assert_eq!(closed["type"], "closed");
    let billed = (seconds + heard).ceil() as i64;
    assert_eq!(closed["audio_seconds"], billed);
    assert_eq!(close_frame(&mut ws).await?.0, 1000);

    app.wait_idle(Duration::from_secs(60)).await?;
    // The local TTS call above was billed on its own.
    let (events, quantity) = audio_usage(&app, &guest).await?;
    assert_eq!(events, 2);
    let tts_seconds = quantity - billed;
    assert!(tts_seconds >= 1);
    let charged = closed["credits"].as_i64().unwrap_or(0);
    assert!(app.balance(&guest).await? <= before - charged);

    // Retention: a closed session's row goes after two days; an open one stays.
    let open = open_ready(&app.base_url, &guest.token).await?;
    let now = chrono::Utc::now().timestamp_millis();
    assert_eq!(
        cognomega_stores::voice_sessions::prune(app.tdb.db(), now).await?,
        0
    );
    assert_eq!(
        cognomega_stores::voice_sessions::prune(app.tdb.db(), now + 3 * 86_400_000).await?,
        1
    );
    let (_, closed) = session_row(&app).await?;
    assert!(!closed, "the open session was pruned");
    drop(open);
    app.stop().await
}

/// A session's speech streams from Cartesia's WebSocket: one context per sentence, raw
/// `pcm_s16le` at 16 kHz, the version header and the key as Cartesia reads them, chunks sent on
/// to the client as they come; Cartesia failing before its first chunk falls over to the local
/// engine and the session goes on; it bills once.
async fn cartesia_streams_session_speech(backend: Backend) -> anyhow::Result<()> {
    use cognomega_core::voice::session::FRAME_BYTES;
    let (fake, app) = spawn_with_cartesia(backend).await?;
    let guest = app.guest().await?;
    app.wait_idle(Duration::from_secs(60)).await?;
    let mut ws = open_ready(&app.base_url, &guest.token).await?;
    ws.send(Message::text(
        json!({"type": "text", "text": "Twenty chars of text. And ten more."}).to_string(),
    ))
    .await?;
    let (frames, spoken) = next_json(&mut ws).await?;
    assert_eq!(spoken["type"], "spoken", "{spoken}");
    assert!(frames
        .iter()
        .all(|f| f.len() <= FRAME_BYTES && f.len() % 2 == 0));
    // The fake speaks 50 ms per character: 21 + 13 characters at 16 kHz.
    let bytes: usize = frames.iter().map(Vec::len).sum();
    assert_eq!(bytes, (21 + 13) * 800 * 2);
    let calls: Vec<_> = fake
        .calls()
        .into_iter()
        .filter(|c| c.path == "/tts/websocket" && !c.body.is_null())
        .collect();
    assert_eq!(calls.len(), 2, "one context per sentence: {calls:?}");
    for (call, text) in calls.iter().zip(["Twenty chars of text.", "And ten more."]) {
        assert_eq!(call.version.as_deref(), Some("2025-04-16"));
        assert_eq!(call.authorization.as_deref(), Some("Bearer ck-test"));
        assert_eq!(call.body["transcript"], text);
        assert_eq!(call.body["voice"]["mode"], "id");
        assert_eq!(call.body["continue"], false);
        assert_eq!(
            call.body["output_format"],
            json!({"container": "raw", "encoding": "pcm_s16le", "sample_rate": 16000})
        );
        assert!(call.body["context_id"]
            .as_str()
            .is_some_and(|c| !c.is_empty()));
    }
    assert_ne!(calls[0].body["context_id"], calls[1].body["context_id"]);

    // Cartesia down before its first chunk: the local engine speaks.
    fake.fail_with(Some(503));
    ws.send(Message::text(
        json!({"type": "text", "text": "Spoken locally."}).to_string(),
    ))
    .await?;
    let (frames, spoken) = next_json(&mut ws).await?;
    assert_eq!(spoken["type"], "spoken", "{spoken}");
    assert!(!frames.is_empty());
    ws.send(Message::text(r#"{"type":"close"}"#)).await?;
    let (_, closed) = next_json(&mut ws).await?;
    assert_eq!(closed["type"], "closed", "{closed}");
    assert_eq!(close_frame(&mut ws).await?.0, 1000);
    let billed = closed["audio_seconds"].as_i64().unwrap_or(0);
    assert!(billed >= 2, "{closed}");
    app.wait_idle(Duration::from_secs(60)).await?;
    assert_eq!(audio_usage(&app, &guest).await?, (1, billed));
    app.stop().await
}

async fn session_refusals_and_caps(backend: Backend) -> anyhow::Result<()> {
    use cognomega_core::voice::session::{CLOSE_CAP, CLOSE_IDLE, CLOSE_INVALID};
    let app = TestApp::spawn_custom(backend, true, None, |api| {
        api.voice.guest.max_sessions = 2;
        api.voice.guest.max_session_seconds = 2;
        api.voice.guest.session_idle_secs = 1;
        api.voice.guest.max_tts_chars = 200;
        api.voice.guest.max_stt_seconds = 1;
    })
    .await?;
    let guest = app.guest().await?;
    app.wait_idle(Duration::from_secs(60)).await?;

    // A browser cannot set Authorization on a WebSocket: the token rides as a subprotocol.
    {
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        let url = format!("{}/voice/sessions", app.base_url.replacen("http", "ws", 1));
        let mut req = url.into_client_request()?;
        req.headers_mut().insert(
            "sec-websocket-protocol",
            format!("cognomega, bearer.{}", guest.token).parse()?,
        );
        let (mut ws, resp) = tokio_tungstenite::connect_async(req).await?;
        assert_eq!(
            resp.headers()
                .get("sec-websocket-protocol")
                .map(|v| v.as_bytes()),
            Some(&b"cognomega"[..])
        );
        assert_eq!(next_json(&mut ws).await?.1["type"], "ready");
        ws.close(None).await?;
        let mut req = format!("{}/voice/sessions", app.base_url.replacen("http", "ws", 1))
            .into_client_request()?;
        req.headers_mut().insert(
            "sec-websocket-protocol",
            "cognomega, bearer.not-a-token".parse()?,
        );
        match tokio_tungstenite::connect_async(req).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
                assert_eq!(resp.status().as_u16(), 401)
            }
            other => anyhow::bail!(
                "a bad subprotocol token was let in: {:?}",
                other.map(|_| ())
            ),
        }
    }

    // Not a WebSocket: 426 in the envelope.
    let resp = app
        .client
        .get(app.url("/voice/sessions"))
        .bearer_auth(&guest.token)
        .send()
        .await?;
    assert_eq!(resp.status().as_u16(), 426);
    let err: Value = resp.json().await?;
    assert_eq!(err["error"]["code"], "websocket_required");
    // No token: 401 before the upgrade.
    let resp = app.client.get(app.url("/voice/sessions")).send().await?;
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    // Not the protocol.
    for bad in [
        "hello",
        r#"{"type":"dance"}"#,
        r#"{"type":"text","text":"  "}"#,
    ] {
        let mut ws = open_ready(&app.base_url, &guest.token).await?;
        ws.send(Message::text(bad)).await?;
        let (code, reason) = close_frame(&mut ws).await?;
        assert_eq!(code, CLOSE_INVALID, "{bad}");
        assert!(reason.starts_with("invalid_message"), "{reason}");
    }
    // A text over the tier's characters.
    let mut ws = open_ready(&app.base_url, &guest.token).await?;
    ws.send(Message::text(
        json!({"type": "text", "text": "x".repeat(201)}).to_string(),
    ))
    .await?;
    let (code, reason) = close_frame(&mut ws).await?;
    assert_eq!(
        (code, reason.starts_with("text_too_long")),
        (CLOSE_CAP, true),
        "{reason}"
    );

    // The audio cap: two seconds, then closed; billed for exactly what was sent.
    let mut ws = open_ready(&app.base_url, &guest.token).await?;
    let long = "This sentence is long enough to take a while to say. ".repeat(3);
    ws.send(Message::text(
        json!({"type": "text", "text": long}).to_string(),
    ))
    .await?;
    let mut bytes = 0;
    let (code, reason) = loop {
        match tokio::time::timeout(Duration::from_secs(30), ws.next()).await? {
            Some(Ok(Message::Binary(b))) => bytes += b.len(),
            Some(Ok(Message::Close(Some(f)))) => break (u16::from(f.code), f.reason.to_string()),
            Some(Ok(_)) => {}
            other => anyhow::bail!("unexpected {other:?}"),
        }
    };
    assert_eq!(code, CLOSE_CAP, "{reason}");
    assert!(reason.starts_with("session_audio_cap"), "{reason}");
    assert_eq!(bytes, 2 * cognomega_core::voice::session::BYTES_PER_SECOND);

    // Audio waiting for a flush is held to one transcription's cap (here 1 s).
    let mut ws = open_ready(&app.base_url, &guest.token).await?;
    for _ in 0..3 {
        ws.send(Message::binary(vec![0u8; 16_000])).await?;
    }
    let (code, reason) = close_frame(&mut ws).await?;
    assert_eq!(code, CLOSE_CAP, "{reason}");
    assert!(reason.starts_with("audio_too_long"), "{reason}");

    // Idle: closed after the tier's timeout.
    let mut ws = open_ready(&app.base_url, &guest.token).await?;
    let (code, reason) = close_frame(&mut ws).await?;
    assert_eq!(code, CLOSE_IDLE, "{reason}");

    // Two at once, and a third is refused before the upgrade.
    let mut a = connect(&app.base_url, &guest.token, "")
        .await?
        .map_err(|s| anyhow::anyhow!("{s}"))?;
    let mut b = connect(&app.base_url, &guest.token, "")
        .await?
        .map_err(|s| anyhow::anyhow!("{s}"))?;
    next_json(&mut a).await?;
    next_json(&mut b).await?;
    assert_eq!(
        connect(&app.base_url, &guest.token, "").await?.err(),
        Some(429)
    );
    drop((a, b));
    app.wait_idle(Duration::from_secs(60)).await?;
    // Only the capped session spoke: two seconds, once.
    assert_eq!(audio_usage(&app, &guest).await?, (1, 2));
    app.stop().await
}

async fn session_disconnect_settles_once(backend: Backend) -> anyhow::Result<()> {
    let app = spawn(backend).await?;
    let guest = app.guest().await?;
    app.wait_idle(Duration::from_secs(60)).await?;
    let mut ws = open_ready(&app.base_url, &guest.token).await?;
    ws.send(Message::text(
        json!({"type": "text", "text": "Hang up on me. ".repeat(20)}).to_string(),
    ))
    .await?;
    // A few frames, then the client vanishes without a close.
    for _ in 0..3 {
        ws.next().await;
    }
    drop(ws);
    cognomega_testkit::wait_for(Duration::from_secs(30), || async {
        Ok((audio_usage(&app, &guest).await?.0 == 1).then_some(()))
    })
    .await?;
    app.wait_idle(Duration::from_secs(60)).await?;
    let (events, quantity) = audio_usage(&app, &guest).await?;
    assert_eq!(events, 1);
    // What was produced before the hang-up was noticed: at least the first sentence.
    assert!(quantity >= 1);
    app.stop().await
}

/// The session's recorded audio (ms) and whether it is closed.
async fn session_row(app: &TestApp) -> anyhow::Result<(i64, bool)> {
    use cognomega_core::sql::Executor as _;
    let mut db = app.tdb.db().clone();
    let row = db
        .query_opt(
            "SELECT audio_ms, closed_at IS NOT NULL FROM voice_sessions",
            &[],
        )
        .await?
        .ok_or_else(|| anyhow::anyhow!("no session"))?;
    Ok((row.int(0)?, row.bool(1)?))
}

async fn session_pauses_for_a_slow_client(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn_custom(backend, true, None, |api| {
        api.voice.guest.max_tts_chars = 20_000;
        api.voice.guest.max_session_seconds = 3_600;
        // The sweep takes a session whose heart stopped for a second for dead: a paused one
        // must keep beating.
        api.voice_session_stale = Duration::from_secs(1);
    })
    .await?;
    let guest = app.guest().await?;
    app.wait_idle(Duration::from_secs(60)).await?;
    let mut ws = open_ready(&app.base_url, &guest.token).await?;
    // Three hundred sentences, about fifteen minutes of speech (some 30 MB of PCM); the client
    // reads nothing for a while.
    let text = "The slow client reads nothing at all for now. ".repeat(300);
    ws.send(Message::text(
        json!({"type": "text", "text": text}).to_string(),
    ))
    .await?;
    // Stops: once the socket's buffers are full the session waits for the reader, having
    // produced a fraction of the text (what the buffers hold, the kernel's included). How soon
    // depends on the machine's load, so it is watched, not timed.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut last = session_row(&app).await?.0;
    let paused_at = loop {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let now = session_row(&app).await?.0;
        if now == last && now > 0 {
            break now;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the server kept producing for a client that does not read ({now} ms)"
        );
        last = now;
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        session_row(&app).await?.0,
        paused_at,
        "the server resumed without a reader"
    );
    assert!(
        paused_at < 300_000,
        "{paused_at} ms produced ahead of the reader"
    );
    // Reading resumes it.
    for _ in 0..2_000 {
        ws.next().await;
    }
    cognomega_testkit::wait_for(Duration::from_secs(30), || async {
        Ok((session_row(&app).await?.0 > paused_at).then_some(()))
    })
    .await?;
    // Hanging up bills exactly what was recorded, once.
    drop(ws);
    cognomega_testkit::wait_for(Duration::from_secs(30), || async {
        Ok(session_row(&app).await?.1.then_some(()))
    })
    .await?;
    app.wait_idle(Duration::from_secs(60)).await?;
    let (recorded, _) = session_row(&app).await?;
    assert_eq!(
        audio_usage(&app, &guest).await?,
        (1, (recorded + 999) / 1000)
    );
    app.stop().await
}

async fn session_settles_after_a_sigkill(backend: Backend) -> anyhow::Result<()> {
    const BIN: &str = env!("CARGO_BIN_EXE_cognomega");
    cognomega_core::tls::install();
    let tdb = cognomega_testkit::TestDb::new(backend).await?;
    let config = tdb.data_dir().join("voice.toml");
    std::fs::write(&config, "[voice]\nsession_stale_secs = 2\n")?;
    let serve = || {
        let mut cmd = tokio::process::Command::new(BIN);
        cmd.args(["--log", "warn", "--data-dir"])
            .arg(tdb.data_dir())
            .args(["--database-url", tdb.url().expose(), "--config"])
            .arg(&config)
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--admin-key",
                "voice-admin",
            ]);
        cmd
    };
    let (mut child, url) = cognomega_testkit::spawn_serve(serve()).await?;
    let client = reqwest::Client::new();
    let guest: Value = client
        .post(format!("{url}/auth/guest"))
        .send()
        .await?
        .json()
        .await?;
    let token = guest["token"].as_str().unwrap_or_default().to_owned();
    let mut ws = open_ready(&url, &token).await?;
    ws.send(Message::text(
        json!({"type": "text", "text": "Killed mid sentence. ".repeat(10)}).to_string(),
    ))
    .await?;
    for _ in 0..5 {
        ws.next().await;
    }
    child.kill().await?;
    drop(ws);
    // A new process finds the session's heart stopped and settles it, once.
    let (_child, url) = cognomega_testkit::spawn_serve(serve()).await?;
    let usage = || async {
        let body: Value = client
            .get(format!("{url}/usage"))
            .bearer_auth(&token)
            .send()
            .await?
            .json()
            .await?;
        Ok::<_, anyhow::Error>(body["totals"]["audio_seconds"].clone())
    };
    cognomega_testkit::wait_for(Duration::from_secs(60), || async {
        Ok((usage().await?["events"] == 1).then_some(()))
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let totals = usage().await?;
    assert_eq!(totals["events"], 1);
    assert!(totals["quantity"].as_i64().unwrap_or(0) >= 1);
    Ok(())
}

async fn workers_ai_protocol_and_fallback(backend: Backend) -> anyhow::Result<()> {
    use cognomega_providers::fake::{Behaviour, FakeProvider, WHISPER_TRANSCRIPT};
    let fake = FakeProvider::start().await?;
    let base = fake.cfai_base();
    let app = TestApp::spawn_custom(backend, true, None, move |api| {
        api.voice_providers =
            cognomega_providers::voice::VoiceConfig::from_vars(None, |k| match k {
                "CF_API_TOKEN" => Some("cf-token".into()),
                "CF_ACCOUNT_ID" => Some("acct-1".into()),
                "CF_AI_BASE_URL" => Some(base.clone()),
                _ => None,
            });
    })
    .await?;
    let guest = app.guest().await?;
    app.wait_idle(Duration::from_secs(60)).await?;

    // MeloTTS answers MP3: asked for WAV, the platform converts it and measures the result.
    let resp = tts(&app, &guest, json!({"text": "twenty chars of text"})).await?;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "x-provider"), "cfai");
    assert_eq!(header(&resp, "x-voice"), "en");
    assert_eq!(header(&resp, "content-type"), "audio/wav");
    let seconds: f64 = header(&resp, "x-audio-seconds").parse()?;
    let audio = resp.bytes().await?.to_vec();
    assert!((sox_seconds(&audio, "wav")? - seconds).abs() < 0.01);
    // 50 ms per character, give or take the MP3 frames.
    assert!((seconds - 1.0).abs() < 0.1, "{seconds}");
    let call = fake
        .calls()
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no call"))?;
    assert_eq!(call.model, "@cf/myshell-ai/melotts");
    assert_eq!(call.authorization.as_deref(), Some("Bearer cf-token"));

    let resp = stt(&app, &guest, silence(1.5)?, "?language=en").await?;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await?;
    assert_eq!(
        (body["provider"].as_str(), body["text"].as_str()),
        (Some("cfai"), Some(WHISPER_TRANSCRIPT))
    );
    assert_eq!(
        fake.calls().pop().map(|c| c.model),
        Some("@cf/openai/whisper".to_owned())
    );

    // Down: the local engines answer, visibly.
    fake.set(Behaviour::Status(503));
    let resp = tts(&app, &guest, json!({"text": "fall back"})).await?;
    assert_eq!(header(&resp, "x-provider"), "local");
    assert_eq!(header(&resp, "x-provider-fallback"), "cfai");
    app.stop().await
}

async fn session_close_interrupts_speech(backend: Backend) -> anyhow::Result<()> {
    let app = spawn(backend).await?;
    let guest = app.guest().await?;
    app.wait_idle(Duration::from_secs(60)).await?;
    let mut ws = open_ready(&app.base_url, &guest.token).await?;
    // Twenty sentences (about a minute of speech), then a close after the first frames.
    let text = "This will be cut short by the client. ".repeat(20);
    ws.send(Message::text(
        json!({"type": "text", "text": text}).to_string(),
    ))
    .await?;
    for _ in 0..5 {
        ws.next().await;
    }
    ws.send(Message::text(r#"{"type":"close"}"#)).await?;
    let (frames, closed) = next_json(&mut ws).await?;
    // No `spoken`: the text was cut, and the session closed normally, billed for what it made.
    assert_eq!(closed["type"], "closed", "{closed}");
    let heard = (5 + frames.len()) as f64 / 10.0;
    assert!(heard < 30.0, "{heard} s arrived after the close was sent");
    assert_eq!(close_frame(&mut ws).await?.0, 1000);
    app.wait_idle(Duration::from_secs(60)).await?;
    let (recorded, closed_row) = session_row(&app).await?;
    assert!(closed_row);
    assert_eq!(
        audio_usage(&app, &guest).await?,
        (1, (recorded + 999) / 1000)
    );
    assert_eq!(closed["audio_seconds"], (recorded + 999) / 1000);
    app.stop().await
}

/// `audio` re-encoded by ffmpeg (`args` name the codec and container).
fn ffmpeg(audio: &[u8], ext: &str, args: &[&str]) -> anyhow::Result<Vec<u8>> {
    let dir = tempfile::tempdir()?;
    let (src, dst) = (
        dir.path().join("in.wav"),
        dir.path().join(format!("out.{ext}")),
    );
    std::fs::write(&src, audio)?;
    tool(
        std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-nostdin", "-i"])
            .arg(&src)
            .args(args)
            .arg(&dst),
    )?;
    Ok(std::fs::read(&dst)?)
}

async fn compressed_audio_is_transcribed(backend: Backend) -> anyhow::Result<()> {
    let app = spawn(backend).await?;
    let guest = app.guest().await?;
    app.wait_idle(Duration::from_secs(60)).await?;
    let wav = tts(&app, &guest, json!({"text": "one two three four five"}))
        .await?
        .bytes()
        .await?
        .to_vec();
    let seconds = cognomega_core::voice::wav_info(&wav)
        .map_err(anyhow::Error::msg)?
        .seconds;
    // What browsers record (webm and ogg with Opus), and the older codecs.
    for (name, ext, args) in [
        ("webm/opus", "webm", &["-c:a", "libopus"][..]),
        ("ogg/opus", "ogg", &["-c:a", "libopus"][..]),
        ("ogg/vorbis", "ogg", &["-c:a", "libvorbis"][..]),
        ("mp3", "mp3", &["-c:a", "libmp3lame"][..]),
    ] {
        let audio = ffmpeg(&wav, ext, args)?;
        let resp = stt(&app, &guest, audio, "").await?;
        assert_eq!(resp.status(), StatusCode::OK, "{name}");
        let body: Value = resp.json().await?;
        let measured = body["audio_seconds"].as_f64().unwrap_or(0.0);
        // Codecs pad a frame or two at the edges.
        assert!(
            (measured - seconds).abs() < 0.1,
            "{name}: {measured} s vs {seconds} s"
        );
        assert!(
            !body["text"].as_str().unwrap_or_default().is_empty(),
            "{name}: {body}"
        );
    }
    // A webm whose stream is cut: refused before any provider, billing nothing more.
    let webm = ffmpeg(&wav, "webm", &["-c:a", "libopus"])?;
    let resp = stt(&app, &guest, webm[..60].to_vec(), "").await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    app.stop().await
}

/// The job `id` once it reached a final status.
async fn finished_job(app: &TestApp, guest: &Guest, id: &str) -> anyhow::Result<Value> {
    cognomega_testkit::wait_for(Duration::from_secs(120), || async {
        let job: Value = app
            .client
            .get(app.url(&format!("/jobs/{id}")))
            .bearer_auth(&guest.token)
            .send()
            .await?
            .json()
            .await?;
        let done = matches!(
            job["status"].as_str(),
            Some("succeeded" | "failed" | "cancelled" | "dead")
        );
        Ok(done.then_some(job))
    })
    .await
}

async fn render(
    app: &TestApp,
    guest: &Guest,
    body: &Value,
    headers: &[(&str, &str)],
) -> anyhow::Result<reqwest::Response> {
    let mut req = app
        .client
        .post(app.url("/voice/tts"))
        .bearer_auth(&guest.token)
        .json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Ok(req.send().await?)
}

async fn long_texts_render_as_jobs(backend: Backend) -> anyhow::Result<()> {
    let app = TestApp::spawn_custom(backend, true, None, |api| {
        api.voice_tts_inline_chars = 60;
    })
    .await?;
    let guest = app.guest().await?;
    app.wait_idle(Duration::from_secs(60)).await?;
    let before = app.balance(&guest).await?;

    // About 900 characters: over the inline bound, under the guest's cap, three chunks.
    let text = cognomega_core::voice::round_trip_text(900);
    let body = json!({"text": text, "format": "ogg", "voice": "en-us"});
    let resp = render(&app, &guest, &body, &[("idempotency-key", "render-1")]).await?;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let location = header(&resp, "location");
    let queued: Value = resp.json().await?;
    let id = queued["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(location, format!("/jobs/{id}"));
    assert_eq!(queued["status"], "queued");
    // The same key: the same job, nothing queued twice.
    let again = render(&app, &guest, &body, &[("idempotency-key", "render-1")]).await?;
    assert_eq!(again.status(), StatusCode::OK);
    assert_eq!(again.json::<Value>().await?["id"], id.as_str());

    let job = finished_job(&app, &guest, &id).await?;
    assert_eq!(job["status"], "succeeded", "{job}");
    assert_eq!(job["type"], "tts_render");
    assert_eq!(job["progress"], 1.0);
    let names: Vec<&str> = job["artifacts"]
        .as_array()
        .map(|a| a.iter().filter_map(|a| a["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names.len(), 2, "{job}");
    assert!(names.contains(&"speech.ogg") && names.contains(&"render.json"));
    let fetch = |name: &'static str| {
        let (app, guest, id) = (&app, &guest, &id);
        async move {
            let resp = app
                .client
                .get(app.url(&format!("/jobs/{id}/artifacts/{name}")))
                .bearer_auth(&guest.token)
                .send()
                .await?;
            anyhow::ensure!(resp.status() == StatusCode::OK, "{name}: {}", resp.status());
            Ok::<_, anyhow::Error>((header(&resp, "content-type"), resp.bytes().await?.to_vec()))
        }
    };
    let (ctype, report) = fetch("render.json").await?;
    assert!(ctype.starts_with("application/json"), "{ctype}");
    let report: Value = serde_json::from_slice(&report)?;
    assert_eq!(report["chunks"], 3, "{report}");
    assert_eq!(report["voice"], "en-us");
    assert_eq!(report["providers"], json!(["local"]));
    assert_eq!(report["characters"], text.trim().chars().count());
    let seconds = report["audio_seconds"].as_f64().unwrap_or(0.0);
    let (ctype, audio) = fetch("speech.ogg").await?;
    assert_eq!(ctype, "audio/ogg");
    let measured = sox_seconds(&audio, "ogg")?;
    assert!(
        seconds > 30.0 && (seconds - measured).abs() <= measured * 0.05,
        "render.json {seconds} s vs sox {measured} s"
    );

    // Billed once, as the audio's seconds, and shown on the job.
    app.wait_idle(Duration::from_secs(60)).await?;
    let billed = seconds.ceil() as i64;
    assert_eq!(audio_usage(&app, &guest).await?, (1, billed));
    let charged = job["credits_charged"].as_i64().unwrap_or(-1);
    assert!(charged > 0);
    assert_eq!(app.balance(&guest).await?, before - charged);

    // A short text with Prefer: respond-async is a job too; a cancel that lands before it
    // succeeds bills nothing.
    let resp = render(
        &app,
        &guest,
        &json!({"text": "Later, please."}),
        &[("prefer", "wait=5, respond-async")],
    )
    .await?;
    assert_eq!(resp.status(), StatusCode::ACCEPTED);
    let short = resp.json::<Value>().await?["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let cancel = app
        .client
        .post(app.url(&format!("/jobs/{short}/cancel")))
        .bearer_auth(&guest.token)
        .send()
        .await?
        .status();
    let short_job = finished_job(&app, &guest, &short).await?;
    let expect = if cancel == StatusCode::CONFLICT {
        "succeeded"
    } else {
        "cancelled"
    };
    assert_eq!(short_job["status"], expect, "cancel answered {cancel}");
    app.wait_idle(Duration::from_secs(60)).await?;
    let (events, _) = audio_usage(&app, &guest).await?;
    assert_eq!(events, if expect == "succeeded" { 2 } else { 1 });

    // Refused before anything is queued: over the tier's cap, a provider not configured,
    // and the job type through POST /jobs (which would skip the caps).
    let resp = render(&app, &guest, &json!({"text": "a ".repeat(600)}), &[]).await?;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        resp.json::<Value>().await?["error"]["code"],
        "text_too_long"
    );
    let resp = render(
        &app,
        &guest,
        &json!({"text": text, "provider": "cartesia"}),
        &[],
    )
    .await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let err: Value = resp.json().await?;
    assert_eq!(err["error"]["code"], "invalid_params");
    assert!(
        err["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not configured")),
        "{err}"
    );
    let resp = app
        .client
        .post(app.url("/jobs"))
        .bearer_auth(&guest.token)
        .json(&json!({"type": "tts_render", "input": {"image_base64": "aGVsbG8="}}))
        .send()
        .await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let err: Value = resp.json().await?;
    assert_eq!(err["error"]["code"], "job_type_not_submittable", "{err}");
    let resp = render(&app, &guest, &body, &[("idempotency-key", " ")]).await?;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let jobs: Value = app
        .client
        .get(app.url("/jobs?type=tts_render"))
        .bearer_auth(&guest.token)
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(jobs["jobs"].as_array().map(Vec::len), Some(2), "{jobs}");
    app.stop().await
}

/// What the edge measures and decodes in process (`cognomega_core::audio`), judged against
/// sox and ffmpeg on the same files: each format's length within 5 %, and MP3 decoded to a WAV
/// of the same length.
#[test]
fn in_process_audio_agrees_with_sox_and_ffmpeg() -> anyhow::Result<()> {
    use cognomega_core::audio;
    use cognomega_core::voice::AudioFormat;
    let wav = sox_made(&["-r", "24000"], &["synth", "2.5", "sine", "440"])?;
    assert!(
        (audio::duration(&wav, AudioFormat::Wav).map_err(anyhow::Error::msg)? - 2.5).abs() < 1e-9
    );
    for (ext, args) in [
        ("ogg", &["-c:a", "libvorbis"][..]),
        ("opus.ogg", &["-c:a", "libopus", "-f", "ogg"][..]),
        ("mp3", &["-c:a", "libmp3lame"][..]),
        ("webm", &["-c:a", "libopus"][..]),
    ] {
        let encoded = ffmpeg(&wav, ext, args)?;
        let format =
            AudioFormat::sniff(&encoded).ok_or_else(|| anyhow::anyhow!("{ext}: not sniffed"))?;
        let seconds =
            audio::duration(&encoded, format).map_err(|e| anyhow::anyhow!("{ext}: {e}"))?;
        assert!(
            (seconds - 2.5).abs() <= 2.5 * 0.05,
            "{ext}: {seconds} s, made from 2.5 s"
        );
        if ext == "ogg" || ext == "mp3" {
            let sox = sox_seconds(&encoded, ext)?;
            assert!(
                (seconds - sox).abs() <= sox * 0.05,
                "{ext}: {seconds} s vs sox {sox} s"
            );
        }
    }
    let mp3 = ffmpeg(&wav, "mp3", &["-c:a", "libmp3lame"])?;
    assert_eq!(audio::sample_rate(&mp3, AudioFormat::Mp3), Ok(24_000));
    let decoded = audio::mp3_to_wav(&mp3).map_err(anyhow::Error::msg)?;
    let info = cognomega_core::voice::wav_info(&decoded).map_err(anyhow::Error::msg)?;
    assert_eq!((info.sample_rate, info.channels), (24_000, 1));
    assert!(
        (info.seconds - 2.5).abs() <= 0.1,
        "decoded {} s",
        info.seconds
    );
    // Damaged input is refused, never measured as something.
    assert!(audio::duration(&mp3[..40], AudioFormat::Mp3).is_err());
    assert!(audio::duration(b"OggS and nothing", AudioFormat::Ogg).is_err());
    Ok(())
}

/// The Ogg CRC-32 (polynomial 0x04C11DB7, not reflected, initial value 0, no final xor).
fn ogg_crc(data: &[u8]) -> u32 {
    let mut crc: u32 = 0;
    for &b in data {
        crc ^= u32::from(b) << 24;
        for _ in 0..8 {
            crc = if crc & 0x8000_0000 != 0 {
                (crc << 1) ^ 0x04C1_1DB7
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// Every page of an Ogg stream with its granule position divided by `by` (and its checksum
/// made valid again): a file whose container claims a tenth of its length.
fn forge_ogg_granules(ogg: &[u8], by: u64) -> anyhow::Result<Vec<u8>> {
    let mut out = ogg.to_vec();
    let mut at = 0;
    while at + 27 <= out.len() {
        anyhow::ensure!(&out[at..at + 4] == b"OggS", "no page at {at}");
        let segments = usize::from(out[at + 26]);
        let table = at + 27;
        let body: usize = out[table..table + segments]
            .iter()
            .map(|&l| usize::from(l))
            .sum();
        let end = table + segments + body;
        let granule = u64::from_le_bytes(out[at + 6..at + 14].try_into()?);
        if granule != u64::MAX {
            out[at + 6..at + 14].copy_from_slice(&(granule / by).to_le_bytes());
        }
        out[at + 22..at + 26].copy_from_slice(&[0; 4]);
        let crc = ogg_crc(&out[at..end]);
        out[at + 22..at + 26].copy_from_slice(&crc.to_le_bytes());
        at = end;
    }
    Ok(out)
}

/// A file whose container claims to be short is measured (and billed) by what it holds: the
/// edge's in-process measurement reads packet durations from the codec's bitstream.
#[test]
fn forged_container_timestamps_do_not_shorten_the_bill() -> anyhow::Result<()> {
    use cognomega_core::audio;
    use cognomega_core::voice::AudioFormat;
    let wav = sox_made(&["-r", "48000"], &["synth", "4", "sine", "300"])?;
    for (ext, args) in [
        ("opus.ogg", &["-c:a", "libopus", "-f", "ogg"][..]),
        ("ogg", &["-c:a", "libvorbis"][..]),
    ] {
        let honest = ffmpeg(&wav, ext, args)?;
        let forged = forge_ogg_granules(&honest, 10)?;
        assert_ne!(honest, forged);
        let seconds = audio::duration(&forged, AudioFormat::Ogg).map_err(anyhow::Error::msg)?;
        assert!(
            (seconds - 4.0).abs() <= 0.2,
            "{ext}: a file of 4 s whose pages claim 0.4 s measured {seconds} s"
        );
    }
    Ok(())
}
