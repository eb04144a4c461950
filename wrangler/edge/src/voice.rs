//! The voice service on the edge (the `ai` Worker): `POST /voice/tts`, `POST /voice/stt` and
//! `GET /voice/voices` through the workflow the native host runs (`cognomega_workflows::voice`:
//! caps, standing, providers, `audio_seconds` billed once through the usage queue), spoken by
//! Workers AI's MeloTTS and heard by its Whisper — over the AI binding, or over REST when the
//! Worker has none, as asks are. There are no engines to run here: audio is measured from its
//! container and MP3 decoded in process (`cognomega_core::audio`), so the edge answers wav and
//! mp3 (ogg ⇒ 415) — wav resampled in process to the rate asked for, mp3 at the model's own.
//! A long text in wav renders as a `tts_render` job ([`job_types`]: the `jobs-tts-render`
//! Worker speaks it chunk by chunk); one in mp3 is spoken inline (nothing here encodes mp3).
//! Realtime sessions (`GET /voice/sessions`) run the native host's session workflow in a Durable Object
//! per session ([`VoiceSession`]).

use std::time::Duration;

use cognomega_core::api::Refusal;
use cognomega_core::audio;
use cognomega_core::auth::Claims;
use cognomega_core::limits::CostMetric;
use cognomega_core::settings::VoiceFileConfig;
use cognomega_core::sql::{Executor, Outbound, SqlError, Transaction};
use cognomega_core::voice::{wav_info, Answered, AudioFormat, Heard, Speech, Spoken, VoiceFailure};
use cognomega_pipelines::{JobType, Registry};
use cognomega_providers::protocol::Protocol;
use cognomega_providers::voice_protocol::cfai;
use cognomega_workflows::submit::SubmitSettings;
use cognomega_workflows::tts_render::{self, TtsRender};
use cognomega_workflows::voice::Recv;
use cognomega_workflows::voice::{self, Caller as VoiceCaller, VoiceHost, VoiceSettings};
use futures::{FutureExt as _, StreamExt as _};
use serde::Serialize;
use std::sync::Arc;
use worker::{
    durable_object, DurableObject, Env, EventStream, Fetch, Headers, Method, Request, RequestInit,
    Response, State, WebSocket, WebSocketPair, WebsocketEvent,
};

use crate::host::Writes;
use crate::http::{self, ApiError, ApiResult, Caller};
use crate::sql::Pg;

/// The one provider here.
const PROVIDER: &str = "cfai";

/// A session whose heart has not beaten for this long is settled by the sweep (the outbox
/// relay cron, every minute).
const SESSION_STALE_MS: i64 = 60_000;

/// How far speech may run ahead of playback (see [`Socket`]).
const LEAD_MS: f64 = 2_000.0;

pub async fn route(req: &mut Request, env: &Env, caller: &Caller) -> ApiResult {
    match (req.method(), req.path().as_str()) {
        (Method::Post, "/voice/tts") => tts(req, env, caller).await,
        (Method::Post, "/voice/stt") => stt(req, env, caller).await,
        (Method::Get, "/voice/sessions") => session(req, env, caller).await,
        (Method::Get | Method::Head, "/voice/voices") => {
            caller.claims()?;
            let providers = [serde_json::json!({"provider": PROVIDER, "voices": cfai::voices()})];
            http::json(200, &serde_json::json!({ "providers": providers }))
        }
        (_, "/voice/tts" | "/voice/stt" | "/voice/voices" | "/voice/sessions") => {
            Err(http::no_route(true))
        }
        _ => Err(http::no_route(false)),
    }
}

/// The voice settings: the `[voice]` table of `COGNOMEGA_CONFIG_TOML` (caps, stale period,
/// inline bound; `COGNOMEGA_VOICE_TTS_INLINE_CHARS` wins), as natively.
pub(crate) fn settings<'a>(
    env: &Env,
    voice: &'a VoiceFileConfig,
    billing: &'a cognomega_core::billing::BillingConfig,
) -> VoiceSettings<'a> {
    let inline_chars = crate::config::var(env, "COGNOMEGA_VOICE_TTS_INLINE_CHARS")
        .and_then(|v| v.parse().ok())
        .or(voice.tts_inline_chars)
        .unwrap_or(cognomega_core::voice::TTS_INLINE_CHARS);
    VoiceSettings {
        policy: &voice.policy,
        prices: &billing.prices,
        floor: billing.guest_floor,
        session_stale_ms: voice.session_stale_secs.map_or(SESSION_STALE_MS, |s| {
            i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)
        }),
        inline_chars,
        // Nothing here encodes ogg or mp3: a long text in those is spoken inline.
        render_formats: &[AudioFormat::Wav],
    }
}

