//! Cartesia (`CARTESIA_API_KEY`, `CARTESIA_BASE_URL`, `CARTESIA_VERSION`): speech over
//! `POST /tts/bytes`, a realtime session's speech streamed over `GET /tts/websocket` (one
//! context per text: raw `pcm_s16le` chunks as Cartesia produces them), the voice list over
//! `GET /voices`, transcription over `POST /stt` (multipart, `ink-whisper`, word timestamps).
//! Every call carries the `Cartesia-Version` header and the key as a bearer token. 429, 5xx, a timeout or a refused key move on to the
//! next provider; another 4xx is the request's own fault and is answered as is.

use std::time::Duration;

use cognomega_core::voice::{AudioFormat, Heard, Segment, Speech, Spoken, VoiceFailure, VoiceInfo};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::voice::{http_failure, measure, segments_of_words, PcmStream, VoiceProvider};

/// The API version sent when `CARTESIA_VERSION` is not set.
pub const DEFAULT_VERSION: &str = "2025-04-16";
/// The base URL when `CARTESIA_BASE_URL` is not set.
pub const DEFAULT_BASE_URL: &str = "https://api.cartesia.ai";
/// The speech model.
pub const TTS_MODEL: &str = "sonic-2";
/// The transcription model.
pub const STT_MODEL: &str = "ink-whisper";
/// The voice of a synthesis that names none (a stock English voice).
pub const DEFAULT_VOICE: &str = "694f9389-aac1-45b6-b726-9d9369183238";
/// The sample rate when the request names none.
const DEFAULT_RATE: u32 = 44_100;
/// Numbers the WebSocket contexts of this process.
static CONTEXTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Cartesia's settings.
#[derive(Debug, Clone)]
pub struct CartesiaSettings {
    /// The API key.
    pub api_key: String,
    /// The base URL, without a trailing slash.
    pub base_url: String,
    /// The `Cartesia-Version` header.
    pub version: String,
    /// Per-call timeout.
    pub timeout: Duration,
}

impl CartesiaSettings {
    /// From the environment: `None` without `CARTESIA_API_KEY`.
    pub fn from_vars(get: &impl Fn(&str) -> Option<String>) -> Option<Self> {
        let api_key = get("CARTESIA_API_KEY").filter(|k| !k.is_empty())?;
        Some(Self {
            api_key,
            base_url: get("CARTESIA_BASE_URL")
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| DEFAULT_BASE_URL.into())
                .trim_end_matches('/')
                .to_owned(),
            version: get("CARTESIA_VERSION")
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| DEFAULT_VERSION.into()),
            timeout: Duration::from_secs(30),
        })
    }
}

/// The Cartesia client.
#[derive(Debug)]
pub struct Cartesia {
    settings: CartesiaSettings,
    client: reqwest::Client,
}

impl Cartesia {
    /// A client with these settings.
    pub fn new(settings: CartesiaSettings) -> Result<Self, String> {
        cognomega_core::tls::install();
        let client = reqwest::Client::builder()
            .connect_timeout(settings.timeout.min(Duration::from_secs(10)))
            .timeout(settings.timeout)
            .build()
            .map_err(|e| format!("cannot build the Cartesia HTTP client: {e}"))?;
        Ok(Self { settings, client })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.settings.base_url))
            .header("cartesia-version", &self.settings.version)
            .bearer_auth(&self.settings.api_key)
    }

    /// Sends, and sorts a failed answer into fallback or refusal.
    async fn send(&self, req: reqwest::RequestBuilder) -> Result<reqwest::Response, VoiceFailure> {
        let resp = req.send().await.map_err(|e| {
            VoiceFailure::Unavailable(if e.is_timeout() {
                format!("timed out after {:?}", self.settings.timeout)
            } else {
                format!("unreachable: {e}")
            })
        })?;
        let status = resp.status().as_u16();
        if resp.status().is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        let detail = serde_json::from_str::<Value>(&body)
            .ok()
            .and_then(|v| {
                v["message"]
                    .as_str()
                    .or_else(|| v["error"].as_str())
                    .or_else(|| v["error"]["message"].as_str())
                    .map(str::to_owned)
            })
            .unwrap_or_else(|| body.chars().take(200).collect());
        Err(http_failure("cartesia", status, &detail))
    }
}

