//! The artifact codec: how artifact bytes are compressed before they go to object storage, and
//! how they are read back without trusting the stored bytes.
//!
//! - Text-like artifacts (HTML, CSS, JS, JSON, SVG, XML, …) are zstd-compressed at the policy's
//!   level; formats that are already compressed (PNG, JPEG, WebP, zip, video, …) are stored as
//!   they are; anything else is compressed only when that saves at least
//!   [`UNKNOWN_MIN_SAVING_PERCENT`] percent.
//! - Nothing is ever stored larger than the original: a tiny text file whose zstd frame would be
//!   bigger than itself is stored as is.
//! - Encoding is deterministic (same input and policy ⇒ same bytes), so re-running a job yields
//!   the same object and the same ETag.
//! - Decoding is bounded: a decompression bomb stops with [`CodecError::TooLarge`] once it passes
//!   `max_output`, before it allocates more than that.
//!
//! Gzip is never chosen by [`encode`]; it is decoded (clients and older artifacts send it) and
//! measured against zstd by the benchmark.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Unknown content types are stored compressed only if that saves at least this much.
pub const UNKNOWN_MIN_SAVING_PERCENT: u64 = 10;

/// The largest zstd window a decoder accepts (2^27 = 128 MiB, zstd's own default limit), so a
/// crafted frame cannot make the decoder allocate a larger window. Level 22 needs exactly this.
const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// How an artifact's bytes are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// Stored exactly as produced.
    None,
    /// A zstd frame (with its checksum).
    Zstd,
    /// A gzip stream (RFC 1952); possibly several members.
    Gzip,
}

impl Compression {
    /// The name stored in the database and in object metadata: `none`, `zstd` or `gzip`.
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Zstd => "zstd",
            Compression::Gzip => "gzip",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Compression {
    type Err = CodecError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "none" => Ok(Compression::None),
            "zstd" => Ok(Compression::Zstd),
            "gzip" => Ok(Compression::Gzip),
            other => Err(CodecError::UnknownCompression(other.to_owned())),
        }
    }
}

/// A zstd compression level, 1..=22 (3 is zstd's and the codec's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "i32", into = "i32")]
pub struct ZstdLevel(i32);

impl ZstdLevel {
    /// The level new artifacts are written with unless configured otherwise.
    pub const DEFAULT: ZstdLevel = ZstdLevel(3);
    /// The strongest level short of zstd's "ultra" levels, whose windows cost far more memory to
    /// decode; what the lifecycle sweeper uses for cold artifacts.
    pub const ARCHIVE: ZstdLevel = ZstdLevel(19);

    /// `level` if it is in 1..=22.
    pub fn new(level: i32) -> Result<Self, CodecError> {
        if (1..=22).contains(&level) {
            Ok(ZstdLevel(level))
        } else {
            Err(CodecError::InvalidLevel(level))
        }
    }

    /// The numeric level.
    pub fn get(self) -> i32 {
        self.0
    }
}

impl Default for ZstdLevel {
    fn default() -> Self {
        ZstdLevel::DEFAULT
    }
}

impl TryFrom<i32> for ZstdLevel {
    type Error = CodecError;

    fn try_from(level: i32) -> Result<Self, Self::Error> {
        ZstdLevel::new(level)
    }
}

impl From<ZstdLevel> for i32 {
    fn from(level: ZstdLevel) -> Self {
        level.0
    }
}

/// How [`encode`] compresses. Configurable (`zstd_level`) so a deployment can trade CPU for
/// storage; deserializes from `{"zstd_level": 9}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CodecPolicy {
    /// The zstd level for new artifacts.
    pub zstd_level: ZstdLevel,
}

