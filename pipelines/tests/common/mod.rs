//! Helpers shared by the integration tests.
#![allow(dead_code)]

use futures::executor::block_on;
use std::cell::RefCell;

use cognomega_pipelines::sketch::{ElementKind, LayoutDocument, Rect, SketchToApp};
use cognomega_pipelines::synth::TruthBox;
use cognomega_pipelines::{Artifact, JobError, JobType, Progress};

/// Accepts every stage.
#[derive(Debug)]
pub struct NoProgress;

#[async_trait::async_trait(?Send)]
impl Progress for NoProgress {
    async fn stage(&self, _stage: &str, _fraction: f32) -> Result<(), JobError> {
        Ok(())
    }
}

/// Records stages; cancels when entering `cancel_at`.
#[derive(Debug, Default)]
pub struct Recorder {
    pub cancel_at: Option<&'static str>,
    pub seen: RefCell<Vec<(String, f32)>>,
}

#[async_trait::async_trait(?Send)]
impl Progress for Recorder {
    async fn stage(&self, stage: &str, fraction: f32) -> Result<(), JobError> {
        self.seen.borrow_mut().push((stage.to_owned(), fraction));
        if self.cancel_at == Some(stage) {
            return Err(JobError::Cancelled);
        }
        Ok(())
    }
}

/// Runs `sketch_to_app` with default params.
pub fn run_sketch(input: &[u8]) -> Result<Vec<Artifact>, JobError> {
    block_on(SketchToApp.run(input, &serde_json::json!({}), &NoProgress))
}

/// The artifact called `name`.
pub fn artifact<'a>(artifacts: &'a [Artifact], name: &str) -> &'a Artifact {
    artifacts
        .iter()
        .find(|a| a.name == name)
        .unwrap_or_else(|| panic!("no artifact {name}"))
}

/// Parses `layout.json` strictly (unknown fields are an error).
pub fn layout(artifacts: &[Artifact]) -> LayoutDocument {
    serde_json::from_slice(&artifact(artifacts, "layout.json").bytes).expect("layout.json parses")
}

/// Detection quality of one or more sketches against their ground truth.
#[derive(Debug, Default, Clone, Copy)]
pub struct Score {
    pub truth: usize,
    pub detected: usize,
    pub matched: usize,
    pub kind_ok: usize,
    pub parent_ok: usize,
    pub position_ok: usize,
    pub worst_edge_error: u32,
}

impl Score {
    pub fn recall(&self) -> f64 {
        self.matched as f64 / self.truth.max(1) as f64
    }
    pub fn precision(&self) -> f64 {
        self.matched as f64 / self.detected.max(1) as f64
    }
    pub fn kind_accuracy(&self) -> f64 {
        self.kind_ok as f64 / self.matched.max(1) as f64
    }
    pub fn nesting_accuracy(&self) -> f64 {
        self.parent_ok as f64 / self.matched.max(1) as f64
    }
    pub fn position_accuracy(&self) -> f64 {
        self.position_ok as f64 / self.matched.max(1) as f64
    }

    pub fn add(&mut self, other: &Score) {
        self.truth += other.truth;
        self.detected += other.detected;
        self.matched += other.matched;
        self.kind_ok += other.kind_ok;
        self.parent_ok += other.parent_ok;
        self.position_ok += other.position_ok;
        self.worst_edge_error = self.worst_edge_error.max(other.worst_edge_error);
    }

    pub fn summary(&self) -> String {
        format!(
            "truth {} detected {} matched {} | recall {:.3} precision {:.3} kinds {:.3} nesting {:.3} positions {:.3} (worst edge {} px)",
            self.truth,
            self.detected,
            self.matched,
            self.recall(),
            self.precision(),
            self.kind_accuracy(),
            self.nesting_accuracy(),
            self.position_accuracy(),
            self.worst_edge_error
        )
    }
}

/// Smallest IoU for a detection to count as finding a ground-truth element.
pub const MIN_IOU: f64 = 0.8;

/// Largest distance between corresponding edges for a position to count as right.
pub fn edge_tolerance(width: u32, height: u32) -> u32 {
    (width.max(height) / 200).max(6)
}

