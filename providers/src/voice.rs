//! Voice providers behind one port, tried in order with fallback (`COGNOMEGA_VOICE_PROVIDER_ORDER`).
//!
//! `local`, the embedded default, needs no account: espeak-ng speaks, sox converts speech,
//! ffmpeg decodes and measures what clients send, PocketSphinx (its US English model)
//! transcribes, each run as a subprocess on
//! files in a private temporary directory that is removed with the request (also when the
//! client hangs up: the child is killed on drop).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use cognomega_core::api::Refusal;
use cognomega_core::voice::{
    wav_info, Answered, AudioFormat, Heard, Segment, Speech, Spoken, VoiceFailure, VoiceInfo,
};
use tokio::io::AsyncWriteExt as _;
use tokio::process::Command;

/// Speech as it is produced: 16-bit little-endian mono PCM, chunk by chunk (a failure after the
/// first chunk ends the stream with it).
pub type PcmStream = futures::stream::BoxStream<'static, Result<Vec<u8>, String>>;

/// One voice provider.
#[async_trait::async_trait]
pub trait VoiceProvider: Send + Sync + std::fmt::Debug {
    /// Its name in settings, requests and headers.
    fn name(&self) -> &'static str;
    /// The voices it offers.
    async fn voices(&self) -> Result<Vec<VoiceInfo>, VoiceFailure>;
    /// Speaks.
    async fn synthesize(&self, speech: &Speech) -> Result<Spoken, VoiceFailure>;
    /// Speaks `speech` (its text and voice) as 16-bit mono PCM at `rate`, chunk by chunk as it
    /// is produced; answers once the first chunk is there, so a provider that cannot start
    /// falls over to the next. The default speaks the whole text as WAV and hands its samples
    /// over as one chunk.
    async fn stream(&self, speech: &Speech, rate: u32) -> Result<PcmStream, VoiceFailure> {
        let whole = Speech {
            format: AudioFormat::Wav,
            sample_rate: Some(rate),
            ..speech.clone()
        };
        let spoken = self.synthesize(&whole).await?;
        let pcm = cognomega_core::voice::session::pcm_of_wav_at(&spoken.audio, rate)
            .map_err(|e| VoiceFailure::Unavailable(format!("audio we cannot read: {e}")))?
            .to_vec();
        Ok(Box::pin(futures::stream::once(async move { Ok(pcm) })))
    }
    /// Transcribes `audio` (already measured and within the caller's caps).
    async fn transcribe(
        &self,
        audio: &[u8],
        format: AudioFormat,
        language: Option<&str>,
    ) -> Result<Heard, VoiceFailure>;
}

/// The providers in order.
#[derive(Debug, Clone, Default)]
pub struct Voices {
    providers: Vec<Arc<dyn VoiceProvider>>,
    metrics: Arc<VoiceMetrics>,
}

/// Per provider and operation (`tts`, `stt`, `session`): calls answered and failed, fallbacks
/// (a failure after which the next provider was tried), audio seconds billed; and the sessions
/// open in this process. Rendered as Prometheus text for `GET /metrics`.
#[derive(Debug, Default)]
pub struct VoiceMetrics {
    series: std::sync::Mutex<std::collections::BTreeMap<(String, &'static str), VoiceSeries>>,
    sessions_open: std::sync::atomic::AtomicI64,
}

#[derive(Debug, Default, Clone, Copy)]
struct VoiceSeries {
    answered: u64,
    failed: u64,
    fallbacks: u64,
    audio_ms: u64,
}

impl VoiceMetrics {
    fn with(&self, provider: &str, op: &'static str, f: impl FnOnce(&mut VoiceSeries)) {
        let mut series = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        f(series.entry((provider.to_owned(), op)).or_default());
    }

    /// Audio billed for an answer of `provider`.
    pub fn billed(&self, provider: &str, op: &'static str, seconds: f64) {
        let ms = (seconds.max(0.0) * 1000.0).round() as u64;
        self.with(provider, op, |s| s.audio_ms += ms);
    }

    /// A session opened (`+1`) or ended (`-1`).
    pub fn session(&self, delta: i64) {
        self.sessions_open
            .fetch_add(delta, std::sync::atomic::Ordering::Relaxed);
    }

