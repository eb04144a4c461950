//! `jobs.<type>` → run the job type's pipeline on a blocking thread, store its artifacts
//! (compressed by the r2-lifecycle codec) under `artifacts/{tenant}/{job_id}/{name}`, then in
//! one transaction record the artifacts, mark the job succeeded and produce its `job` usage event
//! (idempotency key `job-{id}`, so a redelivered success is billed once).

use std::sync::Arc;

use cognomega_core::billing::{UsageBatchMessage, UsageEvent, UsageKey, UsageKind};
use cognomega_core::jobs::NATIVE_LEASE_MS;
use cognomega_core::queue::{
    BatchHandler, HandlerError, MessageBatch, OutgoingMessage, ReceivedMessage,
};
use cognomega_pipelines::{JobError, JobType, Progress};
use cognomega_r2_lifecycle::codec::{encode, CodecPolicy};
use cognomega_stores::jobs::{self, ArtifactRow, Job};
use cognomega_stores::objects::{ObjectKey, Objects, PutMeta};
use cognomega_stores::Database;
use tracing::Instrument as _;

pub use cognomega_core::queue::catalog::jobs::{dead_letter_queue, queue, settings, JobMessage};

/// Runs one job type.
#[derive(Debug, Clone)]
pub struct JobRunner {
    db: Database,
    objects: Objects,
    job_type: Arc<dyn JobType>,
    codec: CodecPolicy,
    credits_per_job: i64,
    max_deliveries: u32,
}

impl JobRunner {
    /// A runner; `credits_per_job` is what the `job` usage event will cost (shown on the job).
    #[must_use]
    pub fn new(
        db: Database,
        objects: Objects,
        job_type: Arc<dyn JobType>,
        codec: CodecPolicy,
        credits_per_job: i64,
    ) -> Self {
        let max_deliveries = settings(job_type.name()).max_deliveries();
        Self {
            db,
            objects,
            job_type,
            codec,
            credits_per_job,
            max_deliveries,
        }
    }

