//! `sketch_to_app` as a job: artifacts, determinism, HTML validity, the layout.json schema,
//! params, cancellation and refusal of bad input.

mod common;

use cognomega_pipelines::registry;
use cognomega_pipelines::sketch::{ElementKind, LayoutDocument, NodeKind, SketchToApp};
use cognomega_pipelines::synth::{Drawing, Sketch};
use cognomega_pipelines::{JobError, JobType};
use common::*;
use futures::executor::block_on;
use scraper::{Html, Selector};
use serde_json::{json, Value};

const STAGES: [&str; 5] = ["decode", "normalize", "detect", "layout", "emit"];

fn login_form() -> Vec<u8> {
    std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/fixtures/login_form.png"
    ))
    .expect("fixture")
}

fn select(html: &Html, selector: &str) -> usize {
    let s = Selector::parse(selector).expect("selector");
    html.select(&s).count()
}

#[test]
fn a_run_produces_five_artifacts_with_their_content_types() {
    let artifacts = run_sketch(&login_form()).expect("runs");
    let names: Vec<(&str, &str)> = artifacts
        .iter()
        .map(|a| (a.name.as_str(), a.content_type.as_str()))
        .collect();
    assert_eq!(
        names,
        [
            ("layout.json", "application/json"),
            ("index.html", "text/html; charset=utf-8"),
            ("styles.css", "text/css; charset=utf-8"),
            ("preview.png", "image/png"),
            ("README.md", "text/markdown; charset=utf-8"),
        ]
    );
    assert!(artifacts.iter().all(|a| !a.bytes.is_empty()));
}

#[test]
fn the_same_input_gives_byte_identical_artifacts() {
    let (png, _) = Sketch::generate(42, 1024, 768);
    for input in [png, login_form()] {
        let first = run_sketch(&input).expect("runs");
        let second = run_sketch(&input).expect("runs");
        assert_eq!(first, second);
    }
    let params = json!({"title": "Same", "theme": "dark"});
    let a = block_on(SketchToApp.run(&login_form(), &params, &NoProgress)).expect("runs");
    let b = block_on(SketchToApp.run(&login_form(), &params, &NoProgress)).expect("runs");
    assert_eq!(a, b);
}

#[test]
fn index_html_is_valid_html5_that_mirrors_the_layout() {
    let artifacts = run_sketch(&login_form()).expect("runs");
    let doc = layout(&artifacts);
    let text = String::from_utf8(artifact(&artifacts, "index.html").bytes.clone()).expect("UTF-8");
    assert!(text.starts_with("<!DOCTYPE html>\n"));
    let html = Html::parse_document(&text);
    assert!(
        html.errors.is_empty(),
        "HTML parse errors: {:?}",
        html.errors
    );
    // The parser does report errors: a missing doctype and a stray end tag.
    assert!(!Html::parse_document("<p>x</div>").errors.is_empty());
    assert_eq!(select(&html, "html[lang=en]"), 1);
    assert_eq!(select(&html, "head > meta[charset=utf-8]"), 1);
    assert_eq!(
        select(
            &html,
            "head > meta[name=viewport][content*='width=device-width']"
        ),
        1
    );
    assert_eq!(
        select(&html, "head > link[rel=stylesheet][href='styles.css']"),
        1
    );
    assert_eq!(select(&html, "head > title"), 1);
    assert_eq!(select(&html, "body > main.page"), 1);

    assert_eq!(
        select(&html, "section.container") as u32,
        doc.counts.container
    );
    assert_eq!(
        select(&html, "button.button[type=button]") as u32,
        doc.counts.button
    );
    assert_eq!(
        select(&html, "input.input[aria-label]") as u32,
        doc.counts.input
    );
    assert_eq!(
        select(&html, "div.image[role=img][aria-label]") as u32,
        doc.counts.image
    );
    // A button's label scribble becomes the button's text, not a paragraph.
    let labels = doc
        .elements()
        .iter()
        .filter(|(k, _, p)| {
            *k == ElementKind::Text && p.is_some_and(|p| doc.elements()[p].0 == ElementKind::Button)
        })
        .count() as u32;
    assert_eq!(select(&html, "p.text") as u32, doc.counts.text - labels);
    // The login form's inputs and button sit inside its card.
    assert_eq!(select(&html, "section.container input"), 2);
    assert_eq!(select(&html, "section.container button"), 1);
}

