//! The voice service, written once: `POST /voice/tts` and `POST /voice/stt`. The body and the
//! tier's caps are checked before anything else (nothing is billed, no provider is called for
//! a refused request), then the standing check (402 at the floor), then the providers in
//! order with fallback, then the `audio_seconds` usage sent to the `usage` queue under the
//! request's own id (settled once, however often the message is delivered). Audio whose usage
//! could not be sent is not handed out: the client gets 503 and retries.
//!
//! The host brings the providers (natively the local engines and the HTTP ones; on the edge
//! the Workers AI binding), the audio measurement, the queue sender and the balance cache.

use cognomega_core::api::Refusal;
use cognomega_core::auth::Tier;
use cognomega_core::billing::PriceTable;
use cognomega_core::queue::MaybeSendSync;
use cognomega_core::sql::{Executor, Outbound, SqlError, Transaction};
use futures::StreamExt as _;

use crate::submit::{Input, Submit, SubmitSettings, Submitted, WriteHost};
use cognomega_core::voice::{
    parse_tts, voice_charge, Answered, AudioFormat, Heard, Speech, Spoken, VoicePolicy,
    STT_BODY_LIMIT,
};

/// What the voice service needs from its host.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait VoiceHost: MaybeSendSync {
    /// Reads that may lag a little (the standing check).
    fn reader(&self) -> Box<dyn Executor + '_>;

    /// Single statements, each committed on its own (a session's row).
    fn db(&self) -> Box<dyn Executor + '_>;

    /// A transaction whose statements and messages commit together (a session's settlement).
    async fn begin(&self) -> Result<Box<dyn Transaction + '_>, SqlError>;

    /// The tenant's cached balance (the ledger's settled balance when nothing is cached).
    async fn balance(&self, tenant: &str) -> Result<i64, String>;

    /// Sends `message` durably (natively the queue driver, on the edge the outbox).
    async fn send(&self, message: Outbound<'_>) -> Result<(), String>;

    /// The length of `audio` in seconds; 400 `invalid_audio` when it cannot be decoded.
    async fn measure(&self, audio: &[u8], format: AudioFormat) -> Result<f64, Refusal>;

    /// Speaks, with the providers in order (or only the one `speech` names).
    async fn synthesize(&self, speech: &Speech) -> Result<Answered<Spoken>, Refusal>;

    /// Speaks `speech` as 16-bit mono PCM at `rate`, chunk by chunk as the provider produces it
    /// (a session's speech, sent on as it comes). The default speaks it whole
    /// ([`Self::synthesize`], as WAV at `rate`) and hands its samples over as one chunk.
    async fn speak_pcm(&self, speech: &Speech, rate: u32) -> Result<Answered<PcmChunks>, Refusal> {
        let whole = Speech {
            format: AudioFormat::Wav,
            sample_rate: Some(rate),
            ..speech.clone()
        };
        let spoken = self.synthesize(&whole).await?;
        let pcm = cognomega_core::voice::session::pcm_of_wav_at(&spoken.value.audio, rate)
            .map_err(|e| {
                Refusal::new(
                    502,
                    "voice_provider_failed",
                    format!("{} answered audio we cannot read: {e}", spoken.provider),
                )
            })?
            .to_vec();
        let chunks: PcmChunks = Box::pin(futures::stream::once(async move { Ok(pcm) }));
        Ok(Answered {
            provider: spoken.provider,
            skipped: spoken.skipped,
            value: chunks,
        })
    }

    /// Transcribes, with the providers in order.
    async fn transcribe(
        &self,
        audio: &[u8],
        format: AudioFormat,
        language: Option<&str>,
    ) -> Result<Answered<Heard>, Refusal>;

    /// Logs what the client is not told.
    fn warn(&self, message: &str);

    /// Records audio billed for an answer of `provider` (`op`: `tts`, `stt`, `session`) in the
    /// host's metrics.
    fn billed(&self, _provider: &str, _op: &'static str, _seconds: f64) {}

    /// Waits `wait` (a session's heartbeat while the client is slow to read).
    async fn sleep(&self, wait: std::time::Duration);

    /// Now, epoch milliseconds.
    fn now_ms(&self) -> i64;

    /// A fresh id (UUIDv7): the request's billing id.
    fn fresh_id(&self) -> String;
}

/// Speech as it is produced: 16-bit little-endian mono PCM, chunk by chunk; a failure after
/// the first chunk ends the stream with it.
#[cfg(not(target_arch = "wasm32"))]
pub type PcmChunks = futures::stream::BoxStream<'static, Result<Vec<u8>, String>>;
/// Speech as it is produced (the edge's futures are not `Send`).
#[cfg(target_arch = "wasm32")]
pub type PcmChunks = futures::stream::LocalBoxStream<'static, Result<Vec<u8>, String>>;

/// The settings the voice service reads: the same names on both hosts.
#[derive(Debug, Clone, Copy)]
pub struct VoiceSettings<'a> {
    /// Each tier's caps.
    pub policy: &'a VoicePolicy,
    /// Credits per audio second.
    pub prices: &'a PriceTable,
    /// The balance at or below which billable work is refused.
    pub floor: i64,
    /// A session whose heart has not beaten for this long is settled by the sweep.
    pub session_stale_ms: i64,
    /// Texts longer than this many characters are rendered by a `tts_render` job (202).
    pub inline_chars: usize,
    /// The formats a `tts_render` job can produce here; a text asked in another is spoken
    /// inline whatever its length (and `Prefer: respond-async`, a preference, is not applied).
    pub render_formats: &'a [AudioFormat],
}