/// A message of `/tts/websocket`: `chunk` (base64 audio), `done`, `error`, or another
/// (timestamps, flushes) that a session does not use.
#[derive(Deserialize)]
struct WireMessage {
    #[serde(rename = "type", default)]
    kind: String,
    #[serde(default)]
    data: Option<String>,
    #[serde(default)]
    done: bool,
    #[serde(default)]
    status_code: Option<u16>,
    #[serde(default)]
    error: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// What the socket said next: audio, the end of the generation (`None`), or why it failed.
async fn next_audio(ws: &mut Socket, limit: Duration) -> Result<Option<Vec<u8>>, VoiceFailure> {
    use base64::Engine as _;
    use futures::StreamExt as _;
    use tokio_tungstenite::tungstenite::Message;
    loop {
        let next = tokio::time::timeout(limit, ws.next())
            .await
            .map_err(|_| VoiceFailure::Unavailable(format!("no audio within {limit:?}")))?;
        let text = match next {
            None | Some(Ok(Message::Close(_))) => {
                return Err(VoiceFailure::Unavailable(
                    "the socket closed before the speech was done".into(),
                ))
            }
            Some(Err(e)) => {
                return Err(VoiceFailure::Unavailable(format!("the socket broke: {e}")))
            }
            Some(Ok(Message::Text(t))) => t,
            Some(Ok(_)) => continue,
        };
        let msg: WireMessage = serde_json::from_str(&text)
            .map_err(|e| VoiceFailure::Unavailable(format!("a message we cannot read ({e})")))?;
        match msg.kind.as_str() {
            "chunk" => {
                let audio = base64::engine::general_purpose::STANDARD
                    .decode(msg.data.unwrap_or_default())
                    .map_err(|e| VoiceFailure::Unavailable(format!("audio we cannot read: {e}")))?;
                return Ok(Some(audio));
            }
            "error" => {
                let detail = msg.error.or(msg.message).unwrap_or_default();
                return Err(http_failure(
                    "cartesia",
                    msg.status_code.unwrap_or(500),
                    &detail,
                ));
            }
            _ if msg.done => return Ok(None),
            _ => {}
        }
    }
}

#[derive(Deserialize)]
struct WireVoice {
    id: String,
    #[serde(default)]
    name: String,
    #[serde(default)]
    language: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum VoiceList {
    Page { data: Vec<WireVoice> },
    List(Vec<WireVoice>),
}

#[derive(Deserialize)]
struct WireWord {
    word: String,
    start: f64,
    end: f64,
}

#[derive(Deserialize)]
struct WireTranscript {
    text: String,
    #[serde(default)]
    language: Option<String>,
    #[serde(default)]
    words: Vec<WireWord>,
}

/// Words into segments; a transcript without word timings is one segment.
fn segments(words: &[WireWord], text: &str) -> Vec<Segment> {
    let mut out = segments_of_words(words.iter().map(|w| (w.word.as_str(), w.start, w.end)));
    if out.is_empty() && !text.trim().is_empty() {
        out.push(Segment {
            start: 0.0,
            end: 0.0,
            text: text.trim().to_owned(),
        });
    }
    out
}

#[async_trait::async_trait]
impl VoiceProvider for Cartesia {
    fn name(&self) -> &'static str {
        "cartesia"
    }

    async fn voices(&self) -> Result<Vec<VoiceInfo>, VoiceFailure> {
        let resp = self
            .send(self.request(reqwest::Method::GET, "/voices"))
            .await?;
        let list: VoiceList = resp
            .json()
            .await
            .map_err(|e| VoiceFailure::Unavailable(format!("a voice list we cannot read: {e}")))?;
        let list = match list {
            VoiceList::Page { data } | VoiceList::List(data) => data,
        };
        Ok(list
            .into_iter()
            .map(|v| VoiceInfo {
                id: v.id,
                name: v.name,
                language: v.language,
            })
            .collect())
    }

    async fn synthesize(&self, speech: &Speech) -> Result<Spoken, VoiceFailure> {
        let rate = speech.sample_rate.unwrap_or(DEFAULT_RATE);
        let output_format = match speech.format {
            AudioFormat::Wav => {
                json!({"container": "wav", "encoding": "pcm_s16le", "sample_rate": rate})
            }
            AudioFormat::Mp3 => {
                json!({"container": "mp3", "sample_rate": rate, "bit_rate": 128_000})
            }
            other => {
                return Err(VoiceFailure::Unavailable(format!(
                    "cartesia does not answer in {}",
                    other.as_str()
                )))
            }
        };
        let voice = speech.voice.as_deref().unwrap_or(DEFAULT_VOICE);
        let body = json!({
            "model_id": TTS_MODEL,
            "transcript": speech.text,
            "voice": {"mode": "id", "id": voice},
            "output_format": output_format,
        });
        let resp = self
            .send(
                self.request(reqwest::Method::POST, "/tts/bytes")
                    .json(&body),
            )
            .await?;
        let audio = resp
            .bytes()
            .await
            .map_err(|e| VoiceFailure::Unavailable(format!("the audio broke off: {e}")))?
            .to_vec();
        // The length is measured here, never taken from the provider's word.
        let seconds = measure(&audio, speech.format).await.map_err(|e| {
            VoiceFailure::Unavailable(format!("audio we cannot read: {}", e.message))
        })?;
        Ok(Spoken {
            audio,
            format: speech.format,
            seconds,
            voice: voice.to_owned(),
        })
    }

