//! Job types and ETL export writers.
//!
//! A job type is a Rust type implementing [`JobType`]: a name (its queue is `jobs.<name>`),
//! input validation at submit time, a price, and an idempotent `run` that reports progress per
//! stage and returns artifacts. `run` is CPU-bound and synchronous: the consumer calls it on a
//! blocking thread. Same input ⇒ byte-identical artifacts, so a redelivered job rewrites the same
//! objects.
//!
//! Adding a type: one module here, plus a line in [`registry`](mod@registry).
//!
//! Job types: [`sketch::SketchToApp`] (`sketch_to_app`: a wireframe sketch becomes an HTML/CSS
//! scaffold) and [`thumbnail::ImageThumbnail`] (`image_thumbnail`). With the `synth` feature,
//! `synth` generates hand-drawn-looking sketches with their ground truth, for tests.
#![forbid(unsafe_code)]

use serde_json::Value;

pub mod decode;
#[cfg(feature = "export")]
pub mod export;
pub mod input;
pub mod registry;
pub mod sketch;
#[cfg(feature = "synth")]
pub mod synth;
pub mod thumbnail;

pub use registry::{registry, Registry};

/// One output file of a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// File name, e.g. `index.html` (a plain name: no path separators).
    pub name: String,
    /// MIME type, e.g. `text/html; charset=utf-8`.
    pub content_type: String,
    /// The bytes, uncompressed.
    pub bytes: Vec<u8>,
}

/// The usage a successful run is billed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metered {
    /// The kind of the usage event.
    pub kind: cognomega_core::billing::UsageKind,
    /// Its quantity.
    pub quantity: u64,
}

impl Metered {
    /// One `job`.
    pub const ONE_JOB: Self = Self {
        kind: cognomega_core::billing::UsageKind::Job,
        quantity: 1,
    };
}

/// Why a job run stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JobError {
    /// The input can never succeed (undecodable image, decompression bomb, …): fail the job
    /// without retrying, with this message shown to the client.
    #[error("{0}")]
    InvalidInput(String),
    /// Cancelled at a stage boundary.
    #[error("cancelled")]
    Cancelled,
    /// Something transient went wrong: retry.
    #[error("{0}")]
    Transient(String),
}

/// Receives progress; returns `Err(JobError::Cancelled)` when the job should stop at this
/// stage boundary. Asynchronous, so a host records each stage where the job runs (the edge
/// runs a job in its own invocation, on its only thread) and reads back whether it was
/// cancelled.
#[async_trait::async_trait(?Send)]
pub trait Progress {
    /// Entering `stage`; `fraction` of the whole job is done (0..=1).
    async fn stage(&self, stage: &str, fraction: f32) -> Result<(), JobError>;
}

/// A job type.
#[async_trait::async_trait(?Send)]
pub trait JobType: Send + Sync + std::fmt::Debug {
    /// The type's name, e.g. `sketch_to_app`; its queue is `jobs.<name>`.
    fn name(&self) -> &'static str;

    /// Checks `params` at submit time (400 when wrong); returns them normalized (defaults
    /// filled in), which is what `run` receives.
    fn validate_params(&self, params: &Value) -> Result<Value, String>;

    /// Checks the input bytes at submit time, cheaply (e.g. the image header and dimensions):
    /// undecodable input is refused with 400 before anything is enqueued.
    fn validate_input(&self, input: &[u8]) -> Result<(), String>;

    /// What a successful run is billed, as one usage event of the `usage` queue (keyed by the
    /// job, so billed once): by default one `job`; a type whose cost grows with its output
    /// says so here (`tts_render`: the audio's seconds).
    fn usage(&self, _params: &Value, _artifacts: &[Artifact]) -> Metered {
        Metered::ONE_JOB
    }

    /// Whether `POST /jobs` submits this type; `false` for a type another route creates (with
    /// that route's own checks), e.g. `tts_render` by `POST /voice/tts`.
    fn via_jobs_api(&self) -> bool {
        true
    }

    /// Runs the job. Deterministic: same input and params ⇒ byte-identical artifacts. The work
    /// between two stages is CPU-bound: a native host runs the future on a blocking thread.
    async fn run(
        &self,
        input: &[u8],
        params: &Value,
        progress: &dyn Progress,
    ) -> Result<Vec<Artifact>, JobError>;
}