/// An artifact ready for object storage, and what the database row records about it.
#[derive(Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The bytes to store.
    pub bytes: Vec<u8>,
    /// How `bytes` are compressed.
    pub compression: Compression,
    /// Length of the original (decoded) bytes.
    pub original_size: u64,
    /// Length of `bytes`.
    pub stored_size: u64,
    /// Lower-case hex SHA-256 of the ORIGINAL bytes, so a download can be verified end to end
    /// whatever the storage encoding.
    pub sha256: String,
}

impl fmt::Debug for Encoded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The bytes themselves would flood a log line.
        f.debug_struct("Encoded")
            .field("compression", &self.compression)
            .field("original_size", &self.original_size)
            .field("stored_size", &self.stored_size)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// Codec failures.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// Decoding would produce more than the caller's limit (a decompression bomb, or an artifact
    /// larger than this reader accepts).
    #[error("decoded artifact exceeds the limit of {max_output} bytes")]
    TooLarge {
        /// The limit that was passed.
        max_output: u64,
    },
    /// The stored bytes are not a valid stream of the stated compression (or fail its checksum).
    #[error("stored artifact is corrupt: {0}")]
    Corrupt(#[source] io::Error),
    /// A zstd level outside 1..=22.
    #[error("zstd level {0} is outside 1..=22")]
    InvalidLevel(i32),
    /// A compression name other than `none`, `zstd`, `gzip`.
    #[error("unknown compression {0:?} (expected none, zstd or gzip)")]
    UnknownCompression(String),
    /// The compressor itself failed (it only does when it cannot allocate its state).
    #[error("compressor failed: {0}")]
    Compressor(#[source] io::Error),
}

/// What [`encode`] does with a content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Text,
    AlreadyCompressed,
    Unknown,
}

fn classify(content_type: &str) -> Kind {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let (top, sub) = essence.split_once('/').unwrap_or((essence.as_str(), ""));
    const TEXT: &[&str] = &[
        "application/json",
        "application/x-ndjson",
        "application/javascript",
        "application/x-javascript",
        "application/ecmascript",
        "application/xml",
        "application/xhtml+xml",
        "application/yaml",
        "application/x-yaml",
        "application/toml",
        "application/sql",
        "application/graphql",
        "application/x-sh",
        "image/svg+xml",
        "image/bmp",
        "font/ttf",
        "font/otf",
    ];
    const COMPRESSED: &[&str] = &[
        "image/png",
        "image/webp",
        "image/jpeg",
        "image/gif",
        "image/avif",
        "image/heic",
        "application/zip",
        "application/gzip",
        "application/x-gzip",
        "application/zstd",
        "application/x-bzip2",
        "application/x-xz",
        "application/x-7z-compressed",
        "application/vnd.rar",
        "application/vnd.apache.parquet",
        "font/woff",
        "font/woff2",
    ];
    if top == "text"
        || sub.ends_with("+json")
        || sub.ends_with("+xml")
        || TEXT.contains(&essence.as_str())
    {
        Kind::Text
    } else if top == "video" || top == "audio" || COMPRESSED.contains(&essence.as_str()) {
        Kind::AlreadyCompressed
    } else {
        Kind::Unknown
    }
}

/// True for text-like content types (HTML, CSS, JSON, SVG, …): what [`encode`] compresses
/// whenever that saves a byte, and what the lifecycle sweeper recompresses.
pub fn is_text(content_type: &str) -> bool {
    classify(content_type) == Kind::Text
}

/// Compresses `bytes` for storage as `content_type` under `policy` (see the module docs for the
/// rules). Never fails: if the compressor cannot run, the artifact is stored uncompressed.
pub fn encode(bytes: &[u8], content_type: &str, policy: &CodecPolicy) -> Encoded {
    let original = bytes.len() as u64;
    // Stored compressed only when the frame is at most this long.
    let keep_if_at_most = match classify(content_type) {
        Kind::AlreadyCompressed => return stored_as(bytes.to_vec(), Compression::None, bytes),
        Kind::Text => original.saturating_sub(1),
        Kind::Unknown => original.saturating_mul(100 - UNKNOWN_MIN_SAVING_PERCENT) / 100,
    };
    match zstd_compress(bytes, policy.zstd_level) {
        Ok(frame) if frame.len() as u64 <= keep_if_at_most => {
            stored_as(frame, Compression::Zstd, bytes)
        }
        // A compressor failure is an allocation failure; storing the original is still correct.
        _ => stored_as(bytes.to_vec(), Compression::None, bytes),
    }
}