/// The job types this deployment runs: the pipelines' own, and `tts_render` (the long texts
/// of `POST /voice/tts`) spoken by Workers AI, as [`synthesize`] speaks.
pub fn job_types(env: &Env) -> Registry {
    let mut types: Vec<Arc<dyn JobType>> =
        cognomega_pipelines::registry().iter().cloned().collect();
    types.push(Arc::new(TtsRender::new(Arc::new(Speaker {
        env: env.clone(),
    }))));
    Registry::new(types)
}

/// The names of [`job_types`] (each has its queue).
pub fn job_type_names() -> Vec<&'static str> {
    let mut names = cognomega_pipelines::registry().names();
    names.push(tts_render::NAME);
    names.sort_unstable();
    names
}

/// A `tts_render` job's speaker: Workers AI, wav only (a render's audio is joined as PCM and
/// nothing here encodes ogg or mp3, so the route renders only wav: see [`settings`]).
struct Speaker {
    env: Env,
}

impl std::fmt::Debug for Speaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Speaker(cfai)")
    }
}

#[async_trait::async_trait(?Send)]
impl tts_render::Speaker for Speaker {
    fn providers(&self) -> Vec<&'static str> {
        vec![PROVIDER]
    }

    async fn synthesize(&self, speech: &Speech) -> Result<Answered<Spoken>, Refusal> {
        synthesize(&self.env, speech).await
    }

    async fn encode(&self, _wav: &[u8], to: AudioFormat) -> Result<Vec<u8>, String> {
        Err(format!("this deployment renders wav, not {}", to.as_str()))
    }
}

fn voice_caller<'a>(claims: &'a Claims, caller: &'a Caller) -> VoiceCaller<'a> {
    VoiceCaller {
        tenant: &claims.tenant,
        tier: claims.tier,
        request_id: &caller.request_id,
    }
}