/// Matches detections to ground truth one to one (greedily by IoU ≥ [`MIN_IOU`]) and scores
/// kinds, nesting and positions of the matched pairs.
pub fn score(
    truth: &[TruthBox],
    detected: &[(ElementKind, Rect, Option<usize>)],
    tolerance: u32,
) -> (Score, Vec<String>) {
    let mut pairs: Vec<(f64, usize, usize)> = Vec::new();
    for (t, tb) in truth.iter().enumerate() {
        for (d, (_, rect, _)) in detected.iter().enumerate() {
            let iou = tb.rect.iou(rect);
            if iou >= MIN_IOU {
                pairs.push((iou, t, d));
            }
        }
    }
    pairs.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    let mut truth_to_det = vec![None; truth.len()];
    let mut det_to_truth = vec![None; detected.len()];
    for (_, t, d) in pairs {
        if truth_to_det[t].is_none() && det_to_truth[d].is_none() {
            truth_to_det[t] = Some(d);
            det_to_truth[d] = Some(t);
        }
    }
    let mut s = Score {
        truth: truth.len(),
        detected: detected.len(),
        ..Score::default()
    };
    let mut problems = Vec::new();
    for (t, tb) in truth.iter().enumerate() {
        let Some(d) = truth_to_det[t] else {
            problems.push(format!("missed {:?} {:?}", tb.kind, tb.rect));
            continue;
        };
        let (kind, rect, parent) = detected[d];
        s.matched += 1;
        if kind == tb.kind {
            s.kind_ok += 1;
        } else {
            problems.push(format!("{:?} {:?} detected as {kind:?}", tb.kind, tb.rect));
        }
        let detected_parent = parent.and_then(|p| det_to_truth[p]);
        if detected_parent == tb.parent && parent.is_some() == tb.parent.is_some() {
            s.parent_ok += 1;
        } else {
            problems.push(format!(
                "{:?} {:?}: parent {detected_parent:?}, expected {:?}",
                tb.kind, tb.rect, tb.parent
            ));
        }
        let err = edge_error(&tb.rect, &rect);
        s.worst_edge_error = s.worst_edge_error.max(err);
        if err <= tolerance {
            s.position_ok += 1;
        }
    }
    for (d, (kind, rect, _)) in detected.iter().enumerate() {
        if det_to_truth[d].is_none() {
            problems.push(format!("spurious {kind:?} {rect:?}"));
        }
    }
    (s, problems)
}

/// Largest distance between corresponding edges.
pub fn edge_error(a: &Rect, b: &Rect) -> u32 {
    [
        a.x.abs_diff(b.x),
        a.y.abs_diff(b.y),
        a.right().abs_diff(b.right()),
        a.bottom().abs_diff(b.bottom()),
    ]
    .into_iter()
    .max()
    .unwrap_or(0)
}

/// A small valid PNG (RGB, `w` × `h`, light grey).
pub fn small_png(w: u32, h: u32) -> Vec<u8> {
    let image = image::RgbImage::from_pixel(w, h, image::Rgb([230, 230, 230]));
    encode(
        &image::DynamicImage::ImageRgb8(image),
        image::ImageFormat::Png,
    )
}

/// `image` encoded in `format`.
pub fn encode(image: &image::DynamicImage, format: image::ImageFormat) -> Vec<u8> {
    let mut out = std::io::Cursor::new(Vec::new());
    image.write_to(&mut out, format).expect("encodes");
    out.into_inner()
}

/// A real PNG whose header claims `width` × `height`: a decompression bomb as far as any
/// decoder that trusts the header is concerned.
pub fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    let mut png = small_png(8, 8);
    // Signature (8), IHDR length (4) and type (4); then width and height, big-endian.
    assert_eq!(&png[12..16], b"IHDR");
    png[16..20].copy_from_slice(&width.to_be_bytes());
    png[20..24].copy_from_slice(&height.to_be_bytes());
    let crc = crc32(&png[12..29]);
    png[29..33].copy_from_slice(&crc.to_be_bytes());
    png
}

/// A real JPEG whose frame header claims `width` × `height`.
pub fn jpeg_claiming(width: u16, height: u16) -> Vec<u8> {
    let image = image::DynamicImage::ImageRgb8(image::RgbImage::new(16, 16));
    let mut jpeg = encode(&image, image::ImageFormat::Jpeg);
    let sof = jpeg
        .windows(2)
        .position(|w| w == [0xFF, 0xC0])
        .expect("a baseline frame header");
    // Marker (2), length (2), precision (1), then height and width, big-endian.
    jpeg[sof + 5..sof + 7].copy_from_slice(&height.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&width.to_be_bytes());
    jpeg
}

/// CRC-32 (IEEE), as PNG chunks use.
pub fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// Pseudo-random bytes (xorshift), for garbage input.
pub fn garbage(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