#[test]
fn the_title_param_is_escaped_and_the_theme_applied() {
    let title = "<script>alert(1)</script> & \"friends\"";
    let params = SketchToApp
        .validate_params(&json!({"title": title, "theme": "dark"}))
        .expect("valid");
    let artifacts = block_on(SketchToApp.run(&login_form(), &params, &NoProgress)).expect("runs");
    let text = String::from_utf8(artifact(&artifacts, "index.html").bytes.clone()).expect("UTF-8");
    assert!(!text.contains("<script>"));
    let html = Html::parse_document(&text);
    assert!(html.errors.is_empty(), "{:?}", html.errors);
    let title_sel = Selector::parse("title").expect("selector");
    let parsed: String = html.select(&title_sel).flat_map(|t| t.text()).collect();
    assert_eq!(parsed, title);
    assert_eq!(select(&html, "body.theme-dark"), 1);
    assert_eq!(select(&html, "script"), 0);
}

#[test]
fn layout_json_follows_its_schema() {
    let artifacts = run_sketch(
        &std::fs::read(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/dashboard_photo.jpg"
        ))
        .expect("fixture"),
    )
    .expect("runs");
    let raw: Value =
        serde_json::from_slice(&artifact(&artifacts, "layout.json").bytes).expect("JSON");
    let keys: Vec<&str> = raw
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(sorted(keys), ["counts", "image", "root", "version"]);
    assert_eq!(raw["version"], 1);
    assert_eq!(raw["image"], json!({"width": 1200, "height": 900}));
    assert_eq!(raw["root"]["kind"], "page");
    assert_eq!(
        raw["root"]["box"],
        json!({"x": 0, "y": 0, "w": 1200, "h": 900})
    );

    let mut seen = std::collections::BTreeMap::<String, u64>::new();
    check_node(&raw["root"], None, &mut seen);
    for kind in ["container", "button", "input", "image", "text"] {
        assert_eq!(
            raw["counts"][kind].as_u64(),
            Some(seen.get(kind).copied().unwrap_or(0)),
            "{kind}"
        );
    }
    // And the typed form reads it with unknown fields refused.
    let doc: LayoutDocument = serde_json::from_value(raw).expect("typed");
    assert_eq!(doc.root.kind, NodeKind::Page);
}

fn sorted(mut v: Vec<&str>) -> Vec<&str> {
    v.sort_unstable();
    v
}

