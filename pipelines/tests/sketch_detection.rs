//! Detection quality of `sketch_to_app` on generated sketches with known ground truth.
//!
//! Each test runs the whole job (PNG or JPEG in, `layout.json` out) and matches the detected
//! elements to the ground truth by IoU ≥ 0.8. Targets: recall and precision ≥ 0.95, kinds
//! right for ≥ 0.9 of the matched elements, nesting right for ≥ 0.95, positions within a few
//! pixels.

mod common;

use std::io::Cursor;

use cognomega_pipelines::synth::Sketch;
use common::{edge_tolerance, layout, run_sketch, score, Score};

/// Runs the job on each generated sketch and returns the summed score, printing each one.
fn evaluate(cases: &[(u64, u32, u32)], jpeg: bool) -> Score {
    let mut total = Score::default();
    for &(seed, width, height) in cases {
        let (png, truth) = Sketch::generate(seed, width, height);
        let input = if jpeg { to_jpeg(&png) } else { png };
        let artifacts = run_sketch(&input).expect("the job succeeds");
        let doc = layout(&artifacts);
        let (s, problems) = score(&truth, &doc.elements(), edge_tolerance(width, height));
        eprintln!("seed {seed} {width}x{height}: {}", s.summary());
        for p in problems {
            eprintln!("    {p}");
        }
        total.add(&s);
    }
    eprintln!("TOTAL: {}", total.summary());
    total
}

fn to_jpeg(png: &[u8]) -> Vec<u8> {
    let image = image::load_from_memory(png).expect("generated PNG decodes");
    let mut out = Cursor::new(Vec::new());
    let encoder = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 80);
    image
        .to_rgb8()
        .write_with_encoder(encoder)
        .expect("JPEG encodes");
    out.into_inner()
}

fn assert_meets_targets(s: &Score) {
    assert!(s.truth >= 100, "too few elements to judge: {}", s.summary());
    assert!(s.recall() >= 0.95, "recall: {}", s.summary());
    assert!(s.precision() >= 0.95, "precision: {}", s.summary());
    assert!(s.kind_accuracy() >= 0.9, "kinds: {}", s.summary());
    assert!(s.nesting_accuracy() >= 0.95, "nesting: {}", s.summary());
    assert!(s.position_accuracy() >= 0.95, "positions: {}", s.summary());
}

#[test]
fn generated_sketches_at_1600x1200() {
    let cases: Vec<(u64, u32, u32)> = (1..=12).map(|seed| (seed, 1600, 1200)).collect();
    assert_meets_targets(&evaluate(&cases, false));
}

#[test]
fn generated_sketches_at_other_sizes() {
    let mut cases: Vec<(u64, u32, u32)> = Vec::new();
    cases.extend((101..=106).map(|seed| (seed, 1024, 768)));
    cases.extend((201..=206).map(|seed| (seed, 800, 600)));
    cases.extend((301..=304).map(|seed| (seed, 1200, 1600)));
    cases.extend((401..=402).map(|seed| (seed, 2400, 1800)));
    assert_meets_targets(&evaluate(&cases, false));
}

#[test]
fn generated_sketches_as_jpeg_photos() {
    let cases: Vec<(u64, u32, u32)> = (501..=506).map(|seed| (seed, 1600, 1200)).collect();
    assert_meets_targets(&evaluate(&cases, true));
}

#[test]
fn a_sheet_photographed_on_a_dark_table() {
    let mut total = Score::default();
    for seed in 601..=603 {
        let (sheet, truth) = Sketch::render(seed, 1200, 900);
        // The sheet in the middle of a dark, slightly uneven table.
        let (w, h, at) = (1400, 1100, 100);
        let photo = image::RgbImage::from_fn(w, h, |x, y| {
            if (at..at + 1200).contains(&x) && (at..at + 900).contains(&y) {
                *sheet.get_pixel(x - at, y - at)
            } else {
                let v = 40 + ((x / 7 + y / 5) % 9) as u8;
                image::Rgb([v + 6, v + 3, v])
            }
        });
        let truth: Vec<_> = truth
            .into_iter()
            .map(|mut t| {
                t.rect.x += at;
                t.rect.y += at;
                t
            })
            .collect();
        let png = common::encode(
            &image::DynamicImage::ImageRgb8(photo),
            image::ImageFormat::Png,
        );
        let doc = layout(&run_sketch(&png).expect("runs"));
        let (s, problems) = score(&truth, &doc.elements(), edge_tolerance(w, h));
        eprintln!("seed {seed} on a table: {}", s.summary());
        for p in problems {
            eprintln!("    {p}");
        }
        total.add(&s);
    }
    assert!(total.recall() >= 0.95, "{}", total.summary());
    assert!(total.precision() >= 0.95, "{}", total.summary());
    assert!(total.nesting_accuracy() >= 0.95, "{}", total.summary());
}
