//! The voice service (`cognomega_workflows::voice`): `POST /voice/tts`, `POST /voice/stt`,
//! `GET /voice/voices`. Every synthesis and transcription is metered as `audio_seconds`
//! through the usage queue, billed once.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::Utc;
use cognomega_core::api::Refusal;
use cognomega_core::sql::{Executor, Outbound, SqlError, Transaction};
use cognomega_core::voice::{Answered, AudioFormat, Heard, Speech, Spoken};
use cognomega_pipelines::Registry;
use cognomega_providers::voice::Voices;
use cognomega_workflows::tts_render::{Speaker, TtsRender};
use cognomega_workflows::voice::{self, Caller, VoiceHost, VoiceSettings};
use http::{header, HeaderName, HeaderValue};
use serde::Deserialize;
use std::sync::Arc;

use super::openapi::{schemas as s, *};
use crate::auth::Authenticated;
use crate::{current_request_id, ApiError, AppState};

/// Settles the voice sessions whose process stopped beating their heart; how many.
pub async fn settle_stale_sessions(state: &AppState) -> Result<usize, String> {
    voice::settle_stale(state, settings(state)).await
}

fn settings(state: &AppState) -> VoiceSettings<'_> {
    VoiceSettings {
        policy: &state.config.voice,
        prices: &state.config.billing.prices,
        floor: state.config.billing.guest_floor,
        session_stale_ms: i64::try_from(state.config.voice_session_stale.as_millis())
            .unwrap_or(60_000),
        inline_chars: state.config.voice_tts_inline_chars,
        // sox encodes the joined audio in any output format.
        render_formats: &cognomega_core::voice::AudioFormat::OUTPUTS,
    }
}

/// The job types this host runs: the pipelines' own, and `tts_render` (the long texts of
/// `POST /voice/tts`) spoken by `voices`.
#[must_use]
pub fn job_types(voices: &Voices) -> Registry {
    let mut types: Vec<_> = cognomega_pipelines::registry().iter().cloned().collect();
    types.push(Arc::new(TtsRender::new(Arc::new(NativeSpeaker(
        voices.clone(),
    )))));
    Registry::new(types)
}

/// The voice providers as a `tts_render` job's speaker; sox encodes the joined audio.
#[derive(Debug)]
struct NativeSpeaker(Voices);

#[async_trait::async_trait(?Send)]
impl Speaker for NativeSpeaker {
    fn providers(&self) -> Vec<&'static str> {
        self.0.names()
    }

    async fn synthesize(&self, speech: &Speech) -> Result<Answered<Spoken>, Refusal> {
        self.0.synthesize(speech).await
    }

    async fn encode(&self, wav: &[u8], to: AudioFormat) -> Result<Vec<u8>, String> {
        cognomega_providers::voice::transcode(wav, AudioFormat::Wav, to, None)
            .await
            .map_err(|e| e.to_string())
    }
}

