//! Audio read in process, with no engine to run: the length of a body (wav, ogg with Vorbis or
//! Opus, mp3, webm) from its packets, MP3 decoded into a 16-bit mono WAV file, and 16-bit mono
//! PCM resampled to another rate. The host without subprocesses (the Cloudflare edge) measures
//! and converts with these; symphonia demuxes and decodes, rubato resamples.

use std::io::Cursor;

use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_OPUS};
use symphonia::core::errors::Error;
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use crate::voice::AudioFormat;

/// The most audio decoded in one call (an hour of 48 kHz mono), so a hostile file cannot
/// exhaust memory.
const MAX_FRAMES: u64 = 48_000 * 3_600;

fn open(bytes: &[u8], format: AudioFormat) -> Result<Box<dyn FormatReader>, String> {
    let source = MediaSourceStream::new(Box::new(Cursor::new(bytes.to_vec())), Default::default());
    let mut hint = Hint::new();
    hint.with_extension(match format {
        AudioFormat::Webm => "webm",
        other => other.as_str(),
    });
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            source,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map_err(|e| format!("not readable {} audio: {e}", format.as_str()))?;
    Ok(probed.format)
}

fn ended(e: &Error) -> bool {
    matches!(e, Error::IoError(io) if io.kind() == std::io::ErrorKind::UnexpectedEof)
}

/// The length of `bytes` in seconds: the sum of its first audio track's packet durations, each
/// read from the codec's own bitstream (an MPEG frame header, a Vorbis block size, an Opus TOC
/// byte), never from the container's timestamps, so a file cannot claim to be shorter than
/// what a decoder (and a provider) will hear. Nothing is decoded. `Err` names what is wrong.
pub fn duration(bytes: &[u8], format: AudioFormat) -> Result<f64, String> {
    match format {
        AudioFormat::Wav => return crate::voice::wav_info(bytes).map(|i| i.seconds),
        // The Ogg demuxer trusts the pages' granule positions (it drops packets a forged one
        // places before the start): the packets are taken from the pages here instead.
        AudioFormat::Ogg => return ogg_duration(bytes),
        _ => {}
    }
    let mut reader = open(bytes, format)?;
    let track = reader
        .default_track()
        .ok_or_else(|| "the file holds no audio track".to_owned())?;
    let (id, params) = (track.id, track.codec_params.clone());
    let opus = params.codec == CODEC_TYPE_OPUS;
    let (mut frames, mut packets) = (0u64, 0u64);
    loop {
        match reader.next_packet() {
            Ok(p) if p.track_id() == id => {
                packets += 1;
                let n = if opus { opus_samples(p.buf()) } else { p.dur() };
                frames = frames.saturating_add(n);
            }
            Ok(_) => {}
            Err(e) if ended(&e) => break,
            Err(e) => return Err(format!("the audio is damaged: {e}")),
        }
    }
    if packets == 0 {
        return Err("the file holds no audio packets".to_owned());
    }
    // The encoder's priming samples, which a decoder drops.
    let frames = frames.saturating_sub(u64::from(params.delay.unwrap_or(0)));
    if opus {
        return Ok(frames as f64 / 48_000.0);
    }
    if let Some(tb) = params.time_base {
        let t = tb.calc_time(frames);
        return Ok(t.seconds as f64 + t.frac);
    }
    match params.sample_rate {
        Some(rate) if rate > 0 => Ok(frames as f64 / f64::from(rate)),
        _ => Err("the audio track has no time base".to_owned()),
    }
}

/// The packets of an Ogg file's first logical stream, joined across pages by their lacing
/// values (RFC 3533); granule positions are not read.
fn ogg_packets(bytes: &[u8]) -> Result<Vec<Vec<u8>>, String> {
    let truncated = || "the audio is truncated (an Ogg page ends early)".to_owned();
    let mut packets = Vec::new();
    let mut current: Vec<u8> = Vec::new();
    let (mut at, mut serial) = (0usize, None);
    while at < bytes.len() {
        let header = bytes.get(at..at + 27).ok_or_else(truncated)?;
        if &header[..4] != b"OggS" {
            return Err(format!("not an Ogg page at byte {at}"));
        }
        let page_serial = &header[14..18];
        let segments = usize::from(header[26]);
        let table = bytes
            .get(at + 27..at + 27 + segments)
            .ok_or_else(truncated)?;
        let mut body = at + 27 + segments;
        let mine = *serial.get_or_insert(page_serial) == page_serial;
        for &lacing in table {
            let len = usize::from(lacing);
            let data = bytes.get(body..body + len).ok_or_else(truncated)?;
            body += len;
            if mine {
                current.extend_from_slice(data);
                if lacing < 255 {
                    packets.push(std::mem::take(&mut current));
                }
            }
        }
        at = body;
    }
    Ok(packets)
}

