//! `image_thumbnail`: sizes, aspect ratio, formats in and out, determinism, limits.

mod common;

use cognomega_pipelines::synth::Sketch;
use cognomega_pipelines::thumbnail::ImageThumbnail;
use cognomega_pipelines::{Artifact, JobError, JobType};
use common::*;
use futures::executor::block_on;
use image::{DynamicImage, ImageFormat, Rgb, RgbImage, Rgba, RgbaImage};
use serde_json::{json, Value};

fn thumbnails(input: &[u8], params: Value) -> Vec<Artifact> {
    let params = ImageThumbnail
        .validate_params(&params)
        .expect("valid params");
    block_on(ImageThumbnail.run(input, &params, &NoProgress)).expect("runs")
}

fn decoded(a: &Artifact, format: ImageFormat) -> DynamicImage {
    assert_eq!(
        image::guess_format(&a.bytes).expect("known format"),
        format,
        "{}",
        a.name
    );
    image::load_from_memory_with_format(&a.bytes, format).expect("decodes")
}

/// A 300×200 picture: left half red, right half blue.
fn halves() -> DynamicImage {
    DynamicImage::ImageRgb8(RgbImage::from_fn(300, 200, |x, _| {
        if x < 150 {
            Rgb([220, 20, 20])
        } else {
            Rgb([20, 20, 220])
        }
    }))
}

#[test]
fn sizes_set_the_longer_side_and_keep_the_aspect_ratio() {
    let (png, _) = Sketch::generate(9, 1600, 1200);
    let out = thumbnails(&png, json!({"sizes": [256, 64]}));
    let names: Vec<&str> = out.iter().map(|a| a.name.as_str()).collect();
    assert_eq!(names, ["thumb-64.webp", "thumb-256.webp"]);
    assert!(out.iter().all(|a| a.content_type == "image/webp"));
    let dims: Vec<(u32, u32)> = out
        .iter()
        .map(|a| decoded(a, ImageFormat::WebP))
        .map(|i| (i.width(), i.height()))
        .collect();
    assert_eq!(dims, [(64, 48), (256, 192)]);

    let portrait = encode(&DynamicImage::new_rgb8(900, 1600), ImageFormat::Png);
    let out = thumbnails(&portrait, json!({"sizes": [160], "format": "png"}));
    assert_eq!(out[0].name, "thumb-160.png");
    assert_eq!(out[0].content_type, "image/png");
    let t = decoded(&out[0], ImageFormat::Png);
    assert_eq!((t.width(), t.height()), (90, 160));
}

#[test]
fn small_images_are_not_enlarged() {
    let input = encode(&halves(), ImageFormat::Png);
    let out = thumbnails(&input, json!({"sizes": [64, 2048], "format": "png"}));
    let t = decoded(&out[1], ImageFormat::Png);
    assert_eq!((t.width(), t.height()), (300, 200));
    assert_eq!(
        t.to_rgb8(),
        halves().to_rgb8(),
        "re-encoded losslessly as it was"
    );
}

#[test]
fn content_survives_the_resize() {
    let input = encode(&halves(), ImageFormat::Png);
    let t = decoded(
        &thumbnails(&input, json!({"sizes": [30]}))[0],
        ImageFormat::WebP,
    )
    .to_rgb8();
    assert_eq!(t.dimensions(), (30, 20));
    let left = t.get_pixel(3, 10).0;
    let right = t.get_pixel(26, 10).0;
    assert!(left[0] > 180 && left[2] < 60, "left stays red: {left:?}");
    assert!(
        right[2] > 180 && right[0] < 60,
        "right stays blue: {right:?}"
    );
}

#[test]
fn jpeg_webp_and_gif_inputs_are_accepted() {
    let jpeg = encode(&halves(), ImageFormat::Jpeg);
    let webp = encode(&halves(), ImageFormat::WebP);
    for input in [jpeg, webp] {
        let t = decoded(
            &thumbnails(&input, json!({"sizes": [150]}))[0],
            ImageFormat::WebP,
        );
        assert_eq!((t.width(), t.height()), (150, 100));
    }
}

#[test]
fn a_gif_gives_its_first_frame() {
    use image::codecs::gif::GifEncoder;
    use image::Frame;
    let frame = |c: [u8; 4]| Frame::new(RgbaImage::from_pixel(40, 20, Rgba(c)));
    let mut gif = Vec::new();
    {
        let mut encoder = GifEncoder::new(&mut gif);
        encoder
            .encode_frames([frame([0, 200, 0, 255]), frame([200, 0, 0, 255])])
            .expect("encodes");
    }
    let t = decoded(
        &thumbnails(&gif, json!({"sizes": [20], "format": "png"}))[0],
        ImageFormat::Png,
    );
    assert_eq!((t.width(), t.height()), (20, 10));
    let p = t.to_rgb8().get_pixel(10, 5).0;
    assert!(p[1] > 150 && p[0] < 50, "first frame is green: {p:?}");
}