    /// Prometheus text exposition.
    #[must_use]
    pub fn render(&self) -> String {
        use std::fmt::Write as _;
        let series = self
            .series
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP cognomega_voice_requests_total Voice provider calls, by outcome.\n# TYPE cognomega_voice_requests_total counter"
        );
        for ((p, op), s) in &series {
            for (outcome, n) in [("answered", s.answered), ("failed", s.failed)] {
                let _ = writeln!(
                    out,
                    "cognomega_voice_requests_total{{provider=\"{p}\",op=\"{op}\",outcome=\"{outcome}\"}} {n}"
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP cognomega_voice_fallbacks_total Voice provider failures after which the next provider was tried.\n# TYPE cognomega_voice_fallbacks_total counter"
        );
        for ((p, op), s) in &series {
            let _ = writeln!(
                out,
                "cognomega_voice_fallbacks_total{{provider=\"{p}\",op=\"{op}\"}} {}",
                s.fallbacks
            );
        }
        let _ = writeln!(
            out,
            "# HELP cognomega_voice_audio_seconds_total Audio seconds billed, by the provider that answered.\n# TYPE cognomega_voice_audio_seconds_total counter"
        );
        for ((p, op), s) in &series {
            let _ = writeln!(
                out,
                "cognomega_voice_audio_seconds_total{{provider=\"{p}\",op=\"{op}\"}} {}",
                s.audio_ms as f64 / 1000.0
            );
        }
        let _ = writeln!(
            out,
            "# HELP cognomega_voice_sessions_open Realtime voice sessions open in this process.\n# TYPE cognomega_voice_sessions_open gauge\ncognomega_voice_sessions_open {}",
            self.sessions_open.load(std::sync::atomic::Ordering::Relaxed)
        );
        out
    }
}

/// The provider names an order may list.
pub const PROVIDER_NAMES: [&str; 3] = ["cartesia", "cfai", "local"];
/// The order when none is set: Cartesia, then Workers AI, each when its key is set, then the
/// local engines.
pub const DEFAULT_ORDER: &str = "cartesia,cfai,local";

/// Which voice providers run, in which order.
#[derive(Debug, Clone, Default)]
pub struct VoiceConfig {
    /// Comma-separated names (`COGNOMEGA_VOICE_PROVIDER_ORDER`; default [`DEFAULT_ORDER`]).
    pub order: Option<String>,
    /// Cartesia's settings, when its key is set.
    pub cartesia: Option<crate::cartesia::CartesiaSettings>,
    /// Workers AI's settings, when its account and token are set.
    pub cfai: Option<crate::cfai_voice::CfaiVoiceSettings>,
}

impl VoiceConfig {
    /// The order given, and the providers' settings from the environment.
    pub fn from_vars(order: Option<String>, get: impl Fn(&str) -> Option<String>) -> Self {
        Self {
            order,
            cartesia: crate::cartesia::CartesiaSettings::from_vars(&get),
            cfai: crate::cfai_voice::CfaiVoiceSettings::from_vars(&get),
        }
    }
}

impl Voices {
    /// The providers of `config`'s order; a provider without its key is left out.
    pub fn from_config(config: &VoiceConfig) -> Result<Self, String> {
        let order = config.order.as_deref().unwrap_or(DEFAULT_ORDER);
        let mut providers: Vec<Arc<dyn VoiceProvider>> = Vec::new();
        let mut seen = Vec::new();
        for name in order.split(',').map(str::trim).filter(|n| !n.is_empty()) {
            if seen.contains(&name) {
                return Err(format!("voice provider {name:?} is listed twice"));
            }
            seen.push(name);
            match name {
                "local" => providers.push(Arc::new(Local::default())),
                "cartesia" => {
                    if let Some(s) = &config.cartesia {
                        providers.push(Arc::new(crate::cartesia::Cartesia::new(s.clone())?));
                    }
                }
                "cfai" => {
                    if let Some(s) = &config.cfai {
                        providers.push(Arc::new(crate::cfai_voice::CfaiVoice::new(s.clone())?));
                    }
                }
                other => {
                    return Err(format!(
                        "unknown voice provider {other:?}; one of {}",
                        PROVIDER_NAMES.join(", ")
                    ))
                }
            }
        }
        Ok(Self::new(providers))
    }