fn with_headers(mut resp: Response, headers: &[(&'static str, String)]) -> ApiResult {
    for (name, value) in headers {
        resp.headers_mut().set(name, value)?;
    }
    Ok(resp)
}

async fn tts(req: &mut Request, env: &Env, caller: &Caller) -> ApiResult {
    let claims = caller.claims()?;
    let key = req.headers().get("idempotency-key")?;
    let respond_async = (req.headers().get("prefer")?).is_some_and(|p| voice::prefers_async(&p));
    let body = req.bytes().await?;
    let file = crate::config::file(env).map_err(ApiError::internal)?;
    let billing = crate::config::billing(env).map_err(ApiError::internal)?;
    let registry = job_types(env);
    let jobs = SubmitSettings {
        registry: &registry,
        floor: billing.guest_floor,
        runs_per_hour: crate::usage::cost_cap(env, claims.tier, CostMetric::JobRunsPerHour)?,
    };
    let db = crate::db::connect(env).await?;
    let host = Writes::new(env, &db);
    let request = voice::TtsRequest {
        body: &body,
        respond_async,
        idempotency_key: key.as_deref().map(str::as_bytes),
    };
    let settings = settings(env, &file.voice, &billing);
    match voice::tts(&host, settings, jobs, voice_caller(claims, caller), request).await? {
        voice::TtsAnswer::Audio(reply) => {
            let resp = Response::from_bytes(reply.audio)?;
            let mut resp = resp.with_status(200);
            resp.headers_mut().set("content-type", reply.content_type)?;
            with_headers(resp, &reply.headers)
        }
        voice::TtsAnswer::Job(submitted) => {
            // The job's message, staged with its row: sent now, or by the relay cron.
            host.relay("tts_render").await;
            crate::jobs::answer(&submitted)
        }
    }
}

async fn stt(req: &mut Request, env: &Env, caller: &Caller) -> ApiResult {
    let claims = caller.claims()?;
    let url = req.url()?;
    let language = url
        .query_pairs()
        .find(|(k, _)| k == "language")
        .map(|(_, v)| v.into_owned());
    let body = req.bytes().await?;
    let file = crate::config::file(env).map_err(ApiError::internal)?;
    let billing = crate::config::billing(env).map_err(ApiError::internal)?;
    let db = crate::db::connect(env).await?;
    let host = Writes::new(env, &db);
    let settings = settings(env, &file.voice, &billing);
    let reply = voice::stt(
        &host,
        settings,
        voice_caller(claims, caller),
        &body,
        language.as_deref(),
    )
    .await?;
    with_headers(http::json(200, &reply.body)?, &reply.headers)
}

/// What the AI binding takes (plain objects: a `serde_json::Value` would cross as a JS Map).
#[derive(Serialize)]
struct TtsInput<'a> {
    prompt: &'a str,
    lang: &'a str,
}

#[derive(Serialize)]
struct SttInput {
    audio: Vec<u8>,
}

fn unavailable(e: impl std::fmt::Display) -> VoiceFailure {
    VoiceFailure::Unavailable(cognomega_providers::protocol::short(&e.to_string()))
}

/// One model run: the AI binding when the Worker has one, else Workers AI's REST API with
/// the deployment's account and token (what asks use).
async fn run(
    env: &Env,
    model: &str,
    binding_input: impl Serialize,
    body: (Vec<u8>, &str),
) -> Result<serde_json::Value, VoiceFailure> {
    let limit = crate::ask::timeout(env).map_err(|e| unavailable(e.message))?;
    if let Ok(ai) = env.ai("AI") {
        return crate::ask::within(limit, ai.run(model, binding_input))
            .await
            .map_err(|_| VoiceFailure::Unavailable(format!("no answer within {limit:?}")))?
            .map_err(unavailable);
    }
    let Some(rest) = crate::ask::cfai_settings(env).map_err(|e| unavailable(e.message))? else {
        return Err(VoiceFailure::Unavailable(
            "Workers AI is not configured (no AI binding, no CF_ACCOUNT_ID + CF_API_TOKEN)".into(),
        ));
    };
    let url = Protocol::WorkersAi.url(&rest, model);
    let headers = Headers::new();
    headers
        .set("authorization", &format!("Bearer {}", rest.api_key))
        .map_err(unavailable)?;
    headers.set("content-type", body.1).map_err(unavailable)?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(worker::js_sys::Uint8Array::from(&body.0[..]).into()));
    let request = Request::new_with_init(&url, &init).map_err(unavailable)?;
    let mut resp = crate::ask::within(limit, Fetch::Request(request).send())
        .await
        .map_err(|_| VoiceFailure::Unavailable(format!("timed out after {limit:?}")))?
        .map_err(unavailable)?;
    let status = resp.status_code();
    let text = resp.text().await.unwrap_or_default();
    let body: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    if !(200..300).contains(&status) {
        let detail = body["errors"][0]["message"]
            .as_str()
            .map_or_else(|| text.chars().take(200).collect(), str::to_owned);
        return Err(cognomega_providers::voice_protocol::http_failure(
            "Workers AI",
            status,
            &detail,
        ));
    }
    Ok(body["result"].clone())
}

/// The route's answer to a failure of the one provider.
fn refused(failure: VoiceFailure) -> Refusal {
    match failure {
        VoiceFailure::Rejected(r) | VoiceFailure::Unsupported(r) => r,
        VoiceFailure::Unavailable(why) => Refusal::new(
            502,
            "voice_provider_failed",
            format!("every voice provider failed (cfai: {why}); retry later"),
        ),
    }
}

fn answered<T>(value: T) -> Answered<T> {
    Answered {
        provider: PROVIDER.to_owned(),
        skipped: Vec::new(),
        value,
    }
}

async fn speak(env: &Env, speech: &Speech) -> Result<Spoken, VoiceFailure> {
    if speech.format == AudioFormat::Ogg {
        return Err(VoiceFailure::Rejected(Refusal::new(
            415,
            "unsupported_format",
            "this deployment answers wav or mp3; ask for one of them (ogg is encoded by the native host)",
        )));
    }
    let (lang, input) = cfai::tts_input(speech)?;
    let prompt = input["prompt"].as_str().unwrap_or_default();
    let binding = TtsInput { prompt, lang };
    let rest = (input.to_string().into_bytes(), "application/json");
    let result = run(env, cfai::TTS_MODEL, binding, rest).await?;
    let mp3 = cfai::tts_audio(&result)?;
    let unreadable = |e: String| VoiceFailure::Unavailable(format!("audio we cannot read: {e}"));
    let (audio, seconds) = if speech.format == AudioFormat::Mp3 {
        let seconds = audio::duration(&mp3, AudioFormat::Mp3).map_err(unreadable)?;
        // MP3 is not encoded here: it goes out at the model's own rate.
        if let Some(asked) = speech.sample_rate {
            let rate = audio::sample_rate(&mp3, AudioFormat::Mp3).map_err(unreadable)?;
            if asked != rate {
                return Err(VoiceFailure::Rejected(Refusal::new(
                    400,
                    "unsupported_sample_rate",
                    format!(
                        "this deployment speaks MP3 at {rate} Hz; leave sample_rate out, ask for {rate}, or ask for wav (any rate)"
                    ),
                )));
            }
        }
        (mp3, seconds)
    } else {
        let mut wav = audio::mp3_to_wav(&mp3).map_err(unreadable)?;
        if let Some(rate) = speech.sample_rate {
            wav = audio::wav_at(wav, rate).map_err(unreadable)?;
        }
        let seconds = wav_info(&wav).map_err(unreadable)?.seconds;
        (wav, seconds)
    };
    Ok(Spoken {
        audio,
        format: speech.format,
        seconds,
        voice: lang.to_owned(),
    })
}

