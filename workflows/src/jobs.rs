//! Running a job, on either host: claim it under the attempt fence, run its pipeline with
//! progress and cancel, store its artifacts (compressed by the r2-lifecycle codec) under
//! `artifacts/{tenant}/{job_id}/{name}`, and in one transaction record the verdict, the artifact
//! rows and the `job` usage event (idempotency key `job-{id}`, so a redelivered success is billed
//! once).

use std::sync::Arc;

use cognomega_core::billing::{PriceTable, UsageBatchMessage, UsageEvent, UsageKey};
use cognomega_core::jobs::{self, ArtifactRow, Verdict};
use cognomega_core::queue::catalog;
use cognomega_core::sql::{Outbound, SqlError};
use cognomega_pipelines::{JobError, JobType, Metered};
use cognomega_r2_lifecycle::codec::{encode, CodecPolicy};

use crate::ports::{Fence, Fetched, JobHost, NewObject, PipelineRun};

/// One delivery of a job's message.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// The job the message names.
    pub job_id: &'a str,
    /// The delivery's identity (its message id, stable across the broker's redeliveries).
    pub owner: &'a str,
    /// This delivery's number (1 for the first); `None` when the broker does not say (a
    /// Cloudflare message in workers-rs), and the job's own count of runs stands in.
    pub attempts: Option<u32>,
    /// The queue's last delivery: a transient failure then ends the job `dead`.
    pub max_deliveries: u32,
    /// How long the claim holds the job without progress (the host's lease).
    pub lease_ms: i64,
    /// The prices: what the run's usage event costs is shown on the job.
    pub prices: &'a PriceTable,
    /// How artifacts are compressed.
    pub codec: CodecPolicy,
}

/// How a delivery ended; the host acks the message for every outcome but [`Outcome::Retry`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not run here: cancelled while queued, already finished (a redelivered success), or
    /// running under another delivery's live lease, whose own message comes back if it dies.
    NotRun,
    /// Succeeded: artifacts stored, usage event produced.
    Succeeded {
        /// The owner.
        tenant_id: String,
        /// Artifacts stored.
        artifacts: usize,
    },
    /// Ended without billing: `failed` (bad input or params) or `cancelled`.
    Finished {
        /// The final status.
        status: &'static str,
        /// Why.
        reason: String,
    },
    /// Another delivery took the job over (this run's lease expired): its verdict was dropped.
    Lost,
    /// A transient failure: redeliver. `dead` when this was the last delivery and the job was
    /// marked `dead` (its message goes to the dead-letter queue).
    Retry {
        /// Why.
        reason: String,
        /// The job ended `dead`.
        dead: bool,
    },
}

impl Outcome {
    /// The host acks the message (anything but a retry).
    #[must_use]
    pub fn ack(&self) -> bool {
        !matches!(self, Self::Retry { .. })
    }
}

