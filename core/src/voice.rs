//! The voice service's rules, with no I/O (both hosts use them): the audio formats, the body of
//! `POST /voice/tts`, each tier's caps (characters per synthesis, seconds per transcription and
//! per session, sessions at once, idle timeout), a WAV's duration, and the `audio_seconds`
//! charge of a request.

use serde::{Deserialize, Serialize};

use crate::api::Refusal;
use crate::auth::Tier;
use crate::billing::{PriceTable, UsageBatchMessage, UsageEvent, UsageKey, UsageKind};

/// The largest `POST /voice/tts` body.
pub const TTS_BODY_LIMIT: usize = 256 * 1024;
/// The largest `POST /voice/stt` body (the tier's seconds cap applies after).
pub const STT_BODY_LIMIT: usize = 25 * 1024 * 1024;
/// `POST /voice/tts` texts longer than this many characters are rendered by a `tts_render`
/// job instead of inline (about half a minute of speech); `[voice] tts_inline_chars`.
pub const TTS_INLINE_CHARS: usize = 500;
/// The sample rates a synthesis may ask for.
pub const SAMPLE_RATES: std::ops::RangeInclusive<u32> = 8_000..=48_000;

/// An audio container and codec, as the API names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AudioFormat {
    /// RIFF WAVE, 16-bit PCM.
    Wav,
    /// Ogg (Vorbis or Opus).
    Ogg,
    /// MPEG layer III.
    Mp3,
    /// WebM with Opus (transcription input only).
    Webm,
}

impl AudioFormat {
    /// Its name in requests.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Wav => "wav",
            Self::Ogg => "ogg",
            Self::Mp3 => "mp3",
            Self::Webm => "webm",
        }
    }

    /// Its `Content-Type`.
    #[must_use]
    pub const fn content_type(self) -> &'static str {
        match self {
            Self::Wav => "audio/wav",
            Self::Ogg => "audio/ogg",
            Self::Mp3 => "audio/mpeg",
            Self::Webm => "audio/webm",
        }
    }

    /// The formats a synthesis can answer in.
    pub const OUTPUTS: [Self; 3] = [Self::Wav, Self::Ogg, Self::Mp3];

    /// Parses an output format's name.
    pub fn parse_output(name: &str) -> Result<Self, Refusal> {
        Self::OUTPUTS
            .into_iter()
            .find(|f| f.as_str() == name)
            .ok_or_else(|| {
                Refusal::new(
                    415,
                    "unsupported_format",
                    format!("format {name:?} is not one of wav, ogg, mp3"),
                )
            })
    }

    /// The format of an audio body, by its first bytes.
    #[must_use]
    pub fn sniff(bytes: &[u8]) -> Option<Self> {
        if bytes.len() >= 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WAVE" {
            return Some(Self::Wav);
        }
        if bytes.starts_with(b"OggS") {
            return Some(Self::Ogg);
        }
        if bytes.starts_with(&[0x1A, 0x45, 0xDF, 0xA3]) {
            return Some(Self::Webm);
        }
        // An ID3 tag, or an MPEG audio frame sync (11 set bits, layer III).
        if bytes.starts_with(b"ID3")
            || (bytes.len() >= 2
                && bytes[0] == 0xFF
                && bytes[1] & 0xE0 == 0xE0
                && bytes[1] & 0x06 == 0x02)
        {
            return Some(Self::Mp3);
        }
        None
    }
}

/// One tier's voice caps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VoiceCaps {
    /// Characters in one synthesis.
    pub max_tts_chars: usize,
    /// Seconds of audio in one transcription.
    pub max_stt_seconds: u32,
    /// Seconds of audio in one realtime session.
    pub max_session_seconds: u32,
    /// Realtime sessions open at once per tenant.
    pub max_sessions: u32,
    /// A session with no message for this long is closed.
    pub session_idle_secs: u32,
}

/// The caps of every tier (`[voice.policy.<tier>]` in the config file; a tier left out keeps
/// its defaults).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct VoicePolicy {
    /// Guests.
    pub guest: VoiceCaps,
    /// Members.
    pub member: VoiceCaps,
    /// Paying users.
    pub pro: VoiceCaps,
}