    /// These providers, in this order.
    #[must_use]
    pub fn new(providers: Vec<Arc<dyn VoiceProvider>>) -> Self {
        Self {
            providers,
            metrics: Arc::default(),
        }
    }

    /// The counters.
    #[must_use]
    pub fn metrics(&self) -> &Arc<VoiceMetrics> {
        &self.metrics
    }

    /// Whether any provider is configured.
    #[must_use]
    pub fn any(&self) -> bool {
        !self.providers.is_empty()
    }

    /// The providers' names, in order.
    #[must_use]
    pub fn names(&self) -> Vec<&'static str> {
        self.providers.iter().map(|p| p.name()).collect()
    }

    fn candidates(&self, only: Option<&str>) -> Result<Vec<&Arc<dyn VoiceProvider>>, Refusal> {
        match only {
            None => Ok(self.providers.iter().collect()),
            Some(name) => {
                let found: Vec<_> = self.providers.iter().filter(|p| p.name() == name).collect();
                if found.is_empty() {
                    Err(Refusal::new(
                        400,
                        "unknown_provider",
                        format!(
                            "provider {name:?} is not configured here; configured: {}",
                            self.names().join(", ")
                        ),
                    ))
                } else {
                    Ok(found)
                }
            }
        }
    }

    async fn route<'a, T, F, Fut>(
        &'a self,
        op: &'static str,
        only: Option<&str>,
        call: F,
    ) -> Result<Answered<T>, Refusal>
    where
        F: Fn(&'a Arc<dyn VoiceProvider>) -> Fut,
        Fut: std::future::Future<Output = Result<T, VoiceFailure>>,
    {
        let candidates = self.candidates(only)?;
        if candidates.is_empty() {
            return Err(Refusal::new(
                503,
                "no_voice_provider",
                "no voice provider is configured; set COGNOMEGA_VOICE_PROVIDER_ORDER",
            ));
        }
        let mut skipped = Vec::new();
        let mut unsupported: Option<Refusal> = None;
        let last = candidates.len() - 1;
        for (i, p) in candidates.into_iter().enumerate() {
            let result = call(p).await;
            let failed_over = i < last
                && matches!(
                    result,
                    Err(VoiceFailure::Unavailable(_) | VoiceFailure::Unsupported(_))
                );
            self.metrics.with(p.name(), op, |s| {
                if result.is_ok() {
                    s.answered += 1;
                } else {
                    s.failed += 1;
                }
                if failed_over {
                    s.fallbacks += 1;
                }
            });
            match result {
                Ok(value) => {
                    return Ok(Answered {
                        provider: p.name().to_owned(),
                        skipped,
                        value,
                    })
                }
                Err(VoiceFailure::Rejected(r)) => return Err(r),
                Err(VoiceFailure::Unsupported(r)) => {
                    skipped.push((p.name().to_owned(), r.message.clone()));
                    unsupported.get_or_insert(r);
                }
                Err(VoiceFailure::Unavailable(why)) => {
                    tracing::warn!(provider = p.name(), error = %why, "voice provider failed; trying the next");
                    skipped.push((p.name().to_owned(), why));
                }
            }
        }
        if let Some(r) = unsupported {
            return Err(r);
        }
        let why = skipped
            .iter()
            .map(|(p, e)| format!("{p}: {e}"))
            .collect::<Vec<_>>()
            .join("; ");
        Err(Refusal::new(
            502,
            "voice_provider_failed",
            format!("every voice provider failed ({why}); retry later"),
        ))
    }

    /// Speaks with the first provider that can.
    pub async fn synthesize(&self, speech: &Speech) -> Result<Answered<Spoken>, Refusal> {
        self.route("tts", speech.provider.as_deref(), |p| p.synthesize(speech))
            .await
    }

    /// Speaks as a stream of 16-bit mono PCM at `rate` with the first provider that starts
    /// (a realtime session's speech; Cartesia streams over its WebSocket).
    pub async fn stream(&self, speech: &Speech, rate: u32) -> Result<Answered<PcmStream>, Refusal> {
        self.route("session", speech.provider.as_deref(), |p| {
            p.stream(speech, rate)
        })
        .await
    }

    /// Transcribes with the first provider that can.
    pub async fn transcribe(
        &self,
        audio: &[u8],
        format: AudioFormat,
        language: Option<&str>,
    ) -> Result<Answered<Heard>, Refusal> {
        self.route("stt", None, |p| p.transcribe(audio, format, language))
            .await
    }

    /// Every provider's voices (a provider that cannot list them is left out, with a warning).
    pub async fn voices(&self) -> Vec<(&'static str, Vec<VoiceInfo>)> {
        let mut out = Vec::new();
        for p in &self.providers {
            match p.voices().await {
                Ok(v) => out.push((p.name(), v)),
                Err(e) => tracing::warn!(provider = p.name(), error = %e, "voices unavailable"),
            }
        }
        out
    }
}

pub(crate) use crate::voice_protocol::{http_failure, segments_of_words};

/// How long one engine run may take.
const RUN_LIMIT: Duration = Duration::from_secs(120);
/// Seconds of silence put around audio before it is transcribed (and taken off the times).
const PAD_SECS: &str = "0.5";
/// The voice of a synthesis that names none.
pub const DEFAULT_LOCAL_VOICE: &str = "en-us";

/// The local engines: espeak-ng, sox, PocketSphinx.
#[derive(Debug, Default)]
pub struct Local {
    voices: tokio::sync::OnceCell<Vec<VoiceInfo>>,
}

fn missing(program: &str, e: &std::io::Error) -> VoiceFailure {
    VoiceFailure::Unavailable(if e.kind() == std::io::ErrorKind::NotFound {
        format!(
            "{program} is not installed (ops/voice.sh --install: espeak-ng, sox, ffmpeg, pocketsphinx)"
        )
    } else {
        format!("{program} could not start: {e}")
    })
}

/// Runs `program` with `args`, feeding `stdin`; its standard output, or why it failed.
async fn run(
    program: &str,
    args: &[&std::ffi::OsStr],
    stdin: Option<&[u8]>,
) -> Result<Vec<u8>, VoiceFailure> {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| missing(program, &e))?;
    if let (Some(input), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(input)
            .await
            .map_err(|e| VoiceFailure::Unavailable(format!("{program}: {e}")))?;
        drop(pipe);
    }
    let out = tokio::time::timeout(RUN_LIMIT, child.wait_with_output())
        .await
        .map_err(|_| {
            VoiceFailure::Unavailable(format!("{program} took longer than {RUN_LIMIT:?}"))
        })?
        .map_err(|e| VoiceFailure::Unavailable(format!("{program}: {e}")))?;
    if out.status.success() {
        Ok(out.stdout)
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(VoiceFailure::Unavailable(format!(
            "{program} failed ({}): {}",
            out.status,
            err.trim().chars().take(300).collect::<String>()
        )))
    }
}