/// The length of an Ogg file (Opus or Vorbis) from its packets: Opus from each packet's TOC,
/// Vorbis by decoding them and counting the samples.
fn ogg_duration(bytes: &[u8]) -> Result<f64, String> {
    let packets = ogg_packets(bytes)?;
    let head = packets.first().ok_or("the file holds no packets")?;
    if head.starts_with(b"OpusHead") && head.len() >= 12 {
        let pre_skip = u64::from(u16::from_le_bytes([head[10], head[11]]));
        let audio = packets.get(2..).unwrap_or_default();
        if audio.is_empty() {
            return Err("the file holds no audio packets".to_owned());
        }
        let samples: u64 = audio.iter().map(|p| opus_samples(p)).sum();
        return Ok(samples.saturating_sub(pre_skip) as f64 / 48_000.0);
    }
    if !head.starts_with(b"\x01vorbis") {
        return Err("an Ogg file of neither Opus nor Vorbis".to_owned());
    }
    // The headers (and the decoder's setup) come from the demuxer; the audio from the pages.
    let reader = open(bytes, AudioFormat::Ogg)?;
    let track = reader
        .default_track()
        .ok_or_else(|| "the file holds no audio track".to_owned())?;
    let rate = track.codec_params.sample_rate.unwrap_or(0);
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| format!("cannot decode the audio: {e}"))?;
    let audio = packets.get(3..).unwrap_or_default();
    if audio.is_empty() || rate == 0 {
        return Err("the file holds no audio packets".to_owned());
    }
    let mut frames: u64 = 0;
    for p in audio {
        let packet = symphonia::core::formats::Packet::new_from_slice(track.id, 0, 0, p);
        match decoder.decode(&packet) {
            Ok(decoded) => frames += decoded.frames() as u64,
            Err(Error::DecodeError(e)) => return Err(format!("the audio is damaged: {e}")),
            Err(e) => return Err(format!("cannot decode the audio: {e}")),
        }
    }
    Ok(frames as f64 / f64::from(rate))
}

/// The samples (at 48 kHz) an Opus packet decodes to, from its TOC byte and frame count
/// (RFC 6716, section 3.1 and 3.2.5).
fn opus_samples(packet: &[u8]) -> u64 {
    let Some(&toc) = packet.first() else {
        return 0;
    };
    let config = usize::from(toc >> 3);
    let frame: u64 = match config {
        // SILK-only: 10, 20, 40, 60 ms.
        0..=11 => [480, 960, 1920, 2880][config % 4],
        // Hybrid: 10, 20 ms.
        12..=15 => [480, 960][config % 2],
        // CELT-only: 2.5, 5, 10, 20 ms.
        _ => [120, 240, 480, 960][config % 4],
    };
    let count = match toc & 0b11 {
        0 => 1,
        1 | 2 => 2,
        _ => packet.get(1).map_or(0, |b| u64::from(b & 0x3F)),
    };
    frame * count
}

/// The sample rate its first audio track declares (read from the headers: nothing decoded).
pub fn sample_rate(bytes: &[u8], format: AudioFormat) -> Result<u32, String> {
    let reader = open(bytes, format)?;
    reader
        .default_track()
        .and_then(|t| t.codec_params.sample_rate)
        .ok_or_else(|| "the audio declares no sample rate".to_owned())
}