impl Default for VoicePolicy {
    fn default() -> Self {
        Self {
            guest: VoiceCaps {
                max_tts_chars: 1_000,
                max_stt_seconds: 60,
                max_session_seconds: 300,
                max_sessions: 2,
                session_idle_secs: 30,
            },
            member: VoiceCaps {
                max_tts_chars: 5_000,
                max_stt_seconds: 600,
                max_session_seconds: 1_800,
                max_sessions: 5,
                session_idle_secs: 60,
            },
            pro: VoiceCaps {
                max_tts_chars: 20_000,
                max_stt_seconds: 3_600,
                max_session_seconds: 7_200,
                max_sessions: 20,
                session_idle_secs: 120,
            },
        }
    }
}

impl VoicePolicy {
    /// A tier's caps.
    #[must_use]
    pub const fn tier(&self, tier: Tier) -> &VoiceCaps {
        match tier {
            Tier::Guest => &self.guest,
            Tier::Member => &self.member,
            Tier::Pro => &self.pro,
        }
    }
}

/// The body of `POST /voice/tts`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct TtsBody {
    text: String,
    voice: Option<String>,
    format: Option<String>,
    sample_rate: Option<u32>,
    provider: Option<String>,
}

/// A synthesis to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Speech {
    /// The text, trimmed.
    pub text: String,
    /// A provider's voice id (the provider's default when absent).
    pub voice: Option<String>,
    /// The answer's format.
    pub format: AudioFormat,
    /// The answer's sample rate (the provider's own when absent).
    pub sample_rate: Option<u32>,
    /// Only this provider (no fallback).
    pub provider: Option<String>,
}

/// Parses and checks a `POST /voice/tts` body against the tier's caps: 400 `invalid_body`
/// (not JSON, unknown field), 400 `empty_text`, 413 `text_too_long`, 415 `unsupported_format`,
/// 400 `invalid_sample_rate`, 400 `invalid_voice`.
pub fn parse_tts(body: &[u8], caps: &VoiceCaps) -> Result<Speech, Refusal> {
    if body.len() > TTS_BODY_LIMIT {
        return Err(Refusal::new(
            413,
            "body_too_large",
            format!("the body is larger than {TTS_BODY_LIMIT} bytes"),
        ));
    }
    let parsed: TtsBody = serde_json::from_slice(body).map_err(|e| {
        Refusal::new(
            400,
            "invalid_body",
            format!("the body must be JSON {{\"text\", \"voice\"?, \"format\"?, \"sample_rate\"?, \"provider\"?}}: {e}"),
        )
    })?;
    let text = parsed.text.trim();
    if text.is_empty() {
        return Err(Refusal::new(
            400,
            "empty_text",
            "`text` is empty; send something to say",
        ));
    }
    let chars = text.chars().count();
    if chars > caps.max_tts_chars {
        return Err(Refusal::new(
            413,
            "text_too_long",
            format!(
                "`text` has {chars} characters; this tier synthesizes at most {} per request",
                caps.max_tts_chars
            ),
        ));
    }
    let format = match parsed.format.as_deref() {
        None => AudioFormat::Wav,
        Some(f) => AudioFormat::parse_output(f)?,
    };
    if let Some(rate) = parsed.sample_rate {
        if !SAMPLE_RATES.contains(&rate) {
            return Err(Refusal::new(
                400,
                "invalid_sample_rate",
                format!(
                    "sample_rate {rate} is out of range; use {} to {} Hz",
                    SAMPLE_RATES.start(),
                    SAMPLE_RATES.end()
                ),
            ));
        }
    }
    let voice = parsed.voice.map(|v| v.trim().to_owned());
    if let Some(v) = &voice {
        check_voice_id(v)?;
    }
    Ok(Speech {
        text: text.to_owned(),
        voice,
        format,
        sample_rate: parsed.sample_rate,
        provider: parsed.provider,
    })
}

/// A synthesis, as a provider answers it.
#[derive(Debug, Clone, PartialEq)]
pub struct Spoken {
    /// The audio, in the requested format.
    pub audio: Vec<u8>,
    /// Its format.
    pub format: AudioFormat,
    /// Its length in seconds.
    pub seconds: f64,
    /// The voice that spoke.
    pub voice: String,
}

/// A transcription's stretch of speech.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Segment {
    /// Start, in seconds from the beginning.
    pub start: f64,
    /// End, in seconds.
    pub end: f64,
    /// What was said.
    pub text: String,
}