    async fn stream(&self, speech: &Speech, rate: u32) -> Result<PcmStream, VoiceFailure> {
        use futures::SinkExt as _;
        use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
        use tokio_tungstenite::tungstenite::{Error as WsError, Message};
        let limit = self.settings.timeout;
        let base = &self.settings.base_url;
        let url = if let Some(rest) = base.strip_prefix("https://") {
            format!("wss://{rest}/tts/websocket")
        } else {
            format!("ws://{}/tts/websocket", base.trim_start_matches("http://"))
        };
        let unusable = |e: &dyn std::fmt::Display| VoiceFailure::Unavailable(format!("{e}"));
        let mut req = url.into_client_request().map_err(|e| unusable(&e))?;
        let headers = req.headers_mut();
        headers.insert(
            "cartesia-version",
            self.settings.version.parse().map_err(|e| unusable(&e))?,
        );
        headers.insert(
            "authorization",
            format!("Bearer {}", self.settings.api_key)
                .parse()
                .map_err(|e| unusable(&e))?,
        );
        let (mut ws, _) = tokio::time::timeout(limit, tokio_tungstenite::connect_async(req))
            .await
            .map_err(|_| VoiceFailure::Unavailable(format!("timed out after {limit:?}")))?
            .map_err(|e| match e {
                WsError::Http(resp) => {
                    let body = resp
                        .body()
                        .as_deref()
                        .map(|b| String::from_utf8_lossy(b).into_owned())
                        .unwrap_or_default();
                    let detail = serde_json::from_str::<Value>(&body)
                        .ok()
                        .and_then(|v| v["error"].as_str().map(str::to_owned))
                        .unwrap_or(body);
                    http_failure("cartesia", resp.status().as_u16(), &detail)
                }
                other => VoiceFailure::Unavailable(format!("unreachable: {other}")),
            })?;
        let voice = speech.voice.as_deref().unwrap_or(DEFAULT_VOICE);
        let request = json!({
            "model_id": TTS_MODEL,
            "transcript": speech.text,
            "voice": {"mode": "id", "id": voice},
            "output_format": {"container": "raw", "encoding": "pcm_s16le", "sample_rate": rate},
            "context_id": format!("cognomega-{}", CONTEXTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
            "continue": false,
        });
        ws.send(Message::Text(request.to_string().into()))
            .await
            .map_err(|e| VoiceFailure::Unavailable(format!("the socket broke: {e}")))?;
        // The first chunk (or the refusal) before answering: one that cannot start falls over.
        let Some(first) = next_audio(&mut ws, limit).await? else {
            return Ok(Box::pin(futures::stream::empty()));
        };
        let state = (Some(ws), Some(first));
        Ok(Box::pin(futures::stream::unfold(
            state,
            move |(ws, first)| async move {
                if let Some(audio) = first {
                    return Some((Ok(audio), (ws, None)));
                }
                let mut ws = ws?;
                match next_audio(&mut ws, limit).await {
                    Ok(Some(audio)) => Some((Ok(audio), (Some(ws), None))),
                    Ok(None) => {
                        let _ = ws.close(None).await;
                        None
                    }
                    Err(e) => Some((Err(format!("cartesia: {e}")), (None, None))),
                }
            },
        )))
    }

    async fn transcribe(
        &self,
        audio: &[u8],
        format: AudioFormat,
        language: Option<&str>,
    ) -> Result<Heard, VoiceFailure> {
        let file = reqwest::multipart::Part::bytes(audio.to_vec())
            .file_name(format!("audio.{}", format.as_str()))
            .mime_str(format.content_type())
            .map_err(|e| VoiceFailure::Unavailable(e.to_string()))?;
        let mut form = reqwest::multipart::Form::new()
            .part("file", file)
            .text("model", STT_MODEL)
            .text("timestamp_granularities[]", "word");
        if let Some(lang) = language {
            // ISO 639-1: the tag's language.
            let primary = lang.split('-').next().unwrap_or(lang).to_ascii_lowercase();
            form = form.text("language", primary);
        }
        let resp = self
            .send(self.request(reqwest::Method::POST, "/stt").multipart(form))
            .await?;
        let t: WireTranscript = resp
            .json()
            .await
            .map_err(|e| VoiceFailure::Unavailable(format!("a transcript we cannot read: {e}")))?;
        Ok(Heard {
            segments: segments(&t.words, &t.text),
            text: t.text.trim().to_owned(),
            language: t
                .language
                .or_else(|| language.map(str::to_owned))
                .unwrap_or_else(|| "en".into()),
        })
    }
}
