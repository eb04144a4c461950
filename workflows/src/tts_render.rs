//! `tts_render`: a long text of `POST /voice/tts`, spoken queue-first as an ordinary job
//! (progress, cancel, the audio as an artifact in object storage), billed as the audio's
//! `audio_seconds` once it succeeded (the job's usage key `job-{id}`: once however often it is
//! delivered).
//!
//! The route checks the tier's caps and submits the text as the job's input with the request's
//! voice, format, sample rate and provider as its params ([`params_of`]); `POST /jobs` does not
//! take this type (it would skip those caps). A run speaks the text in chunks of whole
//! sentences (each a stage: progress, and a cancel takes effect between two chunks), joins
//! their samples into one 16-bit mono WAV at the requested rate and encodes it once in the
//! requested format. Artifacts: `speech.{wav,ogg,mp3}` and `render.json` (seconds, characters,
//! chunks, voice, providers).

use std::sync::Arc;

use cognomega_core::api::Refusal;
use cognomega_core::billing::UsageKind;
use cognomega_core::voice::session::{pcm_of_wav_at, wav_of_pcm_at};
use cognomega_core::voice::{
    billable_seconds, check_voice_id, Answered, AudioFormat, Speech, Spoken, SAMPLE_RATES,
};
use cognomega_pipelines::{Artifact, JobError, JobType, Metered, Progress};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The job type's name (its queue is `jobs.tts_render`).
pub const NAME: &str = "tts_render";
/// The most characters one synthesis call speaks (a chunk of whole sentences).
pub const CHUNK_CHARS: usize = 400;
/// A render's sample rate when the request names none.
pub const DEFAULT_SAMPLE_RATE: u32 = 22_050;
/// The longest text a render takes (the route holds each tier to its own, lower cap).
pub const MAX_CHARS: usize = 200_000;
/// The name of the render's description artifact.
pub const RENDER_JSON: &str = "render.json";

/// What a render needs from its host: speech, and one encoding of the joined audio.
#[async_trait::async_trait(?Send)]
pub trait Speaker: Send + Sync + std::fmt::Debug {
    /// The configured providers' names (a request naming another is refused at submit).
    fn providers(&self) -> Vec<&'static str>;
    /// Speaks, with the providers in order (or only the one `speech` names).
    async fn synthesize(&self, speech: &Speech) -> Result<Answered<Spoken>, Refusal>;
    /// Encodes a 16-bit mono WAV file as `to` (never called for WAV).
    async fn encode(&self, wav: &[u8], to: AudioFormat) -> Result<Vec<u8>, String>;
}

/// The job's params, normalized at submit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenderParams {
    /// A provider's voice id (the provider's default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voice: Option<String>,
    /// `wav`, `ogg` or `mp3`.
    #[serde(default = "default_format")]
    pub format: String,
    /// Hz.
    #[serde(default = "default_rate")]
    pub sample_rate: u32,
    /// Only this provider (no fallback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

fn default_format() -> String {
    AudioFormat::Wav.as_str().to_owned()
}

const fn default_rate() -> u32 {
    DEFAULT_SAMPLE_RATE
}

/// The params of a render of `speech` (its text is the input).
#[must_use]
pub fn params_of(speech: &Speech) -> Value {
    let params = RenderParams {
        voice: speech.voice.clone(),
        format: speech.format.as_str().to_owned(),
        sample_rate: speech.sample_rate.unwrap_or(DEFAULT_SAMPLE_RATE),
        provider: speech.provider.clone(),
    };
    serde_json::to_value(params).unwrap_or(Value::Null)
}

/// What `render.json` says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RenderReport {
    /// The audio's length.
    pub audio_seconds: f64,
    /// Characters spoken.
    pub characters: usize,
    /// Synthesis calls made.
    pub chunks: usize,
    /// The audio artifact's name.
    pub audio: String,
    /// Its format.
    pub format: String,
    /// Its sample rate.
    pub sample_rate: u32,
    /// The voice of the first chunk.
    pub voice: String,
    /// The providers that spoke, in order of first use.
    pub providers: Vec<String>,
}

/// The `tts_render` job type, speaking through `speaker`.
#[derive(Debug, Clone)]
pub struct TtsRender {
    speaker: Arc<dyn Speaker>,
}

impl TtsRender {
    /// A render speaking through `speaker`.
    #[must_use]
    pub fn new(speaker: Arc<dyn Speaker>) -> Self {
        Self { speaker }
    }