fn with_headers(mut response: Response, headers: &[(&'static str, String)]) -> Response {
    let map = response.headers_mut();
    for (name, value) in headers {
        if let Ok(v) = HeaderValue::from_str(value) {
            map.insert(HeaderName::from_static(name), v);
        }
    }
    response
}

#[utoipa::path(
    post,
    path = "/voice/tts",
    operation_id = "voice_tts",
    tag = "voice",
    security(("bearer" = [])),
    params(
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 128,
            description = "For a text rendered by a job: a repeated key returns the job it \
            created (200)"),
        ("Prefer" = Option<String>, Header, description = "`respond-async`: render by a \
            `tts_render` job whatever the text's length"),
    ),
    request_body(content = s::TtsRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "A text over the inline bound (or with Prefer: \
            respond-async) is rendered by a `tts_render` job: poll it, follow its progress, \
            cancel it; its artifacts are `speech.{wav,ogg,mp3}` and `render.json`, billed as \
            `audio_seconds` when it succeeds", body = s::JobSubmitted,
            headers(("Location" = String, description = "The job's status URL")),
            links(
                ("GetJob" = (operation_id = "get_job", parameters(("id" = "$response.body#/id")))),
                ("CancelJob" = (operation_id = "cancel_job",
                    parameters(("id" = "$response.body#/id")))),
            )),
        (status = 200, description = "The audio, in the requested format", content(
                (s::Binary = "audio/wav"),
                (s::Binary = "audio/ogg"),
                (s::Binary = "audio/mpeg"),
            ),
            headers(
                ("X-Provider" = String, description = "The provider that spoke"),
                ("X-Voice" = String, description = "The voice that spoke"),
                ("X-Audio-Seconds" = String, description = "The audio's length in seconds (billed rounded up)"),
                ("X-Credits-Used" = i64, description = "Credits charged"),
                ("X-Credits-Balance" = i64, description = "Cached balance minus this charge"),
                ("X-Provider-Fallback" = String, description = "The providers that failed before this one, comma-separated (only after a fallback)"),
            )),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 402, response = PaymentRequired),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 502, response = BadGateway),
        (status = 503, response = Unavailable),
    ),
)]
pub(crate) async fn tts(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    headers: http::HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request_id = current_request_id();
    let caller = Caller {
        tenant: &claims.tenant,
        tier: claims.tier,
        request_id: &request_id,
    };
    let req = voice::TtsRequest {
        body: &body,
        respond_async: respond_async(&headers),
        idempotency_key: headers.get("idempotency-key").map(HeaderValue::as_bytes),
    };
    let jobs = super::jobs::submit_settings(&state, claims.tier);
    match voice::tts(&state, settings(&state), jobs, caller, req).await? {
        voice::TtsAnswer::Audio(reply) => {
            let response =
                ([(header::CONTENT_TYPE, reply.content_type)], reply.audio).into_response();
            Ok(with_headers(response, &reply.headers))
        }
        voice::TtsAnswer::Job(submitted) => Ok(super::jobs::submitted_response(
            http::StatusCode::from_u16(submitted.status()).unwrap_or(http::StatusCode::ACCEPTED),
            submitted.id(),
        )),
    }
}

/// `Prefer: respond-async` (RFC 7240), among any other preferences.
fn respond_async(headers: &http::HeaderMap) -> bool {
    (headers.get_all("prefer").iter()).any(|v| v.to_str().is_ok_and(voice::prefers_async))
}

/// `POST /voice/stt`'s query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SttQuery {
    /// The spoken language (BCP 47, e.g. `en` or `en-US`); the provider's default when absent.
    #[param(min_length = 1, max_length = 35, pattern = "^[A-Za-z0-9-]+$")]
    language: Option<String>,
}

#[utoipa::path(
    post,
    path = "/voice/stt",
    operation_id = "voice_stt",
    tag = "voice",
    security(("bearer" = [])),
    params(SttQuery),
    request_body(description = "The audio: wav, ogg (Vorbis/Opus), mp3 or webm/opus, by its \
        bytes (the Content-Type is not trusted)", content(
        (s::Binary = "audio/wav"),
        (s::Binary = "audio/ogg"),
        (s::Binary = "audio/mpeg"),
        (s::Binary = "audio/webm"),
        (s::Binary = "application/octet-stream"),
    )),
    responses(
        (status = 200, description = "The transcript", body = s::SttAnswer,
            headers(
                ("X-Provider" = String, description = "The provider that transcribed"),
                ("X-Audio-Seconds" = String, description = "The audio's length in seconds (billed rounded up)"),
                ("X-Credits-Used" = i64, description = "Credits charged"),
                ("X-Credits-Balance" = i64, description = "Cached balance minus this charge"),
                ("X-Provider-Fallback" = String, description = "The providers that failed before this one (only after a fallback)"),
            )),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 402, response = PaymentRequired),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
        (status = 502, response = BadGateway),
        (status = 503, response = Unavailable),
    ),
)]
pub(crate) async fn stt(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    Query(q): Query<SttQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let request_id = current_request_id();
    let caller = Caller {
        tenant: &claims.tenant,
        tier: claims.tier,
        request_id: &request_id,
    };
    let reply = voice::stt(
        &state,
        settings(&state),
        caller,
        &body,
        q.language.as_deref(),
    )
    .await?;
    Ok(with_headers(
        Json(reply.body).into_response(),
        &reply.headers,
    ))
}