fn scratch() -> Result<tempfile::TempDir, VoiceFailure> {
    tempfile::Builder::new()
        .prefix("cognomega-voice-")
        .tempdir()
        .map_err(|e| VoiceFailure::Unavailable(format!("no temporary directory: {e}")))
}

fn os(p: &Path) -> &std::ffi::OsStr {
    p.as_os_str()
}

fn arg(s: &str) -> &std::ffi::OsStr {
    std::ffi::OsStr::new(s)
}

/// Parses `espeak-ng --voices`: `Pty Language Age/Gender VoiceName File Other`.
fn parse_espeak_voices(text: &str) -> Vec<VoiceInfo> {
    let mut out: Vec<VoiceInfo> = text
        .lines()
        .skip(1)
        .filter_map(|line| {
            let cols: Vec<&str> = line.split_whitespace().collect();
            (cols.len() >= 5).then(|| VoiceInfo {
                id: cols[1].to_owned(),
                name: cols[3].replace('_', " "),
                language: cols[1].to_owned(),
            })
        })
        .collect();
    out.sort_by(|a, b| a.id.cmp(&b.id));
    out.dedup_by(|a, b| a.id == b.id);
    out
}

/// Parses PocketSphinx's `-time yes` output: per utterance, its hypothesis line, then one line
/// per word (`word start end confidence`, with `<s>`, `</s>`, `<sil>` and `[NOISE]` markers).
fn parse_sphinx(text: &str) -> Vec<Segment> {
    let mut segments: Vec<Segment> = Vec::new();
    let mut current: Option<Segment> = None;
    for line in text.lines() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        let timed = cols.len() == 4
            && cols[1].parse::<f64>().is_ok()
            && cols[2].parse::<f64>().is_ok()
            && cols[3].parse::<f64>().is_ok();
        if !timed {
            if let Some(s) = current.take().filter(|s| !s.text.is_empty()) {
                segments.push(s);
            }
            continue;
        }
        let word = cols[0];
        let (start, end) = (
            cols[1].parse::<f64>().unwrap_or(0.0),
            cols[2].parse::<f64>().unwrap_or(0.0),
        );
        if word.starts_with('<') || word.starts_with('[') {
            continue;
        }
        // Alternate pronunciations are marked `word(2)`.
        let word = word.split('(').next().unwrap_or(word);
        let seg = current.get_or_insert_with(|| Segment {
            start,
            end,
            text: String::new(),
        });
        if !seg.text.is_empty() {
            seg.text.push(' ');
        }
        seg.text.push_str(word);
        seg.end = end;
    }
    if let Some(s) = current.filter(|s| !s.text.is_empty()) {
        segments.push(s);
    }
    segments
}