/// The caller.
#[derive(Debug, Clone, Copy)]
pub struct Caller<'a> {
    /// Its tenant.
    pub tenant: &'a str,
    /// Its tier.
    pub tier: Tier,
    /// The request id.
    pub request_id: &'a str,
}

/// A synthesis answered: the audio and its headers.
#[derive(Debug)]
pub struct TtsReply {
    /// The audio.
    pub audio: Vec<u8>,
    /// Its `Content-Type`.
    pub content_type: &'static str,
    /// `X-Provider`, `X-Voice`, `X-Audio-Seconds`, `X-Credits-Used`, `X-Credits-Balance`, and
    /// `X-Provider-Fallback` when a provider before the one that answered failed.
    pub headers: Vec<(&'static str, String)>,
}

/// What `POST /voice/tts` answers.
#[derive(Debug)]
pub enum TtsAnswer {
    /// Spoken inline (200).
    Audio(TtsReply),
    /// A `tts_render` job: queued now (202), or the one an earlier request with this
    /// `Idempotency-Key` created (200).
    Job(Submitted),
}

/// Whether a `Prefer` header value (RFC 7240) asks for `respond-async`, among any other
/// preferences.
#[must_use]
pub fn prefers_async(prefer: &str) -> bool {
    prefer.split(',').any(|p| {
        p.split(';')
            .next()
            .is_some_and(|p| p.trim().eq_ignore_ascii_case("respond-async"))
    })
}

/// One `POST /voice/tts`.
#[derive(Debug, Clone, Copy)]
pub struct TtsRequest<'a> {
    /// The JSON body.
    pub body: &'a [u8],
    /// `Prefer: respond-async`: a job whatever the text's length.
    pub respond_async: bool,
    /// The `Idempotency-Key` header (a job's; an inline synthesis is not replayed).
    pub idempotency_key: Option<&'a [u8]>,
}

/// `POST /voice/tts`: the body and the tier's caps first; a text over the inline bound (or
/// any with `Prefer: respond-async`) becomes a `tts_render` job through the submit workflow
/// (its credit check, `Idempotency-Key`, hourly runs cap), anything else is spoken now.
pub async fn tts<H: VoiceHost + WriteHost>(
    host: &H,
    settings: VoiceSettings<'_>,
    jobs: SubmitSettings<'_>,
    caller: Caller<'_>,
    req: TtsRequest<'_>,
) -> Result<TtsAnswer, Refusal> {
    crate::submit::parse_key(req.idempotency_key)?;
    let speech = parse_tts(req.body, settings.policy.tier(caller.tier))?;
    // A host without the `tts_render` job type speaks every text inline.
    let renders = jobs.registry.get(crate::tts_render::NAME).is_some()
        && settings.render_formats.contains(&speech.format);
    if renders && (req.respond_async || speech.text.chars().count() > settings.inline_chars) {
        let params = crate::tts_render::params_of(&speech);
        let submit = Submit {
            tenant: caller.tenant,
            key: req.idempotency_key,
            job_type: crate::tts_render::NAME,
            params: Some(&params),
            input: Input::Raw(speech.text.as_bytes()),
            request_id: caller.request_id,
        };
        return crate::submit::submit(host, jobs, submit)
            .await
            .map(TtsAnswer::Job);
    }
    speak(host, settings, caller, &speech)
        .await
        .map(TtsAnswer::Audio)
}

