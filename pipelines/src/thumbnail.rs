//! `image_thumbnail`: an image resized to one or more sizes, as WebP (lossless) or PNG.
//!
//! Params: `{"sizes": [64, 256], "format": "webp" | "png"}`. Each size is the longer side of a
//! thumbnail (16..=2048, 1 to 8 distinct sizes; normalized to ascending order); `format`
//! defaults to `webp`. The aspect ratio is kept and images are never enlarged: an image already
//! within a size is re-encoded as it is. Artifacts: `thumb-{size}.{ext}`, in the order of the
//! normalized sizes. Input: PNG, JPEG, WebP or GIF (its first frame), within
//! [`crate::decode::LIMITS`].

use image::codecs::png::PngEncoder;
use image::codecs::webp::WebPEncoder;
use image::imageops::FilterType;
use image::{DynamicImage, ImageEncoder, ImageFormat};
use serde_json::{Map, Value};

use crate::sketch::params::type_name;
use crate::{decode, Artifact, JobError, JobType, Progress};

/// Formats accepted as input.
pub const ACCEPTED_FORMATS: [ImageFormat; 4] = [
    ImageFormat::Png,
    ImageFormat::Jpeg,
    ImageFormat::WebP,
    ImageFormat::Gif,
];
/// Smallest and largest thumbnail side.
pub const SIZE_RANGE: std::ops::RangeInclusive<u32> = 16..=2048;
/// Most sizes in one job.
pub const MAX_SIZES: usize = 8;
/// Output encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ThumbnailFormat {
    /// Lossless WebP (the default).
    #[default]
    WebP,
    /// PNG.
    Png,
}

impl ThumbnailFormat {
    /// The params value and file extension.
    pub fn as_str(self) -> &'static str {
        match self {
            ThumbnailFormat::WebP => "webp",
            ThumbnailFormat::Png => "png",
        }
    }

    /// The artifacts' MIME type.
    pub fn content_type(self) -> &'static str {
        match self {
            ThumbnailFormat::WebP => "image/webp",
            ThumbnailFormat::Png => "image/png",
        }
    }
}

/// Parsed, valid parameters.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThumbnailParams {
    /// Longer sides wanted, ascending, distinct.
    pub sizes: Vec<u32>,
    /// Output encoding.
    pub format: ThumbnailFormat,
}

impl ThumbnailParams {
    /// Parses `{"sizes": [...], "format": "webp"|"png"}`; unknown keys and wrong types are
    /// refused with a message naming the key.
    pub fn parse(params: &Value) -> Result<Self, String> {
        let empty = Map::new();
        let object = match params {
            Value::Null => &empty,
            Value::Object(o) => o,
            other => {
                return Err(format!(
                    "params must be a JSON object, not {}",
                    type_name(other)
                ))
            }
        };
        if let Some(key) = object.keys().find(|k| *k != "sizes" && *k != "format") {
            return Err(format!(
                "unknown param `{key}`; image_thumbnail accepts `sizes` and `format`"
            ));
        }
        let sizes = match object.get("sizes") {
            Some(v) => parse_sizes(v)?,
            None => return Err("missing param `sizes`: a list of 1 to 8 sizes in pixels".into()),
        };
        let format = match object.get("format") {
            None => ThumbnailFormat::default(),
            Some(v) => parse_format(v)?,
        };
        Ok(ThumbnailParams { sizes, format })
    }

    /// The normalized JSON form, which `run` receives.
    pub fn to_value(&self) -> Value {
        serde_json::json!({ "sizes": self.sizes, "format": self.format.as_str() })
    }
}

fn parse_sizes(value: &Value) -> Result<Vec<u32>, String> {
    let Value::Array(items) = value else {
        return Err(format!(
            "`sizes` must be an array, not {}",
            type_name(value)
        ));
    };
    if items.is_empty() || items.len() > MAX_SIZES {
        return Err(format!(
            "`sizes` must hold 1 to {MAX_SIZES} sizes; it holds {}",
            items.len()
        ));
    }
    let (lo, hi) = (*SIZE_RANGE.start(), *SIZE_RANGE.end());
    let mut sizes = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let size = item
            .as_u64()
            .ok_or_else(|| format!("`sizes[{i}]` must be a whole number, not {item}"))?;
        if size < u64::from(lo) || size > u64::from(hi) {
            return Err(format!(
                "`sizes[{i}]` must be between {lo} and {hi}; it is {size}"
            ));
        }
        sizes.push(size as u32);
    }
    sizes.sort_unstable();
    sizes.dedup();
    Ok(sizes)
}

fn parse_format(value: &Value) -> Result<ThumbnailFormat, String> {
    match value.as_str() {
        Some("webp") => Ok(ThumbnailFormat::WebP),
        Some("png") => Ok(ThumbnailFormat::Png),
        Some(other) => Err(format!(
            "`format` must be \"webp\" or \"png\", not \"{other}\""
        )),
        None => Err(format!(
            "`format` must be a string, not {}",
            type_name(value)
        )),
    }
}

/// The `image_thumbnail` job type.
#[derive(Debug, Clone, Copy, Default)]
pub struct ImageThumbnail;