/// The length of `audio` in seconds: WAV by its header, the others decoded whole by ffmpeg (so
/// a header announcing more than the stream holds, or a stream that does not decode, is
/// refused here, before any provider is called).
pub async fn measure(audio: &[u8], format: AudioFormat) -> Result<f64, Refusal> {
    let invalid = |m: String| Refusal::new(400, "invalid_audio", m);
    if format == AudioFormat::Wav {
        return wav_info(audio).map(|i| i.seconds).map_err(invalid);
    }
    // 8 kHz, 8-bit: one byte per sample, enough to count them.
    let decoded = decode(audio, format, "u8", "8000")
        .await
        .map_err(|e| match e {
            VoiceFailure::Unavailable(m) if m.contains("not installed") => Refusal::unavailable(m),
            other => invalid(format!("the audio could not be decoded: {other}")),
        })?;
    if decoded.is_empty() {
        return Err(invalid("the audio holds no samples".into()));
    }
    Ok(decoded.len() as f64 / 8000.0)
}

/// Decodes `audio` to mono PCM (`sample_format`: ffmpeg's `s16le` or `u8`) at `rate` Hz.
async fn decode(
    audio: &[u8],
    format: AudioFormat,
    sample_format: &str,
    rate: &str,
) -> Result<Vec<u8>, VoiceFailure> {
    let dir = scratch()?;
    let path = dir.path().join(format!("in.{}", format.as_str()));
    tokio::fs::write(&path, audio)
        .await
        .map_err(|e| VoiceFailure::Unavailable(format!("could not stage the audio: {e}")))?;
    run(
        "ffmpeg",
        &[
            arg("-v"),
            arg("error"),
            arg("-nostdin"),
            arg("-i"),
            os(&path),
            arg("-f"),
            arg(sample_format),
            arg("-ac"),
            arg("1"),
            arg("-ar"),
            arg(rate),
            arg("-"),
        ],
        None,
    )
    .await
}

/// Converts audio from one format to another (and sample rate), by sox.
pub async fn transcode(
    audio: &[u8],
    from: AudioFormat,
    to: AudioFormat,
    rate: Option<u32>,
) -> Result<Vec<u8>, VoiceFailure> {
    let dir = scratch()?;
    let src = dir.path().join(format!("in.{}", from.as_str()));
    let dst = dir.path().join(format!("out.{}", to.as_str()));
    tokio::fs::write(&src, audio)
        .await
        .map_err(|e| VoiceFailure::Unavailable(format!("could not stage the audio: {e}")))?;
    Local::convert(&src, &dst, to, rate).await?;
    tokio::fs::read(&dst)
        .await
        .map_err(|e| VoiceFailure::Unavailable(format!("sox wrote nothing: {e}")))
}