/// Speaks `speech` now and bills it.
async fn speak<H: VoiceHost>(
    host: &H,
    settings: VoiceSettings<'_>,
    caller: Caller<'_>,
    speech: &Speech,
) -> Result<TtsReply, Refusal> {
    let balance = standing(host, caller.tenant, settings.floor).await?;
    let spoken = host.synthesize(speech).await?;
    let charge = bill(host, &settings, &caller, spoken.value.seconds).await?;
    host.billed(&spoken.provider, "tts", spoken.value.seconds);
    let mut headers = vec![
        ("x-provider", spoken.provider.clone()),
        ("x-voice", spoken.value.voice.clone()),
        ("x-audio-seconds", format!("{:.3}", spoken.value.seconds)),
        ("x-credits-used", charge.to_string()),
        ("x-credits-balance", (balance - charge).to_string()),
    ];
    if let Some(f) = fallback_header(&spoken) {
        headers.push(("x-provider-fallback", f));
    }
    Ok(TtsReply {
        content_type: spoken.value.format.content_type(),
        audio: spoken.value.audio,
        headers,
    })
}

/// A transcription answered: the body of `POST /voice/stt` and its headers.
#[derive(Debug)]
pub struct SttReply {
    /// `{"text","segments","language","audio_seconds","provider"}`.
    pub body: serde_json::Value,
    /// `X-Provider`, `X-Audio-Seconds`, `X-Credits-Used`, `X-Credits-Balance` (and
    /// `X-Provider-Fallback`).
    pub headers: Vec<(&'static str, String)>,
}

/// `POST /voice/stt`: `audio` is the body, `language` the `?language=` parameter.
pub async fn stt<H: VoiceHost>(
    host: &H,
    settings: VoiceSettings<'_>,
    caller: Caller<'_>,
    audio: &[u8],
    language: Option<&str>,
) -> Result<SttReply, Refusal> {
    if audio.len() > STT_BODY_LIMIT {
        return Err(Refusal::new(
            413,
            "body_too_large",
            format!("the audio is larger than {STT_BODY_LIMIT} bytes"),
        ));
    }
    if audio.is_empty() {
        return Err(Refusal::new(
            400,
            "empty_audio",
            "the body is empty; send the audio (wav, ogg, mp3 or webm) as the body",
        ));
    }
    let language = language.map(str::trim).filter(|l| !l.is_empty());
    if let Some(l) = language {
        let ok = l.len() <= 35 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !ok {
            return Err(Refusal::new(
                400,
                "invalid_language",
                "`language` must be a BCP 47 tag such as en or en-US",
            ));
        }
    }
    let format = AudioFormat::sniff(audio).ok_or_else(|| {
        Refusal::new(
            415,
            "unsupported_format",
            "the body is not wav, ogg, mp3 or webm audio",
        )
    })?;
    let seconds = host.measure(audio, format).await?;
    let caps = settings.policy.tier(caller.tier);
    if seconds > f64::from(caps.max_stt_seconds) {
        return Err(Refusal::new(
            413,
            "audio_too_long",
            format!(
                "the audio lasts {seconds:.1} s; this tier transcribes at most {} s per request",
                caps.max_stt_seconds
            ),
        ));
    }
    if seconds <= 0.0 {
        return Err(Refusal::new(
            400,
            "empty_audio",
            "the audio holds no samples",
        ));
    }
    let balance = standing(host, caller.tenant, settings.floor).await?;
    let heard = host.transcribe(audio, format, language).await?;
    let charge = bill(host, &settings, &caller, seconds).await?;
    host.billed(&heard.provider, "stt", seconds);
    let body = serde_json::json!({
        "text": heard.value.text,
        "segments": heard.value.segments,
        "language": heard.value.language,
        "audio_seconds": (seconds * 1000.0).round() / 1000.0,
        "provider": heard.provider,
    });
    let mut headers = vec![
        ("x-provider", heard.provider.clone()),
        ("x-audio-seconds", format!("{seconds:.3}")),
        ("x-credits-used", charge.to_string()),
        ("x-credits-balance", (balance - charge).to_string()),
    ];
    if let Some(f) = fallback_header(&heard) {
        headers.push(("x-provider-fallback", f));
    }
    Ok(SttReply { body, headers })
}

/// `X-Provider-Fallback`: the providers that failed before the one that answered.
fn fallback_header<T>(answered: &Answered<T>) -> Option<String> {
    (!answered.skipped.is_empty()).then(|| {
        answered
            .skipped
            .iter()
            .map(|(p, _)| p.as_str())
            .collect::<Vec<_>>()
            .join(",")
    })
}

/// 402 when the tenant is flagged or its balance is at the floor; else the balance.
async fn standing<H: VoiceHost>(host: &H, tenant: &str, floor: i64) -> Result<i64, Refusal> {
    let now_secs = host.now_ms().div_euclid(1000);
    let (balance, _) = crate::billing::funded(
        &mut *host.reader(),
        tenant,
        now_secs,
        floor,
        host.balance(tenant),
    )
    .await?;
    Ok(balance)
}

/// Sends the request's `audio_seconds` usage; returns the charge.
async fn bill<H: VoiceHost>(
    host: &H,
    settings: &VoiceSettings<'_>,
    caller: &Caller<'_>,
    seconds: f64,
) -> Result<i64, Refusal> {
    let now = chrono::DateTime::from_timestamp_millis(host.now_ms()).unwrap_or_default();
    let billing_id = host.fresh_id();
    let charge = voice_charge(caller.tenant, &billing_id, seconds, settings.prices, now)
        .map_err(Refusal::internal)?;
    if let Some(msg) = &charge.message {
        let body = serde_json::to_string(msg).map_err(Refusal::internal)?;
        host.send(Outbound {
            queue: cognomega_core::queue::catalog::usage::QUEUE,
            body,
            request_id: Some(caller.request_id),
        })
        .await
        .map_err(|e| Refusal::unavailable(format!("the audio could not be billed ({e}); retry")))?;
    }
    Ok(charge.credits)
}

/// How a session's socket is read and written: natively an axum WebSocket, on the edge a
/// Durable Object's.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait SessionSocket: cognomega_core::sql::MaybeSend {
    /// The next message, [`Recv::Idle`] when none came within `wait`.
    async fn recv(&mut self, wait: std::time::Duration) -> Recv;
    /// A message that has already arrived, without waiting; `None` when none has.
    fn try_recv(&mut self) -> Option<Recv>;
    /// Sends a text frame; `false` when the client is gone. Waits while the client is slow.
    async fn send_text(&mut self, text: String) -> bool;
    /// Sends a binary frame; `false` when the client is gone. Waits while the client is slow.
    async fn send_binary(&mut self, bytes: Vec<u8>) -> bool;
    /// Closes with a code and a reason.
    async fn close(&mut self, code: u16, reason: &str);
}

