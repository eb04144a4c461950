//! `GET /openapi.json`: the OpenAPI 3.1 document of this API, derived from the handlers'
//! `#[utoipa::path]` annotations and the schemas below.
//!
//! Handlers that build their JSON ad hoc are described here by schema-only types (never
//! serialized); the document is fuzzed against the live server (`ops/schemathesis.sh`), which
//! fails whenever a response does not match its schema.

use std::sync::OnceLock;

use axum::response::{IntoResponse, Response};
use http::header::CONTENT_TYPE;
use serde_json::Value;
use utoipa::openapi::header::HeaderBuilder;
use utoipa::openapi::response::{Response as ApiResponse, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Content, RefOr};
use utoipa::{Modify, OpenApi, ToResponse, ToSchema};

/// The name of the bearer-token security scheme in the document.
pub const BEARER: &str = "bearer";
/// The name of the admin-key security scheme in the document.
pub const ADMIN_KEY: &str = "admin_key";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Cognomega",
        description = "A queue-first batch and job platform: every write is a queue producer \
                       paired with an idempotent consumer. Errors are always \
                       `{\"error\":{\"code\",\"message\",\"request_id\"}}`.",
        license(name = "Apache-2.0", identifier = "Apache-2.0"),
    ),
    paths(
        super::auth::guest,
        super::auth::jwks,
        super::usage::post,
        super::usage::get,
        super::ask::ask,
        super::voice::tts,
        super::voice::stt,
        super::voice::voices,
        super::voice::session,
        super::credits::get,
        super::credits::adjust,
        super::credits::adjustment,
        super::admin::rebuild_balance_cache,
        super::cleanup::cleanup,
        super::admin_queues::list,
        super::admin_queues::dead_letters,
        super::admin_queues::replay,
        super::admin_queues::send_message,
        super::admin_queues::env_snapshot,
        super::exports::list,
        super::exports::enqueue,
        super::jobs::submit,
        super::jobs::list,
        super::jobs::get,
        super::jobs::cancel,
        super::jobs::artifact,
        super::uploads::direct,
        super::uploads::get,
        super::uploads::file,
        super::health::healthz,
        super::metrics::metrics,
        serve,
    ),
    components(schemas(ErrorEnvelope), responses(
        BadRequest,
        Unauthorized,
        PaymentRequired,
        Forbidden,
        NotFound,
        Conflict,
        Gone,
        PayloadTooLarge,
        UnsupportedMediaType,
        TooManyRequests,
        Internal,
        BadGateway,
        Unavailable,
    )),
    modifiers(&SecuritySchemes, &EveryResponse),
    tags(
        (name = "auth", description = "Guest tokens and the public signing keys"),
        (name = "billing", description = "Usage events, balances and credit adjustments"),
        (name = "jobs", description = "Job submission, status and artifacts"),
        (name = "uploads", description = "Direct uploads and signed downloads"),
        (name = "voice", description = "Text to speech and speech to text, metered as audio seconds"),
        (name = "admin", description = "Operator routes (X-Admin-Key)"),
        (name = "ops", description = "Health, metrics and this document"),
    ),
)]
struct ApiDoc;

/// The document as served: built once per process.
pub fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| {
        let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
        fix_up(&mut doc);
        doc
    })
}

/// Corrects what `utoipa` 5 cannot express or writes wrongly:
/// - its header object has no `required` flag, and `X-Request-Id` is on every response, so
///   clients (and the fuzzer) may rely on it;
/// - it writes a link's `operationId`/`operationRef` in snake case, which no client reads.
fn fix_up(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if let Some(Value::Object(headers)) = map.get_mut("headers") {
                if let Some(Value::Object(id)) = headers.get_mut(REQUEST_ID_HEADER) {
                    id.insert("required".into(), Value::Bool(true));
                }
            }
            if let Some(Value::Object(links)) = map.get_mut("links") {
                for link in links.values_mut().filter_map(Value::as_object_mut) {
                    for (snake, camel) in [
                        ("operation_id", "operationId"),
                        ("operation_ref", "operationRef"),
                    ] {
                        if let Some(v) = link.remove(snake) {
                            link.insert(camel.into(), v);
                        }
                    }
                }
            }
            map.values_mut().for_each(fix_up);
        }
        Value::Array(items) => items.iter_mut().for_each(fix_up),
        _ => {}
    }
}