impl ImageThumbnail {
    /// The type's name, also its queue suffix.
    pub const NAME: &'static str = "image_thumbnail";
}

#[async_trait::async_trait(?Send)]
impl JobType for ImageThumbnail {
    fn name(&self) -> &'static str {
        Self::NAME
    }

    fn validate_params(&self, params: &Value) -> Result<Value, String> {
        ThumbnailParams::parse(params).map(|p| p.to_value())
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
        let params = ThumbnailParams::parse(params).map_err(JobError::InvalidInput)?;
        progress.stage("decode", 0.0).await?;
        let image = eight_bit(decode::decode(input, &ACCEPTED_FORMATS)?);
        let n = params.sizes.len() as f32;
        let mut artifacts = Vec::with_capacity(params.sizes.len());
        for (i, &size) in params.sizes.iter().enumerate() {
            progress.stage("resize", 0.2 + 0.8 * i as f32 / n).await?;
            let thumb = resize(&image, size);
            artifacts.push(Artifact {
                name: format!("thumb-{size}.{}", params.format.as_str()),
                content_type: params.format.content_type().to_owned(),
                bytes: encode(&thumb, params.format)?,
            });
        }
        Ok(artifacts)
    }
}

/// The image in the 8-bit layout both encoders take, keeping gray as gray and alpha when there
/// is any.
fn eight_bit(image: DynamicImage) -> DynamicImage {
    match (image.color().has_color(), image.color().has_alpha()) {
        (false, false) => DynamicImage::ImageLuma8(image.to_luma8()),
        (false, true) => DynamicImage::ImageLumaA8(image.to_luma_alpha8()),
        (true, false) => DynamicImage::ImageRgb8(image.to_rgb8()),
        (true, true) => DynamicImage::ImageRgba8(image.to_rgba8()),
    }
}

/// Dimensions with the longer side `size` (never larger than the original), aspect kept.
pub fn thumbnail_dimensions(width: u32, height: u32, size: u32) -> (u32, u32) {
    let longer = width.max(height);
    if longer <= size {
        return (width, height);
    }
    let scale = |side: u32| {
        let scaled =
            (u64::from(side) * u64::from(size) + u64::from(longer) / 2) / u64::from(longer);
        (scaled as u32).max(1)
    };
    (scale(width), scale(height))
}

fn resize(image: &DynamicImage, size: u32) -> DynamicImage {
    let (w, h) = thumbnail_dimensions(image.width(), image.height(), size);
    if (w, h) == (image.width(), image.height()) {
        return image.clone();
    }
    // Lanczos3 over the scaled support: a proper low-pass for large reductions.
    image.resize_exact(w, h, FilterType::Lanczos3)
}

fn encode(image: &DynamicImage, format: ThumbnailFormat) -> Result<Vec<u8>, JobError> {
    let mut bytes = Vec::new();
    let (w, h, color) = (image.width(), image.height(), image.color().into());
    let result = match format {
        ThumbnailFormat::WebP => {
            WebPEncoder::new_lossless(&mut bytes).write_image(image.as_bytes(), w, h, color)
        }
        ThumbnailFormat::Png => {
            PngEncoder::new(&mut bytes).write_image(image.as_bytes(), w, h, color)
        }
    };
    result.map_err(|e| JobError::Transient(format!("encoding {}: {e}", format.as_str())))?;
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn params_are_normalized() {
        let p = ThumbnailParams::parse(&json!({"sizes": [256, 64, 256]})).expect("valid");
        assert_eq!(p.sizes, [64, 256]);
        assert_eq!(p.format, ThumbnailFormat::WebP);
        assert_eq!(p.to_value(), json!({"sizes": [64, 256], "format": "webp"}));
    }

    #[test]
    fn bad_params_are_refused_precisely() {
        let err = |v: Value| ThumbnailParams::parse(&v).expect_err("invalid");
        assert!(err(json!({})).contains("missing param `sizes`"));
        assert!(err(json!({"sizes": []})).contains("1 to 8 sizes; it holds 0"));
        assert!(err(json!({"sizes": vec![16; 9]})).contains("it holds 9"));
        assert!(err(json!({"sizes": [15]})).contains("`sizes[0]` must be between 16 and 2048"));
        assert!(err(json!({"sizes": [64, 4096]})).contains("`sizes[1]`"));
        assert!(err(json!({"sizes": [64.5]})).contains("whole number"));
        assert!(err(json!({"sizes": "64"})).contains("must be an array, not a string"));
        assert!(err(json!({"sizes": [64], "format": "gif"})).contains("\"webp\" or \"png\""));
        assert!(err(json!({"sizes": [64], "quality": 9})).contains("unknown param `quality`"));
    }

    #[test]
    fn dimensions_keep_the_aspect_ratio_and_never_enlarge() {
        assert_eq!(thumbnail_dimensions(1600, 1200, 256), (256, 192));
        assert_eq!(thumbnail_dimensions(1200, 1600, 256), (192, 256));
        assert_eq!(thumbnail_dimensions(4000, 10, 64), (64, 1));
        assert_eq!(thumbnail_dimensions(100, 50, 256), (100, 50));
    }
}