/// MP3 decoded into a 16-bit mono WAV file at its own sample rate (channels averaged).
pub fn mp3_to_wav(bytes: &[u8]) -> Result<Vec<u8>, String> {
    let mut reader = open(bytes, AudioFormat::Mp3)?;
    let track = reader
        .default_track()
        .ok_or_else(|| "the file holds no audio track".to_owned())?;
    let id = track.id;
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| format!("cannot decode the audio: {e}"))?;
    let mut rate = track.codec_params.sample_rate.unwrap_or(0);
    let mut pcm: Vec<u8> = Vec::new();
    let mut frames: u64 = 0;
    loop {
        let packet = match reader.next_packet() {
            Ok(p) if p.track_id() == id => p,
            Ok(_) => continue,
            Err(e) if ended(&e) => break,
            Err(e) => return Err(format!("the audio is damaged: {e}")),
        };
        let decoded = match decoder.decode(&packet) {
            Ok(d) => d,
            // A damaged frame is skipped, as players do.
            Err(Error::DecodeError(_)) => continue,
            Err(e) => return Err(format!("cannot decode the audio: {e}")),
        };
        let spec = *decoded.spec();
        rate = spec.rate;
        let channels = spec.channels.count().max(1);
        let mut samples = SampleBuffer::<i16>::new(decoded.capacity() as u64, spec);
        samples.copy_interleaved_ref(decoded);
        for frame in samples.samples().chunks(channels) {
            let sum: i32 = frame.iter().map(|s| i32::from(*s)).sum();
            let mono = (sum / channels as i32) as i16;
            pcm.extend_from_slice(&mono.to_le_bytes());
        }
        frames += (samples.len() / channels) as u64;
        if frames > MAX_FRAMES {
            return Err("the audio is longer than an hour".to_owned());
        }
    }
    if rate == 0 || pcm.is_empty() {
        return Err("the audio holds no samples".to_owned());
    }
    Ok(crate::voice::session::wav_of_pcm_at(&pcm, rate))
}

/// A 16-bit mono WAV file at `rate` Hz: `wav` itself when it is at that rate already, else its
/// samples resampled ([`resample`]).
pub fn wav_at(wav: Vec<u8>, rate: u32) -> Result<Vec<u8>, String> {
    use crate::voice::session::{pcm_of_wav_at, wav_of_pcm_at};
    let info = crate::voice::wav_info(&wav)?;
    if info.sample_rate == rate {
        return Ok(wav);
    }
    let pcm = pcm_of_wav_at(&wav, info.sample_rate)?;
    Ok(wav_of_pcm_at(&resample(pcm, info.sample_rate, rate)?, rate))
}

