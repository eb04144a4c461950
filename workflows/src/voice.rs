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
use cognomega_core::sql::{Executor, Outbound};
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

    /// The tenant's cached balance (the ledger's settled balance when nothing is cached).
    async fn balance(&self, tenant: &str) -> Result<i64, String>;

    /// Sends `message` durably (natively the queue driver, on the edge the outbox).
    async fn send(&self, message: Outbound<'_>) -> Result<(), String>;

    /// The length of `audio` in seconds; 400 `invalid_audio` when it cannot be decoded.
    async fn measure(&self, audio: &[u8], format: AudioFormat) -> Result<f64, Refusal>;

    /// Speaks, with the providers in order (or only the one `speech` names).
    async fn synthesize(&self, speech: &Speech) -> Result<Answered<Spoken>, Refusal>;

    /// Transcribes, with the providers in order.
    async fn transcribe(
        &self,
        audio: &[u8],
        format: AudioFormat,
        language: Option<&str>,
    ) -> Result<Answered<Heard>, Refusal>;

    /// Now, epoch milliseconds.
    fn now_ms(&self) -> i64;

    /// A fresh id (UUIDv7): the request's billing id.
    fn fresh_id(&self) -> String;
}

/// The settings the voice service reads: the same names on both hosts.
#[derive(Debug, Clone, Copy)]
pub struct VoiceSettings<'a> {
    /// Each tier's caps.
    pub policy: &'a VoicePolicy,
    /// Credits per audio second.
    pub prices: &'a PriceTable,
    /// The balance at or below which billable work is refused.
    pub floor: i64,
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

/// `POST /voice/tts`.
pub async fn tts<H: VoiceHost>(
    host: &H,
    settings: VoiceSettings<'_>,
    caller: Caller<'_>,
    body: &[u8],
) -> Result<TtsReply, Refusal> {
    let speech = parse_tts(body, settings.policy.tier(caller.tier))?;
    let balance = standing(host, caller.tenant, settings.floor).await?;
    let spoken = host.synthesize(&speech).await?;
    let charge = bill(host, &settings, &caller, spoken.value.seconds).await?;
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
    let day_start = now_secs - now_secs.rem_euclid(86_400);
    let row = host
        .reader()
        .query_opt(
            cognomega_core::billing::sql::ASK_STANDING,
            &[tenant.into(), day_start.into()],
        )
        .await
        .map_err(Refusal::internal)?;
    let (flagged, stored) = match row {
        Some(r) => (
            r.bool(0).map_err(Refusal::internal)?,
            r.opt_int(1).map_err(Refusal::internal)?,
        ),
        None => (false, None),
    };
    let balance = match stored {
        Some(b) => b,
        None => host.balance(tenant).await.map_err(Refusal::internal)?,
    };
    if flagged || balance <= floor {
        return Err(Refusal::insufficient_credits(balance));
    }
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
