//! The voice service on the edge (the `ai` Worker): `POST /voice/tts`, `POST /voice/stt` and
//! `GET /voice/voices` through the workflow the native host runs (`cognomega_workflows::voice`:
//! caps, standing, providers, `audio_seconds` billed once through the usage queue), spoken by
//! Workers AI's MeloTTS and heard by its Whisper — over the AI binding, or over REST when the
//! Worker has none, as asks are. There are no engines to run here: audio is measured from its
//! container and MP3 decoded in process (`cognomega_core::audio`), so the edge answers wav and
//! mp3 (ogg ⇒ 415) at the model's own sample rate, and long texts are spoken inline (the
//! `tts_render` job type runs natively). Realtime sessions are the native host's (the gateway
//! answers 501).

use std::time::Duration;

use cognomega_core::api::Refusal;
use cognomega_core::audio;
use cognomega_core::auth::Claims;
use cognomega_core::sql::{Executor, Outbound, SqlError, Transaction};
use cognomega_core::voice::{
    wav_info, Answered, AudioFormat, Heard, Speech, Spoken, VoiceFailure, VoicePolicy,
};
use cognomega_providers::protocol::Protocol;
use cognomega_providers::voice_protocol::cfai;
use cognomega_workflows::submit::SubmitSettings;
use cognomega_workflows::voice::{self, Caller as VoiceCaller, VoiceHost, VoiceSettings};
use serde::Serialize;
use worker::{Env, Fetch, Headers, Method, Request, RequestInit, Response};

use crate::host::Writes;
use crate::http::{self, ApiError, ApiResult, Caller};
use crate::sql::{Pg, PgTx};

/// The one provider here.
const PROVIDER: &str = "cfai";

pub async fn route(req: &mut Request, env: &Env, caller: &Caller) -> ApiResult {
    match (req.method(), req.path().as_str()) {
        (Method::Post, "/voice/tts") => tts(req, env, caller).await,
        (Method::Post, "/voice/stt") => stt(req, env, caller).await,
        (Method::Get | Method::Head, "/voice/voices") => {
            caller.claims()?;
            let providers = [serde_json::json!({"provider": PROVIDER, "voices": cfai::voices()})];
            http::json(200, &serde_json::json!({ "providers": providers }))
        }
        (_, "/voice/tts" | "/voice/stt" | "/voice/voices") => Err(http::no_route(true)),
        _ => Err(http::no_route(false)),
    }
}

fn settings<'a>(
    policy: &'a VoicePolicy,
    billing: &'a cognomega_core::billing::BillingConfig,
) -> VoiceSettings<'a> {
    VoiceSettings {
        policy,
        prices: &billing.prices,
        floor: billing.guest_floor,
        session_stale_ms: 60_000,
        inline_chars: usize::MAX,
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
    // Only the pipelines' types: a render is spoken inline here.
    let registry = cognomega_pipelines::registry();
    let jobs = SubmitSettings {
        registry: &registry,
        floor: billing.guest_floor,
        runs_per_hour: None,
    };
    let db = crate::db::connect(env).await?;
    let host = Writes::new(env, &db);
    let request = voice::TtsRequest {
        body: &body,
        respond_async,
        idempotency_key: key.as_deref().map(str::as_bytes),
    };
    let settings = settings(&file.voice.policy, &billing);
    match voice::tts(&host, settings, jobs, voice_caller(claims, caller), request).await? {
        voice::TtsAnswer::Audio(reply) => {
            let resp = Response::from_bytes(reply.audio)?;
            let mut resp = resp.with_status(200);
            resp.headers_mut().set("content-type", reply.content_type)?;
            with_headers(resp, &reply.headers)
        }
        voice::TtsAnswer::Job(submitted) => http::json(submitted.status(), &submitted.body()),
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
    let settings = settings(&file.voice.policy, &billing);
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
    let (audio, seconds, rate) = if speech.format == AudioFormat::Mp3 {
        let seconds = audio::duration(&mp3, AudioFormat::Mp3).map_err(unreadable)?;
        // Read only to compare with the rate asked for.
        let rate = speech
            .sample_rate
            .and_then(|_| audio::sample_rate(&mp3, AudioFormat::Mp3).ok());
        (mp3, seconds, rate)
    } else {
        let wav = audio::mp3_to_wav(&mp3).map_err(unreadable)?;
        let info = wav_info(&wav).map_err(unreadable)?;
        (wav, info.seconds, Some(info.sample_rate))
    };
    if let (Some(asked), Some(rate)) = (speech.sample_rate, rate) {
        if asked != rate {
            return Err(VoiceFailure::Rejected(Refusal::new(
                400,
                "unsupported_sample_rate",
                format!(
                    "this deployment speaks at {rate} Hz; leave sample_rate out or ask for {rate}"
                ),
            )));
        }
    }
    Ok(Spoken {
        audio,
        format: speech.format,
        seconds,
        voice: lang.to_owned(),
    })
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
        Ok(Box::new(PgTx::begin(self.client()).await?))
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
        if let Some(p) = speech.provider.as_deref().filter(|p| *p != PROVIDER) {
            return Err(Refusal::new(
                400,
                "unknown_provider",
                format!("provider {p:?} is not configured here; configured: {PROVIDER}"),
            ));
        }
        speak(self.env(), speech)
            .await
            .map(answered)
            .map_err(refused)
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
