//! A stand-in model provider for tests and benchmarks: a real HTTP server on loopback speaking
//! both OpenAI chat completions (`POST /v1/chat/completions`, JSON or SSE with usage) and
//! Workers AI REST (`POST /client/v4/accounts/{account}/ai/run/{model}`, JSON or SSE). Its
//! behaviour can be switched at run time (fail with a status, hang, stream slowly, omit usage)
//! and it records every call it receives.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

/// What the fake answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Behaviour {
    /// Answer `text` (split on spaces when streaming), with usage when `usage`.
    Answer {
        /// The answer.
        text: String,
        /// Report token counts.
        usage: bool,
        /// Pause between streamed chunks.
        chunk_delay: Duration,
    },
    /// Answer with this status and an error body in the provider's format.
    Status(u16),
    /// Say nothing for this long, then answer normally.
    Hang(Duration),
}

impl Default for Behaviour {
    fn default() -> Self {
        Self::Answer {
            text: "hello from the fake provider".into(),
            usage: true,
            chunk_delay: Duration::ZERO,
        }
    }
}

/// A call the fake received.
#[derive(Debug, Clone, PartialEq)]
pub struct Received {
    /// `openai` or `cfai` (which protocol).
    pub protocol: &'static str,
    /// The model asked for.
    pub model: String,
    /// `max_tokens` sent.
    pub max_tokens: Option<u64>,
    /// Whether it asked to stream.
    pub stream: bool,
    /// The `Authorization` header.
    pub authorization: Option<String>,
}

#[derive(Debug, Default)]
struct Inner {
    behaviour: Mutex<Behaviour>,
    calls: Mutex<Vec<Received>>,
}

/// A running fake provider.
#[derive(Debug, Clone)]
pub struct FakeProvider {
    addr: SocketAddr,
    inner: Arc<Inner>,
}

/// Serves `app` on a free loopback port, in the background; its address.
async fn serve(app: Router) -> std::io::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(addr)
}

/// Prompt tokens the fake reports: one per 4 bytes of content, at least 1.
#[must_use]
pub fn reported_tokens_in(body: &Value) -> u64 {
    let bytes: usize = body["messages"]
        .as_array()
        .map(|m| {
            m.iter()
                .filter_map(|m| m["content"].as_str())
                .map(str::len)
                .sum()
        })
        .unwrap_or(0);
    (bytes as u64).div_ceil(4).max(1)
}

impl FakeProvider {
    /// Starts one on a free loopback port.
    pub async fn start() -> std::io::Result<Self> {
        let inner = Arc::new(Inner::default());
        let app = Router::new()
            .route("/v1/chat/completions", post(openai))
            .route("/client/v4/accounts/{account}/ai/run/{*model}", post(cfai))
            .with_state(inner.clone());
        Ok(Self {
            addr: serve(app).await?,
            inner,
        })
    }

