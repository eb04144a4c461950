//! `POST /jobs`, written once: the job type and its params, the `Idempotency-Key` (a repeated
//! key returns the job it created), the input (inline base64, or a clean upload of the
//! tenant's), the credit check, the input stored, and — in one transaction — the job row, its
//! run charged against the tier's hourly cap, and its queue message (natively sent on the
//! database-backed queue inside the transaction, on the edge staged in the outbox). A refusal
//! or a failure leaves no row, no charge, no message and no stored input.

use cognomega_core::api::Refusal;
use cognomega_core::limits::{self, CostMetric};
use cognomega_core::objects::{Fetched, NewObject};
use cognomega_core::queue::catalog::jobs::JobMessage;
use cognomega_core::sql::{Executor, Outbound, SqlError, Value};

pub use crate::ports::WriteHost;
use cognomega_pipelines::input::{InputError, MAX_INPUT_BYTES};
use cognomega_pipelines::Registry;

/// The largest `POST /jobs` body: a 20 MiB image in base64, and headroom.
pub const BODY_LIMIT: usize = 28 * 1024 * 1024;

/// `POST /jobs`.
#[derive(Debug, Clone, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// A job type: `sketch_to_app`, `image_thumbnail`.
    #[serde(rename = "type")]
    pub job_type: String,
    /// The job's input.
    pub input: InputBody,
    /// The type's parameters, e.g. `{"sizes":[64,256],"format":"webp"}`.
    #[serde(default)]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<Object>))]
    pub params: Option<serde_json::Value>,
}

/// The job's input: exactly one of `upload_key` and `image_base64`.
#[derive(Debug, Clone, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema), schema(as = Input))]
#[serde(deny_unknown_fields)]
pub struct InputBody {
    /// A clean upload of this tenant.
    pub upload_key: Option<String>,
    /// The image in base64 (or a `data:` URL), at most 20 MiB decoded.
    pub image_base64: Option<String>,
}

impl SubmitRequest {
    /// Reads a `POST /jobs` body.
    pub fn parse(body: &[u8]) -> Result<Self, Refusal> {
        cognomega_core::api::json_body(body)
    }

    /// The submit this body asks for, by `tenant` with the `Idempotency-Key` header `key`.
    #[must_use]
    pub fn submit<'a>(
        &'a self,
        tenant: &'a str,
        key: Option<&'a [u8]>,
        request_id: &'a str,
    ) -> Submit<'a> {
        let input = match (&self.input.image_base64, &self.input.upload_key) {
            (Some(b64), None) => Input::Base64(b64),
            (None, Some(key)) => Input::Upload(key),
            _ => Input::Ambiguous,
        };
        Submit {
            tenant,
            key,
            job_type: &self.job_type,
            params: self.params.as_ref(),
            input,
            request_id,
        }
    }
}

/// Where the job's input comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input<'a> {
    /// The bytes, base64 in the body.
    Base64(&'a str),
    /// A clean upload of the tenant's, by key.
    Upload(&'a str),
    /// Bytes a route hands over itself (the text of a `tts_render`).
    Raw(&'a [u8]),
    /// Neither or both: refused.
    Ambiguous,
}

/// One submit.
#[derive(Debug, Clone, Copy)]
pub struct Submit<'a> {
    /// The caller's tenant.
    pub tenant: &'a str,
    /// The `Idempotency-Key` header, as sent.
    pub key: Option<&'a [u8]>,
    /// The job type's name.
    pub job_type: &'a str,
    /// Its params (`{}` when absent).
    pub params: Option<&'a serde_json::Value>,
    /// Its input.
    pub input: Input<'a>,
    /// The request id (the job row and its message carry it).
    pub request_id: &'a str,
}

/// The settings a submit reads.
#[derive(Clone, Copy)]
pub struct SubmitSettings<'a> {
    /// The job types this host runs.
    pub registry: &'a Registry,
    /// The balance at or below which billable work is refused.
    pub floor: i64,
    /// The tier's cap of job runs per hour, if any.
    pub runs_per_hour: Option<u64>,
}

impl std::fmt::Debug for SubmitSettings<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubmitSettings")
            .field("job_types", &self.registry.names())
            .field("floor", &self.floor)
            .field("runs_per_hour", &self.runs_per_hour)
            .finish()
    }
}

/// A submitted job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Submitted {
    /// Queued now (202).
    Queued(String),
    /// The job an earlier request with this key created (200).
    Existing(String),
}

impl Submitted {
    /// The job's id.
    #[must_use]
    pub fn id(&self) -> &str {
        match self {
            Self::Queued(id) | Self::Existing(id) => id,
        }
    }

    /// The HTTP status it is answered with.
    #[must_use]
    pub fn status(&self) -> u16 {
        match self {
            Self::Queued(_) => 202,
            Self::Existing(_) => 200,
        }
    }