/// 16-bit little-endian mono PCM at `from` Hz, resampled to `to` Hz (band-limited: an FFT
/// resampler with an anti-aliasing filter, so speech brought down to 16 kHz keeps no alias of
/// what was above 8 kHz). The result holds `len × to / from` samples, rounded up.
pub fn resample(pcm: &[u8], from: u32, to: u32) -> Result<Vec<u8>, String> {
    use rubato::audioadapter_buffers::direct::InterleavedSlice;
    use rubato::Resampler as _;
    if from == 0 || to == 0 {
        return Err(format!("cannot resample from {from} Hz to {to} Hz"));
    }
    let samples: Vec<f32> = pcm
        .chunks_exact(2)
        .map(|s| f32::from(i16::from_le_bytes([s[0], s[1]])) / 32_768.0)
        .collect();
    if from == to || samples.is_empty() {
        return Ok(pcm[..samples.len() * 2].to_vec());
    }
    let mut resampler = rubato::Fft::<f32>::new(
        from as usize,
        to as usize,
        1024,
        1,
        rubato::FixedSync::Input,
    )
    .map_err(|e| format!("cannot resample from {from} Hz to {to} Hz: {e}"))?;
    let input = InterleavedSlice::new(&samples, 1, samples.len())
        .map_err(|e| format!("cannot resample: {e}"))?;
    let output = resampler
        .process_all(&input, samples.len(), None)
        .map_err(|e| format!("cannot resample: {e}"))?;
    let resampled = output.take_data();
    let mut out = Vec::with_capacity(resampled.len() * 2);
    for s in resampled {
        let s = (s * 32_768.0).round().clamp(-32_768.0, 32_767.0) as i16;
        out.extend_from_slice(&s.to_le_bytes());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opus_packets_count_their_own_samples() {
        // Config 31 (CELT, 20 ms), one frame; config 3 (SILK, 60 ms), two frames; config 16
        // (CELT, 2.5 ms), code 3 with 5 frames.
        assert_eq!(opus_samples(&[31 << 3]), 960);
        assert_eq!(opus_samples(&[(3 << 3) | 1]), 5_760);
        assert_eq!(opus_samples(&[(16 << 3) | 3, 5]), 600);
        assert_eq!(opus_samples(&[]), 0);
    }

    #[test]
    fn garbage_is_refused_and_wav_is_measured() {
        assert!(duration(b"OggS not really", AudioFormat::Ogg).is_err());
        assert!(duration(&[0xFF, 0xFB, 0, 0, 1, 2, 3], AudioFormat::Mp3).is_err());
        assert!(mp3_to_wav(b"ID3 nothing").is_err());
        let wav = crate::voice::session::wav_of_pcm(&vec![0u8; 32_000]);
        assert_eq!(duration(&wav, AudioFormat::Wav), Ok(1.0));
    }

    /// A tone at `hz` for `seconds`, as 16-bit PCM at `rate`.
    fn tone(hz: f64, rate: u32, seconds: f64) -> Vec<u8> {
        let n = (f64::from(rate) * seconds) as usize;
        (0..n)
            .flat_map(|i| {
                let t = i as f64 / f64::from(rate);
                let s = (8_000.0 * (2.0 * std::f64::consts::PI * hz * t).sin()) as i16;
                s.to_le_bytes()
            })
            .collect()
    }

    /// The mean power of `pcm`'s samples against a sine at `hz` (a single DFT bin).
    fn power_at(pcm: &[u8], rate: u32, hz: f64) -> f64 {
        let (mut re, mut im) = (0.0, 0.0);
        let samples: Vec<f64> = pcm
            .chunks_exact(2)
            .map(|s| f64::from(i16::from_le_bytes([s[0], s[1]])))
            .collect();
        for (i, s) in samples.iter().enumerate() {
            let phase = 2.0 * std::f64::consts::PI * hz * i as f64 / f64::from(rate);
            re += s * phase.cos();
            im += s * phase.sin();
        }
        (re * re + im * im).sqrt() / samples.len() as f64
    }

    #[test]
    fn resampling_keeps_length_and_pitch_and_drops_what_cannot_be_held() {
        // 440 Hz at 24 kHz (what Workers AI's MeloTTS speaks) to a session's 16 kHz.
        let pcm = tone(440.0, 24_000, 1.0);
        let out = resample(&pcm, 24_000, 16_000).expect("resampled");
        assert_eq!(out.len(), 32_000, "one second at 16 kHz");
        let kept = power_at(&out, 16_000, 440.0);
        assert!(kept > 3_000.0, "the tone is still there: {kept}");
        assert!(power_at(&out, 16_000, 1_000.0) < kept / 50.0);
        // 10 kHz is above 16 kHz's Nyquist frequency: filtered out, not folded to 6 kHz.
        let high = resample(&tone(10_000.0, 24_000, 1.0), 24_000, 16_000).expect("resampled");
        assert!(power_at(&high, 16_000, 6_000.0) < 40.0, "aliased");
        // Up, unchanged, empty, refused.
        assert_eq!(resample(&pcm, 24_000, 48_000).expect("up").len(), 96_000);
        assert_eq!(resample(&pcm, 24_000, 24_000).expect("same"), pcm);
        assert_eq!(
            resample(&[], 24_000, 16_000).expect("empty"),
            Vec::<u8>::new()
        );
        assert!(resample(&pcm, 0, 16_000).is_err());
        let wav = crate::voice::session::wav_of_pcm_at(&pcm, 24_000);
        let at16 = wav_at(wav.clone(), 16_000).expect("wav");
        let info = crate::voice::wav_info(&at16).expect("info");
        assert_eq!((info.sample_rate, info.channels), (16_000, 1));
        assert!((info.seconds - 1.0).abs() < 1e-9);
        assert_eq!(wav_at(wav.clone(), 24_000).expect("same"), wav);
    }
}
