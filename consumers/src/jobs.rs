//! `jobs.<type>` → the job workflow written once (`cognomega_workflows::jobs`): claim the job
//! under the attempt fence, run its pipeline on a blocking thread with progress and cancel,
//! store its artifacts (compressed by the r2-lifecycle codec) under
//! `artifacts/{tenant}/{job_id}/{name}`, then in one transaction record the artifacts, mark the
//! job succeeded and produce its `job` usage event (idempotency key `job-{id}`, so a
//! redelivered success is billed once). This module is the native host of that workflow.

use std::sync::Arc;

use cognomega_core::jobs::NATIVE_LEASE_MS;
use cognomega_core::queue::{HandlerError, MessageBatch};
use cognomega_core::sql::{Executor, SqlError, Transaction};
use cognomega_pipelines::{Artifact, JobError, JobType};
use cognomega_r2_lifecycle::codec::CodecPolicy;
use cognomega_stores::objects::Objects;
use cognomega_stores::Database;
use cognomega_workflows::jobs::{Delivery, Outcome};
use cognomega_workflows::ports::{JobHost, ObjectStore, PipelineRun};
use tracing::Instrument as _;

use crate::typed::{Decoded, TypedHandler, Unreadable};
use cognomega_core::billing::PriceTable;

pub use cognomega_core::queue::catalog::jobs::{dead_letter_queue, queue, settings, JobMessage};

/// Runs one job type.
#[derive(Debug, Clone)]
pub struct JobRunner {
    db: Database,
    objects: Objects,
    job_type: Arc<dyn JobType>,
    codec: CodecPolicy,
    prices: Arc<PriceTable>,
    max_deliveries: u32,
}

impl JobRunner {
    /// A runner; `prices` price the usage event a success produces (shown on the job).
    #[must_use]
    pub fn new(
        db: Database,
        objects: Objects,
        job_type: Arc<dyn JobType>,
        codec: CodecPolicy,
        prices: Arc<PriceTable>,
    ) -> Self {
        let max_deliveries = settings(job_type.name()).max_deliveries();
        Self {
            db,
            objects,
            job_type,
            codec,
            prices,
            max_deliveries,
        }
    }

    /// Runs one delivery through the workflow, renewing the job's lease (the attempt fence)
    /// while the run lasts.
    async fn deliver(
        &self,
        job_id: &str,
        owner: &str,
        attempts: u32,
    ) -> Result<Outcome, HandlerError> {
        let renewing = {
            let (mut db, id, owner) = (self.db.clone(), job_id.to_owned(), owner.to_owned());
            tokio::spawn(async move {
                let every = std::time::Duration::from_millis(
                    u64::try_from(NATIVE_LEASE_MS / 3).unwrap_or(40_000),
                );
                loop {
                    tokio::time::sleep(every).await;
                    let until = now_ms() + NATIVE_LEASE_MS;
                    match cognomega_core::jobs::renew(&mut db, &id, &owner, until).await {
                        Ok(true) => {}
                        // Finished, or taken over: nothing left to hold.
                        Ok(false) => break,
                        Err(e) => {
                            tracing::warn!(job_id = %id, error = %e, "could not renew the job's lease")
                        }
                    }
                }
            })
        };
        let delivery = Delivery {
            job_id,
            owner,
            attempts: Some(attempts),
            max_deliveries: self.max_deliveries,
            lease_ms: NATIVE_LEASE_MS,
            prices: &self.prices,
            codec: self.codec,
        };
        let mine = |name: &str| (name == self.job_type.name()).then(|| self.job_type.clone());
        let ran = cognomega_workflows::jobs::run(self, &mine, &delivery).await;
        renewing.abort();
        ran.map_err(|e| HandlerError::Retryable(e.to_string()))
    }
}

#[async_trait::async_trait]
impl JobHost for JobRunner {
    fn objects(&self) -> &dyn ObjectStore {
        &self.objects
    }