/// What [`SessionSocket::recv`] got.
#[derive(Debug)]
pub enum Recv {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
    /// Nothing within the wait.
    Idle,
    /// The client closed or the connection broke.
    Closed,
    /// A frame over the size limit.
    TooLarge,
    /// More unread messages than the host holds (a host without transport backpressure: the
    /// client kept sending while the session spoke).
    Flooded,
}

/// An admitted session, before its socket opens.
#[derive(Debug, Clone)]
pub struct Opened {
    /// Its id (the billing id of its usage: `voice:session:{id}:audio_seconds`).
    pub id: String,
    /// The caller's tenant.
    pub tenant: String,
    /// The caller's tier's caps.
    pub caps: cognomega_core::voice::VoiceCaps,
    /// The voice asked for.
    pub voice: Option<String>,
    /// The request id.
    pub request_id: String,
}

/// Admits a session before the upgrade: 402 at the floor, 429 `too_many_sessions` when the
/// tenant holds its tier's sessions already; then records it.
pub async fn open_session<H: VoiceHost>(
    host: &H,
    settings: VoiceSettings<'_>,
    caller: Caller<'_>,
    voice: Option<String>,
) -> Result<Opened, Refusal> {
    use cognomega_core::voice::session;
    if let Some(v) = &voice {
        cognomega_core::voice::check_voice_id(v)?;
    }
    let caps = *settings.policy.tier(caller.tier);
    standing(host, caller.tenant, settings.floor).await?;
    let now = host.now_ms();
    let live = host
        .db()
        .query_opt(
            session::COUNT_OPEN,
            &[
                caller.tenant.into(),
                (now - settings.session_stale_ms).into(),
            ],
        )
        .await
        .map_err(Refusal::internal)?
        .map(|r| r.int(0))
        .transpose()
        .map_err(Refusal::internal)?
        .unwrap_or(0);
    if live >= i64::from(caps.max_sessions) {
        return Err(Refusal::new(
            429,
            "too_many_sessions",
            format!("this tenant has {live} voice sessions open; this tier allows {} at once: close one first", caps.max_sessions),
        )
        .retry_after(5));
    }
    let id = host.fresh_id();
    host.db()
        .execute(
            session::OPEN,
            &[id.as_str().into(), caller.tenant.into(), now.into()],
        )
        .await
        .map_err(Refusal::internal)?;
    Ok(Opened {
        id,
        tenant: caller.tenant.to_owned(),
        caps,
        voice,
        request_id: caller.request_id.to_owned(),
    })
}

