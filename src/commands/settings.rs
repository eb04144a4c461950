//! Flags shared by `serve` and `worker`: tokens, admin key, billing, CORS.

use std::time::Duration;

use anyhow::bail;
use cognomega_core::billing::BillingConfig;
use cognomega_producers::{ApiConfig, CorsOrigins, UploadConfig};

use super::Ctx;

#[derive(Debug, Clone, clap::Args)]
pub struct ApiArgs {
    /// The X-Admin-Key for admin routes. Default: read from (or generated into) DATA_DIR/admin-key.
    #[arg(long, env = "COGNOMEGA_ADMIN_KEY", hide_env_values = true)]
    admin_key: Option<String>,

    /// Guest token lifetime in seconds.
    #[arg(long, env = "COGNOMEGA_TOKEN_TTL", default_value_t = 86_400)]
    token_ttl: u64,

    /// JWT issuer (`iss`).
    #[arg(long, env = "COGNOMEGA_JWT_ISSUER", default_value = "cognomega")]
    jwt_issuer: String,

    /// JWT audience (`aud`).
    #[arg(long, env = "COGNOMEGA_JWT_AUDIENCE", default_value = "cognomega-api")]
    jwt_audience: String,

    /// Credits a new guest starts with.
    #[arg(long, env = "COGNOMEGA_GUEST_GRANT", default_value_t = 1000)]
    guest_grant: i64,

    /// A guest below this balance is flagged and gets 402 for new billable work.
    #[arg(
        long,
        env = "COGNOMEGA_GUEST_FLOOR",
        default_value_t = 0,
        allow_hyphen_values = true
    )]
    guest_floor: i64,

    /// A price, as KIND=CREDITS/UNITS (e.g. tokens_in=1/1000); repeatable. Kinds: tokens_in,
    /// tokens_out, job, storage_bytes, audio_seconds.
    #[arg(long = "price", env = "COGNOMEGA_PRICES", value_delimiter = ',')]
    prices: Vec<String>,

    /// ClamAV daemon for upload scanning: tcp://HOST:PORT or unix:/path. Without it uploads are
    /// recorded as `skipped` (unless --require-scan).
    #[arg(long, env = "COGNOMEGA_CLAMD")]
    clamd: Option<String>,

    /// Refuse uploads (503) when no --clamd is configured.
    #[arg(long, env = "COGNOMEGA_REQUIRE_SCAN")]
    require_scan: bool,

    /// Largest upload in bytes.
    #[arg(long, env = "COGNOMEGA_MAX_UPLOAD_BYTES", default_value_t = 100 << 20)]
    max_upload_bytes: u64,

    /// A tier's own upload limit, as TIER=BYTES (e.g. guest=10485760); repeatable. Tiers:
    /// guest, member, pro.
    #[arg(
        long = "tier-max-upload-bytes",
        env = "COGNOMEGA_TIER_MAX_UPLOAD_BYTES",
        value_delimiter = ','
    )]
    tier_max_upload_bytes: Vec<String>,

    /// Bytes each tenant may keep in uploads.
    #[arg(long, env = "COGNOMEGA_UPLOAD_QUOTA_BYTES", default_value_t = 1 << 30)]
    upload_quota_bytes: u64,

    /// Accepted upload content types, comma-separated (checked against the bytes' magic).
    #[arg(
        long,
        env = "COGNOMEGA_UPLOAD_TYPES",
        value_delimiter = ',',
        default_value = "image/png,image/jpeg,image/webp,image/gif,application/pdf,text/plain,text/csv,application/json"
    )]
    upload_types: Vec<String>,

    /// Lifetime of signed download links, in seconds.
    #[arg(long, env = "COGNOMEGA_LINK_TTL", default_value_t = 900)]
    link_ttl: u64,

    /// Browser origins allowed by CORS, comma-separated; `*` allows any.
    #[arg(
        long,
        env = "COGNOMEGA_CORS_ORIGINS",
        value_delimiter = ',',
        default_value = "*"
    )]
    cors_origins: Vec<String>,

    /// Seconds a client gets to send a request's headers before the connection is closed.
    #[arg(long, env = "COGNOMEGA_HEADER_TIMEOUT", default_value_t = 15)]
    header_timeout: u64,

    /// Longest pause, in seconds, between two chunks of a request body before the request is
    /// answered 408.
    #[arg(long, env = "COGNOMEGA_BODY_IDLE_TIMEOUT", default_value_t = 30)]
    body_idle_timeout: u64,
    /// Order in which model providers are tried for POST /api/si/ask, comma-separated
    /// (cfai, groq, openai; default cheap-first). A provider is enabled when its key is set:
    /// CF_ACCOUNT_ID + CF_API_TOKEN, GROQ_API_KEY, OPENAI_API_KEY (base URLs: CF_AI_BASE_URL,
    /// GROQ_BASE_URL, OPENAI_BASE_URL).
    #[arg(long, env = "COGNOMEGA_PROVIDER_ORDER")]
    provider_order: Option<String>,

    /// Seconds a model provider gets to answer (or between two streamed chunks) before the
    /// next one is tried.
    #[arg(long, env = "COGNOMEGA_PROVIDER_TIMEOUT")]
    provider_timeout: Option<u64>,
    /// Order in which voice providers are tried for /voice/*, comma-separated (cartesia,
    /// cfai, local; default cartesia,cfai,local). Cartesia is enabled when CARTESIA_API_KEY is
    /// set (CARTESIA_BASE_URL, CARTESIA_VERSION), Workers AI when CF_ACCOUNT_ID and
    /// CF_API_TOKEN are; local (espeak-ng, sox, PocketSphinx) needs no account.
    #[arg(long, env = "COGNOMEGA_VOICE_PROVIDER_ORDER")]
    voice_provider_order: Option<String>,
    /// POST /voice/tts texts longer than this many characters are rendered by a tts_render
    /// job and answered 202 (default: `[voice] tts_inline_chars` of the config file, else 500).
    #[arg(long, env = "COGNOMEGA_VOICE_TTS_INLINE_CHARS")]
    voice_tts_inline_chars: Option<usize>,
    /// Rate limits on or off (default: `[rate_limits] enabled` of the config file, else on).
    #[arg(long, env = "COGNOMEGA_RATE_LIMITS", value_enum)]
    rate_limits: Option<Switch>,
}