/// Speaks with the one provider here (a request naming another is refused).
async fn synthesize(env: &Env, speech: &Speech) -> Result<Answered<Spoken>, Refusal> {
    if let Some(p) = speech.provider.as_deref().filter(|p| *p != PROVIDER) {
        return Err(Refusal::new(
            400,
            "unknown_provider",
            format!("provider {p:?} is not configured here; configured: {PROVIDER}"),
        ));
    }
    speak(env, speech).await.map(answered).map_err(refused)
}

/// The edge as the voice workflow's host: the write host's connection, outbox and balance,
/// Workers AI, and audio read in process.
#[async_trait::async_trait(?Send)]
impl VoiceHost for Writes<'_> {
    fn reader(&self) -> Box<dyn Executor + '_> {
        Box::new(Pg(self.client()))
    }

    fn db(&self) -> Box<dyn Executor + '_> {
        Box::new(Pg(self.client()))
    }

    async fn begin(&self) -> Result<Box<dyn Transaction + '_>, SqlError> {
        // Its batch is remembered: `relay` sends what it staged (a session's usage).
        cognomega_workflows::ports::WriteHost::begin(self).await
    }

    async fn balance(&self, tenant: &str) -> Result<i64, String> {
        crate::billing::balance(self.env(), tenant)
            .await
            .map(|b| b.balance)
            .map_err(|e| e.message)
    }

    async fn send(&self, message: Outbound<'_>) -> Result<(), String> {
        crate::outbox::send_now(self.env(), &[message]).await
    }

    async fn measure(&self, audio: &[u8], format: AudioFormat) -> Result<f64, Refusal> {
        audio::duration(audio, format).map_err(|e| {
            Refusal::new(
                400,
                "invalid_audio",
                format!(
                    "the audio cannot be decoded ({e}); send whole wav, ogg, mp3 or webm audio"
                ),
            )
        })
    }

    async fn synthesize(&self, speech: &Speech) -> Result<Answered<Spoken>, Refusal> {
        synthesize(self.env(), speech).await
    }

    async fn transcribe(
        &self,
        audio: &[u8],
        format: AudioFormat,
        language: Option<&str>,
    ) -> Result<Answered<Heard>, Refusal> {
        let binding = SttInput {
            audio: audio.to_vec(),
        };
        let rest = (audio.to_vec(), format.content_type());
        let result = run(self.env(), cfai::STT_MODEL, binding, rest)
            .await
            .map_err(refused)?;
        Ok(answered(cfai::heard(&result, language)))
    }

    fn warn(&self, message: &str) {
        worker::console_warn!("voice: {message}");
    }

    async fn sleep(&self, wait: Duration) {
        worker::Delay::from(wait).await;
    }

    fn now_ms(&self) -> i64 {
        worker::Date::now().as_millis() as i64
    }

    fn fresh_id(&self) -> String {
        uuid::Uuid::now_v7().to_string()
    }
}

/// `GET /voice/sessions` in the `ai` Worker: the upgrade goes to a Durable Object of its own
/// (one per session), which admits the session, accepts the socket and runs it.
async fn session(req: &Request, env: &Env, caller: &Caller) -> ApiResult {
    caller.claims()?;
    let upgrade = req.headers().get("upgrade")?.unwrap_or_default();
    if !upgrade.eq_ignore_ascii_case("websocket") {
        return Err(ApiError::new(
            426,
            "websocket_required",
            "open this route as a WebSocket (Upgrade: websocket)",
        ));
    }
    let stub = env
        .durable_object("VOICE_SESSIONS")?
        .unique_id()?
        .get_stub()?;
    Ok(stub.fetch_with_request(req.clone()?).await?)
}

