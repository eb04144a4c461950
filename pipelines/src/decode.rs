//! Image decoding with hard limits, shared by the image job types.
//!
//! The header is read first and checked against [`LIMITS`] before any pixel buffer exists, so a
//! decompression bomb (a few hundred bytes claiming 50000×50000) is refused with
//! [`JobError::InvalidInput`] instead of exhausting memory. The same check is what
//! `validate_input` runs at submit time.

use std::io::Cursor;

use image::{DynamicImage, ImageDecoder, ImageFormat, ImageReader, Limits};

use crate::JobError;

/// Hard limits on an input image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest accepted width, in pixels.
    pub max_width: u32,
    /// Largest accepted height, in pixels.
    pub max_height: u32,
    /// Largest accepted pixel count (width × height).
    pub max_pixels: u64,
    /// Largest accepted input, in bytes.
    pub max_input_bytes: usize,
    /// Most the decoder may allocate at once, in bytes: the largest accepted image at 16 bits
    /// per channel RGBA (8 bytes a pixel) plus room for the decoder's own buffers.
    pub max_alloc: u64,
}

/// The limits every image job applies.
pub const LIMITS: DecodeLimits = DecodeLimits {
    max_width: 8192,
    max_height: 8192,
    max_pixels: 40_000_000,
    max_input_bytes: 20 * 1024 * 1024,
    max_alloc: 40_000_000 * 8 + 64 * 1024 * 1024,
};

/// What the header says, read without decoding any pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The container format, guessed from the magic bytes.
    pub format: ImageFormat,
    /// Width in pixels, as stored (before any EXIF orientation).
    pub width: u32,
    /// Height in pixels, as stored.
    pub height: u32,
}

/// Reads and checks the header: size of the input, format among `accepted`, dimensions within
/// [`LIMITS`]. Cheap: no pixel data is decoded.
pub fn probe(input: &[u8], accepted: &[ImageFormat]) -> Result<Header, String> {
    if input.len() > LIMITS.max_input_bytes {
        return Err(format!(
            "input is {} bytes; the limit is {} bytes (20 MiB)",
            input.len(),
            LIMITS.max_input_bytes
        ));
    }
    let reader = guessed_reader(input, accepted)?;
    let format = reader.format().ok_or_else(|| unknown_format(accepted))?;
    let (width, height) = reader
        .into_dimensions()
        .map_err(|e| format!("unreadable {} header: {e}", format_name(format)))?;
    check_dimensions(width, height)?;
    Ok(Header {
        format,
        width,
        height,
    })
}

/// Decodes the first frame of an image whose header passes [`probe`], applying the EXIF
/// orientation so that pixels are upright as a viewer would show them.
pub fn decode(input: &[u8], accepted: &[ImageFormat]) -> Result<DynamicImage, JobError> {
    let header = probe(input, accepted).map_err(JobError::InvalidInput)?;
    let name = format_name(header.format);
    let reader = guessed_reader(input, accepted).map_err(JobError::InvalidInput)?;
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| JobError::InvalidInput(format!("unreadable {name} header: {e}")))?;
    // Checked here too (not only by `max_alloc`) because some decoders ignore that limit.
    if decoder.total_bytes() > LIMITS.max_alloc {
        return Err(JobError::InvalidInput(format!(
            "{name} would need {} bytes decoded; the limit is {}",
            decoder.total_bytes(),
            LIMITS.max_alloc
        )));
    }
    // A broken EXIF block is no reason to refuse a readable image: show it as stored.
    let orientation = decoder
        .orientation()
        .unwrap_or(image::metadata::Orientation::NoTransforms);
    let mut image = DynamicImage::from_decoder(decoder)
        .map_err(|e| JobError::InvalidInput(format!("corrupt {name} data: {e}")))?;
    image.apply_orientation(orientation);
    Ok(image)
}

/// A reader with the format guessed from the magic bytes and the decoder limits set. The
/// dimension limits are left to [`check_dimensions`], which can say what the header claimed.
fn guessed_reader<'a>(
    input: &'a [u8],
    accepted: &[ImageFormat],
) -> Result<ImageReader<Cursor<&'a [u8]>>, String> {
    let mut reader = ImageReader::new(Cursor::new(input))
        .with_guessed_format()
        .map_err(|e| format!("unreadable input: {e}"))?;
    match reader.format() {
        Some(format) if accepted.contains(&format) => {}
        Some(format) => {
            return Err(format!(
                "{} images are not accepted; expected {}",
                format_name(format),
                accepted_list(accepted)
            ))
        }
        None => return Err(unknown_format(accepted)),
    }
    let mut limits = Limits::default();
    limits.max_alloc = Some(LIMITS.max_alloc);
    reader.limits(limits);
    Ok(reader)
}

fn check_dimensions(width: u32, height: u32) -> Result<(), String> {
    if width == 0 || height == 0 {
        return Err(format!("image is {width}×{height}: it has no pixels"));
    }
    if width > LIMITS.max_width || height > LIMITS.max_height {
        return Err(format!(
            "image is {width}×{height}; the limit is {}×{}",
            LIMITS.max_width, LIMITS.max_height
        ));
    }
    let pixels = u64::from(width) * u64::from(height);
    if pixels > LIMITS.max_pixels {
        return Err(format!(
            "image is {width}×{height} = {pixels} pixels; the limit is {} pixels (40 Mpx)",
            LIMITS.max_pixels
        ));
    }
    Ok(())
}

fn unknown_format(accepted: &[ImageFormat]) -> String {
    format!(
        "not a recognized image; expected {}",
        accepted_list(accepted)
    )
}

fn accepted_list(accepted: &[ImageFormat]) -> String {
    let names: Vec<String> = accepted.iter().map(|f| format_name(*f)).collect();
    names.join(", ")
}

/// The format's usual name, for messages.
pub fn format_name(format: ImageFormat) -> String {
    match format {
        ImageFormat::Png => "PNG".into(),
        ImageFormat::Jpeg => "JPEG".into(),
        ImageFormat::WebP => "WebP".into(),
        ImageFormat::Gif => "GIF".into(),
        other => format!("{other:?}").to_uppercase(),
    }
}