/// A transcription, as a provider answers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Heard {
    /// The whole text.
    pub text: String,
    /// Its stretches, in order.
    pub segments: Vec<Segment>,
    /// The language, as a BCP 47 tag.
    pub language: String,
}

/// A voice a provider offers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoiceInfo {
    /// The id to send as `voice`.
    pub id: String,
    /// A name for people.
    pub name: String,
    /// Its language (BCP 47).
    pub language: String,
}

/// Why a provider did not answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoiceFailure {
    /// Down, overloaded (429, 5xx, timeout) or unable to do this (a format it lacks): the next
    /// provider is tried.
    Unavailable(String),
    /// The provider cannot do this (a voice or a language it lacks): the next provider is
    /// tried, and when none can, the first such refusal is the answer.
    Unsupported(Refusal),
    /// The request itself is wrong for the provider (a 4xx of its own): answered as is, no
    /// fallback.
    Rejected(Refusal),
}

impl std::fmt::Display for VoiceFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Unavailable(m) => f.write_str(m),
            Self::Rejected(r) | Self::Unsupported(r) => f.write_str(&r.message),
        }
    }
}

/// An answer and who gave it.
#[derive(Debug, Clone, PartialEq)]
pub struct Answered<T> {
    /// The provider that answered.
    pub provider: String,
    /// The providers tried before it, with why they did not answer.
    pub skipped: Vec<(String, String)>,
    /// The answer.
    pub value: T,
}

/// The sentences of the local round trip (speech, then its transcription), in the tests and
/// `cognomega bench voice`: short sentences and digit strings.
pub const ROUND_TRIP_SENTENCES: &[&str] = &[
    "the weather is nice today",
    "please open the door",
    "one two three four five",
    "six seven eight nine zero",
    "the job finished at nine",
    "send me the report",
    "four five six seven",
    "good morning everyone",
];

/// The word error rate the local round trip stays under (measured, with margin: the README
/// gives the figure).
pub const ROUND_TRIP_WER_BOUND: f64 = 1.3;

/// The round trip's sentences repeated, each ended by a period, up to `max_chars` characters:
/// a long text (a `tts_render`) for the tests and `bench voice`.
#[must_use]
pub fn round_trip_text(max_chars: usize) -> String {
    let mut text = String::new();
    for s in ROUND_TRIP_SENTENCES.iter().cycle() {
        if text.len() + s.len() + 2 > max_chars {
            break;
        }
        text.push_str(s);
        text.push_str(". ");
    }
    text.trim_end().to_owned()
}

/// The word error rate of `heard` against `reference`: the word-level edit distance
/// (substitutions, insertions, deletions) over the reference's word count, case and
/// punctuation ignored.
#[must_use]
pub fn word_error_rate(reference: &str, heard: &str) -> f64 {
    let words = |s: &str| -> Vec<String> {
        s.split(|c: char| !c.is_alphanumeric() && c != '\'')
            .filter(|w| !w.is_empty())
            .map(str::to_lowercase)
            .collect()
    };
    let (r, h) = (words(reference), words(heard));
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            let substitute = prev[j] + usize::from(rw != hw);
            cur[j + 1] = substitute.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[h.len()] as f64 / r.len().max(1) as f64
}

/// A voice id as requests may name it (1..=128 of `A-Za-z0-9-_+./:`): 400 `invalid_voice`
/// otherwise. Whether a provider has it is the provider's to say.
pub fn check_voice_id(voice: &str) -> Result<(), Refusal> {
    let ok = !voice.is_empty()
        && voice.len() <= 128
        && voice
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_+./:".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Refusal::new(
            400,
            "invalid_voice",
            "`voice` must be a voice id from GET /voice/voices",
        ))
    }
}

/// A WAV file's facts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WavInfo {
    /// Samples per second.
    pub sample_rate: u32,
    /// Channels.
    pub channels: u16,
    /// Length in seconds.
    pub seconds: f64,
}

