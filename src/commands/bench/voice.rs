//! `cognomega bench voice`: the local engines (espeak-ng, sox, PocketSphinx) in-process — the
//! real-time factor of synthesis and of transcription (audio seconds per wall second) and the
//! word error rate of the round trip (speech, then its transcription) — and the latency of
//! `POST /voice/tts` through a `cognomega serve` child next to the engine's own time, so the
//! difference is what the platform adds (auth, the caps, the standing check, the usage
//! enqueue).

use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use cognomega_core::voice::{
    word_error_rate, AudioFormat, Speech, VoiceFailure, ROUND_TRIP_SENTENCES,
};
use cognomega_providers::voice::{Local, VoiceProvider as _};
use http::{Method, StatusCode};
use serde::Serialize;

use super::client;
use super::server::Server;
use super::{percentile, progress, Backend, Ctx};

#[derive(Debug, clap::Args)]
pub(super) struct VoiceArgs {
    /// Store of the server this benchmark starts.
    #[arg(long, value_enum, default_value_t = Backend::Sqlite)]
    backend: Backend,
    /// Rounds over the sentence set (engine phase) and sequential requests (API phase).
    #[arg(long, default_value_t = 5)]
    rounds: u32,
    /// Realtime sessions held open at once (the memory phase).
    #[arg(long, default_value_t = 200)]
    sessions: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    backend: String,
    sentences: usize,
    rounds: u32,
    tts_audio_s: f64,
    tts_wall_s: f64,
    tts_realtime_factor: f64,
    stt_audio_s: f64,
    stt_wall_s: f64,
    stt_realtime_factor: f64,
    word_error_rate: f64,
    engine_tts_p50_ms: f64,
    api_tts_p50_ms: f64,
    api_tts_p99_ms: f64,
    added_p50_ms: f64,
    session_first_chunk_p50_ms: f64,
    session_first_chunk_p99_ms: f64,
    render_chars: usize,
    render_audio_s: f64,
    render_p50_ms: f64,
    render_realtime_factor: f64,
    sessions_held: u32,
    server_peak_rss_before_sessions_mib: Option<f64>,
    server_peak_rss_with_sessions_mib: Option<f64>,
}

/// Sessions measured, from the client's side.
struct SessionFigures {
    first_chunk_ms: Vec<f64>,
    rss_before: Option<f64>,
    rss_with: Option<f64>,
}

const GRANT: i64 = 1_000_000_000;

fn engine(e: VoiceFailure) -> anyhow::Error {
    anyhow::anyhow!(
        "the local voice engine failed: {e}; is espeak-ng, sox and pocketsphinx installed?"
    )
}