    /// Runs a claimed job, renewing its lease (the attempt fence) until the run ends.
    async fn run_owned(&self, job: Job, owner: String, attempts: u32) -> Result<(), HandlerError> {
        let renewing = {
            let (db, id, owner) = (self.db.clone(), job.id.clone(), owner.clone());
            tokio::spawn(async move {
                let every = std::time::Duration::from_millis(
                    u64::try_from(NATIVE_LEASE_MS / 3).unwrap_or(40_000),
                );
                loop {
                    tokio::time::sleep(every).await;
                    match jobs::renew(&db, &id, &owner, NATIVE_LEASE_MS).await {
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
        let ran = self.run_one(job, &owner, attempts).await;
        renewing.abort();
        ran
    }

    async fn run_one(&self, job: Job, owner: &str, attempts: u32) -> Result<(), HandlerError> {
        // Both were validated at submission; a row that fails them anyway can never run, and a
        // fatal error would leave it `running` while its message goes to the dead-letter queue.
        let input_key = match ObjectKey::parse(&job.input_key) {
            Ok(key) => key,
            Err(e) => {
                return self
                    .finish(
                        &job,
                        owner,
                        "failed",
                        &format!("the job's input key is invalid: {e}"),
                    )
                    .await
            }
        };
        let input = match self.objects.get_bytes(&input_key).await {
            Ok((_, bytes)) => bytes,
            Err(e) if e.is_not_found() => {
                self.finish(
                    &job,
                    owner,
                    "failed",
                    "the job's input is gone from object storage",
                )
                .await?;
                return Ok(());
            }
            Err(e) => return Err(self.transient(&job, attempts, e.to_string()).await),
        };
        let params: serde_json::Value = match serde_json::from_str(&job.params) {
            Ok(params) => params,
            Err(e) => {
                return self
                    .finish(
                        &job,
                        owner,
                        "failed",
                        &format!("the job's params are not JSON: {e}"),
                    )
                    .await
            }
        };
        let progress = DbProgress {
            db: self.db.clone(),
            job_id: job.id.clone(),
            owner: owner.to_owned(),
            handle: tokio::runtime::Handle::current(),
        };
        let job_type = self.job_type.clone();
        let ran =
            tokio::task::spawn_blocking(move || job_type.run(&input, &params, &progress)).await;
        let artifacts = match ran {
            Ok(Ok(artifacts)) => artifacts,
            Ok(Err(JobError::InvalidInput(why))) => {
                return self.finish(&job, owner, "failed", &why).await
            }
            Ok(Err(JobError::Cancelled)) => {
                return self
                    .finish(&job, owner, "cancelled", "cancelled while running")
                    .await
            }
            Ok(Err(JobError::Transient(why))) => {
                return Err(self.transient(&job, attempts, why).await)
            }
            Err(join) => {
                return Err(self
                    .transient(&job, attempts, format!("the job panicked: {join}"))
                    .await)
            }
        };
        let mut rows = Vec::with_capacity(artifacts.len());
        for artifact in artifacts {
            let encoded = encode(&artifact.bytes, &artifact.content_type, &self.codec);
            let key = ObjectKey::parse(&format!(
                "artifacts/{}/{}/{}",
                job.tenant_id, job.id, artifact.name
            ))
            .map_err(HandlerError::fatal)?;
            let meta = PutMeta::content_type(artifact.content_type.clone())
                .with("sha256", encoded.sha256.clone())
                .with("compression", encoded.compression.as_str())
                .with("original-size", encoded.original_size.to_string())
                .with("tier", "hot");
            if let Err(e) = self.objects.put(&key, encoded.bytes.into(), &meta).await {
                return Err(self.transient(&job, attempts, e.to_string()).await);
            }
            rows.push(ArtifactRow {
                name: artifact.name,
                content_type: artifact.content_type,
                size: i64::try_from(encoded.original_size).unwrap_or(i64::MAX),
                stored_size: i64::try_from(encoded.stored_size).unwrap_or(i64::MAX),
                compression: encoded.compression.as_str().to_owned(),
                sha256: encoded.sha256,
                tier: "hot".to_owned(),
                object_key: key.as_str().to_owned(),
            });
        }
        let usage = UsageBatchMessage {
            tenant_id: job.tenant_id.clone(),
            events: vec![UsageEvent {
                idempotency_key: UsageKey::parse(&format!("job-{}", job.id))
                    .map_err(HandlerError::fatal)?,
                kind: UsageKind::Job,
                quantity: 1,
                occurred_at: None,
                meta: Some(serde_json::Map::from_iter([(
                    "job_type".to_owned(),
                    self.job_type.name().into(),
                )])),
            }],
            received_at_ms: now_ms(),
        };
        let mut out = OutgoingMessage::json(&usage).map_err(HandlerError::fatal)?;
        out.options.request_id.clone_from(&job.request_id);
        let mut tx = self
            .db
            .begin_in_consumer()
            .await
            .map_err(HandlerError::retryable)?;
        let owned = jobs::succeed(&mut tx, &job.id, Some(owner), &rows, self.credits_per_job)
            .await
            .map_err(HandlerError::retryable)?;
        if !owned {
            // Another delivery took the job over (this run's lease expired): its run records
            // the success and bills it; this one leaves no trace.
            tx.rollback().await.map_err(HandlerError::retryable)?;
            tracing::warn!(job_id = %job.id, "the run lost the job to another delivery; its success is dropped");
            return Ok(());
        }
        tx.send(&crate::usage_writer::queue(), out)
            .await
            .map_err(HandlerError::retryable)?;
        tx.commit().await.map_err(HandlerError::retryable)?;
        tracing::info!(job_id = %job.id, tenant = %job.tenant_id, artifacts = rows.len(), "job succeeded");
        Ok(())
    }

    async fn finish(
        &self,
        job: &Job,
        owner: &str,
        status: &str,
        why: &str,
    ) -> Result<(), HandlerError> {
        let changed = jobs::finish(&self.db, &job.id, Some(owner), status, Some(why))
            .await
            .map_err(HandlerError::retryable)?;
        if changed {
            tracing::info!(job_id = %job.id, status, reason = why, "job finished without artifacts");
        } else {
            tracing::warn!(job_id = %job.id, status, "the run lost the job to another delivery; its verdict is dropped");
        }
        Ok(())
    }

    /// A transient failure: retried, unless this was the last delivery, in which case the job is
    /// marked `dead` (its message goes to the dead-letter queue).
    async fn transient(&self, job: &Job, attempts: u32, why: String) -> HandlerError {
        if attempts >= self.max_deliveries {
            if let Err(e) = jobs::finish(&self.db, &job.id, None, "dead", Some(&why)).await {
                tracing::warn!(job_id = %job.id, error = %e, "could not mark the job dead");
            }
        }
        HandlerError::Retryable(why)
    }
}

#[async_trait::async_trait]
impl BatchHandler for JobRunner {
    async fn handle(&self, batch: &mut MessageBatch) -> Result<(), HandlerError> {
        // Batches hold one message (max_batch_size 1); a larger one is handled in order.
        let messages: Vec<_> = batch
            .messages()
            .iter()
            .map(|m| (m.id, m.attempts, m.json::<JobMessage>()))
            .collect();
        let request_ids: Vec<Option<String>> = batch
            .messages()
            .iter()
            .map(|m| m.request_id.clone())
            .collect();
        for ((id, attempts, body), request_id) in messages.into_iter().zip(request_ids) {
            let body = match body {
                Ok(b) => b,
                Err(e) => {
                    // Retried, not dead-lettered at once: a producer of a newer version may be
                    // mid-deploy. After max_retries it reaches the dead-letter queue, as on
                    // Cloudflare Queues.
                    tracing::warn!(
                        message_id = id.0,
                        attempts,
                        max_deliveries = self.max_deliveries,
                        request_id = request_id.as_deref().unwrap_or(""),
                        "not a job message ({e}); retrying"
                    );
                    batch.retry(id, None);
                    continue;
                }
            };
            // None: cancelled while queued, or already finished (a redelivered success).
            // The attempt fence: this delivery claims the job under its message id. None:
            // cancelled while queued, already finished (a redelivered success), or running
            // under another delivery's live lease — whose own message comes back if it dies.
            let owner = id.0.to_string();
            let Some(job) = jobs::start_run(&self.db, &body.job_id, &owner, NATIVE_LEASE_MS)
                .await
                .map_err(HandlerError::retryable)?
            else {
                tracing::info!(job_id = %body.job_id, message_id = id.0,
                    "not run: finished, cancelled or running under another delivery");
                batch.ack(id);
                continue;
            };
            // Every line the run logs names the job, its tenant, the message and the request
            // that submitted it.
            let span = tracing::info_span!("job", job_id = %job.id, tenant = %job.tenant_id,
                message_id = id.0, request_id = request_id.as_deref().unwrap_or(""));
            self.run_owned(job, owner, attempts)
                .instrument(span)
                .await?;
            batch.ack(id);
        }
        Ok(())
    }

    /// A job whose every delivery ended without a verdict (the worker crashed or hung each
    /// time) would otherwise stay `running` for good: its message went to the dead-letter
    /// queue at a claim, and no handler sees it again.
    async fn dead_lettered(&self, messages: &[ReceivedMessage]) {
        for m in messages {
            // Not a job message: there is no job to mark (it is in the dead-letter queue).
            let Ok(body) = m.json::<JobMessage>() else {
                continue;
            };
            let why = format!(
                "no delivery finished: the worker stopped (crash, hang or lost lease) on each of \
                 its {} deliveries; the message is in the dead-letter queue {}",
                m.attempts,
                dead_letter_queue(self.job_type.name()),
            );
            match jobs::bury(&self.db, &body.job_id, &why).await {
                Ok(true) => tracing::warn!(job_id = %body.job_id, message_id = m.id.0,
                    request_id = m.request_id.as_deref().unwrap_or(""), "job dead: {why}"),
                Ok(false) => {}
                Err(e) => tracing::warn!(job_id = %body.job_id, error = %e,
                    "could not mark the job dead; it stays running"),
            }
        }
    }
}

/// Progress written to the job row; reads back whether the job was cancelled.
struct DbProgress {
    db: Database,
    job_id: String,
    owner: String,
    handle: tokio::runtime::Handle,
}

impl Progress for DbProgress {
    fn stage(&self, stage: &str, fraction: f32) -> Result<(), JobError> {
        // Called from the blocking thread the job runs on, so blocking on the write is fine.
        let cancel = self
            .handle
            .block_on(jobs::progress(
                &self.db,
                &self.job_id,
                &self.owner,
                stage,
                f64::from(fraction.clamp(0.0, 1.0)),
                NATIVE_LEASE_MS,
            ))
            .map_err(|e| JobError::Transient(e.to_string()))?;
        if cancel {
            Err(JobError::Cancelled)
        } else {
            Ok(())
        }
    }
}

fn now_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}