    /// `http://127.0.0.1:PORT/v1` (an OpenAI/Groq base URL).
    #[must_use]
    pub fn openai_base(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// `http://127.0.0.1:PORT/client/v4` (a Workers AI base URL).
    #[must_use]
    pub fn cfai_base(&self) -> String {
        format!("http://{}/client/v4", self.addr)
    }

    /// Switches what it answers.
    pub fn set(&self, behaviour: Behaviour) {
        *self
            .inner
            .behaviour
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = behaviour;
    }

    /// The calls received so far.
    #[must_use]
    pub fn calls(&self) -> Vec<Received> {
        self.inner
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn record(
    inner: &Inner,
    protocol: &'static str,
    model: String,
    body: &Value,
    auth: Option<String>,
) -> Behaviour {
    inner
        .calls
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(Received {
            protocol,
            model,
            max_tokens: body["max_tokens"].as_u64(),
            stream: body["stream"].as_bool().unwrap_or(false),
            authorization: auth,
        });
    inner
        .behaviour
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone()
}

fn auth(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

/// The answer after any hang.
async fn settle(behaviour: Behaviour) -> Result<(String, bool, Duration), u16> {
    match behaviour {
        Behaviour::Answer {
            text,
            usage,
            chunk_delay,
        } => Ok((text, usage, chunk_delay)),
        Behaviour::Status(s) => Err(s),
        Behaviour::Hang(d) => {
            tokio::time::sleep(d).await;
            let Behaviour::Answer {
                text,
                usage,
                chunk_delay,
            } = Behaviour::default()
            else {
                return Err(500);
            };
            Ok((text, usage, chunk_delay))
        }
    }
}

fn words(text: &str) -> Vec<String> {
    let mut out: Vec<String> = text.split(' ').map(|w| format!("{w} ")).collect();
    if let Some(last) = out.last_mut() {
        last.pop();
    }
    out
}

fn sse(events: Vec<Value>, delay: Duration) -> Response {
    let stream = futures::stream::unfold(
        (events.into_iter(), true),
        move |(mut it, first)| async move {
            if !first && !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
            let data = match it.next() {
                Some(v) => v.to_string(),
                None => return None,
            };
            Some((
                Ok::<_, Infallible>(Event::default().data(data)),
                (it, false),
            ))
        },
    );
    let done =
        futures::stream::once(async { Ok::<_, Infallible>(Event::default().data("[DONE]")) });
    Sse::new(futures::StreamExt::chain(stream, done)).into_response()
}

async fn openai(
    State(inner): State<Arc<Inner>>,
    headers: http::HeaderMap,
    Json(body): Json<Value>,
) -> Response {
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let behaviour = record(&inner, "openai", model.clone(), &body, auth(&headers));
    let (text, usage, delay) = match settle(behaviour).await {
        Ok(a) => a,
        Err(status) => {
            let code = http::StatusCode::from_u16(status)
                .unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
            return (
                code,
                Json(
                    json!({"error": {"message": format!("fake failure {status}"), "type": "fake"}}),
                ),
            )
                .into_response();
        }
    };
    let tokens_in = reported_tokens_in(&body);
    let tokens_out = words(&text).len() as u64;
    let usage_json = json!({"prompt_tokens": tokens_in, "completion_tokens": tokens_out, "total_tokens": tokens_in + tokens_out});
    if body["stream"].as_bool().unwrap_or(false) {
        let mut events: Vec<Value> = words(&text)
            .into_iter()
            .map(|w| json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model, "choices": [{"index": 0, "delta": {"content": w}}]}))
            .collect();
        if usage {
            events.push(json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "model": model, "choices": [], "usage": usage_json}));
        }
        return sse(events, delay);
    }
    let mut answer = json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
    });
    if usage {
        answer["usage"] = usage_json;
    }
    Json(answer).into_response()
}

/// The transcript the fake Workers AI's Whisper hears in any audio.
pub const WHISPER_TRANSCRIPT: &str = "hello from the fake whisper";

async fn cfai(
    State(inner): State<Arc<Inner>>,
    Path((_account, model)): Path<(String, String)>,
    headers: http::HeaderMap,
    raw: axum::body::Bytes,
) -> Response {
    let failure = |status: u16| {
        let code =
            http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
        (code, Json(json!({"success": false, "errors": [{"code": 7000, "message": format!("fake failure {status}")}], "messages": [], "result": null}))).into_response()
    };
    // Whisper takes the audio as the raw body; every other model takes JSON.
    if model == "@cf/openai/whisper" {
        let behaviour = record(
            &inner,
            "cfai",
            model,
            &json!({"audio_bytes": raw.len()}),
            auth(&headers),
        );
        if let Err(status) = settle(behaviour).await {
            return failure(status);
        }
        if raw.is_empty() {
            return (http::StatusCode::BAD_REQUEST, Json(json!({"success": false, "errors": [{"code": 5006, "message": "no audio"}], "messages": [], "result": null}))).into_response();
        }
        let words: Vec<Value> = WHISPER_TRANSCRIPT
            .split(' ')
            .enumerate()
            .map(|(i, w)| json!({"word": w, "start": i as f64 * 0.3, "end": i as f64 * 0.3 + 0.25}))
            .collect();
        return Json(json!({"result": {"text": WHISPER_TRANSCRIPT, "word_count": words.len(), "words": words, "vtt": ""}, "success": true, "errors": [], "messages": []})).into_response();
    }
    let Ok(body) = serde_json::from_slice::<Value>(&raw) else {
        return (http::StatusCode::BAD_REQUEST, Json(json!({"success": false, "errors": [{"code": 5006, "message": "the body is not JSON"}], "messages": [], "result": null}))).into_response();
    };
    if model == "@cf/myshell-ai/melotts" {
        let behaviour = record(&inner, "cfai", model, &body, auth(&headers));
        if let Err(status) = settle(behaviour).await {
            return failure(status);
        }
        let prompt = body["prompt"].as_str().unwrap_or_default();
        if prompt.is_empty() {
            return (http::StatusCode::BAD_REQUEST, Json(json!({"success": false, "errors": [{"code": 5006, "message": "prompt is required"}], "messages": [], "result": null}))).into_response();
        }
        // 50 ms per character at 24 kHz, as MP3.
        let frames = prompt.chars().count() as u64 * 24_000 / 20;
        let mp3 = match fake_wav(24_000, frames) {
            Ok(wav) => to_mp3(wav).await,
            Err(e) => Err(e),
        };
        return match mp3 {
            Ok(mp3) => {
                use base64::Engine as _;
                let audio = base64::engine::general_purpose::STANDARD.encode(mp3);
                Json(json!({"result": {"audio": audio}, "success": true, "errors": [], "messages": []})).into_response()
            }
            Err(_) => failure(500),
        };
    }
    let behaviour = record(&inner, "cfai", model, &body, auth(&headers));
    let (text, usage, delay) = match settle(behaviour).await {
        Ok(a) => a,
        Err(status) => return failure(status),
    };
    let tokens_in = reported_tokens_in(&body);
    let tokens_out = words(&text).len() as u64;
    let usage_json = json!({"prompt_tokens": tokens_in, "completion_tokens": tokens_out, "total_tokens": tokens_in + tokens_out});
    if body["stream"].as_bool().unwrap_or(false) {
        let mut events: Vec<Value> = words(&text)
            .into_iter()
            .map(|w| json!({"response": w}))
            .collect();
        if usage {
            events.push(json!({"response": "", "usage": usage_json}));
        }
        return sse(events, delay);
    }
    let mut result = json!({"response": text});
    if usage {
        result["usage"] = usage_json;
    }
    Json(json!({"result": result, "success": true, "errors": [], "messages": []})).into_response()
}