    fn db(&self) -> Box<dyn Executor + '_> {
        Box::new(self.db.clone())
    }

    async fn begin(&self) -> Result<Box<dyn Transaction + '_>, SqlError> {
        let tx = self
            .db
            .begin_in_consumer()
            .await
            .map_err(|e| SqlError::new(e.to_string()))?;
        Ok(Box::new(tx))
    }

    fn now_ms(&self) -> i64 {
        now_ms()
    }

    async fn run(&self, run: PipelineRun) -> Result<Vec<Artifact>, JobError> {
        // The work between stages is CPU-bound: a blocking thread, which drives the stages'
        // database writes on the runtime it came from.
        let (db, handle) = (self.db.clone(), tokio::runtime::Handle::current());
        tokio::task::spawn_blocking(move || handle.block_on(run.execute(db, now_ms)))
            .await
            .unwrap_or_else(|join| Err(JobError::Transient(format!("the job panicked: {join}"))))
    }
}

#[async_trait::async_trait]
impl TypedHandler for JobRunner {
    type Message = JobMessage;
    const WHAT: &'static str = "job";
    // A producer of a newer version may be mid-deploy: retried, then dead-lettered after
    // max_retries, as on Cloudflare Queues.
    const UNREADABLE: Unreadable = Unreadable::Retry;

    async fn handle(
        &self,
        batch: &mut MessageBatch,
        messages: Vec<Decoded<JobMessage>>,
    ) -> Result<(), HandlerError> {
        // Batches hold one message (max_batch_size 1); a larger one is handled in order.
        for Decoded {
            id,
            attempts,
            request_id,
            body,
        } in messages
        {
            // The attempt fence: this delivery claims the job under its message id. Every
            // line the run logs names the job, the message and the request that submitted it.
            let owner = id.0.to_string();
            let span = tracing::info_span!("job", job_id = %body.job_id, message_id = id.0,
                request_id = request_id.as_deref().unwrap_or(""),
                tenant = tracing::field::Empty);
            let outcome = self
                .deliver(&body.job_id, &owner, attempts)
                .instrument(span.clone())
                .await?;
            let _entered = span.enter();
            match &outcome {
                Outcome::NotRun => {
                    tracing::info!("not run: finished, cancelled or running under another delivery")
                }
                Outcome::Succeeded {
                    tenant_id,
                    artifacts,
                } => {
                    span.record("tenant", tenant_id.as_str());
                    tracing::info!(job_id = %body.job_id, tenant = %tenant_id, artifacts, "job succeeded");
                }
                Outcome::Finished { status, reason } => {
                    tracing::info!(status, reason = %reason, "job finished without billing")
                }
                Outcome::Lost => tracing::warn!(
                    "the run lost the job to another delivery; its verdict is dropped"
                ),
                Outcome::Retry { reason, dead } => {
                    tracing::warn!(reason = %reason, dead, "job run failed transiently");
                    return Err(HandlerError::Retryable(reason.clone()));
                }
            }
            batch.ack(id);
        }
        Ok(())
    }

    /// A job whose every delivery ended without a verdict (the worker crashed or hung each
    /// time) would otherwise stay `running` for good: its message went to the dead-letter
    /// queue at a claim, and no handler sees it again.
    async fn dead_lettered(&self, messages: Vec<Decoded<JobMessage>>) {
        for m in messages {
            let body = &m.body;
            let why = format!(
                "no delivery finished: the worker stopped (crash, hang or lost lease) on each of \
                 its {} deliveries; the message is in the dead-letter queue {}",
                m.attempts,
                dead_letter_queue(self.job_type.name()),
            );
            let buried =
                cognomega_core::jobs::bury(&mut self.db.clone(), &body.job_id, &why, now_ms())
                    .await;
            match buried {
                Ok(true) => tracing::warn!(job_id = %body.job_id, message_id = m.id.0,
                    request_id = m.request_id.as_deref().unwrap_or(""), "job dead: {why}"),
                Ok(false) => {}
                Err(e) => tracing::warn!(job_id = %body.job_id, error = %e,
                    "could not mark the job dead; it stays running"),
            }
        }
    }
}

pub(crate) fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