    /// The answer's body.
    #[must_use]
    pub fn body(&self) -> serde_json::Value {
        let id = self.id();
        serde_json::json!({"id": id, "status": "queued", "status_url": format!("/jobs/{id}")})
    }
}

fn internal(e: impl std::fmt::Display) -> Refusal {
    Refusal::internal(e)
}

/// The `Idempotency-Key` of a submit: 1..=128 characters once trimmed.
pub fn parse_key(raw: Option<&[u8]>) -> Result<Option<String>, Refusal> {
    let Some(raw) = raw else {
        return Ok(None);
    };
    std::str::from_utf8(raw)
        .ok()
        .map(str::trim)
        .filter(|k| (1..=128).contains(&k.len()) && k.chars().all(|c| !c.is_control()))
        .map(|k| Some(k.to_owned()))
        .ok_or_else(|| {
            Refusal::new(
                400,
                "invalid_idempotency_key",
                "Idempotency-Key must be 1..=128 visible characters",
            )
        })
}

/// Submits a job.
pub async fn submit<H: WriteHost + ?Sized>(
    host: &H,
    settings: SubmitSettings<'_>,
    req: Submit<'_>,
) -> Result<Submitted, Refusal> {
    let key = parse_key(req.key)?;
    let submittable = || {
        let names = settings.registry.iter();
        let names: Vec<_> = names
            .filter(|t| t.via_jobs_api())
            .map(|t| t.name())
            .collect();
        names.join(", ")
    };
    let Some(job_type) = settings.registry.get(req.job_type) else {
        return Err(Refusal::new(
            400,
            "unknown_job_type",
            format!(
                "unknown job type {:?}; known: {}",
                req.job_type,
                submittable()
            ),
        ));
    };
    if !job_type.via_jobs_api() && !matches!(req.input, Input::Raw(_)) {
        let via = if job_type.name() == crate::tts_render::NAME {
            "POST /voice/tts (texts over its inline bound, or with Prefer: respond-async)"
        } else {
            "its own route"
        };
        return Err(Refusal::new(
            400,
            "job_type_not_submittable",
            format!(
                "{} jobs are created by {via}; POST /jobs takes {}",
                job_type.name(),
                submittable()
            ),
        ));
    }
    let params = job_type
        .validate_params(req.params.unwrap_or(&serde_json::json!({})))
        .map_err(|e| Refusal::new(400, "invalid_params", e))?;
    // A repeated Idempotency-Key returns the job it created, without reading the input again.
    if let Some(k) = &key {
        if let Some(id) = by_key(&mut *host.db(), req.tenant, k).await? {
            return Ok(Submitted::Existing(id));
        }
    }
    let input = match req.input {
        Input::Base64(b64) => decode_base64(b64)?,
        Input::Upload(key) => upload_input(host, req.tenant, key).await?,
        Input::Raw(bytes) => bytes.to_vec(),
        Input::Ambiguous => {
            return Err(Refusal::new(
                400,
                "invalid_input",
                "input must have exactly one of upload_key or image_base64",
            ))
        }
    };
    cognomega_pipelines::input::check_input(job_type.as_ref(), &input)
        .map_err(|e| Refusal::new(400, "invalid_input", e))?;
    require_credits(host, req.tenant, settings.floor).await?;

    let id = host.fresh_id();
    let input_key = format!("inputs/{}/{id}", req.tenant);
    host.objects()
        .put(NewObject {
            key: &input_key,
            bytes: input,
            content_type: "application/octet-stream",
            meta: &[],
        })
        .await
        .map_err(|e| {
            Refusal::unavailable(format!("cannot store the input right now ({e}); retry"))
        })?;
    let written = insert(
        host,
        &req,
        &id,
        job_type.name(),
        key.as_deref(),
        &params,
        &input_key,
        settings.runs_per_hour,
    )
    .await;
    let drop_input = || async {
        // Not needed: the job was refused, or a concurrent submit with the same key won.
        let _ = host.objects().delete(&input_key).await;
    };
    match written {
        Ok(Submitted::Queued(id)) => Ok(Submitted::Queued(id)),
        Ok(existing) => {
            drop_input().await;
            Ok(existing)
        }
        Err(e) => {
            drop_input().await;
            Err(e)
        }
    }
}

async fn by_key(db: &mut dyn Executor, tenant: &str, key: &str) -> Result<Option<String>, Refusal> {
    let row = db
        .query_opt(cognomega_core::jobs::BY_KEY, &[tenant.into(), key.into()])
        .await
        .map_err(internal)?;
    row.map(|r| r.text(0)).transpose().map_err(internal)
}

