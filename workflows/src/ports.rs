//! The ports a workflow runs on; each host implements them.

use std::sync::Arc;

pub use cognomega_core::objects::{Fetched, NewObject, ObjectStore};
use cognomega_core::queue::MaybeSendSync;
use cognomega_core::sql::{Executor, Outbound, SqlError, Transaction};
use cognomega_pipelines::{Artifact, JobError, JobType, Progress};

/// The run a delivery holds a job with (the attempt fence of [`cognomega_core::jobs`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    /// The job.
    pub job_id: String,
    /// The delivery that owns it (its message id).
    pub owner: String,
    /// How far each stage pushes the lease.
    pub lease_ms: i64,
}

/// Progress of a fenced run, written to the job row through any [`Executor`] that can be
/// cloned per stage (a pool handle natively, a client reference on the edge): each stage
/// records the stage and fraction, renews the lease, and stops the run when a cancel was asked
/// for or the run no longer owns the job.
#[derive(Debug, Clone)]
pub struct FencedProgress<D> {
    /// Where the progress is written.
    pub db: D,
    /// The run.
    pub fence: Fence,
    /// The clock (epoch milliseconds).
    pub now_ms: fn() -> i64,
}

#[async_trait::async_trait(?Send)]
impl<D: Executor + Clone> Progress for FencedProgress<D> {
    async fn stage(&self, stage: &str, fraction: f32) -> Result<(), JobError> {
        let mut db = self.db.clone();
        let stop = cognomega_core::jobs::progress(
            &mut db,
            &self.fence.job_id,
            &self.fence.owner,
            stage,
            f64::from(fraction.clamp(0.0, 1.0)),
            (self.now_ms)() + self.fence.lease_ms,
        )
        .await
        .map_err(|e| JobError::Transient(format!("recording progress: {e}")))?;
        if stop {
            Err(JobError::Cancelled)
        } else {
            Ok(())
        }
    }
}

/// What a job workflow needs from its host.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait JobHost: MaybeSendSync {
    /// Inputs and artifacts.
    fn objects(&self) -> &dyn ObjectStore;

    /// Single statements, each committed on its own.
    fn db(&self) -> Box<dyn Executor + '_>;

    /// A transaction whose statements and messages commit together.
    async fn begin(&self) -> Result<Box<dyn Transaction + '_>, SqlError>;

    /// Now, epoch milliseconds.
    fn now_ms(&self) -> i64;

    /// Runs a job's pipeline ([`PipelineRun::execute`]): natively on a blocking thread (the
    /// work between stages is CPU-bound), on the edge in the invocation itself.
    async fn run(&self, run: PipelineRun) -> Result<Vec<Artifact>, JobError>;
}

/// A job's pipeline, ready to run.
#[derive(Debug)]
pub struct PipelineRun {
    /// The job type.
    pub job: Arc<dyn JobType>,
    /// The input's bytes.
    pub input: Vec<u8>,
    /// The normalized params.
    pub params: serde_json::Value,
    /// The run's fence: each stage is recorded under it.
    pub fence: Fence,
}

impl PipelineRun {
    /// Runs the pipeline, each stage recorded on the job through `db` (a [`FencedProgress`]).
    pub async fn execute<D: Executor + Clone>(
        self,
        db: D,
        now_ms: fn() -> i64,
    ) -> Result<Vec<Artifact>, JobError> {
        let progress = FencedProgress {
            db,
            fence: self.fence,
            now_ms,
        };
        self.job.run(&self.input, &self.params, &progress).await
    }
}

/// What a write workflow (submit a job, accept an upload) needs from its host.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait WriteHost: MaybeSendSync {
    /// Job inputs, uploads.
    fn objects(&self) -> &dyn ObjectStore;

    /// Single statements (reads that may lag a little: look-ups before a write).
    fn db(&self) -> Box<dyn Executor + '_>;

    /// A transaction whose statements and messages commit together.
    async fn begin(&self) -> Result<Box<dyn Transaction + '_>, SqlError>;

    /// Sends messages outside any transaction (all to one queue), all or nothing; `Err` to retry.
    async fn send(&self, messages: Vec<Outbound<'_>>) -> Result<(), String>;

    /// The largest message body the host's queues carry, if they bound it.
    fn message_budget(&self) -> Option<usize> {
        None
    }

    /// The tenant's cached balance (the ledger's settled balance when nothing is cached).
    async fn balance(&self, tenant: &str) -> Result<i64, String>;

    /// Now, epoch milliseconds.
    fn now_ms(&self) -> i64;

    /// A fresh id (UUIDv7).
    fn fresh_id(&self) -> String;
}
