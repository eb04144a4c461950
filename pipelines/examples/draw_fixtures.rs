//! Draws the hand-composed sketches under `tests/fixtures/` (committed; rerun only to change
//! them, then update the expected counts in `tests/sketch_fixtures.rs`).
//!
//! ```sh
//! cargo run -p cognomega-pipelines --example draw_fixtures --features synth -- pipelines/tests/fixtures
//! ```

use std::io::Cursor;
use std::path::Path;

use cognomega_pipelines::synth::Drawing;
use image::codecs::jpeg::JpegEncoder;
use image::{DynamicImage, ImageFormat, RgbImage};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::env::args()
        .nth(1)
        .ok_or("usage: draw_fixtures <folder>")?;
    let out = Path::new(&out);
    std::fs::create_dir_all(out)?;

    let login = DynamicImage::ImageRgb8(login_form()).into_luma8();
    login.save_with_format(out.join("login_form.png"), ImageFormat::Png)?;

    let mut jpeg = Cursor::new(Vec::new());
    shade(dashboard()).write_with_encoder(JpegEncoder::new_with_quality(&mut jpeg, 82))?;
    std::fs::write(out.join("dashboard_photo.jpg"), jpeg.into_inner())?;

    signup_mobile().save_with_format(out.join("signup_mobile.png"), ImageFormat::Png)?;
    Ok(())
}

/// A centred card: title, two labelled inputs, a button, a "forgot password" line.
/// container 1, input 2, button 1, text 5 (the button's label included).
fn login_form() -> RgbImage {
    let mut d = Drawing::new(11, 800, 600);
    let card = Some(d.container(200.0, 60.0, 400.0, 480.0, None));
    d.text(240.0, 100.0, 180.0, 18.0, 2, card);
    d.text(240.0, 160.0, 80.0, 12.0, 1, card);
    d.input(240.0, 190.0, 320.0, 44.0, card);
    d.text(240.0, 262.0, 110.0, 12.0, 1, card);
    d.input(240.0, 292.0, 320.0, 44.0, card);
    d.button(240.0, 370.0, 140.0, 50.0, true, card);
    d.text(240.0, 460.0, 200.0, 12.0, 3, card);
    d.finish_scan().0
}

/// Header (logo, title, three nav buttons), a sidebar with links and a button, a main area
/// with two cards (image and two lines each) and a search input with a button, a footer line.
/// container 4, image 3, button 5, input 1, text 15.
fn dashboard() -> RgbImage {
    let mut d = Drawing::new(23, 1200, 900);
    d.image(60.0, 50.0, 120.0, 70.0, None);
    d.text(220.0, 75.0, 260.0, 20.0, 2, None);
    for x in [700.0, 850.0, 1000.0] {
        d.button(x, 55.0, 120.0, 56.0, true, None);
    }
    let side = Some(d.container(60.0, 170.0, 260.0, 660.0, None));
    for i in 0..4 {
        d.text(
            95.0,
            215.0 + 60.0 * f64::from(i),
            170.0 - 20.0 * f64::from(i),
            14.0,
            1,
            side,
        );
    }
    d.button(95.0, 740.0, 150.0, 52.0, true, side);
    let main = Some(d.container(370.0, 170.0, 770.0, 660.0, None));
    for x in [405.0, 775.0] {
        let card = Some(d.container(x, 210.0, 330.0, 380.0, main));
        d.image(x + 30.0, 240.0, 270.0, 180.0, card);
        d.text(x + 30.0, 450.0, 220.0, 14.0, 3, card);
        d.text(x + 30.0, 490.0, 160.0, 14.0, 2, card);
    }
    d.input(405.0, 640.0, 520.0, 46.0, main);
    d.button(955.0, 636.0, 150.0, 54.0, true, main);
    d.text(60.0, 858.0, 300.0, 14.0, 3, None);
    d.finish().0
}

/// A phone screen: avatar, title, three inputs, two buttons side by side, a line of text and
/// a bottom bar with three icon buttons.
/// container 1, image 1, input 3, button 5, text 4.
fn signup_mobile() -> RgbImage {
    let mut d = Drawing::new(37, 480, 800);
    d.image(180.0, 50.0, 120.0, 120.0, None);
    d.text(140.0, 200.0, 200.0, 18.0, 2, None);
    for y in [260.0, 340.0, 420.0] {
        d.input(50.0, y, 380.0, 48.0, None);
    }
    d.button(50.0, 510.0, 170.0, 56.0, true, None);
    d.button(260.0, 510.0, 170.0, 56.0, true, None);
    d.text(110.0, 620.0, 260.0, 12.0, 3, None);
    let bar = Some(d.container(30.0, 690.0, 420.0, 84.0, None));
    for x in [60.0, 195.0, 330.0] {
        d.button(x, 710.0, 90.0, 44.0, false, bar);
    }
    d.finish_scan().0
}

/// Darkens one side of a photo, as a phone's shadow does.
fn shade(mut image: RgbImage) -> RgbImage {
    let width = image.width() as f32;
    for (x, _, pixel) in image.enumerate_pixels_mut() {
        let f = 0.7 + 0.3 * (x as f32 / width);
        for c in &mut pixel.0 {
            *c = (f32::from(*c) * f) as u8;
        }
    }
    image
}