/// A call the fake Cartesia received.
#[derive(Debug, Clone, PartialEq)]
pub struct CartesiaCall {
    /// The path called.
    pub path: String,
    /// The `Cartesia-Version` header.
    pub version: Option<String>,
    /// The `Authorization` header.
    pub authorization: Option<String>,
    /// The JSON body (`/tts/bytes`), or the form's text fields (`/stt`) as an object.
    pub body: Value,
}

#[derive(Debug, Default)]
struct CartesiaInner {
    key: String,
    fail_with: Mutex<Option<u16>>,
    calls: Mutex<Vec<CartesiaCall>>,
}

/// A stand-in for Cartesia on loopback: `POST /tts/bytes` (WAV or MP3 of 50 ms per character
/// of the transcript, at the requested sample rate), `GET /tts/websocket` (the same audio as
/// raw `pcm_s16le` in `chunk` messages of 100 ms, then `done`, per context), `GET /voices`, `POST /stt` (multipart,
/// a fixed transcript with word timestamps). It checks what Cartesia checks (the version
/// header, the bearer key, the body's fields and values) and answers errors in Cartesia's
/// shape (`{"error": …}`), and can be switched to fail every call with a status.
#[derive(Debug, Clone)]
pub struct FakeCartesia {
    addr: SocketAddr,
    inner: Arc<CartesiaInner>,
}

/// The transcript the fake Cartesia hears in any audio.
pub const CARTESIA_TRANSCRIPT: &str = "hello from the fake transcriber";

impl FakeCartesia {
    /// Starts one accepting `key`.
    pub async fn start(key: &str) -> std::io::Result<Self> {
        let inner = Arc::new(CartesiaInner {
            key: key.to_owned(),
            ..CartesiaInner::default()
        });
        let app = Router::new()
            .route("/tts/bytes", post(cartesia_tts))
            .route("/tts/websocket", axum::routing::get(cartesia_websocket))
            .route("/voices", axum::routing::get(cartesia_voices))
            .route("/stt", post(cartesia_stt))
            .with_state(inner.clone());
        Ok(Self {
            addr: serve(app).await?,
            inner,
        })
    }

    /// `http://127.0.0.1:PORT` (a `CARTESIA_BASE_URL`).
    #[must_use]
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Fails every call with `status` (`None`: answers again).
    pub fn fail_with(&self, status: Option<u16>) {
        *self
            .inner
            .fail_with
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = status;
    }

    /// The calls received so far.
    #[must_use]
    pub fn calls(&self) -> Vec<CartesiaCall> {
        self.inner
            .calls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
}

fn cartesia_error(status: u16, message: &str) -> Response {
    let status =
        http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(json!({ "error": message }))).into_response()
}

