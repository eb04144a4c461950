//! `sketch_to_app`: a photo or scan of a hand-drawn wireframe becomes a responsive HTML/CSS
//! scaffold.
//!
//! Stages (each reported through [`Progress`], where the job can be cancelled):
//!
//! 1. `decode`: PNG or JPEG within [`crate::decode::LIMITS`], header checked first.
//! 2. `normalize`: grayscale, longer side ≤ 2048 px, 3×3 median, adaptive threshold.
//! 3. `detect`: boxes, their nesting and kinds, and text lines (see the `detect` module).
//! 4. `layout`: the containment tree with rows and columns ([`layout`]).
//! 5. `emit`: `layout.json`, `index.html`, `styles.css`, `preview.png`, `README.md`.

mod components;
mod detect;
mod emit;
pub mod geometry;
pub mod layout;
mod mask;
mod normalize;
pub mod params;

use image::ImageFormat;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use geometry::Rect;
pub use layout::{Counts, ImageSize, LayoutDocument, Node, NodeKind};
pub use params::{SketchParams, Theme};

use crate::{decode, Artifact, JobError, JobType, Progress};

/// The formats a sketch may come in.
pub const ACCEPTED_FORMATS: [ImageFormat; 2] = [ImageFormat::Png, ImageFormat::Jpeg];

/// A UI element the detector recognises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ElementKind {
    /// A box holding other elements.
    Container,
    /// A small, wide-ish box, possibly with a short text line inside.
    Button,
    /// A long thin box.
    Input,
    /// A box with a cross through it: an image placeholder.
    Image,
    /// A short horizontal scribble or line that is not a box.
    Text,
}

impl ElementKind {
    /// Every kind, in a fixed order.
    pub const ALL: [ElementKind; 5] = [
        ElementKind::Container,
        ElementKind::Button,
        ElementKind::Input,
        ElementKind::Image,
        ElementKind::Text,
    ];

    /// The name used in `layout.json`.
    pub fn as_str(self) -> &'static str {
        match self {
            ElementKind::Container => "container",
            ElementKind::Button => "button",
            ElementKind::Input => "input",
            ElementKind::Image => "image",
            ElementKind::Text => "text",
        }
    }
}

/// The `sketch_to_app` job type.
#[derive(Debug, Clone, Copy, Default)]
pub struct SketchToApp;

impl SketchToApp {
    /// The type's name, also its queue suffix.
    pub const NAME: &'static str = "sketch_to_app";
}

#[async_trait::async_trait(?Send)]
impl JobType for SketchToApp {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn validate_params(&self, params: &Value) -> Result<Value, String> {
        SketchParams::parse(params).map(|p| p.to_value())
    }

    fn validate_input(&self, input: &[u8]) -> Result<(), String> {
        decode::probe(input, &ACCEPTED_FORMATS).map(|_| ())
    }

    async fn run(
        &self,
        input: &[u8],
        params: &Value,
        progress: &dyn Progress,
    ) -> Result<Vec<Artifact>, JobError> {
        // `run` receives normalized params, but parsing again costs nothing and keeps a
        // hand-built call honest.
        let params = SketchParams::parse(params).map_err(JobError::InvalidInput)?;
        progress.stage("decode", 0.0).await?;
        let image = decode::decode(input, &ACCEPTED_FORMATS)?;
        progress.stage("normalize", 0.15).await?;
        let normalized = normalize::normalize(&image);
        drop(image);
        progress.stage("detect", 0.35).await?;
        let elements = detect::detect(&normalized.ink);
        progress.stage("layout", 0.7).await?;
        let doc = layout::build(&elements, normalized.scale, normalized.input_size);
        progress.stage("emit", 0.8).await?;
        emit::emit(&doc, &elements, &normalized, &params)
    }
}