#[utoipa::path(
    get,
    path = "/voice/voices",
    operation_id = "voice_voices",
    tag = "voice",
    security(("bearer" = [])),
    responses(
        (status = 200, description = "The voices of each configured provider, in provider order",
            body = s::VoiceList),
        (status = 401, response = Unauthorized),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
    ),
)]
pub(crate) async fn voices(
    State(state): State<AppState>,
    Authenticated(_claims): Authenticated,
) -> Result<Response, ApiError> {
    let providers: Vec<_> = state
        .voice
        .voices()
        .await
        .into_iter()
        .map(|(provider, voices)| serde_json::json!({"provider": provider, "voices": voices}))
        .collect();
    Ok(Json(serde_json::json!({ "providers": providers })).into_response())
}

/// `GET /voice/sessions`' query.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct SessionQuery {
    /// The voice that speaks (a voice id from `GET /voice/voices`; the provider's default when
    /// absent).
    #[param(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:/+-]+$")]
    voice: Option<String>,
}

#[utoipa::path(
    get,
    path = "/voice/sessions",
    operation_id = "voice_session",
    tag = "voice",
    security(("bearer" = [])),
    params(SessionQuery),
    responses(
        (status = 101, description = "A realtime session over WebSocket. The client sends JSON \
            text frames `{\"type\":\"text\",\"text\"}`, `{\"type\":\"flush\"}`, \
            `{\"type\":\"close\"}` and binary frames of PCM (s16le, mono, 16 kHz) to \
            transcribe; the server sends `{\"type\":\"ready\"}`, binary speech frames (the same \
            PCM, 100 ms each), `spoken`, `transcript`, `error` and `closed` JSON frames. A \
            message that is not the protocol closes with 4400, the audio cap with 4413, idle \
            with 4408, the floor with 4402; the reason names it. Billed once as \
            `audio_seconds` when it ends, also after a disconnect or a crash. A browser, which \
            cannot set Authorization on a WebSocket, offers the subprotocols `cognomega` and \
            `bearer.<token>`; the answer selects `cognomega`"),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 402, response = PaymentRequired),
        (status = 426, description = "Not a WebSocket upgrade", body = ErrorEnvelope),
        (status = 429, response = TooManyRequests),
        (status = 500, response = Internal),
    ),
)]
pub(crate) async fn session(
    State(state): State<AppState>,
    Authenticated(claims): Authenticated,
    Query(q): Query<SessionQuery>,
    upgrade: Result<
        axum::extract::ws::WebSocketUpgrade,
        axum::extract::ws::rejection::WebSocketUpgradeRejection,
    >,
) -> Result<Response, ApiError> {
    let upgrade = upgrade.map_err(|e| {
        ApiError::new(
            http::StatusCode::UPGRADE_REQUIRED,
            "websocket_required",
            format!("open this route as a WebSocket ({e})"),
        )
    })?;
    let request_id = current_request_id();
    let caller = Caller {
        tenant: &claims.tenant,
        tier: claims.tier,
        request_id: &request_id,
    };
    let opened = voice::open_session(&state, settings(&state), caller, q.voice).await?;
    let max = cognomega_core::voice::session::MAX_MESSAGE_BYTES;
    Ok(upgrade
        .protocols([crate::auth::WEBSOCKET_PROTOCOL])
        .max_message_size(max)
        .max_frame_size(max)
        // Bounded buffers: a slow client pauses the session instead of growing them.
        .write_buffer_size(64 * 1024)
        .max_write_buffer_size(256 * 1024)
        .on_upgrade(move |ws| async move {
            let mut socket = Socket { ws };
            state.voice.metrics().session(1);
            voice::run_session(&state, settings(&state), opened, &mut socket).await;
            state.voice.metrics().session(-1);
        }))
}