/// The OpenAPI 3.1 document of this API.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "get_openapi",
    tag = "ops",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json",
            body = Object),
    ),
)]
pub(crate) async fn serve() -> Response {
    // Served as pre-built JSON: the document does not change while the process runs.
    static TEXT: OnceLock<String> = OnceLock::new();
    let text = TEXT.get_or_init(|| document().to_string());
    ([(CONTENT_TYPE, "application/json")], text.as_str()).into_response()
}

const REQUEST_ID_HEADER: &str = "X-Request-Id";

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An RS256 JWT from POST /auth/guest; its `kid` names a key of \
                         /.well-known/jwks.json",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            ADMIN_KEY,
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-Admin-Key",
                "The deployment's admin key (--admin-key / COGNOMEGA_ADMIN_KEY, or the key \
                 generated into DATA_DIR/admin-key)",
            ))),
        );
    }
}

/// Adds the headers every response carries (`X-Request-Id`, `Cache-Control`) to every response,
/// inline or reusable.
struct EveryResponse;

impl Modify for EveryResponse {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let add = |r: &mut RefOr<ApiResponse>| {
            if let RefOr::T(response) = r {
                response.headers.insert(
                    REQUEST_ID_HEADER.into(),
                    HeaderBuilder::new()
                        .schema(
                            ObjectBuilder::new()
                                .schema_type(Type::String)
                                .min_length(Some(1))
                                .max_length(Some(128))
                                .pattern(Some("^[A-Za-z0-9._:-]+$")),
                        )
                        .description(Some(
                            "The request's id: the client's own when well-formed, else a UUIDv7",
                        ))
                        .build(),
                );
                response.headers.insert(
                    "Cache-Control".into(),
                    HeaderBuilder::new()
                        .schema(
                            ObjectBuilder::new()
                                .schema_type(Type::String)
                                .enum_values(Some(["no-store"])),
                        )
                        .build(),
                );
            }
        };
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.post,
                &mut item.put,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in operations.into_iter().flatten() {
                op.responses.responses.values_mut().for_each(add);
            }
        }
        if let Some(components) = openapi.components.as_mut() {
            components.responses.values_mut().for_each(add);
        }
    }
}

/// The error envelope every error response carries.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema: the envelope itself is cognomega_core::api::ErrorEnvelope
pub(crate) struct ErrorEnvelope {
    error: ErrorBody,
}

/// What went wrong.
#[derive(ToSchema)]
#[allow(dead_code)] // a schema: see cognomega_core::api::ErrorBody
pub(crate) struct ErrorBody {
    /// Stable `snake_case` code clients can branch on.
    #[schema(pattern = "^[a-z0-9_]+$")]
    code: String,
    /// A sentence for humans, saying what to do next where possible.
    message: String,
    /// The request id, also sent as the `X-Request-Id` header.
    request_id: String,
}

fn error_response(description: &str) -> ResponseBuilder {
    ResponseBuilder::new().description(description).content(
        "application/json",
        Content::new(Some(RefOr::Ref(utoipa::openapi::Ref::from_schema_name(
            "ErrorEnvelope",
        )))),
    )
}

fn integer_header(description: &str) -> utoipa::openapi::header::Header {
    HeaderBuilder::new()
        .schema(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(0)),
        )
        .description(Some(description))
        .build()
}

/// Declares the reusable error responses: one type per status, each the error envelope.
macro_rules! error_responses {
    ($($name:ident => $description:literal,)*) => {$(
        #[doc = $description]
        pub(crate) struct $name;

        impl<'r> ToResponse<'r> for $name {
            fn response() -> (&'r str, RefOr<ApiResponse>) {
                (stringify!($name), error_response($description).build().into())
            }
        }
    )*};
}

