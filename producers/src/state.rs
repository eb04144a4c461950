//! What every handler can reach.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use cognomega_core::billing::BillingConfig;
use cognomega_core::limits::{CostGuards, RateLimiter, RateLimits};
use cognomega_core::queue::ConsumerMetrics;
use cognomega_core::queue::QueueDriver;
use cognomega_pipelines::registry::Registry;
use cognomega_stores::kv::BalanceCache;
use cognomega_stores::objects::Objects;
use cognomega_stores::Database;

use crate::auth::AuthService;

/// A secret string whose `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    #[must_use]
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; only for comparing or handing to a client library.
    #[must_use]
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Which browser origins may call the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CorsOrigins {
    /// Any origin (the embedded default: tokens travel in headers, never cookies).
    Any,
    /// Exactly these origins.
    List(Vec<String>),
}

/// The API's configuration.
#[derive(Debug, Clone)]
pub struct ApiConfig {
    /// JWT `iss`.
    pub issuer: String,
    /// JWT `aud`.
    pub audience: String,
    /// Guest token lifetime.
    pub token_ttl: Duration,
    /// The `X-Admin-Key` value.
    pub admin_key: Secret,
    /// Prices, grant and floor.
    pub billing: BillingConfig,
    /// CORS allow-list.
    pub cors: CorsOrigins,
    /// Direct uploads.
    pub uploads: UploadConfig,
    /// Slow-client limits.
    pub timeouts: crate::gateway::Timeouts,
    /// Model providers for `POST /api/si/ask` (none by default: the route answers 503).
    pub providers: cognomega_providers::ProvidersConfig,
    /// Per-tier cost levers of `POST /api/si/ask`.
    pub ask: cognomega_core::ai::AskPolicy,
    /// Token buckets per tier and route class (and whether they apply at all).
    pub rate_limits: RateLimits,
    /// Caps on billable quantity per tier and fixed UTC window.
    pub cost_guards: CostGuards,
    /// Voice providers in order, and their settings.
    pub voice_providers: cognomega_providers::voice::VoiceConfig,
    /// Per-tier voice caps.
    pub voice: cognomega_core::voice::VoicePolicy,
    /// A voice session whose heart stopped for this long is settled by the sweep.
    pub voice_session_stale: Duration,
    /// `POST /voice/tts` texts longer than this many characters are rendered by a
    /// `tts_render` job (202).
    pub voice_tts_inline_chars: usize,
}

pub use cognomega_core::settings::UploadConfig;

impl ApiConfig {
    /// Defaults with the given admin key.
    #[must_use]
    pub fn with_admin_key(admin_key: Secret) -> Self {
        Self {
            issuer: "cognomega".into(),
            audience: "cognomega-api".into(),
            token_ttl: Duration::from_secs(24 * 3600),
            admin_key,
            billing: BillingConfig::default(),
            cors: CorsOrigins::Any,
            uploads: UploadConfig::default(),
            timeouts: crate::gateway::Timeouts::default(),
            providers: cognomega_providers::ProvidersConfig::default(),
            ask: cognomega_core::ai::AskPolicy::default(),
            rate_limits: RateLimits::default(),
            cost_guards: CostGuards::default(),
            voice_providers: cognomega_providers::voice::VoiceConfig::default(),
            voice: cognomega_core::voice::VoicePolicy::default(),
            voice_session_stale: Duration::from_secs(60),
            voice_tts_inline_chars: cognomega_core::voice::TTS_INLINE_CHARS,
        }
    }
}

/// Shared application state.
#[derive(Debug, Clone)]
pub struct AppState {
    /// The relational store.
    pub db: Database,
    /// The queue driver over it.
    pub queues: Arc<dyn QueueDriver>,
    /// Counters of the consumers running in this process, if any.
    pub consumer_metrics: Option<Arc<ConsumerMetrics>>,
    /// Request counters of this process.
    pub http_metrics: Arc<crate::http_metrics::HttpMetrics>,
    /// When the process started.
    pub started: Instant,
    /// Tokens.
    pub auth: Arc<AuthService>,
    /// Configuration.
    pub config: Arc<ApiConfig>,
    /// Cached balances.
    pub balances: BalanceCache,
    /// Object storage (inputs, artifacts, uploads).
    pub objects: Objects,
    /// Job types.
    pub job_types: Arc<Registry>,
    /// HMAC secret of signed download links.
    pub url_secret: Arc<Vec<u8>>,
    /// Model providers, tried in order with fallback.
    pub ai: Arc<cognomega_providers::Orchestrator>,
    /// Rate-limit buckets: in-process over SQLite, shared in the database over PostgreSQL.
    pub limiter: Arc<dyn RateLimiter>,
    /// Voice providers, tried in order with fallback.
    pub voice: Arc<cognomega_providers::voice::Voices>,
}

impl AppState {
    /// State over a database: loads (or creates) the signing keys. The job types are the
    /// pipelines' and `tts_render` ([`crate::job_types`]).
    pub async fn new(
        db: Database,
        config: ApiConfig,
        balances: BalanceCache,
        objects: Objects,
    ) -> Result<Self, cognomega_stores::keys::KeysError> {
        let auth = AuthService::load(
            db.clone(),
            &config.issuer,
            &config.audience,
            config.token_ttl,
        )
        .await?;
        let queues = db.queue();
        let url_secret = Arc::new(cognomega_stores::keys::url_signing_secret(&db).await?);
        let ai = match cognomega_providers::Orchestrator::from_config(&config.providers) {
            Ok(ai) => ai,
            Err(e) => {
                tracing::error!(error = %e, "model providers disabled");
                cognomega_providers::Orchestrator::empty()
            }
        };
        let limiter = cognomega_stores::limits::limiter(&db);
        let voice = match cognomega_providers::voice::Voices::from_config(&config.voice_providers) {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, "voice providers disabled");
                cognomega_providers::voice::Voices::default()
            }
        };
        let job_types = Arc::new(crate::routes::voice::job_types(&voice));
        Ok(Self {
            db,
            queues,
            consumer_metrics: None,
            http_metrics: Arc::default(),
            started: Instant::now(),
            auth: Arc::new(auth),
            config: Arc::new(config),
            balances,
            objects,
            job_types,
            url_secret,
            ai: Arc::new(ai),
            limiter,
            voice: Arc::new(voice),
        })
    }
}

impl AppState {
    /// The tenant's cached balance (the ledger's settled balance when nothing is cached): the
    /// balance port of the workflows this server hosts.
    pub async fn cached_balance(&self, tenant: &str) -> Result<i64, String> {
        self.balances
            .get(tenant)
            .await
            .map(|b| b.balance)
            .map_err(|e| e.to_string())
    }

    /// Sends one workflow message through the queue driver: the queue-send port of the
    /// workflows this server hosts.
    pub async fn send_outbound(
        &self,
        message: cognomega_core::sql::Outbound<'_>,
    ) -> Result<(), String> {
        let queue =
            cognomega_core::queue::QueueName::parse(message.queue).map_err(|e| e.to_string())?;
        self.queues
            .send(
                &queue,
                cognomega_core::queue::OutgoingMessage::outbound(message),
            )
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }
}