/// A session's settlement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// Seconds billed.
    pub seconds: u64,
    /// Credits charged.
    pub credits: i64,
}

/// Closes session `id` and bills its audio, once: the close and the usage message commit in
/// one transaction, and only the first close finds the row open. `None` when it was settled
/// already.
pub async fn settle_session<H: VoiceHost>(
    host: &H,
    prices: &PriceTable,
    id: &str,
) -> Result<Option<Settled>, String> {
    use cognomega_core::voice::session;
    let mut tx = host.begin().await.map_err(|e| e.to_string())?;
    let now = host.now_ms();
    let row = tx
        .query_opt(session::CLOSE, &[id.into(), now.into()])
        .await
        .map_err(|e| e.to_string())?;
    let Some(row) = row else {
        tx.rollback().await.map_err(|e| e.to_string())?;
        return Ok(None);
    };
    let tenant = row.text(0).map_err(|e| e.to_string())?;
    let audio_ms = row.int(1).map_err(|e| e.to_string())?;
    let at = chrono::DateTime::from_timestamp_millis(now).unwrap_or_default();
    let charge = voice_charge(
        &tenant,
        &format!("session:{id}"),
        audio_ms as f64 / 1000.0,
        prices,
        at,
    )?;
    if let Some(msg) = &charge.message {
        let body = serde_json::to_string(msg).map_err(|e| e.to_string())?;
        tx.send(Outbound {
            queue: cognomega_core::queue::catalog::usage::QUEUE,
            body,
            request_id: None,
        })
        .await
        .map_err(|e| e.to_string())?;
    }
    tx.commit().await.map_err(|e| e.to_string())?;
    Ok(Some(Settled {
        seconds: charge.seconds,
        credits: charge.credits,
    }))
}

/// Settles every session whose heart stopped (its process died): returns how many.
pub async fn settle_stale<H: VoiceHost>(
    host: &H,
    settings: VoiceSettings<'_>,
) -> Result<usize, String> {
    let cutoff = host.now_ms() - settings.session_stale_ms;
    let rows = host
        .db()
        .query(cognomega_core::voice::session::STALE, &[cutoff.into()])
        .await
        .map_err(|e| e.to_string())?;
    let mut settled = 0;
    for r in rows {
        let id = r.text(0).map_err(|e| e.to_string())?;
        if settle_session(host, settings.prices, &id).await?.is_some() {
            settled += 1;
        }
    }
    Ok(settled)
}

/// How a session ended.
enum End {
    /// Close with this code and reason (after settling).
    Close(u16, String),
    /// The client is gone: settle only.
    Gone,
}

/// Runs an admitted session to its end and settles it (also when the client vanished).
pub async fn run_session<H: VoiceHost, S: SessionSocket>(
    host: &H,
    settings: VoiceSettings<'_>,
    opened: Opened,
    socket: &mut S,
) {
    let end = converse(host, &settings, &opened, socket).await;
    let settled = match settle_session(host, settings.prices, &opened.id).await {
        Ok(s) => s,
        Err(e) => {
            // The row stays open; the sweep settles it once its heart is found stopped.
            host.warn(&format!(
                "voice session {}: could not settle ({e}); the sweep will",
                opened.id
            ));
            None
        }
    };
    if let End::Close(code, reason) = end {
        if let Some(s) = settled {
            let closed = serde_json::json!({"type": "closed", "audio_seconds": s.seconds, "credits": s.credits});
            let _ = socket.send_text(closed.to_string()).await;
        }
        socket.close(code, &reason).await;
    }
}