/// What the socket delivered, as the session reads it; `None` for a ping or pong (the library
/// answers those).
fn incoming(next: Option<Result<axum::extract::ws::Message, axum::Error>>) -> Option<voice::Recv> {
    use axum::extract::ws::Message;
    Some(match next {
        None | Some(Ok(Message::Close(_))) => voice::Recv::Closed,
        Some(Err(e)) => {
            let text = e.to_string();
            if text.contains("too long") || text.contains("too big") {
                voice::Recv::TooLarge
            } else {
                voice::Recv::Closed
            }
        }
        Some(Ok(Message::Text(t))) => voice::Recv::Text(t.to_string()),
        Some(Ok(Message::Binary(b))) => voice::Recv::Binary(b.to_vec()),
        Some(Ok(Message::Ping(_) | Message::Pong(_))) => return None,
    })
}

/// An axum WebSocket as a session's socket.
struct Socket {
    ws: axum::extract::ws::WebSocket,
}

#[async_trait::async_trait]
impl voice::SessionSocket for Socket {
    async fn recv(&mut self, wait: std::time::Duration) -> voice::Recv {
        loop {
            let Ok(next) = tokio::time::timeout(wait, self.ws.recv()).await else {
                return voice::Recv::Idle;
            };
            if let Some(recv) = incoming(next) {
                return recv;
            }
        }
    }

    fn try_recv(&mut self) -> Option<voice::Recv> {
        use futures::FutureExt as _;
        // `recv` is cancel-safe (a stream's next item): polled once, dropped when pending.
        loop {
            if let Some(recv) = incoming(self.ws.recv().now_or_never()?) {
                return Some(recv);
            }
        }
    }

    async fn send_text(&mut self, text: String) -> bool {
        self.ws
            .send(axum::extract::ws::Message::Text(text.into()))
            .await
            .is_ok()
    }

    async fn send_binary(&mut self, bytes: Vec<u8>) -> bool {
        self.ws
            .send(axum::extract::ws::Message::Binary(bytes.into()))
            .await
            .is_ok()
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let frame = axum::extract::ws::CloseFrame {
            code,
            reason: cognomega_core::voice::session::close_reason(reason).into(),
        };
        let _ = self
            .ws
            .send(axum::extract::ws::Message::Close(Some(frame)))
            .await;
    }
}

/// The native host of the voice service: the database, the queue driver, the balance cache,
/// and the voice providers of the server.
#[async_trait::async_trait]
impl VoiceHost for AppState {
    fn reader(&self) -> Box<dyn Executor + '_> {
        Box::new(cognomega_stores::sql::Reader(&self.db))
    }

    fn db(&self) -> Box<dyn Executor + '_> {
        Box::new(self.db.clone())
    }

    async fn begin(&self) -> Result<Box<dyn Transaction + '_>, SqlError> {
        self.db.transaction().await
    }

    fn warn(&self, message: &str) {
        tracing::warn!(request_id = %current_request_id(), "{message}");
    }

    async fn sleep(&self, wait: std::time::Duration) {
        tokio::time::sleep(wait).await;
    }

    fn billed(&self, provider: &str, op: &'static str, seconds: f64) {
        self.voice.metrics().billed(provider, op, seconds);
    }

    async fn balance(&self, tenant: &str) -> Result<i64, String> {
        self.cached_balance(tenant).await
    }

    async fn send(&self, message: Outbound<'_>) -> Result<(), String> {
        self.send_outbound(message).await
    }

    async fn measure(&self, audio: &[u8], format: AudioFormat) -> Result<f64, Refusal> {
        cognomega_providers::voice::measure(audio, format).await
    }

    async fn synthesize(&self, speech: &Speech) -> Result<Answered<Spoken>, Refusal> {
        self.voice.synthesize(speech).await
    }

    async fn speak_pcm(
        &self,
        speech: &Speech,
        rate: u32,
    ) -> Result<Answered<voice::PcmChunks>, Refusal> {
        self.voice.stream(speech, rate).await
    }

    async fn transcribe(
        &self,
        audio: &[u8],
        format: AudioFormat,
        language: Option<&str>,
    ) -> Result<Answered<Heard>, Refusal> {
        self.voice.transcribe(audio, format, language).await
    }

    fn now_ms(&self) -> i64 {
        Utc::now().timestamp_millis()
    }

    fn fresh_id(&self) -> String {
        uuid::Uuid::now_v7().to_string()
    }
}