/// One realtime session: the native host's workflow (`voice::open_session`, then
/// `voice::run_session`: the protocol, the caps, the heartbeat, the settlement once) over this
/// Object's WebSocket. Its own Object, so a session's memory and clock are its own.
#[durable_object]
pub struct VoiceSession {
    env: Env,
}

impl DurableObject for VoiceSession {
    fn new(_state: State, env: Env) -> Self {
        Self { env }
    }

    async fn fetch(&self, req: Request) -> worker::Result<Response> {
        let caller = Caller::from_request(&req);
        Ok(match crate::db::scoped(self.open(&req, &caller)).await {
            Ok(resp) => resp,
            Err(e) => e.render(&caller.request_id),
        })
    }
}

impl VoiceSession {
    /// Admits the session (402, 429 `too_many_sessions`: the same checks as natively), then
    /// answers 101 and runs it on this Object until it ends.
    async fn open(&self, req: &Request, caller: &Caller) -> ApiResult {
        let claims = caller.claims()?;
        let voice = req
            .url()?
            .query_pairs()
            .find(|(k, _)| k == "voice")
            .map(|(_, v)| v.into_owned());
        let file = crate::config::file(&self.env).map_err(ApiError::internal)?;
        let billing = crate::config::billing(&self.env).map_err(ApiError::internal)?;
        let db = crate::db::connect(&self.env).await?;
        let opened = voice::open_session(
            &Writes::new(&self.env, &db),
            settings(&self.env, &file.voice, &billing),
            voice_caller(claims, caller),
            voice,
        )
        .await?;
        let WebSocketPair { client, server } = WebSocketPair::new()?;
        // Binary frames as ArrayBuffers (the standard's default, a Blob, cannot be read
        // without waiting).
        let raw: &worker::web_sys::WebSocket = server.as_ref();
        worker::js_sys::Reflect::set(raw, &"binaryType".into(), &"arraybuffer".into())
            .map_err(|e| ApiError::internal(format!("binaryType: {e:?}")))?;
        server.accept()?;
        let env = self.env.clone();
        // The session outlives this request: an Object keeps its socket, its connection and
        // this task for as long as the socket is open.
        wasm_bindgen_futures::spawn_local(crate::db::scoped(async move {
            let host = Writes::new(&env, &db);
            match server.events() {
                Ok(events) => {
                    let mut socket = Socket::new(&server, events);
                    voice::run_session(
                        &host,
                        settings(&env, &file.voice, &billing),
                        opened,
                        &mut socket,
                    )
                    .await;
                }
                Err(e) => {
                    // Its row stays open without a heartbeat: the sweep settles it.
                    worker::console_error!("voice session {}: {e}", opened.id);
                    let _ = server.close(Some(1011), Some("internal error"));
                }
            }
            // The settlement's usage message, staged in the outbox with it: sent now, or by
            // the relay cron.
            host.relay("voice session").await;
        }));
        let mut resp = Response::from_websocket(client)?;
        let offered = req
            .headers()
            .get("sec-websocket-protocol")?
            .unwrap_or_default();
        let protocol = cognomega_core::auth::WEBSOCKET_PROTOCOL;
        if offered.split(',').any(|p| p.trim() == protocol) {
            resp.headers_mut().set("sec-websocket-protocol", protocol)?;
        }
        Ok(resp)
    }
}

/// Settles the sessions whose heart stopped (an Object evicted or reset mid-session); how many.
pub async fn settle_stale(env: &Env, db: &tokio_postgres::Client) -> Result<usize, String> {
    let file = crate::config::file(env)?;
    let billing = crate::config::billing(env)?;
    voice::settle_stale(&Writes::new(env, db), settings(env, &file.voice, &billing)).await
}

/// A session's WebSocket. Workers' WebSocket has no send backpressure (no `bufferedAmount`:
/// a frame sent is queued in the runtime however slowly the client reads), so speech is paced
/// instead: it runs at most [`LEAD_MS`] ahead of real-time playback, and what a client that
/// stops reading can make this Object hold grows at most at the speech's own rate (32 KB/s),
/// within the tier's audio cap per session.
///
/// Nor is there backpressure the other way: the runtime delivers a client's messages however
/// fast they come. So what the session has not read yet is taken off the runtime's queue
/// into an inbox of at most [`INBOX_BYTES`] (drained before every frame sent, so the queue
/// stays short while the session speaks); a client that sends more is closed with 4413
/// `too_much_unread`.
struct Socket<'a> {
    ws: &'a WebSocket,
    events: EventStream<'a>,
    /// When the client has played everything sent so far, at real time (epoch ms).
    due_ms: f64,
    /// Messages taken off the runtime's queue, not read by the session yet.
    inbox: std::collections::VecDeque<Recv>,
    /// Their bytes.
    inbox_bytes: usize,
    /// The inbox overflowed, or the client is gone: nothing more is taken.
    done: bool,
}