impl Local {
    async fn voice_list(&self) -> Result<&Vec<VoiceInfo>, VoiceFailure> {
        self.voices
            .get_or_try_init(|| async {
                let out = run("espeak-ng", &[arg("--voices")], None).await?;
                Ok(parse_espeak_voices(&String::from_utf8_lossy(&out)))
            })
            .await
    }

    async fn convert(
        src: &Path,
        dst: &Path,
        format: AudioFormat,
        rate: Option<u32>,
    ) -> Result<(), VoiceFailure> {
        let rate = rate.map(|r| r.to_string());
        // No dither: the same speech converts to the same bytes.
        let mut args: Vec<&std::ffi::OsStr> =
            vec![arg("-D"), os(src), arg("-t"), arg(format.as_str())];
        if let Some(r) = &rate {
            args.extend([arg("-r"), arg(r)]);
        }
        args.push(os(dst));
        run("sox", &args, None).await.map(drop)
    }
}

#[async_trait::async_trait]
impl VoiceProvider for Local {
    fn name(&self) -> &'static str {
        "local"
    }

    async fn voices(&self) -> Result<Vec<VoiceInfo>, VoiceFailure> {
        self.voice_list().await.cloned()
    }

    async fn synthesize(&self, speech: &Speech) -> Result<Spoken, VoiceFailure> {
        let voice = speech.voice.as_deref().unwrap_or(DEFAULT_LOCAL_VOICE);
        // Another provider's voice: that provider may speak it.
        if !self.voice_list().await?.iter().any(|v| v.id == voice) {
            return Err(VoiceFailure::Unsupported(Refusal::new(
                400,
                "unknown_voice",
                format!("the local provider has no voice {voice:?}; see GET /voice/voices"),
            )));
        }
        let dir = scratch()?;
        let wav = dir.path().join("speech.wav");
        // The text goes in on standard input: never parsed as a flag.
        run(
            "espeak-ng",
            &[arg("-v"), arg(voice), arg("-w"), os(&wav), arg("--stdin")],
            Some(speech.text.as_bytes()),
        )
        .await?;
        let spoken = tokio::fs::read(&wav)
            .await
            .map_err(|e| VoiceFailure::Unavailable(format!("espeak-ng wrote nothing: {e}")))?;
        let info = wav_info(&spoken).map_err(VoiceFailure::Unavailable)?;
        let audio = if speech.format == AudioFormat::Wav && speech.sample_rate.is_none() {
            spoken
        } else {
            let out = dir.path().join(format!("out.{}", speech.format.as_str()));
            Self::convert(&wav, &out, speech.format, speech.sample_rate).await?;
            tokio::fs::read(&out)
                .await
                .map_err(|e| VoiceFailure::Unavailable(format!("sox wrote nothing: {e}")))?
        };
        Ok(Spoken {
            audio,
            format: speech.format,
            seconds: info.seconds,
            voice: voice.to_owned(),
        })
    }

    async fn transcribe(
        &self,
        audio: &[u8],
        format: AudioFormat,
        language: Option<&str>,
    ) -> Result<Heard, VoiceFailure> {
        if let Some(lang) = language {
            let l = lang.to_ascii_lowercase();
            if l != "en" && !l.starts_with("en-") {
                return Err(VoiceFailure::Unsupported(Refusal::new(
                    400,
                    "unsupported_language",
                    format!("no configured voice provider transcribes {lang:?}; the local one knows English"),
                )));
            }
        }
        let dir = scratch()?;
        let input = dir.path().join("in.wav");
        // Compressed audio (ogg, mp3, webm; Vorbis or Opus) is decoded by ffmpeg first.
        let wav = if format == AudioFormat::Wav {
            std::borrow::Cow::Borrowed(audio)
        } else {
            let pcm = decode(audio, format, "s16le", "16000").await?;
            std::borrow::Cow::Owned(cognomega_core::voice::session::wav_of_pcm(&pcm))
        };
        tokio::fs::write(&input, &*wav)
            .await
            .map_err(|e| VoiceFailure::Unavailable(format!("could not stage the audio: {e}")))?;
        // PocketSphinx's model wants 16 kHz, mono, 16-bit.
        let pcm = dir.path().join("in16.wav");
        run(
            "sox",
            &[
                arg("-D"),
                os(&input),
                arg("-r"),
                arg("16000"),
                arg("-c"),
                arg("1"),
                arg("-b"),
                arg("16"),
                arg("-e"),
                arg("signed-integer"),
                os(&pcm),
                // Silence around the speech: the decoder misses words at a hard edge.
                arg("pad"),
                arg(PAD_SECS),
                arg(PAD_SECS),
            ],
            None,
        )
        .await?;
        let out = run(
            "pocketsphinx_continuous",
            &[
                arg("-infile"),
                os(&pcm),
                arg("-time"),
                arg("yes"),
                arg("-logfn"),
                arg("/dev/null"),
                // Its noise estimate eats the start of clean (synthetic or studio) speech.
                arg("-remove_noise"),
                arg("no"),
            ],
            None,
        )
        .await?;
        let pad: f64 = PAD_SECS.parse().unwrap_or(0.0);
        let mut segments = parse_sphinx(&String::from_utf8_lossy(&out));
        for s in &mut segments {
            s.start = (s.start - pad).max(0.0);
            s.end = (s.end - pad).max(s.start);
        }
        let text = segments
            .iter()
            .map(|s| s.text.as_str())
            .collect::<Vec<_>>()
            .join(" ");
        Ok(Heard {
            text,
            segments,
            language: "en-US".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sphinx_output() {
        let out =
            "we got you\n<s> 0.000 0.190 0.999500\nwe 0.200 0.360 0.58\ngot 0.370 0.680 0.01\n\
                   to(2) 0.990 1.050 0.05\n<sil> 2.630 2.880 0.99\n</s> 4.400 4.580 1.0\n\
                   one two\none 5.0 5.3 0.9\n[NOISE] 5.3 5.4 0.9\ntwo 5.4 5.9 0.9\n";
        let s = parse_sphinx(out);
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].text, "we got to");
        assert!((s[0].start - 0.2).abs() < 1e-9 && (s[0].end - 1.05).abs() < 1e-9);
        assert_eq!(s[1].text, "one two");
    }

    #[test]
    fn espeak_voices() {
        let out = "Pty Language       Age/Gender VoiceName          File                 Other Languages\n \
                   2  en-gb           --/M      English_(Great_Britain) gmw/en               (en 2)\n \
                   2  en-us           --/M      English_(America)  gmw/en-US            (en 3)\n";
        let v = parse_espeak_voices(out);
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].id, "en-us");
        assert_eq!(v[1].name, "English (America)");
    }

    #[test]
    fn orders() {
        let config = |order: Option<&str>, key: Option<&str>| {
            VoiceConfig::from_vars(order.map(str::to_owned), |k| {
                (k == "CARTESIA_API_KEY")
                    .then(|| key.map(str::to_owned))
                    .flatten()
            })
        };
        let names = |c: VoiceConfig| Voices::from_config(&c).map(|v| v.names());
        assert_eq!(names(config(None, None)), Ok(vec!["local"]));
        assert_eq!(
            names(config(None, Some("k"))),
            Ok(vec!["cartesia", "local"])
        );
        assert_eq!(
            names(config(Some("local,cartesia"), Some("k"))),
            Ok(vec!["local", "cartesia"])
        );
        assert!(names(config(Some("local,nope"), None)).is_err());
        assert!(names(config(Some("local,local"), None)).is_err());
        assert_eq!(names(config(Some(""), None)), Ok(vec![]));
        let both = VoiceConfig::from_vars(None, |k| match k {
            "CARTESIA_API_KEY" | "CF_API_TOKEN" | "CF_ACCOUNT_ID" => Some("x".into()),
            _ => None,
        });
        assert_eq!(names(both), Ok(vec!["cartesia", "cfai", "local"]));
    }
}