/// Every node has exactly `kind`, `box`, `children`; boxes are integer rectangles inside the
/// parent's; rows and columns hold at least two children.
fn check_node(
    node: &Value,
    parent_box: Option<(u64, u64, u64, u64)>,
    seen: &mut std::collections::BTreeMap<String, u64>,
) {
    let keys: Vec<&str> = node
        .as_object()
        .expect("node object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(sorted(keys), ["box", "children", "kind"]);
    let kind = node["kind"].as_str().expect("kind string");
    assert!(
        [
            "page",
            "row",
            "column",
            "container",
            "button",
            "input",
            "image",
            "text"
        ]
        .contains(&kind),
        "kind {kind}"
    );
    let b = &node["box"];
    let keys: Vec<&str> = b
        .as_object()
        .expect("box object")
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(sorted(keys), ["h", "w", "x", "y"]);
    let field = |k: &str| {
        b[k].as_u64()
            .unwrap_or_else(|| panic!("box.{k} is an integer"))
    };
    let rect = (field("x"), field("y"), field("w"), field("h"));
    if let Some((px, py, pw, ph)) = parent_box {
        let slack = 4;
        assert!(
            rect.0 + slack >= px && rect.1 + slack >= py,
            "{node} inside its parent"
        );
        assert!(
            rect.0 + rect.2 <= px + pw + slack && rect.1 + rect.3 <= py + ph + slack,
            "{node}"
        );
    }
    let children = node["children"].as_array().expect("children array");
    if kind == "row" || kind == "column" {
        assert!(children.len() >= 2, "a {kind} groups at least two items");
    }
    if kind != "page" && kind != "row" && kind != "column" {
        *seen.entry(kind.to_owned()).or_default() += 1;
    }
    for child in children {
        check_node(child, Some(rect), seen);
    }
}

#[test]
fn preview_and_readme_describe_the_detection() {
    let artifacts = run_sketch(&login_form()).expect("runs");
    let preview = image::load_from_memory_with_format(
        &artifact(&artifacts, "preview.png").bytes,
        image::ImageFormat::Png,
    )
    .expect("preview decodes");
    assert_eq!((preview.width(), preview.height()), (800, 600));
    // The card's outline is drawn in the container colour.
    let doc = layout(&artifacts);
    let card = doc
        .root
        .children
        .iter()
        .find(|n| n.kind == NodeKind::Container)
        .expect("card");
    let rgb = preview.to_rgb8();
    assert_eq!(
        rgb.get_pixel(card.rect.x + card.rect.w / 2, card.rect.y).0,
        [37, 99, 235]
    );

    let readme = String::from_utf8(artifact(&artifacts, "README.md").bytes.clone()).expect("UTF-8");
    assert!(readme.starts_with("# Sketch app\n"));
    assert!(readme.contains("| input | 2 |"));
    assert!(readme.contains("| container | 1 |"));
    assert!(readme.contains("Open `index.html` in a browser"));
}

#[test]
fn progress_reports_every_stage_in_order() {
    let recorder = Recorder::default();
    block_on(SketchToApp.run(&login_form(), &json!({}), &recorder)).expect("runs");
    let seen = recorder.seen.into_inner();
    let names: Vec<&str> = seen.iter().map(|(s, _)| s.as_str()).collect();
    assert_eq!(names, STAGES);
    assert!(seen.windows(2).all(|w| w[0].1 <= w[1].1));
    assert!(seen.iter().all(|(_, f)| (0.0..=1.0).contains(f)));
}

#[test]
fn cancellation_at_any_stage_boundary_stops_the_job() {
    for stage in STAGES {
        let recorder = Recorder {
            cancel_at: Some(stage),
            ..Recorder::default()
        };
        let result = block_on(SketchToApp.run(&login_form(), &json!({}), &recorder));
        assert_eq!(result, Err(JobError::Cancelled), "cancelled at {stage}");
        let seen = recorder.seen.into_inner();
        assert_eq!(seen.last().map(|(s, _)| s.as_str()), Some(stage));
    }
}

#[test]
fn a_decompression_bomb_is_refused_from_its_header() {
    for (bomb, claim) in [
        (png_claiming(50_000, 50_000), "50000×50000"),
        (png_claiming(8192, 8192), "67108864 pixels"),
        (jpeg_claiming(60_000, 60_000), "60000×60000"),
    ] {
        let err = SketchToApp
            .validate_input(&bomb)
            .expect_err("refused at submit");
        assert!(err.contains(claim), "{err}");
        match run_sketch(&bomb) {
            Err(JobError::InvalidInput(message)) => assert!(message.contains(claim), "{message}"),
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }
}

#[test]
fn garbage_and_unsupported_input_are_invalid() {
    let truncated = {
        let (png, _) = Sketch::generate(3, 640, 480);
        png[..png.len() / 2].to_vec()
    };
    let gif = encode(
        &image::DynamicImage::new_rgb8(32, 32),
        image::ImageFormat::Gif,
    );
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (Vec::new(), "not a recognized image"),
        (garbage(4096, 7), "not a recognized image"),
        (
            b"<html>not an image</html>".to_vec(),
            "not a recognized image",
        ),
        (gif, "GIF images are not accepted; expected PNG, JPEG"),
    ];
    for (input, expected) in cases {
        let err = SketchToApp.validate_input(&input).expect_err("refused");
        assert!(err.contains(expected), "{err}");
        assert!(
            matches!(run_sketch(&input), Err(JobError::InvalidInput(m)) if m.contains(expected))
        );
    }
    // A cut-off file passes the header check but fails to decode, still as invalid input.
    assert!(SketchToApp.validate_input(&truncated).is_ok());
    assert!(matches!(run_sketch(&truncated), Err(JobError::InvalidInput(m)) if m.contains("PNG")));
}

#[test]
fn oversize_input_is_refused() {
    let mut big = small_png(16, 16);
    big.resize(20 * 1024 * 1024 + 1, 0);
    let err = SketchToApp.validate_input(&big).expect_err("refused");
    assert!(err.contains("limit is 20971520 bytes"), "{err}");
    assert!(matches!(run_sketch(&big), Err(JobError::InvalidInput(_))));
    // Exactly at the limit passes the size check (the trailing zeros are ignored).
    big.truncate(20 * 1024 * 1024);
    assert!(SketchToApp.validate_input(&big).is_ok());
}

#[test]
fn params_are_validated_and_normalized() {
    let normalized = SketchToApp.validate_params(&json!({})).expect("valid");
    assert_eq!(normalized, json!({"title": "Sketch app", "theme": "light"}));
    assert_eq!(
        SketchToApp.validate_params(&normalized),
        Ok(normalized.clone())
    );
    let err = SketchToApp
        .validate_params(&json!({"title": "ok", "layout": "grid"}))
        .expect_err("unknown key");
    assert!(err.contains("unknown param `layout`"), "{err}");
    let err = SketchToApp
        .validate_params(&json!({"theme": 1}))
        .expect_err("wrong type");
    assert!(
        err.contains("`theme` must be a string, not a number"),
        "{err}"
    );
    // `run` refuses what validation would have refused.
    let run = block_on(SketchToApp.run(&login_form(), &json!({"theme": "neon"}), &NoProgress));
    assert!(matches!(run, Err(JobError::InvalidInput(m)) if m.contains("theme")));
    assert_eq!(
        SketchToApp.usage(&normalized, &[]),
        cognomega_pipelines::Metered::ONE_JOB
    );
    assert_eq!(SketchToApp.name(), "sketch_to_app");
}

#[test]
fn the_registry_finds_both_job_types() {
    let r = registry();
    assert_eq!(r.names(), ["image_thumbnail", "sketch_to_app"]);
    let sketch = r.get("sketch_to_app").expect("registered");
    assert!(sketch.via_jobs_api());
    assert!(r.get("image_thumbnail").is_some());
}

#[test]
fn a_blank_page_gives_an_empty_but_valid_app() {
    let artifacts = run_sketch(&small_png(400, 300)).expect("runs");
    let doc = layout(&artifacts);
    assert!(doc.root.children.is_empty());
    assert_eq!(doc.elements().len(), 0);
    let html = Html::parse_document(
        std::str::from_utf8(&artifact(&artifacts, "index.html").bytes).expect("UTF-8"),
    );
    assert!(html.errors.is_empty());
}

#[test]
fn strokes_on_a_transparent_background_are_found() {
    let mut d = Drawing::new(5, 640, 480);
    let card = Some(d.container(100.0, 80.0, 440.0, 320.0, None));
    d.input(140.0, 130.0, 360.0, 44.0, card);
    d.button(140.0, 230.0, 150.0, 56.0, false, card);
    let (rgb, truth) = d.finish_scan();
    // Black ink whose opacity is its darkness, on fully transparent black.
    let rgba = image::RgbaImage::from_fn(640, 480, |x, y| {
        let v = rgb.get_pixel(x, y).0[0];
        image::Rgba([0, 0, 0, 255 - v])
    });
    let png = encode(
        &image::DynamicImage::ImageRgba8(rgba),
        image::ImageFormat::Png,
    );
    let doc = layout(&run_sketch(&png).expect("runs"));
    let (s, problems) = score(&truth, &doc.elements(), 6);
    assert_eq!(s.matched, 3, "{problems:?}");
    assert_eq!(s.kind_ok, 3, "{problems:?}");
}

#[test]
fn heavy_paper_grain_finds_no_boxes() {
    // Coarse grain and blotches of ±40 grey levels: thousands of specks, nothing drawn.
    let noise = garbage(1600 * 1200, 99);
    let image = image::GrayImage::from_fn(1600, 1200, |x, y| {
        let blotch = ((x / 3 + y / 2) % 7) as u8 * 4;
        image::Luma([190 + noise[(y * 1600 + x) as usize] % 40 - blotch])
    });
    let png = encode(
        &image::DynamicImage::ImageLuma8(image),
        image::ImageFormat::Png,
    );
    let doc = layout(&run_sketch(&png).expect("runs"));
    assert_eq!(
        (
            doc.counts.container,
            doc.counts.button,
            doc.counts.input,
            doc.counts.image
        ),
        (0, 0, 0, 0),
        "{:?}",
        doc.counts
    );
}
