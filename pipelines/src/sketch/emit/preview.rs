//! `preview.png`: the detected boxes drawn over the binarized sketch, one colour per kind.

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ImageEncoder, Rgb, RgbImage};

use crate::sketch::detect::Element;
use crate::sketch::geometry::Rect;
use crate::sketch::normalize::Normalized;
use crate::sketch::ElementKind;
use crate::JobError;

/// Ink of the sketch, faded so the outlines stand out.
const INK: Rgb<u8> = Rgb([176, 176, 176]);
const PAPER: Rgb<u8> = Rgb([255, 255, 255]);
/// Outline thickness in working pixels.
const OUTLINE: u32 = 3;

/// Outline colour of each kind (also listed in the generated README).
pub(super) fn colour(kind: ElementKind) -> Rgb<u8> {
    match kind {
        ElementKind::Container => Rgb([37, 99, 235]),
        ElementKind::Button => Rgb([22, 163, 74]),
        ElementKind::Input => Rgb([234, 88, 12]),
        ElementKind::Image => Rgb([147, 51, 234]),
        ElementKind::Text => Rgb([220, 38, 38]),
    }
}

/// Renders and encodes the preview at working resolution.
pub(super) fn png(normalized: &Normalized, elements: &[Element]) -> Result<Vec<u8>, JobError> {
    let ink = &normalized.ink;
    let mut canvas = RgbImage::new(ink.width, ink.height);
    for (pixel, &bit) in canvas.pixels_mut().zip(&ink.bits) {
        *pixel = if bit != 0 { INK } else { PAPER };
    }
    for e in elements {
        outline(&mut canvas, e.rect, colour(e.kind));
    }
    let mut bytes = Vec::new();
    // Fast deflate: the preview is mostly flat colour, so it still compresses well, and the
    // default level would cost more than the whole detection.
    PngEncoder::new_with_quality(&mut bytes, CompressionType::Fast, FilterType::Adaptive)
        .write_image(
            canvas.as_raw(),
            canvas.width(),
            canvas.height(),
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| JobError::Transient(format!("encoding preview.png: {e}")))?;
    Ok(bytes)
}

/// Draws the rectangle's outline, `OUTLINE` pixels thick on its inside.
fn outline(canvas: &mut RgbImage, r: Rect, colour: Rgb<u8>) {
    let t = OUTLINE.min(r.w / 2).min(r.h / 2).max(1);
    let (right, bottom) = (
        r.right().min(canvas.width()),
        r.bottom().min(canvas.height()),
    );
    for y in r.y..bottom {
        for x in r.x..right {
            let edge = y < r.y + t || y + t >= r.bottom() || x < r.x + t || x + t >= r.right();
            if edge {
                canvas.put_pixel(x, y, colour);
            }
        }
    }
}