/// `on` or `off`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Switch {
    On,
    Off,
}

impl ApiArgs {
    /// The clamd client, when configured.
    pub fn clamd(&self) -> anyhow::Result<Option<cognomega_stores::clamd::Clamd>> {
        self.clamd
            .as_deref()
            .map(|raw| {
                cognomega_stores::clamd::ClamdAddr::parse(raw)
                    .map(cognomega_stores::clamd::Clamd::new)
                    .map_err(|e| anyhow::anyhow!("--clamd {raw:?}: {e}; use tcp://127.0.0.1:3310 or unix:/path/clamd.sock"))
            })
            .transpose()
    }

    pub fn billing(&self) -> anyhow::Result<BillingConfig> {
        let mut billing = BillingConfig {
            guest_grant: self.guest_grant,
            guest_floor: self.guest_floor,
            ..BillingConfig::default()
        };
        billing
            .set_prices(self.prices.iter().map(String::as_str))
            .map_err(|e| anyhow::anyhow!("--price: {e}"))?;
        if self.guest_grant < 0 {
            bail!("--guest-grant must be ≥ 0");
        }
        Ok(billing)
    }

    fn tier_limits(&self) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
        cognomega_core::settings::tier_limits(self.tier_max_upload_bytes.iter().map(String::as_str))
            .map_err(|e| anyhow::anyhow!("--tier-max-upload-bytes {e}"))
    }

    /// Model providers from the environment, layered over the config file's `[ai]` table.
    fn providers(
        &self,
        ctx: &Ctx,
    ) -> anyhow::Result<(
        cognomega_providers::ProvidersConfig,
        cognomega_core::ai::AskPolicy,
    )> {
        let file = ctx.file_config()?.file;
        let order = file.provider_order(self.provider_order.as_deref());
        let mut providers = cognomega_providers::ProvidersConfig::from_vars(
            |k| std::env::var(k).ok(),
            order.as_deref(),
        )
        .map_err(|e| anyhow::anyhow!("model providers: {e}"))?;
        if let Some(timeout) = (file.provider_timeout(self.provider_timeout))
            .map_err(|e| anyhow::anyhow!("--provider-timeout: {e}"))?
        {
            providers.timeout = timeout;
        }
        providers.models = file.ai.models;
        Ok((providers, file.ai.policy))
    }

    /// The voice providers: the order (flag, then the config file's `[voice]`), and each
    /// provider's settings from the environment; an unknown or repeated name is an error.
    pub fn voice_providers(
        &self,
        ctx: &Ctx,
    ) -> anyhow::Result<cognomega_providers::voice::VoiceConfig> {
        let file = ctx.file_config()?;
        let config = cognomega_providers::voice::VoiceConfig::from_vars(
            file.file.voice_order(self.voice_provider_order.as_deref()),
            |k| std::env::var(k).ok(),
        );
        if let Err(e) = cognomega_providers::voice::Voices::from_config(&config) {
            bail!("--voice-provider-order: {e}");
        }
        Ok(config)
    }

    pub fn api_config(&self, ctx: &Ctx) -> anyhow::Result<ApiConfig> {
        if self.token_ttl == 0 {
            bail!("--token-ttl must be at least 1 second");
        }
        if self.header_timeout == 0 || self.body_idle_timeout == 0 {
            bail!("--header-timeout and --body-idle-timeout must be at least 1 second");
        }
        let admin_key =
            cognomega::config::resolve_admin_key(&ctx.data_dir, self.admin_key.as_deref())?;
        let cors = if self.cors_origins.iter().any(|o| o.trim() == "*") {
            CorsOrigins::Any
        } else {
            CorsOrigins::List(
                self.cors_origins
                    .iter()
                    .map(|o| o.trim().to_owned())
                    .filter(|o| !o.is_empty())
                    .collect(),
            )
        };
        let (providers, ask) = self.providers(ctx)?;
        let file = ctx.file_config()?;
        let rate_limits = file.rate_limits(self.rate_limits.map(|s| s == Switch::On))?;
        let voice_providers = self.voice_providers(ctx)?;
        Ok(ApiConfig {
            issuer: self.jwt_issuer.clone(),
            audience: self.jwt_audience.clone(),
            token_ttl: Duration::from_secs(self.token_ttl),
            admin_key,
            billing: self.billing()?,
            cors,
            uploads: UploadConfig {
                max_bytes: self.max_upload_bytes,
                max_bytes_by_tier: self.tier_limits()?,
                quota_bytes: self.upload_quota_bytes,
                allowed_types: cognomega_core::settings::upload_types(
                    self.upload_types.iter().map(String::as_str),
                ),
                link_ttl: Duration::from_secs(self.link_ttl.max(1)),
                scanning: self.clamd.is_some(),
                require_scan: self.require_scan,
            },
            timeouts: cognomega_producers::gateway::Timeouts {
                header_read: Duration::from_secs(self.header_timeout),
                body_idle: Duration::from_secs(self.body_idle_timeout),
            },
            providers,
            ask,
            rate_limits,
            cost_guards: file.cost_guards(),
            voice: file.file.voice.policy,
            voice_session_stale: Duration::from_secs(
                file.file.voice.session_stale_secs.unwrap_or(60).max(1),
            ),
            voice_tts_inline_chars: self
                .voice_tts_inline_chars
                .or(file.file.voice.tts_inline_chars)
                .unwrap_or(cognomega_core::voice::TTS_INLINE_CHARS),
            voice_providers,
        })
    }
}