    fn parse(&self, params: &Value) -> Result<(RenderParams, AudioFormat), String> {
        let p = RenderParams::deserialize(params).map_err(|e| format!("tts_render params: {e}"))?;
        let format = AudioFormat::parse_output(&p.format).map_err(|r| r.message)?;
        if !SAMPLE_RATES.contains(&p.sample_rate) {
            return Err(format!(
                "sample_rate {} is out of range; use {} to {} Hz",
                p.sample_rate,
                SAMPLE_RATES.start(),
                SAMPLE_RATES.end()
            ));
        }
        if let Some(v) = &p.voice {
            check_voice_id(v).map_err(|r| r.message)?;
        }
        if let Some(name) = &p.provider {
            let known = self.speaker.providers();
            if !known.contains(&name.as_str()) {
                return Err(format!(
                    "provider {name:?} is not configured here; configured: {}",
                    known.join(", ")
                ));
            }
        }
        Ok((p, format))
    }
}

/// The text in chunks of whole sentences of at most `max` characters (a longer sentence is cut
/// at spaces, a longer word on its own).
#[must_use]
pub fn chunks(text: &str, max: usize) -> Vec<String> {
    let max = max.max(1);
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    let push = |piece: &str, current: &mut String, out: &mut Vec<String>| {
        let fits = current.chars().count() + 1 + piece.chars().count() <= max;
        if !current.is_empty() && !fits {
            out.push(std::mem::take(current));
        }
        if !current.is_empty() {
            current.push(' ');
        }
        current.push_str(piece);
    };
    for sentence in cognomega_core::voice::session::sentences(text) {
        if sentence.chars().count() <= max {
            push(sentence, &mut current, &mut out);
            continue;
        }
        for word in sentence.split_whitespace() {
            if word.chars().count() <= max {
                push(word, &mut current, &mut out);
            } else {
                if !current.is_empty() {
                    out.push(std::mem::take(&mut current));
                }
                let chars: Vec<char> = word.chars().collect();
                for piece in chars.chunks(max) {
                    out.push(piece.iter().collect());
                }
            }
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// A provider's refusal as a job error: the request's fault (4xx) fails the job, anything
/// else is retried.
fn job_error(r: Refusal) -> JobError {
    if (400..500).contains(&r.status) && r.status != 429 {
        JobError::InvalidInput(r.message)
    } else {
        JobError::Transient(format!("{}: {}", r.code, r.message))
    }
}

#[async_trait::async_trait(?Send)]
impl JobType for TtsRender {
    fn name(&self) -> &'static str {
        NAME
    }

    fn validate_params(&self, params: &Value) -> Result<Value, String> {
        let (p, _) = self.parse(params)?;
        serde_json::to_value(p).map_err(|e| e.to_string())
    }

    fn validate_input(&self, input: &[u8]) -> Result<(), String> {
        let text = std::str::from_utf8(input).map_err(|_| "the text is not UTF-8".to_owned())?;
        let chars = text.chars().count();
        if chars > MAX_CHARS {
            return Err(format!(
                "the text has {chars} characters; at most {MAX_CHARS}"
            ));
        }
        if chunks(text, CHUNK_CHARS).is_empty() {
            return Err("the text has nothing to say".to_owned());
        }
        Ok(())
    }

    fn usage(&self, _params: &Value, artifacts: &[Artifact]) -> Metered {
        let seconds = artifacts
            .iter()
            .find(|a| a.name == RENDER_JSON)
            .and_then(|a| serde_json::from_slice::<RenderReport>(&a.bytes).ok())
            .map_or(0.0, |r| r.audio_seconds);
        Metered {
            kind: UsageKind::AudioSeconds,
            quantity: billable_seconds(seconds),
        }
    }

    fn via_jobs_api(&self) -> bool {
        false
    }

    async fn run(
        &self,
        input: &[u8],
        params: &Value,
        progress: &dyn Progress,
    ) -> Result<Vec<Artifact>, JobError> {
        self.validate_input(input).map_err(JobError::InvalidInput)?;
        let text = std::str::from_utf8(input).map_err(|e| JobError::InvalidInput(e.to_string()))?;
        let (p, format) = self.parse(params).map_err(JobError::InvalidInput)?;
        let rate = p.sample_rate;
        let pieces = chunks(text, CHUNK_CHARS);
        let stages = pieces.len() + 1;
        let mut pcm: Vec<u8> = Vec::new();
        let mut providers: Vec<String> = Vec::new();
        let mut voice = None;
        for (i, piece) in pieces.iter().enumerate() {
            progress
                .stage(
                    &format!("synthesize {}/{}", i + 1, pieces.len()),
                    i as f32 / stages as f32,
                )
                .await?;
            let speech = Speech {
                text: piece.clone(),
                voice: p.voice.clone(),
                format: AudioFormat::Wav,
                sample_rate: Some(rate),
                provider: p.provider.clone(),
            };
            let spoken = self.speaker.synthesize(&speech).await.map_err(job_error)?;
            let samples = pcm_of_wav_at(&spoken.value.audio, rate).map_err(|e| {
                JobError::Transient(format!("{} answered unusable audio: {e}", spoken.provider))
            })?;
            pcm.extend_from_slice(samples);
            if !providers.contains(&spoken.provider) {
                providers.push(spoken.provider.clone());
            }
            voice.get_or_insert(spoken.value.voice);
        }
        progress
            .stage("encode", (stages - 1) as f32 / stages as f32)
            .await?;
        let wav = wav_of_pcm_at(&pcm, rate);
        let audio = match format {
            AudioFormat::Wav => wav,
            other => self
                .speaker
                .encode(&wav, other)
                .await
                .map_err(JobError::Transient)?,
        };
        let name = format!("speech.{}", format.as_str());
        let report = RenderReport {
            audio_seconds: pcm.len() as f64 / (f64::from(rate) * 2.0),
            characters: text.trim().chars().count(),
            chunks: pieces.len(),
            audio: name.clone(),
            format: format.as_str().to_owned(),
            sample_rate: rate,
            voice: voice.unwrap_or_default(),
            providers,
        };
        let report =
            serde_json::to_vec_pretty(&report).map_err(|e| JobError::Transient(e.to_string()))?;
        Ok(vec![
            Artifact {
                name,
                content_type: format.content_type().to_owned(),
                bytes: audio,
            },
            Artifact {
                name: RENDER_JSON.to_owned(),
                content_type: "application/json".to_owned(),
                bytes: report,
            },
        ])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_keep_sentences_whole_and_bounded() {
        assert_eq!(chunks("One. Two! Three?", 100), ["One. Two! Three?"]);
        assert_eq!(chunks("One. Two! Three?", 9), ["One. Two!", "Three?"]);
        let long = "word ".repeat(50);
        let parts = chunks(&long, 22);
        assert!(parts.iter().all(|c| c.chars().count() <= 22), "{parts:?}");
        assert_eq!(parts.join(" ").split_whitespace().count(), 50);
        assert_eq!(chunks(&"x".repeat(10), 4), ["xxxx", "xxxx", "xx"]);
        assert!(chunks(" ... ", 10).is_empty());
    }

    #[derive(Debug)]
    struct Silent;

    #[async_trait::async_trait(?Send)]
    impl Speaker for Silent {
        fn providers(&self) -> Vec<&'static str> {
            vec!["local"]
        }
        async fn synthesize(&self, _speech: &Speech) -> Result<Answered<Spoken>, Refusal> {
            Err(Refusal::new(503, "down", "down"))
        }
        async fn encode(&self, _wav: &[u8], _to: AudioFormat) -> Result<Vec<u8>, String> {
            Err("no".into())
        }
    }

    #[test]
    fn params_are_normalized_and_checked() {
        let job = TtsRender::new(Arc::new(Silent));
        let p = job
            .validate_params(&serde_json::json!({}))
            .expect("defaults");
        assert_eq!(
            p,
            serde_json::json!({"format": "wav", "sample_rate": 22_050})
        );
        assert!(job
            .validate_params(&serde_json::json!({"format": "flac"}))
            .is_err());
        assert!(job
            .validate_params(&serde_json::json!({"sample_rate": 4000}))
            .is_err());
        let e = job
            .validate_params(&serde_json::json!({"provider": "cartesia"}))
            .expect_err("not configured");
        assert!(e.contains("configured: local"), "{e}");
        assert!(job.validate_input(b"\xff\xfe").is_err());
        assert!(job.validate_input(b" ?! ").is_err());
        assert!(!job.via_jobs_api());
        let report = RenderReport {
            audio_seconds: 61.2,
            characters: 3,
            chunks: 1,
            audio: "speech.wav".into(),
            format: "wav".into(),
            sample_rate: 22_050,
            voice: "en".into(),
            providers: vec!["local".into()],
        };
        let artifacts = [Artifact {
            name: RENDER_JSON.into(),
            content_type: "application/json".into(),
            bytes: serde_json::to_vec(&report).expect("json"),
        }];
        assert_eq!(
            job.usage(&serde_json::json!({}), &artifacts),
            Metered {
                kind: UsageKind::AudioSeconds,
                quantity: 62
            }
        );
    }
}