/// Reads a WAV file's header and checks that every sample it announces is there (a truncated
/// file is refused). A header announcing an unknown length (as a stream writes it) is read to
/// the end of the bytes.
pub fn wav_info(bytes: &[u8]) -> Result<WavInfo, String> {
    let reader = hound::WavReader::new(std::io::Cursor::new(bytes))
        .map_err(|e| format!("not a WAV file: {e}"))?;
    let spec = reader.spec();
    if spec.sample_rate == 0 || spec.channels == 0 {
        return Err("the WAV header has no sample rate or no channels".into());
    }
    let frame_bytes = u64::from(spec.channels) * u64::from(spec.bits_per_sample.div_ceil(8));
    let announced = u64::from(reader.len()) / u64::from(spec.channels);
    // The data chunk starts where the header ends; what follows is the audio.
    let header = bytes
        .windows(4)
        .position(|w| w == b"data")
        .map_or(44, |p| p as u64 + 8);
    let present = (bytes.len() as u64).saturating_sub(header) / frame_bytes.max(1);
    let frames = if reader.len() >= u32::MAX / 2 {
        // A streamed header (length unknown): what is there.
        present
    } else if present < announced {
        return Err(format!(
            "the WAV file is truncated: its header announces {announced} frames, {present} are there"
        ));
    } else {
        announced
    };
    Ok(WavInfo {
        sample_rate: spec.sample_rate,
        channels: spec.channels,
        seconds: frames as f64 / f64::from(spec.sample_rate),
    })
}

/// Billable seconds: whole seconds, rounded up (a request with any audio is at least one).
#[must_use]
pub fn billable_seconds(seconds: f64) -> u64 {
    if seconds.is_finite() && seconds > 0.0 {
        seconds.ceil() as u64
    } else {
        0
    }
}

/// The charge of a voice request: one `audio_seconds` event keyed `voice:{billing id}`, so the
/// same billing id is billed once however often its message is delivered.
#[derive(Debug)]
pub struct VoiceCharge {
    /// The usage message (none for no audio).
    pub message: Option<UsageBatchMessage>,
    /// Seconds billed.
    pub seconds: u64,
    /// Credits charged.
    pub credits: i64,
}

/// The `audio_seconds` charge of `seconds` of audio under `billing_id`.
pub fn voice_charge(
    tenant: &str,
    billing_id: &str,
    seconds: f64,
    prices: &PriceTable,
    now: chrono::DateTime<chrono::Utc>,
) -> Result<VoiceCharge, String> {
    let quantity = billable_seconds(seconds);
    let key =
        UsageKey::parse(&format!("voice:{billing_id}:audio_seconds")).map_err(|e| e.to_string())?;
    let message = (quantity > 0).then(|| UsageBatchMessage {
        tenant_id: tenant.to_owned(),
        events: vec![UsageEvent {
            idempotency_key: key,
            kind: UsageKind::AudioSeconds,
            quantity,
            occurred_at: Some(now),
            meta: None,
        }],
        received_at_ms: now.timestamp_millis(),
    });
    Ok(VoiceCharge {
        message,
        seconds: quantity,
        credits: prices.charge(UsageKind::AudioSeconds, quantity),
    })
}

/// Realtime sessions (`GET /voice/sessions`): the protocol and the statements both hosts run.
///
/// The client sends JSON text frames — `{"type":"text","text"}` (speak it),
/// `{"type":"flush"}` (transcribe the audio sent so far), `{"type":"close"}` — and binary frames
/// of audio to transcribe (PCM, 16-bit little-endian, mono, [`SAMPLE_RATE`] Hz). The server
/// answers `{"type":"ready",…}` once, then binary frames of speech (the same PCM format, 100 ms
/// each), `{"type":"spoken","seconds","audio_seconds"}` after each text,
/// `{"type":"transcript","text","segments","seconds"}` after each flush, `{"type":"error",
/// "code","message"}` when a provider failed (the session goes on), and
/// `{"type":"closed","audio_seconds","credits"}` before it closes. A message that is not the
/// protocol, a cap reached or a session left idle closes the socket with one of the codes
/// below and a reason naming it.
pub mod session {
    use serde::Deserialize;

    /// The PCM sample rate both ways.
    pub const SAMPLE_RATE: u32 = 16_000;
    /// Bytes of PCM per second.
    pub const BYTES_PER_SECOND: usize = SAMPLE_RATE as usize * 2;
    /// Bytes of one speech frame the server sends (100 ms).
    pub const FRAME_BYTES: usize = BYTES_PER_SECOND / 10;
    /// The most audio a session holds for one flush (the tier's `max_stt_seconds` if lower).
    pub const MAX_FLUSH_SECONDS: u32 = 600;
    /// The largest client message (text or audio).
    pub const MAX_MESSAGE_BYTES: usize = 1024 * 1024;

