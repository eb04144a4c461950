//! Workers AI's speech models over REST (`CF_ACCOUNT_ID` + `CF_API_TOKEN`, `CF_AI_BASE_URL`):
//! MeloTTS speaks (`POST {base}/accounts/{account}/ai/run/@cf/myshell-ai/melotts`, JSON
//! `{"prompt","lang"}`, answered `{"result":{"audio": base64 MP3}}`), Whisper transcribes (the
//! same path with `@cf/openai/whisper` and the audio as the raw body, answered
//! `{"result":{"text","words":[{"word","start","end"}]}}`). The Cloudflare edge reaches the same
//! models through its AI binding. 429, 5xx, a timeout or a refused token move on to the next
//! provider; another 4xx is the request's own fault.

use std::time::Duration;

use cognomega_core::voice::{AudioFormat, Heard, Speech, Spoken, VoiceFailure, VoiceInfo};
use serde::Deserialize;
use serde_json::Value;

use crate::voice::{http_failure, measure, transcode, VoiceProvider};
use crate::voice_protocol::cfai;

pub use crate::voice_protocol::cfai::{STT_MODEL, TTS_MODEL};

/// Workers AI's settings.
#[derive(Debug, Clone)]
pub struct CfaiVoiceSettings {
    /// The account.
    pub account_id: String,
    /// The API token.
    pub api_token: String,
    /// `…/client/v4`, without a trailing slash.
    pub base_url: String,
    /// Per-call timeout.
    pub timeout: Duration,
}

impl CfaiVoiceSettings {
    /// From the environment: `None` unless both `CF_ACCOUNT_ID` and `CF_API_TOKEN` are set.
    pub fn from_vars(get: &impl Fn(&str) -> Option<String>) -> Option<Self> {
        let api_token = get("CF_API_TOKEN").filter(|t| !t.is_empty())?;
        let account_id = get("CF_ACCOUNT_ID").filter(|a| !a.is_empty())?;
        Some(Self {
            account_id,
            api_token,
            base_url: get("CF_AI_BASE_URL")
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| crate::config::CFAI_BASE_URL.into())
                .trim_end_matches('/')
                .to_owned(),
            timeout: Duration::from_secs(30),
        })
    }
}

/// The Workers AI voice client.
#[derive(Debug)]
pub struct CfaiVoice {
    settings: CfaiVoiceSettings,
    client: reqwest::Client,
}

#[derive(Deserialize)]
struct Envelope {
    #[serde(default)]
    result: Value,
}

impl CfaiVoice {
    /// A client with these settings.
    pub fn new(settings: CfaiVoiceSettings) -> Result<Self, String> {
        cognomega_core::tls::install();
        let client = reqwest::Client::builder()
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .timeout(settings.timeout)
            .build()
            .map_err(|e| format!("cannot build the Workers AI HTTP client: {e}"))?;
        Ok(Self { settings, client })
    }

    async fn run(
        &self,
        model: &str,
        req: impl FnOnce(reqwest::RequestBuilder) -> reqwest::RequestBuilder,
    ) -> Result<Value, VoiceFailure> {
        let url = format!(
            "{}/accounts/{}/ai/run/{model}",
            self.settings.base_url, self.settings.account_id
        );
        let resp = req(self.client.post(url).bearer_auth(&self.settings.api_token))
            .send()
            .await
            .map_err(|e| {
                VoiceFailure::Unavailable(if e.is_timeout() {
                    format!("timed out after {:?}", self.settings.timeout)
                } else {
                    format!("unreachable: {e}")
                })
            })?;
        let status = resp.status().as_u16();
        let body = resp.text().await.unwrap_or_default();
        if !(200..300).contains(&status) {
            let detail = serde_json::from_str::<Value>(&body)
                .ok()
                .and_then(|v| v["errors"][0]["message"].as_str().map(str::to_owned))
                .unwrap_or_else(|| body.chars().take(200).collect());
            return Err(http_failure("Workers AI", status, &detail));
        }
        serde_json::from_str::<Envelope>(&body)
            .map(|e| e.result)
            .map_err(|e| VoiceFailure::Unavailable(format!("an answer we cannot read: {e}")))
    }
}

#[async_trait::async_trait]
impl VoiceProvider for CfaiVoice {
    fn name(&self) -> &'static str {
        "cfai"
    }

    async fn voices(&self) -> Result<Vec<VoiceInfo>, VoiceFailure> {
        Ok(cfai::voices())
    }

    async fn synthesize(&self, speech: &Speech) -> Result<Spoken, VoiceFailure> {
        let (lang, input) = cfai::tts_input(speech)?;
        let result = self.run(TTS_MODEL, |r| r.json(&input)).await?;
        let mp3 = cfai::tts_audio(&result)?;
        // MeloTTS answers MP3; the other formats (and rates) are converted here.
        let audio = if speech.format == AudioFormat::Mp3 && speech.sample_rate.is_none() {
            mp3
        } else {
            transcode(&mp3, AudioFormat::Mp3, speech.format, speech.sample_rate).await?
        };
        let seconds = measure(&audio, speech.format).await.map_err(|e| {
            VoiceFailure::Unavailable(format!("audio we cannot read: {}", e.message))
        })?;
        Ok(Spoken {
            audio,
            format: speech.format,
            seconds,
            voice: lang.to_owned(),
        })
    }

    async fn transcribe(
        &self,
        audio: &[u8],
        format: AudioFormat,
        language: Option<&str>,
    ) -> Result<Heard, VoiceFailure> {
        let result = self
            .run(STT_MODEL, |r| {
                r.header("content-type", format.content_type())
                    .body(audio.to_vec())
            })
            .await?;
        Ok(cfai::heard(&result, language))
    }
}