/// The session's conversation, until it ends.
async fn converse<H: VoiceHost, S: SessionSocket>(
    host: &H,
    settings: &VoiceSettings<'_>,
    opened: &Opened,
    socket: &mut S,
) -> End {
    use cognomega_core::voice::session::{self as proto, ClientMessage};
    let caps = opened.caps;
    let cap_ms = i64::from(caps.max_session_seconds) * 1000;
    let idle_ms = i64::from(caps.session_idle_secs) * 1000;
    // The heart beats at least three times per stale period.
    let beat_ms = (settings.session_stale_ms / 3).max(100);
    let ready = serde_json::json!({
        "type": "ready",
        "session_id": opened.id,
        "format": "pcm_s16le",
        "sample_rate": proto::SAMPLE_RATE,
        "max_seconds": caps.max_session_seconds,
        "idle_timeout_s": caps.session_idle_secs,
    });
    if !socket.send_text(ready.to_string()).await {
        return End::Gone;
    }
    let mut used_ms: i64 = 0;
    let mut heard: Vec<u8> = Vec::new();
    let mut last_activity = host.now_ms();
    // Messages read while speaking (a `close` there ends the text at once), handled in order.
    let mut queued: std::collections::VecDeque<Recv> = std::collections::VecDeque::new();
    loop {
        let left = idle_ms - (host.now_ms() - last_activity);
        if left <= 0 {
            return End::Close(
                proto::CLOSE_IDLE,
                format!("idle_timeout: no message for {} s", caps.session_idle_secs),
            );
        }
        let wait =
            std::time::Duration::from_millis(u64::try_from(left.min(beat_ms)).unwrap_or(100));
        let message = match queued.pop_front() {
            Some(m) => m,
            None => socket.recv(wait).await,
        };
        let text = match message {
            Recv::Closed => return End::Gone,
            Recv::Flooded => return flooded(),
            Recv::TooLarge => {
                return End::Close(
                    proto::CLOSE_INVALID,
                    format!(
                        "invalid_message: a frame is larger than {} bytes",
                        proto::MAX_MESSAGE_BYTES
                    ),
                )
            }
            Recv::Idle => {
                if !record(host, &opened.id, 0).await {
                    return End::Close(proto::CLOSE_LOST, "session_lost: settled elsewhere".into());
                }
                continue;
            }
            Recv::Binary(bytes) => {
                last_activity = host.now_ms();
                let pending_ms =
                    ((heard.len() + bytes.len()) * 1000 / proto::BYTES_PER_SECOND) as i64;
                if used_ms + pending_ms > cap_ms {
                    return End::Close(
                        proto::CLOSE_CAP,
                        format!(
                            "session_audio_cap: this tier allows {} s of audio per session",
                            caps.max_session_seconds
                        ),
                    );
                }
                // What waits for a flush is held in memory: at most one transcription's worth.
                let flush_ms = i64::from(caps.max_stt_seconds.min(proto::MAX_FLUSH_SECONDS)) * 1000;
                if pending_ms > flush_ms {
                    return End::Close(
                        proto::CLOSE_CAP,
                        format!(
                            "audio_too_long: flush at most {} s of audio at a time",
                            flush_ms / 1000
                        ),
                    );
                }
                heard.extend_from_slice(&bytes);
                continue;
            }
            Recv::Text(t) => t,
        };
        last_activity = host.now_ms();
        let message = match proto::parse(&text) {
            Ok(m) => m,
            Err(reason) => {
                return End::Close(proto::CLOSE_INVALID, format!("invalid_message: {reason}"))
            }
        };
        match message {
            ClientMessage::Close => {
                return End::Close(proto::CLOSE_NORMAL, "closed by the client".into())
            }
            ClientMessage::Text { text } => {
                let chars = text.chars().count();
                if text.trim().is_empty() {
                    return End::Close(proto::CLOSE_INVALID, "invalid_message: empty text".into());
                }
                if chars > caps.max_tts_chars {
                    return End::Close(
                        proto::CLOSE_CAP,
                        format!(
                            "text_too_long: {chars} characters; this tier allows {} per text",
                            caps.max_tts_chars
                        ),
                    );
                }
                if let Err(e) = standing(host, &opened.tenant, settings.floor).await {
                    return End::Close(
                        proto::CLOSE_NO_CREDITS,
                        format!("{}: {}", e.code, e.message),
                    );
                }
                let mut spoken_ms = 0;
                for sentence in proto::sentences(&text) {
                    if used_ms >= cap_ms {
                        return End::Close(
                            proto::CLOSE_CAP,
                            format!(
                                "session_audio_cap: this tier allows {} s of audio per session",
                                caps.max_session_seconds
                            ),
                        );
                    }
                    let speech = Speech {
                        text: sentence.to_owned(),
                        voice: opened.voice.clone(),
                        format: AudioFormat::Wav,
                        sample_rate: Some(proto::SAMPLE_RATE),
                        provider: None,
                    };
                    let spoken = match host.speak_pcm(&speech, proto::SAMPLE_RATE).await {
                        Ok(s) => s,
                        Err(e) => {
                            let error = serde_json::json!({"type": "error", "code": e.code, "message": e.message});
                            if !socket.send_text(error.to_string()).await {
                                return End::Gone;
                            }
                            if e.status < 500 {
                                // The request's own fault (an unknown voice): it will not get better.
                                return End::Close(
                                    proto::CLOSE_INVALID,
                                    format!("{}: {}", e.code, e.message),
                                );
                            }
                            break;
                        }
                    };
                    let provider = spoken.provider;
                    let mut chunks = spoken.value;
                    // Speech goes on in whole frames as it comes; the rest when it ends.
                    let mut pending: Vec<u8> = Vec::new();
                    let (mut ended, mut failed) = (false, false);
                    while !ended {
                        match chunks.next().await {
                            Some(Ok(chunk)) => pending.extend_from_slice(&chunk),
                            Some(Err(e)) => {
                                host.warn(&format!("voice session {}: {e}", opened.id));
                                let error = serde_json::json!({"type": "error", "code": "voice_provider_failed", "message": e});
                                if !socket.send_text(error.to_string()).await {
                                    return End::Gone;
                                }
                                (ended, failed) = (true, true);
                            }
                            None => ended = true,
                        }
                        let ready = if ended {
                            pending.len() & !1
                        } else {
                            pending.len() / proto::FRAME_BYTES * proto::FRAME_BYTES
                        };
                        if ready == 0 {
                            continue;
                        }
                        let out: Vec<u8> = pending.drain(..ready).collect();
                        // Only what the cap allows is sent (and billed).
                        let allowed = usize::try_from(
                            (cap_ms - used_ms) * proto::BYTES_PER_SECOND as i64 / 1000,
                        )
                        .unwrap_or(0);
                        let pcm = &out[..out.len().min(allowed) & !1];
                        if !pcm.is_empty() {
                            let ms = (pcm.len() * 1000 / proto::BYTES_PER_SECOND) as i64;
                            // Recorded before it is sent: audio that left is never unbilled.
                            if !record(host, &opened.id, ms).await {
                                return End::Close(
                                    proto::CLOSE_LOST,
                                    "session_lost: settled elsewhere".into(),
                                );
                            }
                            used_ms += ms;
                            spoken_ms += ms;
                            host.billed(&provider, "session", ms as f64 / 1000.0);
                            for frame in pcm.chunks(proto::FRAME_BYTES) {
                                match peek(socket, &mut queued) {
                                    Peeked::Nothing => {}
                                    Peeked::Close => {
                                        return End::Close(
                                            proto::CLOSE_NORMAL,
                                            "closed by the client".into(),
                                        )
                                    }
                                    Peeked::Gone => return End::Gone,
                                    Peeked::Flooded => return flooded(),
                                }
                                match send_beating(
                                    host,
                                    &opened.id,
                                    socket,
                                    frame.to_vec(),
                                    beat_ms,
                                )
                                .await
                                {
                                    Sent::Taken => {}
                                    Sent::Gone => return End::Gone,
                                    Sent::Lost => {
                                        return End::Close(
                                            proto::CLOSE_LOST,
                                            "session_lost: settled elsewhere".into(),
                                        )
                                    }
                                }
                            }
                        }
                        if pcm.len() < out.len() {
                            // The cap: the next sentence closes the session.
                            break;
                        }
                    }
                    if failed {
                        break;
                    }
                }
                let done = serde_json::json!({"type": "spoken", "seconds": spoken_ms as f64 / 1000.0, "audio_seconds": used_ms as f64 / 1000.0});
                if !socket.send_text(done.to_string()).await {
                    return End::Gone;
                }
            }
            ClientMessage::Flush => {
                let audio = std::mem::take(&mut heard);
                let ms = (audio.len() * 1000 / proto::BYTES_PER_SECOND) as i64;
                let reply = if ms == 0 {
                    serde_json::json!({"type": "transcript", "text": "", "segments": [], "seconds": 0.0})
                } else {
                    let wav = proto::wav_of_pcm(&audio);
                    match host.transcribe(&wav, AudioFormat::Wav, None).await {
                        Ok(h) => {
                            if !record(host, &opened.id, ms).await {
                                return End::Close(
                                    proto::CLOSE_LOST,
                                    "session_lost: settled elsewhere".into(),
                                );
                            }
                            used_ms += ms;
                            host.billed(&h.provider, "session", ms as f64 / 1000.0);
                            serde_json::json!({"type": "transcript", "text": h.value.text, "segments": h.value.segments, "seconds": ms as f64 / 1000.0})
                        }
                        Err(e) => {
                            serde_json::json!({"type": "error", "code": e.code, "message": e.message})
                        }
                    }
                };
                if !socket.send_text(reply.to_string()).await {
                    return End::Gone;
                }
            }
        }
    }
}