#[test]
fn alpha_and_gray_are_kept() {
    let rgba = DynamicImage::ImageRgba8(RgbaImage::from_fn(64, 64, |x, _| {
        Rgba([10, 10, 10, if x < 32 { 0 } else { 255 }])
    }));
    let out = thumbnails(
        &encode(&rgba, ImageFormat::Png),
        json!({"sizes": [32], "format": "png"}),
    );
    let t = decoded(&out[0], ImageFormat::Png);
    assert!(t.color().has_alpha());
    assert_eq!(t.to_rgba8().get_pixel(2, 16).0[3], 0);

    let gray = DynamicImage::ImageLuma16(image::ImageBuffer::from_pixel(
        64,
        32,
        image::Luma([40_000u16]),
    ));
    let input = encode(&gray, ImageFormat::Png);
    let t = decoded(
        &thumbnails(&input, json!({"sizes": [32], "format": "png"}))[0],
        ImageFormat::Png,
    );
    assert_eq!((t.width(), t.height()), (32, 16));
    assert_eq!(
        t.color(),
        image::ColorType::L8,
        "16-bit gray becomes 8-bit gray"
    );
    // WebP has no gray layout: it decodes as RGB with equal channels.
    let t = decoded(
        &thumbnails(&input, json!({"sizes": [32]}))[0],
        ImageFormat::WebP,
    );
    assert!(t
        .to_rgb8()
        .pixels()
        .all(|p| p.0[0] == p.0[1] && p.0[1] == p.0[2]));
}

#[test]
fn output_is_deterministic() {
    let (png, _) = Sketch::generate(4, 800, 600);
    for format in ["webp", "png"] {
        let params = json!({"sizes": [64, 300], "format": format});
        assert_eq!(thumbnails(&png, params.clone()), thumbnails(&png, params));
    }
}

#[test]
fn bad_input_is_invalid() {
    let params = json!({"sizes": [64], "format": "webp"});
    let mut oversize = small_png(16, 16);
    oversize.resize(20 * 1024 * 1024 + 1, 0);
    let cases: [(Vec<u8>, &str); 4] = [
        (png_claiming(50_000, 50_000), "50000×50000"),
        (garbage(1000, 3), "not a recognized image"),
        (oversize, "20 MiB"),
        (bmp_header(), "BMP images are not accepted"),
    ];
    for (input, expected) in cases {
        let err = ImageThumbnail.validate_input(&input).expect_err("refused");
        assert!(err.contains(expected), "{err}");
        let run = block_on(ImageThumbnail.run(&input, &params, &NoProgress));
        assert!(
            matches!(&run, Err(JobError::InvalidInput(m)) if m.contains(expected)),
            "{run:?}"
        );
    }
}

/// The start of a BMP file: enough for the format to be recognised by its magic bytes.
fn bmp_header() -> Vec<u8> {
    let mut bmp = b"BM".to_vec();
    bmp.extend_from_slice(&[0; 52]);
    bmp
}

#[test]
fn cancellation_stops_between_sizes() {
    let input = encode(&halves(), ImageFormat::Png);
    let recorder = Recorder {
        cancel_at: Some("resize"),
        ..Recorder::default()
    };
    let result = block_on(ImageThumbnail.run(&input, &json!({"sizes": [32, 64]}), &recorder));
    assert_eq!(result, Err(JobError::Cancelled));
    let stages: Vec<String> = recorder
        .seen
        .into_inner()
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    assert_eq!(stages, ["decode", "resize"]);
}

#[test]
fn params_price_and_name() {
    assert_eq!(
        ImageThumbnail.validate_params(&json!({"sizes": [512, 16, 512]})),
        Ok(json!({"sizes": [16, 512], "format": "webp"}))
    );
    let err = ImageThumbnail
        .validate_params(&json!({"sizes": [64], "format": "jpeg"}))
        .expect_err("invalid");
    assert!(
        err.contains("`format` must be \"webp\" or \"png\""),
        "{err}"
    );
    // One `job` however many sizes (the price table prices a `job`).
    assert_eq!(
        ImageThumbnail.usage(&json!({"sizes": [16, 64, 256], "format": "png"}), &[]),
        cognomega_pipelines::Metered::ONE_JOB
    );
    assert_eq!(ImageThumbnail.name(), "image_thumbnail");
}
