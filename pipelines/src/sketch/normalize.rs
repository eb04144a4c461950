//! Stage `normalize`: grayscale on white, downscale, denoise, binarize.

use image::{imageops, DynamicImage, GrayImage};

use super::mask::Mask;

/// The longer side of the working image: enough for strokes of a few pixels to survive, small
/// enough that every later pass is cheap.
pub(crate) const MAX_WORKING_SIDE: u32 = 2048;

/// Local-contrast binarization: a pixel is ink when it is this many percent darker than the
/// mean of its neighbourhood …
const DARKER_PERCENT: u32 = 12;
/// … and at least this many grey levels darker, so that paper grain in blank areas never
/// counts as ink.
const MIN_CONTRAST: u32 = 16;

// `binarize` multiplies window sums in `u32`: 255 × (largest window) × 100 must fit.
const _: () = {
    let side = 2 * (MAX_WORKING_SIDE / 24) + 1;
    assert!(255u64 * (side as u64 * side as u64) * 100 < u32::MAX as u64);
};

/// The sketch prepared for detection.
#[derive(Debug)]
pub(crate) struct Normalized {
    /// Ink mask of the denoised working image.
    pub ink: Mask,
    /// Input pixels per working pixel, horizontally and vertically (≥ 1).
    pub scale: (f64, f64),
    /// Size of the input image (after EXIF orientation).
    pub input_size: (u32, u32),
}

/// Runs the whole stage.
pub(crate) fn normalize(image: &DynamicImage) -> Normalized {
    let input_size = (image.width(), image.height());
    let gray = downscale(gray_on_white(image));
    let scale = (
        f64::from(input_size.0) / f64::from(gray.width()),
        f64::from(input_size.1) / f64::from(gray.height()),
    );
    let gray = median3(&gray);
    let ink = binarize(&gray);
    Normalized {
        ink,
        scale,
        input_size,
    }
}

/// Luma, with transparency composited over white: sketches exported from drawing apps are often
/// black strokes on a transparent (black) background.
fn gray_on_white(image: &DynamicImage) -> GrayImage {
    if let DynamicImage::ImageRgb8(rgb) = image {
        return rgb_to_luma(rgb);
    }
    if !image.color().has_alpha() {
        return image.to_luma8();
    }
    let la = image.to_luma_alpha8();
    let (w, h) = la.dimensions();
    let pixels = la
        .pixels()
        .map(|p| {
            let [l, a] = p.0;
            let (l, a) = (u32::from(l), u32::from(a));
            ((l * a + 255 * (255 - a) + 127) / 255) as u8
        })
        .collect();
    GrayImage::from_raw(w, h, pixels).unwrap_or_else(|| GrayImage::new(w, h))
}

/// Rec. 709 luma in 8-bit fixed point, like `to_luma8` but an integer multiply-add per pixel:
/// the common case (RGB PNG or JPEG) in a fraction of the time.
fn rgb_to_luma(rgb: &image::RgbImage) -> GrayImage {
    let pixels = rgb
        .as_raw()
        .chunks_exact(3)
        .map(|p| {
            ((54 * u32::from(p[0]) + 183 * u32::from(p[1]) + 19 * u32::from(p[2]) + 128) >> 8) as u8
        })
        .collect();
    GrayImage::from_raw(rgb.width(), rgb.height(), pixels)
        .unwrap_or_else(|| GrayImage::new(rgb.width(), rgb.height()))
}

fn downscale(gray: GrayImage) -> GrayImage {
    let (w, h) = gray.dimensions();
    let longer = w.max(h);
    if longer <= MAX_WORKING_SIDE {
        return gray;
    }
    let f = f64::from(MAX_WORKING_SIDE) / f64::from(longer);
    let nw = ((f64::from(w) * f).round() as u32).max(1);
    let nh = ((f64::from(h) * f).round() as u32).max(1);
    // Triangle over the scaled support averages the pixels each output pixel covers, so thin
    // strokes fade instead of vanishing.
    imageops::resize(&gray, nw, nh, imageops::FilterType::Triangle)
}

/// 3×3 median: removes salt-and-pepper specks while keeping stroke edges (a blur would smear
/// both).
///
/// Each column of three is sorted once; the median of the window is then the median of (the
/// largest of the three minima, the median of the three middles, the smallest of the three
/// maxima). Every step is an element-wise min/max over whole rows, which the compiler turns
/// into SIMD.
fn median3(gray: &GrayImage) -> GrayImage {
    let (w, h) = (gray.width() as usize, gray.height() as usize);
    let padded = pad_replicate(gray.as_raw(), w, h);
    let pw = w + 2;
    let mut out = vec![0u8; w * h];
    let (mut lo, mut mid, mut hi) = (vec![0u8; pw], vec![0u8; pw], vec![0u8; pw]);
    for (y, dst) in out.chunks_exact_mut(w).enumerate() {
        let rows = &padded[y * pw..(y + 3) * pw];
        let (a, rest) = rows.split_at(pw);
        let (b, c) = rest.split_at(pw);
        for i in 0..pw {
            let (p, q, r) = (a[i], b[i], c[i]);
            let (min_pq, max_pq) = (p.min(q), p.max(q));
            lo[i] = min_pq.min(r);
            hi[i] = max_pq.max(r);
            mid[i] = max_pq.min(min_pq.max(r));
        }
        for x in 0..w {
            let max_lo = lo[x].max(lo[x + 1]).max(lo[x + 2]);
            let min_hi = hi[x].min(hi[x + 1]).min(hi[x + 2]);
            let mid_mid = median_of_3(mid[x], mid[x + 1], mid[x + 2]);
            dst[x] = median_of_3(max_lo, mid_mid, min_hi);
        }
    }
    GrayImage::from_raw(w as u32, h as u32, out).unwrap_or_else(|| gray.clone())
}