/// The close for [`Recv::Flooded`].
fn flooded() -> End {
    End::Close(
        cognomega_core::voice::session::CLOSE_CAP,
        "too_much_unread: the client sent more than the session holds while it spoke; wait for `spoken` before sending more".into(),
    )
}

/// The most messages read ahead while speaking; beyond, the client waits (TCP backpressure).
const READ_AHEAD: usize = 16;

/// What reading ahead found.
enum Peeked {
    Nothing,
    Close,
    Gone,
    Flooded,
}

/// Reads what the client already sent, without waiting: a `close` (or a hang-up) is answered
/// at once; anything else waits its turn in `queued` (at most [`READ_AHEAD`] messages).
fn peek<S: SessionSocket>(socket: &mut S, queued: &mut std::collections::VecDeque<Recv>) -> Peeked {
    while queued.len() < READ_AHEAD {
        match socket.try_recv() {
            None => break,
            Some(Recv::Closed) => return Peeked::Gone,
            Some(Recv::Flooded) => return Peeked::Flooded,
            Some(Recv::Text(t))
                if cognomega_core::voice::session::parse(&t)
                    == Ok(cognomega_core::voice::session::ClientMessage::Close) =>
            {
                return Peeked::Close;
            }
            Some(m) => queued.push_back(m),
        }
    }
    Peeked::Nothing
}

