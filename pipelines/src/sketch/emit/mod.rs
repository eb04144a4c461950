//! Stage `emit`: the artifacts of `sketch_to_app`.
//!
//! Everything here is a pure function of the layout, the normalized sketch and the params:
//! no clocks, no hash-map order, floats printed with fixed precision, so the same input gives
//! byte-identical files.

mod html;
mod preview;
mod readme;

use super::detect::Element;
use super::layout::LayoutDocument;
use super::normalize::Normalized;
use super::params::SketchParams;
use crate::{Artifact, JobError};

/// The stylesheet is the same for every app: the layout is carried by the markup (classes and
/// per-element custom properties).
const STYLES_CSS: &str = include_str!("styles.css");

/// Builds all five artifacts.
pub(crate) fn emit(
    doc: &LayoutDocument,
    elements: &[Element],
    normalized: &Normalized,
    params: &SketchParams,
) -> Result<Vec<Artifact>, JobError> {
    let json = serde_json::to_string_pretty(doc)
        .map_err(|e| JobError::Transient(format!("serializing layout.json: {e}")))?;
    Ok(vec![
        artifact(
            "layout.json",
            "application/json",
            format!("{json}\n").into_bytes(),
        ),
        artifact(
            "index.html",
            "text/html; charset=utf-8",
            html::page(doc, params).into_bytes(),
        ),
        artifact(
            "styles.css",
            "text/css; charset=utf-8",
            STYLES_CSS.as_bytes().to_vec(),
        ),
        artifact(
            "preview.png",
            "image/png",
            preview::png(normalized, elements)?,
        ),
        artifact(
            "README.md",
            "text/markdown; charset=utf-8",
            readme::markdown(doc, params).into_bytes(),
        ),
    ])
}

fn artifact(name: &str, content_type: &str, bytes: Vec<u8>) -> Artifact {
    Artifact {
        name: name.to_owned(),
        content_type: content_type.to_owned(),
        bytes,
    }
}