/// Runs the job `delivery` names. `job_type` resolves the row's type name to what runs it.
/// `Err` only when the database could not be reached: redeliver.
pub async fn run<H: JobHost + ?Sized>(
    host: &H,
    job_type: &(dyn Fn(&str) -> Option<Arc<dyn JobType>> + Sync),
    delivery: &Delivery<'_>,
) -> Result<Outcome, SqlError> {
    let (id, owner) = (delivery.job_id, delivery.owner);
    let Some(job) =
        jobs::start(&mut *host.db(), id, owner, host.now_ms(), delivery.lease_ms).await?
    else {
        return Ok(Outcome::NotRun);
    };
    let delivery = &Delivery {
        attempts: Some(
            delivery
                .attempts
                .unwrap_or_else(|| u32::try_from(job.attempts).unwrap_or(u32::MAX)),
        ),
        ..*delivery
    };
    if job.cancel_requested {
        // Asked for while an earlier delivery ran it: this delivery is its next boundary.
        return finish(host, delivery, "cancelled", "cancelled while running").await;
    }
    let Some(kind) = job_type(&job.job_type) else {
        let why = format!("this host does not run jobs of type {}", job.job_type);
        return finish(host, delivery, "failed", &why).await;
    };
    // Both were validated at submission; a row that fails them anyway can never run.
    let params: serde_json::Value = match serde_json::from_str(&job.params) {
        Ok(params) => params,
        Err(e) => {
            let why = format!("the job's params are not JSON: {e}");
            return finish(host, delivery, "failed", &why).await;
        }
    };
    let input = match host.objects().get(&job.input_key).await {
        Ok(Fetched::Found(bytes)) => bytes,
        Ok(Fetched::Missing) => {
            let why = "the job's input is gone from object storage";
            return finish(host, delivery, "failed", why).await;
        }
        Ok(Fetched::BadKey(e)) => {
            let why = format!("the job's input key is invalid: {e}");
            return finish(host, delivery, "failed", &why).await;
        }
        Err(e) => return transient(host, delivery, format!("reading the input: {e}")).await,
    };
    let fence = Fence {
        job_id: id.to_owned(),
        owner: owner.to_owned(),
        lease_ms: delivery.lease_ms,
    };
    let run = PipelineRun {
        job: kind.clone(),
        input,
        params: params.clone(),
        fence,
    };
    let artifacts = match host.run(run).await {
        Ok(artifacts) => artifacts,
        Err(JobError::InvalidInput(why)) => return finish(host, delivery, "failed", &why).await,
        Err(JobError::Cancelled) => {
            return finish(host, delivery, "cancelled", "cancelled while running").await
        }
        Err(JobError::Transient(why)) => return transient(host, delivery, why).await,
    };
    let metered = kind.usage(&params, &artifacts);
    let credits = delivery.prices.charge(metered.kind, metered.quantity);
    let mut rows = Vec::with_capacity(artifacts.len());
    for artifact in artifacts {
        let encoded = encode(&artifact.bytes, &artifact.content_type, &delivery.codec);
        let key = format!("artifacts/{}/{id}/{}", job.tenant_id, artifact.name);
        let meta = [
            ("sha256", encoded.sha256.clone()),
            ("compression", encoded.compression.as_str().to_owned()),
            ("original-size", encoded.original_size.to_string()),
            ("tier", "hot".to_owned()),
        ];
        let object = NewObject {
            key: &key,
            bytes: encoded.bytes,
            content_type: &artifact.content_type,
            meta: &meta,
        };
        if let Err(e) = host.objects().put(object).await {
            return transient(host, delivery, format!("storing {key}: {e}")).await;
        }
        rows.push(ArtifactRow {
            name: artifact.name,
            content_type: artifact.content_type,
            size: i64::try_from(encoded.original_size).unwrap_or(i64::MAX),
            stored_size: i64::try_from(encoded.stored_size).unwrap_or(i64::MAX),
            compression: encoded.compression.as_str().to_owned(),
            sha256: encoded.sha256,
            tier: "hot".to_owned(),
            object_key: key,
        });
    }
    let usage = usage_message(&job.tenant_id, id, kind.name(), metered, host.now_ms())?;
    // The verdict, the artifact rows and the usage event commit together, while this delivery
    // still owns the job. A cancel that came in while the job ran: `cancelled`, not billed, its
    // artifacts listed.
    let mut tx = host.begin().await?;
    let verdict = jobs::succeed(&mut *tx, id, Some(owner), &rows, credits, host.now_ms()).await?;
    match verdict {
        Verdict::Lost => {
            tx.rollback().await?;
            Ok(Outcome::Lost)
        }
        Verdict::Cancelled => {
            tx.commit().await?;
            Ok(Outcome::Finished {
                status: "cancelled",
                reason: "cancelled while running".to_owned(),
            })
        }
        Verdict::Succeeded => {
            tx.send(Outbound {
                queue: catalog::usage::QUEUE,
                body: usage,
                request_id: job.request_id.as_deref(),
            })
            .await?;
            tx.commit().await?;
            Ok(Outcome::Succeeded {
                tenant_id: job.tenant_id,
                artifacts: rows.len(),
            })
        }
    }
}

/// The usage event of a succeeded job (keyed `job-{id}`: billed once), as the usage queue's
/// message (JSON text).
pub fn usage_message(
    tenant_id: &str,
    job_id: &str,
    job_type: &str,
    metered: Metered,
    now_ms: i64,
) -> Result<String, SqlError> {
    let key = UsageKey::parse(&format!("job-{job_id}"))
        .map_err(|e| SqlError::new(format!("the job's usage key: {e}")))?;
    let message = UsageBatchMessage {
        tenant_id: tenant_id.to_owned(),
        events: vec![UsageEvent {
            idempotency_key: key,
            kind: metered.kind,
            quantity: metered.quantity,
            occurred_at: None,
            meta: Some(serde_json::Map::from_iter([(
                "job_type".to_owned(),
                job_type.into(),
            )])),
        }],
        received_at_ms: now_ms,
    };
    serde_json::to_string(&message).map_err(|e| SqlError::new(e.to_string()))
}

/// A verdict without artifacts, written only while the delivery still owns the job.
async fn finish<H: JobHost + ?Sized>(
    host: &H,
    delivery: &Delivery<'_>,
    status: &'static str,
    why: &str,
) -> Result<Outcome, SqlError> {
    let owned = jobs::finish(
        &mut *host.db(),
        delivery.job_id,
        Some(delivery.owner),
        status,
        Some(why),
        host.now_ms(),
    )
    .await?;
    Ok(if owned {
        Outcome::Finished {
            status,
            reason: why.to_owned(),
        }
    } else {
        Outcome::Lost
    })
}

/// A transient failure: redelivered, unless this was the last delivery, in which case the job
/// is marked `dead` (its message goes to the dead-letter queue).
async fn transient<H: JobHost + ?Sized>(
    host: &H,
    delivery: &Delivery<'_>,
    why: String,
) -> Result<Outcome, SqlError> {
    let dead = delivery.attempts.unwrap_or(0) >= delivery.max_deliveries
        && jobs::finish(
            &mut *host.db(),
            delivery.job_id,
            None,
            "dead",
            Some(&why),
            host.now_ms(),
        )
        .await?;
    Ok(Outcome::Retry { reason: why, dead })
}