/// How a frame's send ended.
enum Sent {
    /// Taken by the client.
    Taken,
    /// The client is gone.
    Gone,
    /// The session was settled elsewhere while the client was not reading.
    Lost,
}

/// Sends a frame, beating the session's heart while a slow client keeps it waiting (so the
/// sweep does not take a paused session for a dead one).
async fn send_beating<H: VoiceHost, S: SessionSocket>(
    host: &H,
    id: &str,
    socket: &mut S,
    frame: Vec<u8>,
    beat_ms: i64,
) -> Sent {
    use futures::future::Either;
    let beat = std::time::Duration::from_millis(u64::try_from(beat_ms).unwrap_or(1_000));
    let send = socket.send_binary(frame);
    futures::pin_mut!(send);
    loop {
        let tick = host.sleep(beat);
        futures::pin_mut!(tick);
        match futures::future::select(send.as_mut(), tick).await {
            Either::Left((true, _)) => return Sent::Taken,
            Either::Left((false, _)) => return Sent::Gone,
            Either::Right(((), _)) => {
                if !record(host, id, 0).await {
                    return Sent::Lost;
                }
            }
        }
    }
}

/// Adds `ms` of audio to the session and beats its heart; `false` when it was settled.
async fn record<H: VoiceHost>(host: &H, id: &str, ms: i64) -> bool {
    match host
        .db()
        .execute(
            cognomega_core::voice::session::RECORD,
            &[id.into(), ms.into(), host.now_ms().into()],
        )
        .await
    {
        Ok(n) => n > 0,
        Err(e) => {
            host.warn(&format!(
                "voice session {id}: could not record its audio: {e}"
            ));
            // Not recorded: stop rather than hand out audio nobody will bill.
            false
        }
    }
}