error_responses! {
    BadRequest => "The request is malformed or invalid; `code` names the problem",
    PaymentRequired => "The tenant is out of credits for billable work (`insufficient_credits`)",
    Forbidden => "The signed link is invalid or expired, the file is quarantined, or the tier may not ask for that intent or model",
    NotFound => "No such resource (or it belongs to another tenant)",
    Conflict => "The request conflicts with the resource's state or an earlier request",
    Gone => "The stored bytes have expired under the lifecycle policy",
    PayloadTooLarge => "The body (or the decoded input) is over its limit or the tenant's quota",
    UnsupportedMediaType => "The declared content type is not accepted or not what the bytes are",
    Internal => "An internal error; retry later and report the request id if it persists",
    Unavailable => "A dependency (database, queue, object store, scanner) is unavailable, or no model provider is configured",
    BadGateway => "Every model provider failed (each one's failure is named), or one refused the service's key",
}

/// 401: no valid credentials for the route's security scheme.
pub(crate) struct Unauthorized;

impl<'r> ToResponse<'r> for Unauthorized {
    fn response() -> (&'r str, RefOr<ApiResponse>) {
        let response = error_response(
            "Missing or invalid credentials: a bearer token (`missing_token`, `token_expired`, \
             …) or the admin key (`invalid_admin_key`)",
        )
        .header(
            "WWW-Authenticate",
            HeaderBuilder::new()
                .schema(ObjectBuilder::new().schema_type(Type::String))
                .description(Some("`Bearer` on routes that take a bearer token"))
                .build(),
        )
        .build();
        ("Unauthorized", response.into())
    }
}

/// 429: a rate limit was hit.
pub(crate) struct TooManyRequests;

impl<'r> ToResponse<'r> for TooManyRequests {
    fn response() -> (&'r str, RefOr<ApiResponse>) {
        let response = error_response("A rate limit or cost guard was hit; retry after the delay")
            .header(
                "Retry-After",
                integer_header("Seconds to wait before retrying"),
            )
            .header(
                "RateLimit-Limit",
                integer_header("Requests allowed in the window"),
            )
            .header(
                "RateLimit-Remaining",
                integer_header("Requests left in the window"),
            )
            .header(
                "RateLimit-Reset",
                integer_header("Seconds until the window resets"),
            )
            .build();
        ("TooManyRequests", response.into())
    }
}

/// The schemas of responses that handlers build ad hoc, and of request bodies parsed by hand.
/// None of these is ever constructed: they only describe JSON.
#[allow(dead_code)]
pub(crate) mod schemas {
    use std::collections::BTreeMap;

    use serde_json::Value;
    use utoipa::ToSchema;

    /// A guest token.
    #[derive(ToSchema)]
    pub(crate) struct GuestToken {
        /// The RS256 JWT.
        token: String,
        /// Always `Bearer`.
        #[schema(pattern = "^Bearer$")]
        token_type: String,
        /// Seconds until it expires.
        expires_in: i64,
        /// The new guest tenant.
        tenant_id: String,
        /// The new guest user.
        user_id: String,
    }

    /// The public signing keys (RFC 7517), current and previous.
    #[derive(ToSchema)]
    pub(crate) struct Jwks {
        keys: Vec<Jwk>,
    }

    /// One RS256 public key.
    #[derive(ToSchema)]
    pub(crate) struct Jwk {
        /// Always `RSA`.
        kty: String,
        /// The key id JWTs name in their header.
        kid: String,
        /// Always `sig`.
        #[schema(rename = "use")]
        use_: String,
        /// Always `RS256`.
        alg: String,
        /// Modulus, base64url.
        n: String,
        /// Exponent, base64url.
        e: String,
    }

