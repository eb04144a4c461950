//! The voice providers' protocol side, without a transport (it builds for wasm32): how a failed
//! HTTP answer is classified, how timed words become segments, and Workers AI's speech models
//! (the request each takes and what its answer holds), which the native host reaches over REST
//! (`crate::cfai_voice`) and the Cloudflare edge through its AI binding or `fetch`.

use cognomega_core::api::Refusal;
use cognomega_core::voice::{Segment, VoiceFailure};

/// A provider's failed HTTP answer as a failure: 401/403 (our credentials refused), 408, 429
/// and 5xx move on to the next provider; any other status is the request's own fault
/// (400 `provider_rejected`, no fallback).
pub fn http_failure(provider: &str, status: u16, detail: &str) -> VoiceFailure {
    match status {
        401 | 403 => {
            VoiceFailure::Unavailable(format!("refused our credentials ({status}): {detail}"))
        }
        408 | 429 | 500..=599 => VoiceFailure::Unavailable(format!("answered {status}: {detail}")),
        _ => VoiceFailure::Rejected(Refusal::new(
            400,
            "provider_rejected",
            format!("{provider} refused the request ({status}): {detail}"),
        )),
    }
}

/// A transcript's timed words as segments: a pause of more than 0.5 s starts a new one.
pub fn segments_of_words<'a>(words: impl IntoIterator<Item = (&'a str, f64, f64)>) -> Vec<Segment> {
    let mut out: Vec<Segment> = Vec::new();
    for (word, start, end) in words {
        match out.last_mut() {
            Some(s) if start - s.end <= 0.5 => {
                s.text.push(' ');
                s.text.push_str(word.trim());
                s.end = end;
            }
            _ => out.push(Segment {
                start,
                end,
                text: word.trim().to_owned(),
            }),
        }
    }
    out
}

/// Workers AI: MeloTTS speaks (`{"prompt","lang"}`, answered `{"audio": base64 MP3}`), Whisper
/// transcribes (the audio as the body, answered `{"text","words":[{"word","start","end"}]}`).
pub mod cfai {
    use base64::Engine as _;
    use cognomega_core::api::Refusal;
    use cognomega_core::voice::{Heard, Speech, VoiceFailure, VoiceInfo};
    use serde::Deserialize;
    use serde_json::{json, Value};

    /// The speech model.
    pub const TTS_MODEL: &str = "@cf/myshell-ai/melotts";
    /// The transcription model.
    pub const STT_MODEL: &str = "@cf/openai/whisper";
    /// The languages MeloTTS speaks (its `lang`), each its one voice.
    pub const LANGUAGES: [(&str, &str); 6] = [
        ("en", "English"),
        ("es", "Spanish"),
        ("fr", "French"),
        ("zh", "Chinese"),
        ("jp", "Japanese"),
        ("kr", "Korean"),
    ];

    /// The voices: MeloTTS's languages.
    #[must_use]
    pub fn voices() -> Vec<VoiceInfo> {
        LANGUAGES
            .iter()
            .map(|(lang, name)| VoiceInfo {
                id: (*lang).to_owned(),
                name: format!("MeloTTS {name}"),
                language: (*lang).to_owned(),
            })
            .collect()
    }

    /// MeloTTS's input for `speech`, and the voice (language) that speaks it; another
    /// provider's voice is [`VoiceFailure::Unsupported`] (that provider may speak it).
    pub fn tts_input(speech: &Speech) -> Result<(&str, Value), VoiceFailure> {
        let lang = speech.voice.as_deref().unwrap_or("en");
        if !LANGUAGES.iter().any(|(l, _)| *l == lang) {
            return Err(VoiceFailure::Unsupported(Refusal::new(
                400,
                "unknown_voice",
                format!("Workers AI has no voice {lang:?}; see GET /voice/voices"),
            )));
        }
        Ok((lang, json!({"prompt": speech.text, "lang": lang})))
    }

    /// The MP3 of MeloTTS's result.
    pub fn tts_audio(result: &Value) -> Result<Vec<u8>, VoiceFailure> {
        result["audio"]
            .as_str()
            .and_then(|a| base64::engine::general_purpose::STANDARD.decode(a).ok())
            .filter(|a| !a.is_empty())
            .ok_or_else(|| VoiceFailure::Unavailable("an answer without audio".into()))
    }

    #[derive(Deserialize)]
    struct WireWord {
        word: String,
        start: f64,
        end: f64,
    }

    /// Whisper's result as a transcript.
    #[must_use]
    pub fn heard(result: &Value, language: Option<&str>) -> Heard {
        let text = result["text"]
            .as_str()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let words: Vec<WireWord> =
            serde_json::from_value(result["words"].clone()).unwrap_or_default();
        let segments =
            super::segments_of_words(words.iter().map(|w| (w.word.as_str(), w.start, w.end)));
        Heard {
            text,
            segments,
            language: language.unwrap_or("en").to_owned(),
        }
    }
}