    /// Closed normally (the client's `close`).
    pub const CLOSE_NORMAL: u16 = 1000;
    /// A message that is not the protocol.
    pub const CLOSE_INVALID: u16 = 4400;
    /// The balance reached the floor.
    pub const CLOSE_NO_CREDITS: u16 = 4402;
    /// No message for the tier's idle timeout.
    pub const CLOSE_IDLE: u16 = 4408;
    /// The tier's seconds per session, or characters per text, reached.
    pub const CLOSE_CAP: u16 = 4413;
    /// The session was settled elsewhere (its heartbeat was lost).
    pub const CLOSE_LOST: u16 = 4500;

    /// Opens a session: `id, tenant_id, now`.
    pub const OPEN: &str = "INSERT INTO voice_sessions (id, tenant_id, opened_at, heartbeat_at) VALUES ($1, $2, $3, $3)";
    /// The tenant's live sessions (open, heartbeat after `$2`).
    pub const COUNT_OPEN: &str = "SELECT COUNT(*) FROM voice_sessions WHERE tenant_id = $1 AND closed_at IS NULL AND heartbeat_at >= $2";
    /// Adds `$2` ms of audio and beats the heart at `$3`; no row when the session was settled.
    pub const RECORD: &str = "UPDATE voice_sessions SET audio_ms = audio_ms + $2, heartbeat_at = $3 WHERE id = $1 AND closed_at IS NULL";
    /// Closes a session once: its tenant and audio, or no row when it was closed already.
    pub const CLOSE: &str = "UPDATE voice_sessions SET closed_at = $2 WHERE id = $1 AND closed_at IS NULL RETURNING tenant_id, audio_ms";
    /// Retention: closed sessions (billed) closed before `$1`; open ones are never deleted.
    pub const PRUNE: &str =
        "DELETE FROM voice_sessions WHERE closed_at IS NOT NULL AND closed_at < $1";
    /// How long a closed session's row is kept.
    pub const RETENTION_MS: i64 = 2 * 86_400_000;
    /// Open sessions whose heart stopped before `$1`.
    pub const STALE: &str = "SELECT id FROM voice_sessions WHERE closed_at IS NULL AND heartbeat_at < $1 ORDER BY heartbeat_at LIMIT 100";

    /// A client's text frame.
    #[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
    #[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
    pub enum ClientMessage {
        /// Speak this.
        Text {
            /// What to say.
            text: String,
        },
        /// Transcribe the audio sent since the last flush.
        Flush,
        /// Settle and close.
        Close,
    }

    /// A close frame's reason: at most 123 bytes (RFC 6455 leaves that much beside the code),
    /// cut at a character boundary.
    #[must_use]
    pub fn close_reason(reason: &str) -> &str {
        const MAX: usize = 123;
        if reason.len() <= MAX {
            return reason;
        }
        let mut end = MAX;
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        &reason[..end]
    }

    /// Parses a text frame; the reason when it is not the protocol.
    pub fn parse(frame: &str) -> Result<ClientMessage, String> {
        serde_json::from_str(frame).map_err(|e| {
            format!("not a session message ({e}); send {{\"type\":\"text\",\"text\":…}}, {{\"type\":\"flush\"}} or {{\"type\":\"close\"}}")
        })
    }

    /// Splits text into sentences, so the first is spoken (and sent) while the rest wait.
    #[must_use]
    pub fn sentences(text: &str) -> Vec<&str> {
        let mut out = Vec::new();
        let mut start = 0;
        for (i, c) in text.char_indices() {
            if matches!(c, '.' | '!' | '?' | ';' | '\n') {
                let end = i + c.len_utf8();
                let s = text[start..end].trim();
                if s.chars().any(char::is_alphanumeric) {
                    out.push(s);
                }
                start = end;
            }
        }
        let rest = text[start..].trim();
        if rest.chars().any(char::is_alphanumeric) {
            out.push(rest);
        }
        out
    }

    /// The PCM samples of a WAV file at [`SAMPLE_RATE`] (its `data` chunk), or why not.
    pub fn pcm_of_wav(wav: &[u8]) -> Result<&[u8], String> {
        pcm_of_wav_at(wav, SAMPLE_RATE)
    }