fn median_of_3(p: u8, q: u8, r: u8) -> u8 {
    p.max(q).min(p.min(q).max(r))
}

/// The image with a one-pixel border copied from its edge.
fn pad_replicate(src: &[u8], w: usize, h: usize) -> Vec<u8> {
    let pw = w + 2;
    let mut padded = vec![0u8; pw * (h + 2)];
    for py in 0..h + 2 {
        let sy = py.saturating_sub(1).min(h - 1);
        let row = &src[sy * w..(sy + 1) * w];
        let dst = &mut padded[py * pw..(py + 1) * pw];
        dst[1..=w].copy_from_slice(row);
        dst[0] = row[0];
        dst[w + 1] = row[w - 1];
    }
    padded
}

/// Bradley–Roth adaptive threshold: each pixel is compared with the mean of a window around
/// it, so a paper gradient or a shadow across a photo does not turn into ink. Window sums come
/// from running column sums (rows enter and leave as the window slides down) and a prefix sum
/// along each row, which keeps memory to two rows of counters.
fn binarize(gray: &GrayImage) -> Mask {
    let (w, h) = (gray.width() as usize, gray.height() as usize);
    let src = gray.as_raw();
    // About a twelfth of the longer side: wider than any stroke, narrow enough to follow
    // lighting changes.
    let half = (w.max(h) / 24).max(7);
    let mut mask = Mask::new(w as u32, h as u32);
    let mut columns = vec![0u32; w];
    let mut prefix = vec![0u32; w + 1];
    let (mut top, mut bottom) = (0usize, 0usize);
    for (y, dst) in mask.bits.chunks_exact_mut(w).enumerate() {
        while bottom < (y + half + 1).min(h) {
            for (c, &p) in columns.iter_mut().zip(&src[bottom * w..(bottom + 1) * w]) {
                *c += u32::from(p);
            }
            bottom += 1;
        }
        while top < y.saturating_sub(half) {
            for (c, &p) in columns.iter_mut().zip(&src[top * w..(top + 1) * w]) {
                *c -= u32::from(p);
            }
            top += 1;
        }
        for x in 0..w {
            prefix[x + 1] = prefix[x] + columns[x];
        }
        let rows = (bottom - top) as u32;
        let row = &src[y * w..(y + 1) * w];
        for (x, d) in dst.iter_mut().enumerate() {
            let (x0, x1) = (x.saturating_sub(half), (x + half + 1).min(w));
            let count = (x1 - x0) as u32 * rows;
            let sum = prefix[x1] - prefix[x0];
            let p = u32::from(row[x]) * count;
            let darker = p * 100 < sum * (100 - DARKER_PERCENT);
            let contrast = p + MIN_CONTRAST * count <= sum;
            *d = u8::from(darker && contrast);
        }
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_matches_sorting_every_window() {
        // A deterministic jumble of values, including the edges (replicated).
        let g = GrayImage::from_fn(23, 17, |x, y| {
            image::Luma([((x * 37 + y * 91 + x * y * 13) % 251) as u8])
        });
        let m = median3(&g);
        for y in 0..17i64 {
            for x in 0..23i64 {
                let mut window: Vec<u8> = Vec::new();
                for dy in -1..=1 {
                    for dx in -1..=1 {
                        let (sx, sy) = ((x + dx).clamp(0, 22) as u32, (y + dy).clamp(0, 16) as u32);
                        window.push(g.get_pixel(sx, sy).0[0]);
                    }
                }
                window.sort_unstable();
                assert_eq!(
                    m.get_pixel(x as u32, y as u32).0[0],
                    window[4],
                    "at {x},{y}"
                );
            }
        }
    }

    #[test]
    fn median_removes_isolated_specks() {
        let mut g = GrayImage::from_pixel(9, 9, image::Luma([230]));
        g.put_pixel(4, 4, image::Luma([0]));
        let m = median3(&g);
        assert!(m.pixels().all(|p| p.0[0] == 230));
    }

    #[test]
    fn binarize_finds_a_dark_line_on_a_gradient() {
        let mut g = GrayImage::from_fn(200, 100, |x, _| image::Luma([180 + (x / 4) as u8]));
        for x in 20..180 {
            for y in 50..53 {
                let bg = g.get_pixel(x, y).0[0];
                g.put_pixel(x, y, image::Luma([bg - 120]));
            }
        }
        let mask = binarize(&g);
        let ink: usize = mask.bits.iter().map(|&b| usize::from(b)).sum();
        assert_eq!(ink, 160 * 3);
        assert!(mask.get(100, 51));
    }

    #[test]
    fn transparent_background_counts_as_white_paper() {
        let rgba = image::RgbaImage::from_pixel(4, 4, image::Rgba([0, 0, 0, 0]));
        let gray = gray_on_white(&DynamicImage::ImageRgba8(rgba));
        assert!(gray.pixels().all(|p| p.0[0] == 255));
    }
}