    /// One usage event.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct UsageEvent {
        /// Unique per tenant: a repeated key is accepted and ignored.
        #[schema(min_length = 1, max_length = 128)]
        idempotency_key: String,
        /// What was consumed.
        kind: UsageKind,
        /// How much, in the kind's unit (at most 10^12).
        #[schema(minimum = 0, maximum = 1_000_000_000_000_u64)]
        quantity: u64,
        /// When it happened (RFC 3339; default: when received).
        #[schema(format = DateTime)]
        occurred_at: Option<String>,
        /// Free-form annotations, at most 4 KiB serialized.
        meta: Option<BTreeMap<String, Value>>,
    }

    /// A usage kind.
    #[derive(ToSchema)]
    #[schema(rename_all = "snake_case")]
    pub(crate) enum UsageKind {
        TokensIn,
        TokensOut,
        Job,
        StorageBytes,
        AudioSeconds,
    }

    /// Up to 1,000 events, validated together.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct UsageBatch {
        #[schema(min_items = 1, max_items = 1000)]
        events: Vec<UsageEvent>,
    }

    /// `POST /usage`: one event, or a batch.
    #[derive(ToSchema)]
    #[serde(untagged)]
    pub(crate) enum UsageRequest {
        One(UsageEvent),
        Batch(UsageBatch),
    }

    /// Queue data pruned (or, dry, prunable).
    #[derive(ToSchema)]
    pub(crate) struct CleanupMessages {
        acked: u64,
        dead: u64,
        dedup_keys: u64,
    }

    /// `POST /admin/cleanup`: counts of what was deleted (or, dry, would be).
    #[derive(ToSchema)]
    pub(crate) struct CleanupReport {
        dry_run: bool,
        messages: CleanupMessages,
        guest_tenants: u64,
        orphaned_objects: u64,
        rows_missing_objects: u64,
    }

    /// A chat message.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct AskMessage {
        #[schema(pattern = "^(system|user|assistant)$")]
        role: String,
        #[schema(min_length = 1)]
        content: String,
    }

    /// `POST /api/si/ask`: `messages` or `prompt` (exactly one).
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct AskRequest {
        #[schema(min_items = 1, max_items = 256)]
        messages: Option<Vec<AskMessage>>,
        #[schema(min_length = 1)]
        prompt: Option<String>,
        #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:/@-]+$")]
        model: Option<String>,
        #[schema(minimum = 1)]
        max_tokens: Option<u32>,
        #[schema(min_length = 1, max_length = 64, pattern = "^[A-Za-z0-9._:/@-]+$")]
        intent: Option<String>,
        stream: Option<bool>,
    }

    /// Tokens billed for an answer.
    #[derive(ToSchema)]
    pub(crate) struct AskUsage {
        tokens_in: u64,
        tokens_out: u64,
        /// Counted with the tokenizer because the provider reported none.
        estimated: bool,
    }

    /// One Server-Sent Event of a streamed answer: `token` (`data` = `{"text"}`), `error`
    /// (`{"code","message"}`) or the final `done` (`{"id","provider","model","usage",
    /// "credits_used","credits_balance","finish"}`); `data` is JSON text.
    #[derive(ToSchema)]
    pub(crate) struct AskEvent {
        #[schema(pattern = "^(token|error|done)$")]
        event: Option<String>,
        data: String,
    }

    /// A whole answer.
    #[derive(ToSchema)]
    pub(crate) struct AskAnswer {
        /// The request id (the usage events' idempotency keys derive from it).
        id: String,
        #[schema(pattern = "^(cfai|groq|openai)$")]
        provider: String,
        model: String,
        output: String,
        usage: AskUsage,
        credits_used: i64,
    }

    /// Events queued for the usage writer.
    #[derive(ToSchema)]
    pub(crate) struct UsageAccepted {
        accepted: u64,
    }

    /// Usage totals of one kind in the window.
    #[derive(ToSchema)]
    pub(crate) struct KindTotal {
        quantity: i64,
        credits: i64,
        events: i64,
    }

    /// `GET /usage`: totals per kind in `[from, to)`.
    #[derive(ToSchema)]
    pub(crate) struct UsageSummary {
        tenant_id: String,
        #[schema(format = DateTime)]
        from: String,
        #[schema(format = DateTime)]
        to: String,
        /// Per usage kind (`tokens_in`, `job`, …).
        totals: BTreeMap<String, KindTotal>,
        credits_charged: i64,
    }

    /// The tenant's balance, from the balance cache.
    #[derive(ToSchema)]
    pub(crate) struct Balance {
        tenant_id: String,
        balance: i64,
        #[schema(format = DateTime)]
        as_of: String,
    }

    /// An adjustment's settlement status.
    #[derive(ToSchema)]
    #[schema(rename_all = "snake_case")]
    pub(crate) enum AdjustmentStatus {
        Queued,
        Applied,
    }

    /// The adjustment was recorded (or had been, under the same key).
    #[derive(ToSchema)]
    pub(crate) struct AdjustmentAccepted {
        adjustment_id: String,
        status: AdjustmentStatus,
    }

    /// A credit adjustment.
    #[derive(ToSchema)]
    pub(crate) struct Adjustment {
        adjustment_id: String,
        tenant_id: String,
        delta: i64,
        reason: String,
        status: AdjustmentStatus,
        #[schema(format = DateTime)]
        created_at: String,
        #[schema(format = DateTime)]
        applied_at: Option<String>,
    }

    /// What a balance rebuild did.
    #[derive(ToSchema)]
    pub(crate) struct Rebuilt {
        /// Tenants whose balance was recomputed.
        tenants: u64,
        /// Balances that had drifted and were corrected.
        changed: u64,
    }

    /// Drain latencies (enqueue → ack), bucketed.
    #[derive(ToSchema)]
    pub(crate) struct DrainHistogram {
        /// Non-cumulative count per bucket; the last is the overflow bucket.
        counts: Vec<u64>,
        sum_ms: u64,
    }

    /// One queue's statistics.
    #[derive(ToSchema)]
    pub(crate) struct QueueStats {
        queue: String,
        depth: u64,
        in_flight: u64,
        delayed: u64,
        dlq_depth: u64,
        oldest_age_ms: i64,
        acked_retained: u64,
        drain: DrainHistogram,
    }

    /// Every queue's statistics.
    #[derive(ToSchema)]
    pub(crate) struct QueueList {
        queues: Vec<QueueStats>,
    }

    /// A dead message.
    #[derive(ToSchema)]
    pub(crate) struct DeadMessage {
        id: i64,
        original_queue: Option<String>,
        attempts: u32,
        error: Option<String>,
        /// Unix milliseconds.
        enqueued_at: i64,
        /// Unix milliseconds.
        dead_at: Option<i64>,
        /// The body, lossily as UTF-8.
        body_preview: String,
    }

    /// Dead messages of a queue's dead-letter queue, oldest first.
    #[derive(ToSchema)]
    pub(crate) struct DeadLetters {
        queue: String,
        dead_letter_queue: String,
        messages: Vec<DeadMessage>,
    }

    /// How many dead messages went back to their queue.
    #[derive(ToSchema)]
    pub(crate) struct Replayed {
        queue: String,
        dead_letter_queue: String,
        replayed: u64,
    }

    /// A message an operator sent to a queue.
    #[derive(ToSchema)]
    pub(crate) struct MessageSent {
        queue: String,
        /// The message id; for a repeated Idempotency-Key, the first message's id.
        id: i64,
    }

    /// The running configuration, from an allow-list (no secret appears).
    #[derive(ToSchema)]
    pub(crate) struct EnvSnapshot {
        version: String,
        build: BTreeMap<String, String>,
        uptime_s: u64,
        backends: BTreeMap<String, Value>,
        auth: BTreeMap<String, Value>,
        billing: BTreeMap<String, Value>,
        /// `*` or the allowed origins.
        cors: Value,
        uploads: BTreeMap<String, Value>,
        job_types: Vec<String>,
        /// Each declared queue's settings.
        queues: BTreeMap<String, Value>,
    }

    /// An exported dataset.
    #[derive(ToSchema)]
    #[schema(rename_all = "snake_case")]
    pub(crate) enum Dataset {
        UsageEvents,
        LedgerEntries,
        Jobs,
        Uploads,
    }

    /// An export file format.
    #[derive(ToSchema)]
    #[schema(rename_all = "snake_case")]
    pub(crate) enum ExportFormat {
        Parquet,
        Ndjson,
    }

    /// One complete export file.
    #[derive(ToSchema)]
    pub(crate) struct ExportPart {
        key: String,
        format: ExportFormat,
        /// Event date of its rows (`YYYY-MM-DD`, UTC).
        dt: String,
        from: i64,
        to: i64,
        rows: i64,
        bytes: i64,
        sha256: String,
        /// Presigned on S3/R2; a signed `/files/…` link on the local folder.
        url: String,
    }

    /// A dataset's manifest.
    #[derive(ToSchema)]
    pub(crate) struct DatasetManifest {
        dataset: Dataset,
        manifest_key: String,
        parts: Vec<ExportPart>,
    }

    /// Every dataset's manifest.
    #[derive(ToSchema)]
    pub(crate) struct ExportList {
        datasets: Vec<DatasetManifest>,
    }

    /// One queued export.
    #[derive(ToSchema)]
    pub(crate) struct QueuedExport {
        message_id: i64,
        dataset: Dataset,
        format: ExportFormat,
    }

    /// The queued exports.
    #[derive(ToSchema)]
    pub(crate) struct ExportsQueued {
        queued: Vec<QueuedExport>,
    }

    /// A job's status.
    #[derive(ToSchema)]
    #[schema(rename_all = "snake_case")]
    pub(crate) enum JobStatus {
        Queued,
        Running,
        Succeeded,
        Failed,
        Cancelled,
        Dead,
    }

    /// The submitted (or, for a repeated `Idempotency-Key`, the earlier) job.
    #[derive(ToSchema)]
    pub(crate) struct JobSubmitted {
        id: String,
        /// Always `queued` on submission.
        status: JobStatus,
        /// `/jobs/{id}`, also the `Location` header.
        status_url: String,
    }

    /// An artifact's lifecycle tier.
    #[derive(ToSchema)]
    #[schema(rename_all = "snake_case")]
    pub(crate) enum Tier {
        Hot,
        InfrequentAccess,
        Expired,
    }

    /// An artifact of a job.
    #[derive(ToSchema)]
    pub(crate) struct Artifact {
        name: String,
        content_type: String,
        size: i64,
        stored_size: i64,
        /// `none`, `zstd` or `gzip`.
        compression: String,
        sha256: String,
        tier: Tier,
        /// `null` once expired.
        url: Option<String>,
    }

    /// A job.
    #[derive(ToSchema)]
    pub(crate) struct Job {
        id: String,
        #[schema(rename = "type")]
        job_type: String,
        status: JobStatus,
        /// 0..=1.
        #[schema(minimum = 0, maximum = 1)]
        progress: f64,
        stage: Option<String>,
        attempts: i64,
        #[schema(format = DateTime)]
        created_at: String,
        #[schema(format = DateTime)]
        started_at: Option<String>,
        #[schema(format = DateTime)]
        finished_at: Option<String>,
        /// Present when the job failed.
        #[schema(required = false)]
        error: String,
        /// Present (true) on a running job asked to stop.
        #[schema(required = false)]
        cancel_requested: bool,
        credits_charged: i64,
        artifacts: Vec<Artifact>,
    }

    /// A page of jobs, newest first.
    #[derive(ToSchema)]
    pub(crate) struct JobPage {
        jobs: Vec<Job>,
        /// Pass as `cursor` for the next page; `null` on the last.
        next_cursor: Option<String>,
    }

    /// The job's state after a cancel request.
    #[derive(ToSchema)]
    pub(crate) struct Cancelled {
        id: String,
        /// `cancelled` (it was queued) or `running` (it stops at its next stage boundary).
        status: JobStatus,
        /// Present (true) when the job is still running.
        #[schema(required = false)]
        cancel_requested: bool,
    }

    /// An upload's scan status.
    #[derive(ToSchema)]
    #[schema(rename_all = "snake_case")]
    pub(crate) enum ScanStatus {
        Pending,
        Clean,
        Infected,
        ScanFailed,
        Skipped,
    }

    /// The stored upload.
    #[derive(ToSchema)]
    pub(crate) struct UploadCreated {
        key: String,
        filename: String,
        size: u64,
        sha256: String,
        content_type: String,
        /// `pending` (a scan is queued) or `skipped` (no scanner).
        scan: ScanStatus,
        #[schema(format = DateTime)]
        created_at: String,
        /// A signed, expiring download link.
        url: String,
    }

    /// An upload's metadata and scan status.
    #[derive(ToSchema)]
    pub(crate) struct Upload {
        key: String,
        filename: String,
        size: i64,
        sha256: String,
        content_type: String,
        scan: ScanStatus,
        /// The malware found, when `infected`.
        #[schema(required = false)]
        signature: String,
        #[schema(format = DateTime)]
        created_at: String,
        /// A signed, expiring download link.
        url: String,
    }

    /// `POST /voice/tts`.
    #[derive(ToSchema)]
    #[serde(deny_unknown_fields)]
    pub(crate) struct TtsRequest {
        /// What to say (at most the tier's `max_tts_chars` characters).
        #[schema(min_length = 1, pattern = "\\S")]
        text: String,
        /// A voice id from `GET /voice/voices` (the provider's default when absent).
        #[schema(min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:/+-]+$")]
        voice: Option<String>,
        /// `wav` (default), `ogg` or `mp3`.
        #[schema(pattern = "^(wav|ogg|mp3)$")]
        format: Option<String>,
        /// Hz (the provider's own when absent).
        #[schema(minimum = 8000, maximum = 48000)]
        sample_rate: Option<u32>,
        /// Only this provider, no fallback.
        #[schema(min_length = 1)]
        provider: Option<String>,
    }

    /// A stretch of a transcript.
    #[derive(ToSchema)]
    pub(crate) struct SttSegment {
        /// Seconds from the start.
        start: f64,
        end: f64,
        text: String,
    }

    /// A transcript.
    #[derive(ToSchema)]
    pub(crate) struct SttAnswer {
        text: String,
        segments: Vec<SttSegment>,
        /// BCP 47.
        language: String,
        /// The audio's length (billed rounded up to whole seconds).
        audio_seconds: f64,
        provider: String,
    }

    /// A voice.
    #[derive(ToSchema)]
    pub(crate) struct Voice {
        /// The id to send as `voice`.
        id: String,
        name: String,
        /// BCP 47.
        language: String,
    }

    /// One provider's voices.
    #[derive(ToSchema)]
    pub(crate) struct ProviderVoices {
        provider: String,
        voices: Vec<Voice>,
    }

    /// `GET /voice/voices`.
    #[derive(ToSchema)]
    pub(crate) struct VoiceList {
        providers: Vec<ProviderVoices>,
    }

    /// A multipart upload: one file part.
    #[derive(ToSchema)]
    pub(crate) struct UploadForm {
        #[schema(value_type = String, format = Binary)]
        file: Vec<u8>,
    }

    /// A raw upload body.
    #[derive(ToSchema)]
    #[schema(value_type = String, format = Binary)]
    pub(crate) struct Binary(Vec<u8>);

    /// The process is up and its database reachable.
    #[derive(ToSchema)]
    pub(crate) struct Health {
        /// Always `ok`.
        status: String,
        version: String,
        /// `sqlite` or `postgres`.
        backend: String,
        uptime_s: u64,
    }
}
