//! Bearer-token and admin-key authentication.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::FromRequestParts;
use axum::response::{IntoResponse, Response};
use cognomega_core::auth::{
    constant_time_eq, AuthError, Claims, ClaimsBuilder, Jwks, KeyRing, Tier, Validation,
};
use cognomega_core::time::UnixMillis;
use cognomega_stores::{keys, Database};
use http::request::Parts;
use http::{header, HeaderValue, StatusCode};
use sha2::{Digest, Sha256};

use crate::{ApiError, AppState};

/// How often an unknown `kid` may trigger a reload of the key ring from the store.
const RELOAD_EVERY: Duration = Duration::from_secs(2);

/// Issues and verifies this deployment's tokens.
#[derive(Debug)]
pub struct AuthService {
    db: Database,
    ring: RwLock<Arc<KeyRing>>,
    jwks: RwLock<Arc<Jwks>>,
    validation: Validation,
    builder: ClaimsBuilder,
    last_reload: Mutex<Instant>,
    /// Tokens already verified, by SHA-256: an RS256 check costs ~80 µs, half of a cached
    /// `GET /credits`. Only successes are kept; expiry is re-checked on every hit, and the
    /// cache is emptied whenever the key ring is reloaded (a key may have aged out).
    verified: Mutex<HashMap<[u8; 32], Claims>>,
}

/// Most cached verifications; the cache is simply emptied when full.
const VERIFIED_CAPACITY: usize = 50_000;

impl AuthService {
    /// Loads the key ring (creating it on first start).
    pub async fn load(
        db: Database,
        issuer: &str,
        audience: &str,
        ttl: Duration,
    ) -> Result<Self, keys::KeysError> {
        let ring = keys::load_or_create(&db).await?;
        let jwks = ring.jwks();
        Ok(Self {
            db,
            ring: RwLock::new(Arc::new(ring)),
            jwks: RwLock::new(Arc::new(jwks)),
            validation: Validation::new(issuer, audience),
            builder: ClaimsBuilder::new(issuer, audience, ttl),
            last_reload: Mutex::new(Instant::now()),
            verified: Mutex::new(HashMap::new()),
        })
    }

    /// The public keys, current and previous.
    #[must_use]
    pub fn jwks(&self) -> Arc<Jwks> {
        self.jwks
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Token lifetime in seconds.
    #[must_use]
    pub fn ttl_secs(&self, claims: &Claims) -> i64 {
        claims.exp - claims.iat
    }

    /// Signs a token for a user of a tenant.
    pub fn issue(
        &self,
        user_id: &str,
        tenant_id: &str,
        tier: Tier,
    ) -> Result<(String, Claims), ApiError> {
        let jti = uuid::Uuid::new_v4().to_string();
        let claims = self.builder.build(user_id, tenant_id, tier, jti, now());
        let ring = self
            .ring
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let token = ring.issue(&claims).map_err(ApiError::internal)?;
        Ok((token, claims))
    }

    /// Verifies a token. An unknown `kid` reloads the ring once (another process may have
    /// rotated it) before giving up.
    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = now();
        if let Some(claims) = self.cached(&digest, now) {
            return Ok(claims);
        }
        let verified =
            match cognomega_core::auth::verify(token, &self.jwks(), &self.validation, now) {
                Err(AuthError::UnknownKid { .. }) if self.may_reload() => {
                    self.reload().await;
                    cognomega_core::auth::verify(token, &self.jwks(), &self.validation, now)
                }
                other => other,
            };
        if let Ok(claims) = &verified {
            let mut cache = self
                .verified
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if cache.len() >= VERIFIED_CAPACITY {
                cache.clear();
            }
            cache.insert(digest, claims.clone());
        }
        verified
    }

    /// A cached verification still within its validity window.
    fn cached(&self, digest: &[u8; 32], now: UnixMillis) -> Option<Claims> {
        let cache = self
            .verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let claims = cache.get(digest)?;
        let secs = now.0.div_euclid(1000);
        let leeway = i64::try_from(self.validation.leeway.as_secs()).unwrap_or(0);
        let live = claims.exp.saturating_add(leeway) > secs
            && claims
                .nbf
                .is_none_or(|nbf| nbf.saturating_sub(leeway) <= secs);
        live.then(|| claims.clone())
    }

    fn may_reload(&self) -> bool {
        let mut last = self
            .last_reload
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.elapsed() < RELOAD_EVERY {
            return false;
        }
        *last = Instant::now();
        true
    }

    /// Re-reads the key ring from the store.
    pub async fn reload(&self) {
        self.verified
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        match keys::load(&self.db).await {
            Ok(Some(ring)) => {
                *self
                    .jwks
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(ring.jwks());
                *self
                    .ring
                    .write()
                    .unwrap_or_else(std::sync::PoisonError::into_inner) = Arc::new(ring);
            }
            Ok(None) => tracing::warn!("the signing key ring disappeared from the store"),
            Err(e) => tracing::warn!(error = %e, "cannot reload the signing key ring"),
        }
    }
}

fn now() -> UnixMillis {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    UnixMillis(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// The bearer token of a request (`cognomega_core::auth::bearer_token`: the `Authorization`
/// header, or a browser WebSocket's `bearer.<token>` subprotocol), if it has one.
#[must_use]
pub fn bearer_token(headers: &http::HeaderMap) -> Option<&str> {
    let authorization = headers
        .get(header::AUTHORIZATION)
        .map(|v| v.to_str().unwrap_or_default());
    let protocols = headers
        .get_all(header::SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok());
    cognomega_core::auth::bearer_token(authorization, protocols)
}

pub use cognomega_core::auth::WEBSOCKET_PROTOCOL;

/// A request authenticated with a valid bearer token.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Claims);

/// A 401 that also tells the client how to authenticate.
fn unauthorized(code: &'static str, message: impl Into<String>) -> Response {
    let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, code, message).into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        // Verified already by the rate-limit layer.
        if let Some(done) = parts.extensions.remove::<Self>() {
            tracing::Span::current().record("tenant", done.0.tenant.as_str());
            return Ok(done);
        }
        let token = bearer_token(&parts.headers).ok_or_else(|| {
            let present = parts.headers.contains_key(header::AUTHORIZATION);
            unauthorized(
                "missing_token",
                cognomega_core::auth::missing_token(present),
            )
        })?;
        match state.auth.verify(token).await {
            Ok(claims) => {
                tracing::Span::current().record("tenant", claims.tenant.as_str());
                Ok(Self(claims))
            }
            Err(e) => Err(unauthorized(
                e.code(),
                format!("{e}; get a new token from POST /auth/guest"),
            )),
        }
    }
}

/// A request carrying the right `X-Admin-Key`.
#[derive(Debug, Clone, Copy)]
pub struct Admin;

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let given = parts
            .headers
            .get("x-admin-key")
            .map(HeaderValue::as_bytes)
            .unwrap_or_default();
        // Compared in constant time whatever was sent, so timing reveals nothing of the key.
        if !given.is_empty() && constant_time_eq(given, state.config.admin_key.expose().as_bytes())
        {
            Ok(Self)
        } else {
            Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "invalid_admin_key",
                "this route needs the X-Admin-Key header with the deployment's admin key",
            ))
        }
    }
}