/// The row, its run's charge and its message, in one transaction.
#[allow(clippy::too_many_arguments)]
async fn insert<H: WriteHost + ?Sized>(
    host: &H,
    req: &Submit<'_>,
    id: &str,
    job_type: &str,
    key: Option<&str>,
    params: &serde_json::Value,
    input_key: &str,
    cap: Option<u64>,
) -> Result<Submitted, Refusal> {
    let mut tx = host.begin().await.map_err(internal)?;
    let args: Vec<Value> = vec![
        id.into(),
        req.tenant.into(),
        job_type.into(),
        key.into(),
        params.to_string().into(),
        input_key.into(),
        req.request_id.into(),
    ];
    let (sql, args) = cognomega_core::jobs::INSERT.stamped(tx.dialect(), args, host.now_ms());
    let inserted = tx.query_opt(sql, &args).await.map_err(internal)?;
    if inserted.is_none() {
        // A concurrent submit with the same key won.
        let existing = match key {
            Some(k) => by_key(&mut *tx, req.tenant, k).await?,
            None => None,
        };
        tx.rollback().await.map_err(internal)?;
        return existing
            .map(Submitted::Existing)
            .ok_or_else(|| Refusal::internal("a job insert conflicted without a key"));
    }
    if let Some(cap) = cap {
        let now_secs = host.now_ms().div_euclid(1000);
        let metric = CostMetric::JobRunsPerHour;
        let charged = limits::charge(&mut *tx, req.tenant, metric, 1, cap, now_secs)
            .await
            .map_err(internal)?;
        if let Err(over) = charged {
            tx.rollback().await.map_err(internal)?;
            return Err(over.refusal(metric, 1, now_secs));
        }
    }
    let body = serde_json::to_string(&JobMessage {
        job_id: id.to_owned(),
    })
    .map_err(internal)?;
    let queue = cognomega_core::queue::catalog::jobs::queue(job_type);
    tx.send(Outbound {
        queue: queue.as_str(),
        body,
        request_id: Some(req.request_id),
    })
    .await
    .map_err(internal)?;
    tx.commit().await.map_err(internal)?;
    Ok(Submitted::Queued(id.to_owned()))
}

fn decode_base64(raw: &str) -> Result<Vec<u8>, Refusal> {
    cognomega_pipelines::input::decode_base64_input(raw).map_err(|e| match e {
        InputError::TooLarge => Refusal::new(413, "input_too_large", e.to_string()),
        InputError::NotBase64(_) => Refusal::new(400, "invalid_input", e.to_string()),
    })
}

/// The bytes of a tenant's clean (or unscanned, where scanning is off) upload.
async fn upload_input<H: WriteHost + ?Sized>(
    host: &H,
    tenant: &str,
    key: &str,
) -> Result<Vec<u8>, Refusal> {
    let row = host
        .db()
        .query_opt(
            cognomega_core::files::sql::AS_INPUT,
            &[key.into(), tenant.into()],
        )
        .await
        .map_err(internal)?;
    let Some(row) = row else {
        return Err(Refusal::new(
            404,
            "upload_not_found",
            format!("no upload {key} for this tenant; upload it with POST /upload/direct first"),
        ));
    };
    let (scan, size, object_key) =
        (|| Ok::<_, SqlError>((row.text(0)?, row.int(1)?, row.text(2)?)))().map_err(internal)?;
    if !matches!(scan.as_str(), "clean" | "skipped") {
        return Err(Refusal::new(
            409,
            "upload_not_clean",
            format!("the upload's scan is {scan}; only clean uploads can be job inputs"),
        ));
    }
    if size > i64::try_from(MAX_INPUT_BYTES).unwrap_or(i64::MAX) {
        return Err(Refusal::new(
            400,
            "invalid_input",
            format!("job inputs are at most {} MiB", MAX_INPUT_BYTES >> 20),
        ));
    }
    match host.objects().get(&object_key).await {
        Ok(Fetched::Found(bytes)) => Ok(bytes),
        Ok(Fetched::Missing) => Err(Refusal::internal(format!(
            "upload {key}: its object {object_key} is gone"
        ))),
        Ok(Fetched::BadKey(e)) => Err(Refusal::internal(format!("upload {key}: {e}"))),
        Err(e) => Err(Refusal::unavailable(format!(
            "cannot read the upload right now ({e}); retry"
        ))),
    }
}

/// 402 when the tenant cannot pay for new billable work: flagged, or its balance at the floor.
pub async fn require_credits<H: WriteHost + ?Sized>(
    host: &H,
    tenant: &str,
    floor: i64,
) -> Result<(), Refusal> {
    let row = host
        .db()
        .query_opt(
            cognomega_core::billing::sql::TENANT_STATUS,
            &[tenant.into()],
        )
        .await
        .map_err(internal)?;
    let flagged = row
        .map(|r| r.bool(0))
        .transpose()
        .map_err(internal)?
        .unwrap_or(false);
    let balance = host.balance(tenant).await.map_err(internal)?;
    if flagged || balance <= floor {
        return Err(Refusal::insufficient_credits(balance));
    }
    Ok(())
}