/// Records the call; an error answer when the fake is failing or the call lacks the version
/// header or the key.
fn cartesia_gate(
    inner: &CartesiaInner,
    path: &str,
    headers: &http::HeaderMap,
    body: Value,
) -> Option<Response> {
    let version = headers
        .get("cartesia-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let authorization = auth(headers);
    inner
        .calls
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .push(CartesiaCall {
            path: path.to_owned(),
            version: version.clone(),
            authorization: authorization.clone(),
            body,
        });
    if let Some(status) = *inner
        .fail_with
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
    {
        let message = if status == 429 {
            "rate limit exceeded"
        } else {
            "internal error"
        };
        return Some(cartesia_error(status, message));
    }
    if version.is_none() {
        return Some(cartesia_error(400, "missing Cartesia-Version header"));
    }
    if authorization.as_deref() != Some(&format!("Bearer {}", inner.key)) {
        return Some(cartesia_error(401, "invalid API key"));
    }
    None
}

async fn cartesia_tts(
    State(inner): State<Arc<CartesiaInner>>,
    headers: http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let parsed: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let Some(refused) = cartesia_gate(&inner, "/tts/bytes", &headers, parsed.clone()) {
        return refused;
    }
    let transcript = parsed["transcript"].as_str().unwrap_or_default();
    if parsed["model_id"].as_str().is_none() || transcript.is_empty() {
        return cartesia_error(400, "model_id and transcript are required");
    }
    if parsed["voice"]["mode"] != "id" || parsed["voice"]["id"].as_str().is_none() {
        return cartesia_error(400, "voice must be {\"mode\":\"id\",\"id\":…}");
    }
    let format = &parsed["output_format"];
    let rate = format["sample_rate"].as_u64().unwrap_or(0);
    if ![8000, 16000, 22050, 24000, 44100, 48000].contains(&rate) {
        return cartesia_error(
            400,
            "output_format.sample_rate must be one of 8000, 16000, 22050, 24000, 44100, 48000",
        );
    }
    let container = format["container"].as_str().unwrap_or_default();
    let rate = u32::try_from(rate).unwrap_or(44_100);
    let frames = (transcript.chars().count() as u64 * u64::from(rate)) / 20;
    let wav = match fake_wav(rate, frames) {
        Ok(w) => w,
        Err(e) => return cartesia_error(500, &e),
    };
    match container {
        "wav" if format["encoding"] == "pcm_s16le" => {
            ([(http::header::CONTENT_TYPE, "audio/wav")], wav).into_response()
        }
        "mp3" => match to_mp3(wav).await {
            Ok(mp3) => ([(http::header::CONTENT_TYPE, "audio/mpeg")], mp3).into_response(),
            Err(e) => cartesia_error(500, &e),
        },
        _ => cartesia_error(
            400,
            "output_format: container wav (encoding pcm_s16le) or mp3",
        ),
    }
}

/// `/tts/websocket`: the handshake checked and recorded as a call, then each generation
/// request (recorded as a call with its body) answered in chunks.
async fn cartesia_websocket(
    State(inner): State<Arc<CartesiaInner>>,
    headers: http::HeaderMap,
    upgrade: axum::extract::ws::WebSocketUpgrade,
) -> Response {
    if let Some(refused) = cartesia_gate(&inner, "/tts/websocket", &headers, Value::Null) {
        return refused;
    }
    let version = headers
        .get("cartesia-version")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let authorization = auth(&headers);
    upgrade.on_upgrade(move |mut socket| async move {
        use axum::extract::ws::Message;
        while let Some(Ok(msg)) = socket.recv().await {
            let Message::Text(text) = msg else { continue };
            let req: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
            inner
                .calls
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(CartesiaCall {
                    path: "/tts/websocket".into(),
                    version: version.clone(),
                    authorization: authorization.clone(),
                    body: req.clone(),
                });
            for out in cartesia_generation(&req) {
                if socket
                    .send(Message::Text(out.to_string().into()))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }
    })
}

/// The messages answering one `/tts/websocket` generation request.
fn cartesia_generation(req: &Value) -> Vec<Value> {
    use base64::Engine as _;
    let context = req["context_id"].clone();
    let error = |message: &str| {
        vec![
            json!({"type": "error", "done": true, "status_code": 400, "error": message, "context_id": context}),
        ]
    };
    let transcript = req["transcript"].as_str().unwrap_or_default();
    if req["model_id"].as_str().is_none() || transcript.is_empty() || !context.is_string() {
        return error("model_id, transcript and context_id are required");
    }
    if req["voice"]["mode"] != "id" || req["voice"]["id"].as_str().is_none() {
        return error("voice must be {\"mode\":\"id\",\"id\":…}");
    }
    let format = &req["output_format"];
    let rate = format["sample_rate"].as_u64().unwrap_or(0);
    if format["container"] != "raw"
        || format["encoding"] != "pcm_s16le"
        || ![8000, 16000, 22050, 24000, 44100, 48000].contains(&rate)
    {
        return error("output_format: container raw, encoding pcm_s16le, a supported sample_rate");
    }
    let rate = u32::try_from(rate).unwrap_or(16_000);
    let frames = (transcript.chars().count() as u64 * u64::from(rate)) / 20;
    let Ok(wav) = fake_wav(rate, frames) else {
        return error("internal error");
    };
    let pcm = &wav[44.min(wav.len())..];
    let mut out: Vec<Value> = pcm
        .chunks(rate as usize / 5)
        .map(|c| {
            json!({"type": "chunk", "data": base64::engine::general_purpose::STANDARD.encode(c),
                   "done": false, "status_code": 206, "step_time": 1, "context_id": context})
        })
        .collect();
    out.push(json!({"type": "done", "done": true, "status_code": 206, "context_id": context}));
    out
}

/// A tone of `frames` 16-bit mono samples.
fn fake_wav(rate: u32, frames: u64) -> Result<Vec<u8>, String> {
    let spec = hound::WavSpec {
        channels: 1,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let mut out = std::io::Cursor::new(Vec::new());
    let mut w = hound::WavWriter::new(&mut out, spec).map_err(|e| e.to_string())?;
    for i in 0..frames {
        let t = i as f64 / f64::from(rate);
        let sample = (t * 440.0 * std::f64::consts::TAU).sin() * 8_000.0;
        w.write_sample(sample as i16).map_err(|e| e.to_string())?;
    }
    w.finalize().map_err(|e| e.to_string())?;
    Ok(out.into_inner())
}

/// MP3 from WAV, by sox.
async fn to_mp3(wav: Vec<u8>) -> Result<Vec<u8>, String> {
    use tokio::io::AsyncWriteExt as _;
    let mut child = tokio::process::Command::new("sox")
        .args(["-t", "wav", "-", "-t", "mp3", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("sox: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("sox: no stdin")?;
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&wav).await;
    });
    let out = child.wait_with_output().await.map_err(|e| e.to_string())?;
    let _ = writer.await;
    Ok(out.stdout)
}

async fn cartesia_voices(
    State(inner): State<Arc<CartesiaInner>>,
    headers: http::HeaderMap,
) -> Response {
    if let Some(refused) = cartesia_gate(&inner, "/voices", &headers, Value::Null) {
        return refused;
    }
    Json(json!({
        "data": [
            {"id": "fake-voice-1", "name": "Fake One", "language": "en"},
            {"id": "fake-voice-2", "name": "Fake Two", "language": "de"},
        ],
        "has_more": false,
    }))
    .into_response()
}

async fn cartesia_stt(
    State(inner): State<Arc<CartesiaInner>>,
    headers: http::HeaderMap,
    mut form: axum::extract::Multipart,
) -> Response {
    let mut fields = serde_json::Map::new();
    let mut file: Option<Vec<u8>> = None;
    loop {
        match form.next_field().await {
            Ok(Some(field)) => {
                let name = field.name().unwrap_or_default().to_owned();
                match field.bytes().await {
                    Ok(bytes) if name == "file" => file = Some(bytes.to_vec()),
                    Ok(bytes) => {
                        fields.insert(
                            name,
                            Value::String(String::from_utf8_lossy(&bytes).into_owned()),
                        );
                    }
                    Err(_) => return cartesia_error(400, "a broken multipart body"),
                }
            }
            Ok(None) => break,
            Err(_) => return cartesia_error(400, "a broken multipart body"),
        }
    }
    let fields = Value::Object(fields);
    if let Some(refused) = cartesia_gate(&inner, "/stt", &headers, fields.clone()) {
        return refused;
    }
    if fields["model"] != "ink-whisper" {
        return cartesia_error(400, "model must be ink-whisper");
    }
    let Some(file) = file.filter(|f| !f.is_empty()) else {
        return cartesia_error(400, "file is required");
    };
    let duration = cognomega_core::voice::wav_info(&file).map_or(1.0, |i| i.seconds);
    let words: Vec<Value> = CARTESIA_TRANSCRIPT
        .split(' ')
        .enumerate()
        .map(|(i, w)| {
            let start = duration * i as f64 / 5.0;
            json!({"word": w, "start": start, "end": start + duration / 6.0})
        })
        .collect();
    Json(json!({
        "type": "transcript",
        "text": CARTESIA_TRANSCRIPT,
        "request_id": "fake",
        "is_final": true,
        "language": fields["language"].as_str().unwrap_or("en"),
        "duration": duration,
        "words": words,
    }))
    .into_response()
}