pub(super) async fn run(ctx: &Ctx, args: VoiceArgs) -> anyhow::Result<()> {
    if args.rounds == 0 {
        bail!("--rounds must be at least 1");
    }
    let local = Local::default();
    let speech = |text: &str| Speech {
        text: text.to_owned(),
        voice: None,
        format: AudioFormat::Wav,
        sample_rate: None,
        provider: None,
    };
    let n = ROUND_TRIP_SENTENCES.len() as u64 * u64::from(args.rounds);
    let bar = progress(!args.json, n * 2, "engines");
    let (mut tts_audio, mut tts_wall, mut stt_audio, mut stt_wall, mut errors) =
        (0.0, 0.0, 0.0, 0.0, 0.0);
    let mut engine_ms = Vec::new();
    for _ in 0..args.rounds {
        for sentence in ROUND_TRIP_SENTENCES {
            let started = Instant::now();
            let spoken = local.synthesize(&speech(sentence)).await.map_err(engine)?;
            let took = started.elapsed().as_secs_f64();
            engine_ms.push(took * 1000.0);
            tts_wall += took;
            tts_audio += spoken.seconds;
            bar.inc(1);
            let started = Instant::now();
            let heard = local
                .transcribe(&spoken.audio, AudioFormat::Wav, Some("en"))
                .await
                .map_err(engine)?;
            stt_wall += started.elapsed().as_secs_f64();
            stt_audio += spoken.seconds;
            errors += word_error_rate(sentence, &heard.text);
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    engine_ms.sort_by(f64::total_cmp);

    // Sessions enough for the memory phase, and long enough to hold idle.
    let config = std::env::temp_dir().join(format!(
        "cognomega-bench-voice-{}.toml",
        uuid::Uuid::new_v4()
    ));
    std::fs::write(
        &config,
        format!(
            "[voice.policy.guest]\nmax_tts_chars = 1000\nmax_stt_seconds = 60\n\
             max_session_seconds = 3600\nmax_sessions = {}\nsession_idle_secs = 600\n",
            args.sessions + 10
        ),
    )?;
    let extra = [
        "--guest-grant".to_owned(),
        GRANT.to_string(),
        "--rate-limits".to_owned(),
        "off".to_owned(),
        "--config".to_owned(),
        config.display().to_string(),
        "--voice-tts-inline-chars".to_owned(),
        RENDER_INLINE_CHARS.to_string(),
    ];
    let server = Server::start_with(ctx, args.backend, None, &extra).await?;
    let measured = async {
        let api = api_latency(&server, args.rounds).await?;
        let renders = renders(&server, args.rounds).await?;
        let sessions = sessions(&server, &args).await?;
        Ok::<_, anyhow::Error>((api, renders, sessions))
    }
    .await;
    let stopped = server.stop().await;
    let _ = std::fs::remove_file(&config);
    let ((backend, mut api_ms), r, mut s) = measured?;
    stopped?;
    api_ms.sort_by(f64::total_cmp);
    s.first_chunk_ms.sort_by(f64::total_cmp);
    #[allow(clippy::cast_precision_loss)]
    let report = Report {
        backend,
        sentences: ROUND_TRIP_SENTENCES.len(),
        rounds: args.rounds,
        tts_audio_s: tts_audio,
        tts_wall_s: tts_wall,
        tts_realtime_factor: tts_audio / tts_wall,
        stt_audio_s: stt_audio,
        stt_wall_s: stt_wall,
        stt_realtime_factor: stt_audio / stt_wall,
        word_error_rate: errors / n as f64,
        engine_tts_p50_ms: percentile(&engine_ms, 0.5),
        api_tts_p50_ms: percentile(&api_ms, 0.5),
        api_tts_p99_ms: percentile(&api_ms, 0.99),
        added_p50_ms: percentile(&api_ms, 0.5) - percentile(&engine_ms, 0.5),
        session_first_chunk_p50_ms: percentile(&s.first_chunk_ms, 0.5),
        session_first_chunk_p99_ms: percentile(&s.first_chunk_ms, 0.99),
        render_chars: r.chars,
        render_audio_s: r.audio_s,
        render_p50_ms: percentile(&r.ms, 0.5),
        render_realtime_factor: r.audio_s / (percentile(&r.ms, 0.5) / 1000.0),
        sessions_held: args.sessions,
        server_peak_rss_before_sessions_mib: s.rss_before,
        server_peak_rss_with_sessions_mib: s.rss_with,
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        println!(
            "voice, local engines ({} sentences x {} rounds)\n  \
             synthesis      {:.1} s of audio in {:.2} s: real-time factor {:.1}x\n  \
             transcription  {:.1} s of audio in {:.2} s: real-time factor {:.2}x\n  \
             round trip     word error rate {:.1} %\n  \
             POST /voice/tts ({})  p50 {:.1} ms  p99 {:.1} ms; the engine alone p50 {:.1} ms; added p50 {:.1} ms\n  \
             session: first audio chunk p50 {:.1} ms  p99 {:.1} ms (target <= 150 ms)\n  \
             tts_render job ({} characters, {:.1} s of audio): submit to succeeded p50 {:.0} ms, real-time factor {:.1}x\n  \
             {} idle sessions held: server peak RSS {} MiB before, {} MiB with them (target <= 512 MiB)",
            report.sentences,
            report.rounds,
            report.tts_audio_s,
            report.tts_wall_s,
            report.tts_realtime_factor,
            report.stt_audio_s,
            report.stt_wall_s,
            report.stt_realtime_factor,
            report.word_error_rate * 100.0,
            report.backend,
            report.api_tts_p50_ms,
            report.api_tts_p99_ms,
            report.engine_tts_p50_ms,
            report.added_p50_ms,
            report.session_first_chunk_p50_ms,
            report.session_first_chunk_p99_ms,
            report.render_chars,
            report.render_audio_s,
            report.render_p50_ms,
            report.render_realtime_factor,
            report.sessions_held,
            report.server_peak_rss_before_sessions_mib.map_or("?".into(), |m| format!("{m:.0}")),
            report.server_peak_rss_with_sessions_mib.map_or("?".into(), |m| format!("{m:.0}")),
        );
    }
    Ok(())
}

/// The bench server's inline bound: the render's text is a job, the sentences are not.
const RENDER_INLINE_CHARS: usize = 200;

/// `tts_render` jobs measured from the client: submit to `succeeded`.
struct RenderFigures {
    chars: usize,
    audio_s: f64,
    ms: Vec<f64>,
}

async fn renders(server: &Server, rounds: u32) -> anyhow::Result<RenderFigures> {
    let mut api = server.target.connect().await?;
    let guest = client::create_guest(&mut api).await?;
    // About 900 characters: three synthesis chunks.
    let text = cognomega_core::voice::round_trip_text(900);
    let body = Bytes::from(serde_json::json!({ "text": text, "format": "mp3" }).to_string());
    let mut ms = Vec::new();
    let mut audio_s = 0.0;
    for round in 0..=rounds {
        let started = Instant::now();
        let reply = api
            .send(
                Method::POST,
                "/voice/tts",
                Some(&guest.auth),
                Some(body.clone()),
            )
            .await?;
        if reply.status != StatusCode::ACCEPTED {
            bail!(
                "POST /voice/tts (a render) answered {}: {}",
                reply.status,
                reply.snippet()
            );
        }
        let id = serde_json::from_slice::<serde_json::Value>(&reply.body)?["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let path = format!("/jobs/{id}");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let job = api
                .send(Method::GET, &path, Some(&guest.auth), None)
                .await?;
            let job: serde_json::Value = serde_json::from_slice(&job.body)?;
            match job["status"].as_str() {
                Some("succeeded") => break,
                Some("queued" | "running") if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                _ => bail!("the tts_render job {id} ended {job}"),
            }
        }
        // The first round warms the consumer and the engine's files.
        if round > 0 {
            ms.push(started.elapsed().as_secs_f64() * 1000.0);
        }
        let report = api
            .send(
                Method::GET,
                &format!("{path}/artifacts/render.json"),
                Some(&guest.auth),
                None,
            )
            .await?;
        audio_s = serde_json::from_slice::<serde_json::Value>(&report.body)?["audio_seconds"]
            .as_f64()
            .unwrap_or(0.0);
    }
    ms.sort_by(f64::total_cmp);
    Ok(RenderFigures {
        chars: text.chars().count(),
        audio_s,
        ms,
    })
}

async fn api_latency(server: &Server, rounds: u32) -> anyhow::Result<(String, Vec<f64>)> {
    let mut api = server.target.connect().await?;
    let backend = client::health(&mut api).await?;
    let guest = client::create_guest(&mut api).await?;
    client::wait_for_balances(
        &mut api,
        std::slice::from_ref(&guest),
        GRANT,
        Duration::from_secs(30),
    )
    .await
    .context("the guest's grant did not settle")?;
    let mut ms = Vec::new();
    for round in 0..=rounds {
        for sentence in ROUND_TRIP_SENTENCES {
            let body = Bytes::from(serde_json::json!({ "text": sentence }).to_string());
            let started = Instant::now();
            let reply = api
                .send(Method::POST, "/voice/tts", Some(&guest.auth), Some(body))
                .await?;
            if reply.status != StatusCode::OK {
                bail!(
                    "POST /voice/tts answered {}: {}",
                    reply.status,
                    reply.snippet()
                );
            }
            // The first round warms the engine's files and the connection.
            if round > 0 {
                ms.push(started.elapsed().as_secs_f64() * 1000.0);
            }
        }
    }
    Ok((backend, ms))
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn open(base: &str, auth: &http::HeaderValue) -> anyhow::Result<Ws> {
    use futures::StreamExt as _;
    use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
    let url = format!(
        "{}/voice/sessions",
        base.trim_end_matches('/').replacen("http", "ws", 1)
    );
    let mut req = url.into_client_request()?;
    req.headers_mut().insert("authorization", auth.clone());
    let (mut ws, _) = tokio_tungstenite::connect_async(req)
        .await
        .context("GET /voice/sessions did not upgrade")?;
    // The `ready` frame.
    ws.next()
        .await
        .context("the session closed before it was ready")??;
    Ok(ws)
}

/// First-chunk latency on one session, then `--sessions` idle sessions held at once.
async fn sessions(server: &Server, args: &VoiceArgs) -> anyhow::Result<SessionFigures> {
    use futures::{SinkExt as _, StreamExt as _};
    use tokio_tungstenite::tungstenite::Message;
    let mut api = server.target.connect().await?;
    let guest = client::create_guest(&mut api).await?;
    client::wait_for_balances(
        &mut api,
        std::slice::from_ref(&guest),
        GRANT,
        Duration::from_secs(30),
    )
    .await
    .context("the guest's grant did not settle")?;
    let base = &server.target.base_url;
    let mut ws = open(base, &guest.auth).await?;
    let mut first_chunk_ms = Vec::new();
    for round in 0..=args.rounds {
        for sentence in ROUND_TRIP_SENTENCES {
            let text = serde_json::json!({"type": "text", "text": sentence}).to_string();
            let started = Instant::now();
            ws.send(Message::text(text)).await?;
            let mut first = None;
            loop {
                match ws.next().await.context("the session ended")?? {
                    Message::Binary(_) if first.is_none() => first = Some(started.elapsed()),
                    Message::Text(t) if t.contains("\"spoken\"") => break,
                    Message::Text(t) if t.contains("\"error\"") => bail!("the session failed: {t}"),
                    Message::Close(f) => bail!("the session closed: {f:?}"),
                    _ => {}
                }
            }
            if round > 0 {
                first_chunk_ms
                    .push(first.context("no audio for a sentence")?.as_secs_f64() * 1000.0);
            }
        }
    }
    ws.close(None).await?;
    let rss_before = server.peak_rss_mib();
    let bar = progress(!args.json, u64::from(args.sessions), "sessions");
    let mut held = Vec::with_capacity(args.sessions as usize);
    for _ in 0..args.sessions {
        held.push(open(base, &guest.auth).await?);
        bar.inc(1);
    }
    bar.finish_and_clear();
    // Idle for a while: heartbeats run, nothing is spoken.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rss_with = server.peak_rss_mib();
    for mut ws in held {
        let _ = ws.close(None).await;
    }
    Ok(SessionFigures {
        first_chunk_ms,
        rss_before,
        rss_with,
    })
}