fn stored_as(stored: Vec<u8>, compression: Compression, original: &[u8]) -> Encoded {
    Encoded {
        stored_size: stored.len() as u64,
        bytes: stored,
        compression,
        original_size: original.len() as u64,
        sha256: sha256_hex(original),
    }
}

/// Lower-case hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Compresses `bytes` with `compression` at `level` (zstd: 1..=22; gzip: 0..=9, clamped), with no
/// content-type rules: the primitive under [`encode`] and [`recompress`], and what the benchmark
/// measures. Output is deterministic (gzip headers carry no name and a zero mtime).
pub fn compress(bytes: &[u8], compression: Compression, level: i32) -> Result<Vec<u8>, CodecError> {
    match compression {
        Compression::None => Ok(bytes.to_vec()),
        Compression::Zstd => zstd_compress(bytes, ZstdLevel::new(level)?),
        Compression::Gzip => {
            let level = flate2::Compression::new(level.clamp(0, 9).unsigned_abs());
            let mut encoder = flate2::GzBuilder::new()
                .mtime(0)
                .write(Vec::with_capacity(bytes.len() / 2), level);
            encoder.write_all(bytes).map_err(CodecError::Compressor)?;
            encoder.finish().map_err(CodecError::Compressor)
        }
    }
}

fn zstd_compress(bytes: &[u8], level: ZstdLevel) -> Result<Vec<u8>, CodecError> {
    let mut compressor =
        zstd::bulk::Compressor::new(level.get()).map_err(CodecError::Compressor)?;
    // The frame checksum lets a decoder notice corrupted storage even before the SHA-256 check.
    compressor
        .set_parameter(zstd::zstd_safe::CParameter::ChecksumFlag(true))
        .map_err(CodecError::Compressor)?;
    compressor.compress(bytes).map_err(CodecError::Compressor)
}

/// A reader that yields the decoded bytes of `reader` (stored with `compression`), for streaming
/// an artifact to an HTTP response without holding it in memory. It is not bounded by itself:
/// wrap it in [`Read::take`] (or count what is sent) when the source is untrusted.
pub fn decoder<'a, R: Read + 'a>(
    reader: R,
    compression: Compression,
) -> Result<Box<dyn Read + 'a>, CodecError> {
    Ok(match compression {
        Compression::None => Box::new(reader),
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(reader)),
        Compression::Zstd => {
            let mut decoder =
                zstd::stream::read::Decoder::new(reader).map_err(CodecError::Compressor)?;
            decoder
                .window_log_max(ZSTD_WINDOW_LOG_MAX)
                .map_err(CodecError::Compressor)?;
            Box::new(decoder)
        }
    })
}

/// Decodes `encoded` (stored with `compression`), refusing to produce more than `max_output`
/// bytes: the decoder is read through a `take(max_output + 1)` guard, so a bomb costs at most
/// `max_output + 1` bytes of memory before it is refused.
pub fn decode(
    encoded: &[u8],
    compression: Compression,
    max_output: u64,
) -> Result<Vec<u8>, CodecError> {
    let mut reader = decoder(encoded, compression)?.take(max_output.saturating_add(1));
    // Start from a modest guess; the Vec grows as the data proves real, never past the guard.
    let guess = (encoded.len() as u64).saturating_mul(4).min(max_output);
    let mut out = Vec::with_capacity(usize::try_from(guess).unwrap_or(0));
    reader.read_to_end(&mut out).map_err(CodecError::Corrupt)?;
    if out.len() as u64 > max_output {
        return Err(CodecError::TooLarge { max_output });
    }
    Ok(out)
}