/// The most bytes of a client's unread messages a session's Object holds.
const INBOX_BYTES: usize = 16 * 1024 * 1024;

impl<'a> Socket<'a> {
    fn new(ws: &'a WebSocket, events: EventStream<'a>) -> Self {
        Self {
            ws,
            events,
            due_ms: 0.0,
            inbox: std::collections::VecDeque::new(),
            inbox_bytes: 0,
            done: false,
        }
    }

    /// Moves every message the runtime has delivered into the inbox.
    fn drain(&mut self) {
        while !self.done {
            let Some(event) = self.events.next().now_or_never() else {
                break;
            };
            let recv = received(event);
            self.inbox_bytes += size(&recv);
            if self.inbox_bytes > INBOX_BYTES {
                self.inbox.clear();
                self.inbox_bytes = 0;
                self.inbox.push_back(Recv::Flooded);
                self.done = true;
                break;
            }
            self.done = matches!(recv, Recv::Closed);
            self.inbox.push_back(recv);
        }
    }

    /// The inbox's next message; an overflow or a hang-up stays, said to whoever asks next.
    fn take(&mut self) -> Option<Recv> {
        match self.inbox.front()? {
            Recv::Flooded => return Some(Recv::Flooded),
            Recv::Closed => return Some(Recv::Closed),
            _ => {}
        }
        let recv = self.inbox.pop_front()?;
        self.inbox_bytes -= size(&recv);
        Some(recv)
    }
}

/// A message's bytes (what the inbox counts).
fn size(recv: &Recv) -> usize {
    match recv {
        Recv::Text(t) => t.len(),
        Recv::Binary(b) => b.len(),
        _ => 0,
    }
}

fn received(event: Option<worker::Result<WebsocketEvent>>) -> Recv {
    use cognomega_core::voice::session::MAX_MESSAGE_BYTES;
    match event {
        Some(Ok(WebsocketEvent::Message(m))) => match m.text() {
            Some(t) if t.len() > MAX_MESSAGE_BYTES => Recv::TooLarge,
            Some(t) => Recv::Text(t),
            None => match m.bytes() {
                Some(b) if b.len() > MAX_MESSAGE_BYTES => Recv::TooLarge,
                Some(b) => Recv::Binary(b),
                None => Recv::Closed,
            },
        },
        Some(Ok(WebsocketEvent::Close(_)) | Err(_)) | None => Recv::Closed,
    }
}

#[async_trait::async_trait(?Send)]
impl voice::SessionSocket for Socket<'_> {
    async fn recv(&mut self, wait: Duration) -> Recv {
        use futures::future::Either;
        self.drain();
        if let Some(recv) = self.take() {
            return recv;
        }
        let next = self.events.next();
        let idle = worker::Delay::from(wait);
        futures::pin_mut!(idle);
        match futures::future::select(next, idle).await {
            Either::Left((event, _)) => received(event),
            Either::Right(_) => Recv::Idle,
        }
    }

    fn try_recv(&mut self) -> Option<Recv> {
        self.drain();
        self.take()
    }

    async fn send_text(&mut self, text: String) -> bool {
        self.ws.send_with_str(text).is_ok()
    }

    async fn send_binary(&mut self, bytes: Vec<u8>) -> bool {
        use cognomega_core::voice::session::BYTES_PER_SECOND;
        self.drain();
        let now = worker::Date::now().as_millis() as f64;
        let ahead = self.due_ms - now - LEAD_MS;
        if ahead > 0.0 {
            worker::Delay::from(Duration::from_millis(ahead as u64)).await;
            self.drain();
        }
        let now = worker::Date::now().as_millis() as f64;
        self.due_ms = self.due_ms.max(now) + bytes.len() as f64 * 1000.0 / BYTES_PER_SECOND as f64;
        self.ws.send_with_bytes(bytes).is_ok()
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let reason = cognomega_core::voice::session::close_reason(reason);
        let _ = self.ws.close(Some(code), Some(reason));
    }
}