    /// The samples of a 16-bit mono WAV file at `rate` Hz (its `data` chunk), or why not.
    pub fn pcm_of_wav_at(wav: &[u8], rate: u32) -> Result<&[u8], String> {
        let info = super::wav_info(wav)?;
        if info.sample_rate != rate || info.channels != 1 {
            return Err(format!(
                "the audio is {} Hz with {} channels, not {rate} Hz mono",
                info.sample_rate, info.channels
            ));
        }
        let start = wav
            .windows(4)
            .position(|w| w == b"data")
            .map(|p| p + 8)
            .ok_or("no data chunk")?;
        let len = (info.seconds * f64::from(rate) * 2.0).round() as usize;
        Ok(&wav[start..(start + len).min(wav.len())])
    }

    /// A WAV file of 16-bit mono PCM at [`SAMPLE_RATE`] (what the client streamed).
    #[must_use]
    pub fn wav_of_pcm(pcm: &[u8]) -> Vec<u8> {
        wav_of_pcm_at(pcm, SAMPLE_RATE)
    }

    /// A WAV file of 16-bit mono PCM at `rate` Hz.
    #[must_use]
    pub fn wav_of_pcm_at(pcm: &[u8], rate: u32) -> Vec<u8> {
        let data = &pcm[..pcm.len() & !1];
        let mut out = Vec::with_capacity(44 + data.len());
        let len = u32::try_from(data.len()).unwrap_or(u32::MAX);
        out.extend_from_slice(b"RIFF");
        out.extend_from_slice(&(36 + len).to_le_bytes());
        out.extend_from_slice(b"WAVEfmt ");
        out.extend_from_slice(&16u32.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&1u16.to_le_bytes());
        out.extend_from_slice(&rate.to_le_bytes());
        out.extend_from_slice(&rate.saturating_mul(2).to_le_bytes());
        out.extend_from_slice(&2u16.to_le_bytes());
        out.extend_from_slice(&16u16.to_le_bytes());
        out.extend_from_slice(b"data");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(data);
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn messages_and_sentences() {
            assert_eq!(
                parse(r#"{"type":"text","text":"hi"}"#),
                Ok(ClientMessage::Text { text: "hi".into() })
            );
            assert_eq!(parse(r#"{"type":"flush"}"#), Ok(ClientMessage::Flush));
            assert!(parse(r#"{"type":"dance"}"#).is_err());
            assert!(parse(r#"{"type":"text"}"#).is_err());
            assert!(parse("hello").is_err());
            assert_eq!(sentences("One. Two! three"), ["One.", "Two!", "three"]);
            assert_eq!(sentences(" ... "), Vec::<&str>::new());
            assert_eq!(close_reason("short"), "short");
            let long = format!("text_too_long:{}", "é".repeat(100));
            let cut = close_reason(&long);
            assert!(cut.len() <= 123 && long.starts_with(cut), "{cut}");
            assert_eq!(cut.len(), 122, "cut before a two-byte character");
        }

        #[test]
        fn pcm_round_trip() {
            let pcm: Vec<u8> = (0..32_000u32).map(|i| (i % 251) as u8).collect();
            let wav = wav_of_pcm(&pcm);
            let info = super::super::wav_info(&wav).expect("wav");
            assert!((info.seconds - 1.0).abs() < 1e-9);
            assert_eq!(pcm_of_wav(&wav).expect("pcm"), &pcm[..]);
            let wav = wav_of_pcm_at(&pcm, 22_050);
            let info = super::super::wav_info(&wav).expect("wav");
            assert_eq!(info.sample_rate, 22_050);
            assert_eq!(pcm_of_wav_at(&wav, 22_050).expect("pcm"), &pcm[..]);
            assert!(pcm_of_wav(&wav).is_err());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(seconds: f64, rate: u32) -> Vec<u8> {
        let mut out = std::io::Cursor::new(Vec::new());
        let spec = hound::WavSpec {
            channels: 1,
            sample_rate: rate,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut w = hound::WavWriter::new(&mut out, spec).expect("writer");
        for i in 0..(seconds * f64::from(rate)) as u32 {
            w.write_sample(((i % 100) as i16) * 100).expect("sample");
        }
        w.finalize().expect("finalize");
        out.into_inner()
    }

    #[test]
    fn bodies_and_caps() {
        let caps = VoicePolicy::default().guest;
        let ok = parse_tts(
            br#"{"text":"  hello  ","format":"ogg","sample_rate":16000}"#,
            &caps,
        )
        .expect("valid");
        assert_eq!(ok.text, "hello");
        assert_eq!(ok.format, AudioFormat::Ogg);
        let cases: [(&[u8], u16, &str); 7] = [
            (b"{}", 400, "invalid_body"),
            (br#"{"text":"hi","extra":1}"#, 400, "invalid_body"),
            (br#"{"text":"   "}"#, 400, "empty_text"),
            (
                br#"{"text":"hi","format":"flac"}"#,
                415,
                "unsupported_format",
            ),
            (
                br#"{"text":"hi","sample_rate":4000}"#,
                400,
                "invalid_sample_rate",
            ),
            (br#"{"text":"hi","voice":"a b"}"#, 400, "invalid_voice"),
            (br#"{"text":"hi","voice":""}"#, 400, "invalid_voice"),
        ];
        for (body, status, code) in cases {
            let e = parse_tts(body, &caps).expect_err("refused");
            assert_eq!(
                (e.status, e.code),
                (status, code),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
        let long = format!(r#"{{"text":"{}"}}"#, "é".repeat(caps.max_tts_chars + 1));
        let e = parse_tts(long.as_bytes(), &caps).expect_err("too long");
        assert_eq!((e.status, e.code), (413, "text_too_long"));
        let exact = format!(r#"{{"text":"{}"}}"#, "é".repeat(caps.max_tts_chars));
        assert!(parse_tts(exact.as_bytes(), &caps).is_ok());
    }

    #[test]
    fn wav_duration_and_truncation() {
        let bytes = wav(1.5, 16_000);
        let info = wav_info(&bytes).expect("wav");
        assert_eq!(info.sample_rate, 16_000);
        assert!((info.seconds - 1.5).abs() < 1e-3, "{}", info.seconds);
        assert_eq!(AudioFormat::sniff(&bytes), Some(AudioFormat::Wav));
        let cut = &bytes[..bytes.len() - 1000];
        assert!(wav_info(cut).expect_err("truncated").contains("truncated"));
        assert!(wav_info(b"RIFF....WAVEjunk").is_err());
        assert!(wav_info(b"hello").is_err());
    }

    #[test]
    fn word_errors() {
        assert!(word_error_rate("one two three", "One, two three.").abs() < 1e-9);
        assert!((word_error_rate("one two three four", "one too three") - 0.5).abs() < 1e-9);
        assert!((word_error_rate("a b", "") - 1.0).abs() < 1e-9);
        assert!((word_error_rate("a", "a b c") - 2.0).abs() < 1e-9);
    }

    #[test]
    fn sniffing() {
        assert_eq!(AudioFormat::sniff(b"OggS\0\x02"), Some(AudioFormat::Ogg));
        assert_eq!(AudioFormat::sniff(b"ID3\x04"), Some(AudioFormat::Mp3));
        assert_eq!(
            AudioFormat::sniff(&[0xFF, 0xFB, 0x90]),
            Some(AudioFormat::Mp3)
        );
        assert_eq!(
            AudioFormat::sniff(&[0x1A, 0x45, 0xDF, 0xA3, 1]),
            Some(AudioFormat::Webm)
        );
        assert_eq!(AudioFormat::sniff(b"%PDF-1.7"), None);
    }

    #[test]
    fn charges_whole_seconds_once_per_id() {
        let prices = PriceTable::default();
        let now = chrono::DateTime::from_timestamp_millis(1_700_000_000_000).unwrap_or_default();
        let c = voice_charge("t1", "r1", 12.2, &prices, now).expect("charge");
        assert_eq!(c.seconds, 13);
        assert_eq!(c.credits, prices.charge(UsageKind::AudioSeconds, 13));
        let m = c.message.expect("message");
        assert_eq!(
            m.events[0].idempotency_key.as_str(),
            "voice:r1:audio_seconds"
        );
        assert!(voice_charge("t1", "r1", 0.0, &prices, now)
            .expect("none")
            .message
            .is_none());
        assert_eq!(billable_seconds(f64::NAN), 0);
        assert_eq!(billable_seconds(0.01), 1);
    }
}