/// Re-encodes a stored artifact with zstd at `level` (the lifecycle sweeper moves cold artifacts
/// to a stronger level). Decoding is bounded by `max_output`. The result keeps the current
/// encoding (bytes unchanged) unless the new frame is strictly smaller, so a sweep never makes
/// storage worse; its `sha256` is of the decoded bytes, for the caller to check against the
/// database row before replacing the object.
pub fn recompress(
    stored: &[u8],
    compression: Compression,
    level: ZstdLevel,
    max_output: u64,
) -> Result<Encoded, CodecError> {
    let original = decode(stored, compression, max_output)?;
    let frame = zstd_compress(&original, level)?;
    if frame.len() < stored.len() {
        Ok(stored_as(frame, Compression::Zstd, &original))
    } else {
        Ok(stored_as(stored.to_vec(), compression, &original))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const MIB: u64 = 1024 * 1024;

    fn html(len: usize) -> Vec<u8> {
        let mut out = String::from("<!doctype html><html><body>\n");
        let mut i = 0;
        while out.len() < len {
            out.push_str(&format!(
                "<div class=\"card card-{}\"><h2>Item {i}</h2><p>Generated row {}</p></div>\n",
                i % 7,
                i * 31 % 1000
            ));
            i += 1;
        }
        out.into_bytes()
    }

    /// Text with varied words (picked by a xorshift), where stronger levels find more to gain.
    fn prose(len: usize) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "alpha", "beta", "gamma", "delta", "job", "queue", "artifact",
        ];
        let mut out = Vec::with_capacity(len + 16);
        for (i, byte) in noise(len).into_iter().enumerate() {
            if out.len() >= len {
                break;
            }
            out.extend_from_slice(WORDS[usize::from(byte) % WORDS.len()].as_bytes());
            out.push(if i % 12 == 11 { b'\n' } else { b' ' });
        }
        out
    }

    /// Bytes that no compressor can shrink (a xorshift stream), standing in for PNG pixels.
    fn noise(len: usize) -> Vec<u8> {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn text_is_compressed_with_zstd_and_round_trips() {
        let original = html(50_000);
        let encoded = encode(
            &original,
            "text/html; charset=utf-8",
            &CodecPolicy::default(),
        );
        assert_eq!(encoded.compression, Compression::Zstd);
        assert!(
            encoded.stored_size * 5 < encoded.original_size,
            "{encoded:?}"
        );
        assert_eq!(encoded.stored_size, encoded.bytes.len() as u64);
        assert_eq!(encoded.original_size, original.len() as u64);
        let decoded = decode(&encoded.bytes, encoded.compression, 10 * MIB).unwrap();
        assert_eq!(decoded, original);
    }

    #[test]
    fn json_svg_and_structured_suffixes_count_as_text() {
        for ct in [
            "application/json",
            "application/javascript",
            "image/svg+xml",
            "application/xml",
            "application/ld+json",
            "TEXT/CSS",
        ] {
            assert_eq!(classify(ct), Kind::Text, "{ct}");
        }
    }

    #[test]
    fn png_and_other_compressed_formats_are_stored_as_is() {
        // Even compressible bytes: the content type says compressing again is wasted work.
        let original = html(20_000);
        for ct in [
            "image/png",
            "image/webp",
            "application/zip",
            "video/mp4",
            "audio/ogg",
        ] {
            let encoded = encode(&original, ct, &CodecPolicy::default());
            assert_eq!(encoded.compression, Compression::None, "{ct}");
            assert_eq!(encoded.bytes, original);
            assert_eq!(encoded.stored_size, encoded.original_size);
        }
    }

    #[test]
    fn unknown_types_are_compressed_only_when_it_saves_ten_percent() {
        let policy = CodecPolicy::default();
        let compressible = encode(&html(20_000), "application/octet-stream", &policy);
        assert_eq!(compressible.compression, Compression::Zstd);
        let random = noise(20_000);
        let incompressible = encode(&random, "application/octet-stream", &policy);
        assert_eq!(incompressible.compression, Compression::None);
        assert_eq!(incompressible.bytes, random);
        // Half noise, half zeros compresses by roughly half: over the 10% bar.
        let mut half = noise(10_000);
        half.resize(20_000, 0);
        assert_eq!(
            encode(&half, "application/x-custom", &policy).compression,
            Compression::Zstd
        );
        // Noise with a 5% zero tail saves under 10%: stored as is.
        let mut mostly = noise(19_000);
        mostly.resize(20_000, 0);
        assert_eq!(
            encode(&mostly, "application/x-custom", &policy).compression,
            Compression::None
        );
    }

    #[test]
    fn nothing_is_stored_larger_than_the_original() {
        for original in [&b""[..], b"ok", b"{\"a\":1}"] {
            let encoded = encode(original, "application/json", &CodecPolicy::default());
            assert_eq!(encoded.compression, Compression::None);
            assert_eq!(encoded.bytes, original);
        }
    }

    #[test]
    fn encoding_is_deterministic() {
        let original = html(100_000);
        for level in [1, 3, 19] {
            let policy = CodecPolicy {
                zstd_level: ZstdLevel::new(level).unwrap(),
            };
            let a = encode(&original, "text/html", &policy);
            let b = encode(&original, "text/html", &policy);
            assert_eq!(a, b, "level {level}");
        }
        let a = compress(&original, Compression::Gzip, 6).unwrap();
        assert_eq!(a, compress(&original, Compression::Gzip, 6).unwrap());
    }

    #[test]
    fn sha256_is_of_the_original_bytes() {
        let encoded = encode(b"abc", "text/plain", &CodecPolicy::default());
        assert_eq!(
            encoded.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let big = html(30_000);
        let encoded = encode(&big, "text/html", &CodecPolicy::default());
        assert_eq!(encoded.compression, Compression::Zstd);
        assert_eq!(encoded.sha256, sha256_hex(&big));
        assert_ne!(encoded.sha256, sha256_hex(&encoded.bytes));
    }

    #[test]
    fn every_compression_round_trips() {
        let original = html(40_000);
        for (compression, level) in [
            (Compression::None, 0),
            (Compression::Zstd, 1),
            (Compression::Zstd, 19),
            (Compression::Gzip, 1),
            (Compression::Gzip, 9),
        ] {
            let stored = compress(&original, compression, level).unwrap();
            let decoded = decode(&stored, compression, original.len() as u64).unwrap();
            assert_eq!(decoded, original, "{compression} {level}");
            let mut streamed = Vec::new();
            decoder(&stored[..], compression)
                .unwrap()
                .read_to_end(&mut streamed)
                .unwrap();
            assert_eq!(streamed, original, "{compression} {level} (streaming)");
        }
    }

    #[test]
    fn the_limit_is_inclusive() {
        let original = html(10_000);
        let stored = compress(&original, Compression::Zstd, 3).unwrap();
        let exact = original.len() as u64;
        assert!(decode(&stored, Compression::Zstd, exact).is_ok());
        assert!(matches!(
            decode(&stored, Compression::Zstd, exact - 1),
            Err(CodecError::TooLarge { max_output }) if max_output == exact - 1
        ));
        assert!(matches!(
            decode(&original, Compression::None, exact - 1),
            Err(CodecError::TooLarge { .. })
        ));
    }

    /// Compresses `len` zeros without ever holding them in memory.
    fn bomb(compression: Compression, len: u64) -> Vec<u8> {
        let mut zeros = io::repeat(0).take(len);
        match compression {
            Compression::Zstd => zstd::stream::encode_all(zeros, 1).unwrap(),
            Compression::Gzip => {
                let mut encoder =
                    flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                io::copy(&mut zeros, &mut encoder).unwrap();
                encoder.finish().unwrap()
            }
            Compression::None => unreachable!("no bomb without compression"),
        }
    }

    #[test]
    fn a_zstd_bomb_is_refused_at_the_limit() {
        let stored = bomb(Compression::Zstd, 1024 * MIB);
        assert!(stored.len() < 1024 * 1024, "{} bytes", stored.len());
        let err = decode(&stored, Compression::Zstd, 10 * MIB).unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { max_output } if max_output == 10 * MIB));
    }

    #[test]
    fn a_gzip_bomb_is_refused_at_the_limit() {
        let stored = bomb(Compression::Gzip, 256 * MIB);
        let err = decode(&stored, Compression::Gzip, 10 * MIB).unwrap_err();
        assert!(matches!(err, CodecError::TooLarge { .. }));
    }

    #[test]
    fn corrupt_input_is_an_error_not_a_panic() {
        let mut stored = compress(&html(10_000), Compression::Zstd, 3).unwrap();
        let middle = stored.len() / 2;
        stored[middle] ^= 0xff;
        assert!(matches!(
            decode(&stored, Compression::Zstd, MIB),
            Err(CodecError::Corrupt(_))
        ));
        assert!(matches!(
            decode(b"not gzip at all", Compression::Gzip, MIB),
            Err(CodecError::Corrupt(_))
        ));
    }

    #[test]
    fn recompress_moves_to_a_stronger_level_and_never_grows() {
        let original = prose(200_000);
        let fast = encode(
            &original,
            "text/html",
            &CodecPolicy {
                zstd_level: ZstdLevel::new(1).unwrap(),
            },
        );
        let archived = recompress(&fast.bytes, fast.compression, ZstdLevel::ARCHIVE, MIB).unwrap();
        assert_eq!(archived.compression, Compression::Zstd);
        assert!(archived.stored_size < fast.stored_size);
        assert_eq!(archived.sha256, fast.sha256);
        assert_eq!(
            decode(&archived.bytes, Compression::Zstd, MIB).unwrap(),
            original
        );

        let gzipped = compress(&original, Compression::Gzip, 6).unwrap();
        let from_gzip = recompress(&gzipped, Compression::Gzip, ZstdLevel::ARCHIVE, MIB).unwrap();
        assert_eq!(from_gzip.compression, Compression::Zstd);
        assert_eq!(from_gzip.sha256, fast.sha256);

        let random = noise(50_000);
        let kept = recompress(&random, Compression::None, ZstdLevel::ARCHIVE, MIB).unwrap();
        assert_eq!(kept.compression, Compression::None);
        assert_eq!(kept.bytes, random);

        assert!(matches!(
            recompress(&fast.bytes, fast.compression, ZstdLevel::ARCHIVE, 1000),
            Err(CodecError::TooLarge { .. })
        ));
    }

    #[test]
    fn levels_and_names_parse() {
        assert!(ZstdLevel::new(0).is_err());
        assert!(ZstdLevel::new(23).is_err());
        assert_eq!(ZstdLevel::new(22).unwrap().get(), 22);
        let policy: CodecPolicy = serde_json::from_str(r#"{"zstd_level": 9}"#).unwrap();
        assert_eq!(policy.zstd_level.get(), 9);
        assert!(serde_json::from_str::<CodecPolicy>(r#"{"zstd_level": 30}"#).is_err());
        assert_eq!(
            serde_json::from_str::<CodecPolicy>("{}").unwrap(),
            CodecPolicy::default()
        );
        for c in [Compression::None, Compression::Zstd, Compression::Gzip] {
            assert_eq!(c.as_str().parse::<Compression>().unwrap(), c);
            assert_eq!(serde_json::to_string(&c).unwrap(), format!("\"{c}\""));
        }
        assert!("brotli".parse::<Compression>().is_err());
    }
}
