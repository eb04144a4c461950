//! Tokens on the edge: the auth service issues guest tokens (`POST /auth/guest`) and serves the
//! JWKS; the gateway verifies bearer tokens. Keys are the deployment's signing key ring, stored
//! where the native server keeps it (PostgreSQL `kv`, namespace `KEYS`, key `ring`, PKCS#8 PEM),
//! so tokens issued by either shape verify on both. The public JWKS is cached in Workers KV.

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Duration;

use cognomega_core::auth::{
    Claims, ClaimsBuilder, Jwks, KeyId, KeyRing, SigningKey, Tier, Validation,
};
use cognomega_core::limits::RouteClass;
use cognomega_core::time::UnixMillis;
use cognomega_workflows::guest;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use worker::{Env, Method, Request, Response};

use crate::host::Writes;
use crate::http::{self, ApiError, ApiResult, Caller};
use crate::sql::Pg;

/// How long an isolate trusts its copy of the key ring before reading it again.
const RING_TTL_MS: f64 = 60_000.0;
/// The JWKS in Workers KV lives this long (seconds).
const JWKS_KV_TTL: u64 = 300;
const VERIFIED_CAPACITY: usize = 10_000;

thread_local! {
    static RING: RefCell<Option<(f64, std::rc::Rc<KeyRing>)>> = const { RefCell::new(None) };
    static JWKS: RefCell<Option<(f64, std::rc::Rc<Jwks>)>> = const { RefCell::new(None) };
    static VERIFIED: RefCell<HashMap<[u8; 32], Claims>> = RefCell::new(HashMap::new());
}

fn now_ms() -> f64 {
    worker::Date::now().as_millis() as f64
}

/// The key ring: this isolate's copy, else PostgreSQL; created there on first use, exactly
/// once across every process and isolate (`ON CONFLICT DO NOTHING`, then read back).
async fn ring(env: &Env) -> Result<std::rc::Rc<KeyRing>, ApiError> {
    if let Some(r) = RING.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|(at, _)| now_ms() - at < RING_TTL_MS)
            .map(|(_, r)| r.clone())
    }) {
        return Ok(r);
    }
    let db = crate::db::connect(env).await?;
    let new_key = || {
        let kid = KeyId::parse(&format!("k-{}", uuid::Uuid::now_v7().simple()))
            .map_err(|e| e.to_string())?;
        SigningKey::generate(kid).map_err(|e| e.to_string())
    };
    let now = worker::Date::now().as_millis() as i64;
    let (ring, _) = cognomega_core::kv::load_or_create_ring(&mut Pg(&db), now, new_key)
        .await
        .map_err(ApiError::internal)?;
    let ring = std::rc::Rc::new(ring);
    RING.with(|c| *c.borrow_mut() = Some((now_ms(), ring.clone())));
    Ok(ring)
}

/// The public keys: this isolate's copy, else Workers KV, else built from the ring (and put
/// back in KV with a TTL).
async fn jwks(env: &Env) -> Result<std::rc::Rc<Jwks>, ApiError> {
    if let Some(j) = JWKS.with(|c| {
        c.borrow()
            .as_ref()
            .filter(|(at, _)| now_ms() - at < RING_TTL_MS)
            .map(|(_, j)| j.clone())
    }) {
        return Ok(j);
    }
    let kv = env.kv("KV")?;
    #[derive(Deserialize)]
    struct Wire {
        keys: Vec<cognomega_core::auth::Jwk>,
    }
    let cached: Option<Wire> = kv
        .get("jwks")
        .json()
        .await
        .map_err(|e| ApiError::internal(format!("KV: {e}")))?;
    let cached = cached.and_then(|w| Jwks::new(w.keys).ok());
    let jwks = match cached {
        Some(j) => j,
        None => {
            let j = ring(env).await?.jwks();
            kv.put("jwks", &j)
                .map_err(|e| ApiError::internal(format!("KV: {e}")))?
                .expiration_ttl(JWKS_KV_TTL)
                .execute()
                .await
                .map_err(|e| ApiError::internal(format!("KV: {e}")))?;
            j
        }
    };
    let jwks = std::rc::Rc::new(jwks);
    JWKS.with(|c| *c.borrow_mut() = Some((now_ms(), jwks.clone())));
    Ok(jwks)
}

thread_local! {
    static LAST_REFRESH: std::cell::Cell<f64> = const { std::cell::Cell::new(0.0) };
}

/// A token names a `kid` this isolate does not know (the keys were rotated): read the ring from
/// PostgreSQL, not from the caches, and put the new JWKS into KV. At most once per 2 s per
/// isolate, so garbage `kid`s cannot hammer the database.
async fn refresh_keys(env: &Env) -> Result<bool, ApiError> {
    let now = now_ms();
    if now - LAST_REFRESH.with(std::cell::Cell::get) < 2_000.0 {
        return Ok(false);
    }
    LAST_REFRESH.with(|c| c.set(now));
    RING.with(|c| *c.borrow_mut() = None);
    let ring = ring(env).await?;
    let jwks = ring.jwks();
    env.kv("KV")?
        .put("jwks", &jwks)
        .map_err(|e| ApiError::internal(format!("KV: {e}")))?
        .expiration_ttl(JWKS_KV_TTL)
        .execute()
        .await
        .map_err(|e| ApiError::internal(format!("KV: {e}")))?;
    JWKS.with(|c| *c.borrow_mut() = Some((now_ms(), std::rc::Rc::new(jwks))));
    Ok(true)
}

fn validation(env: &Env) -> Validation {
    Validation::new(crate::config::issuer(env), crate::config::audience(env))
}

fn unauthorized(code: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::new(401, code, message)
}

/// The bearer token's claims, verified (signature, `kid`, issuer, audience, expiry). A `kid`
/// this isolate does not know yet (a rotation) re-reads the keys once.
pub async fn authenticate(req: &Request, env: &Env) -> Result<Claims, ApiError> {
    let header = req.headers().get("authorization")?;
    let protocols = req.headers().get("sec-websocket-protocol")?;
    let token = cognomega_core::auth::bearer_token(header.as_deref(), protocols.as_deref())
        .ok_or_else(|| {
            unauthorized(
                "missing_token",
                cognomega_core::auth::missing_token(header.is_some()),
            )
        })?;
    let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
    let now = UnixMillis(worker::Date::now().as_millis() as i64);
    if let Some(claims) = VERIFIED.with(|c| c.borrow().get(&digest).cloned()) {
        if claims.exp > now.0.div_euclid(1000) {
            return Ok(claims);
        }
    }
    let validation = validation(env);
    let verified = match cognomega_core::auth::verify(token, &*jwks(env).await?, &validation, now) {
        Err(cognomega_core::auth::AuthError::UnknownKid { .. }) if refresh_keys(env).await? => {
            cognomega_core::auth::verify(token, &*jwks(env).await?, &validation, now)
        }
        other => other,
    };
    match verified {
        Ok(claims) => {
            VERIFIED.with(|c| {
                let mut c = c.borrow_mut();
                if c.len() >= VERIFIED_CAPACITY {
                    c.clear();
                }
                c.insert(digest, claims.clone());
            });
            Ok(claims)
        }
        Err(e) => Err(unauthorized(
            e.code(),
            format!("{e}; get a new token from POST /auth/guest"),
        )),
    }
}

pub async fn route(req: &mut Request, env: &Env, caller: &Caller) -> ApiResult {
    match (req.method(), req.path().as_str()) {
        (Method::Post, "/auth/guest") => guest(req, env, caller).await,
        (Method::Get | Method::Head, "/.well-known/jwks.json") => {
            let j = jwks(env).await?;
            http::json(200, &*j)
        }
        (_, "/auth/guest" | "/.well-known/jwks.json") => Err(http::no_route(true)),
        _ => Err(http::no_route(false)),
    }
}

async fn guest(req: &mut Request, env: &Env, caller: &Caller) -> ApiResult {
    let body = req.bytes().await?;
    if body.len() > 64 * 1024 {
        return Err(ApiError::new(
            413,
            "body_too_large",
            "the body is larger than 65536 bytes",
        ));
    }
    let email = guest::request(&body)?;
    let client = req.headers().get(http::CLIENT_IP)?;
    let key = guest::bucket(email.as_deref(), client.as_deref());
    let decision = crate::limiter::check(env, Tier::Guest, RouteClass::Guest, &key).await;
    if let Some(d) = decision.as_ref().filter(|d| !d.allowed) {
        let mut resp = crate::limiter::refused(RouteClass::Guest, d).render(&caller.request_id);
        crate::limiter::stamp(&mut resp, d);
        return Ok(resp);
    }
    let billing = crate::config::billing(env).map_err(ApiError::internal)?;
    let ring = ring(env).await?;
    let db = crate::db::connect(env).await?;
    let new = guest::create(&Writes::new(env, &db), email.as_deref(), &billing).await?;
    crate::consumers::cache_balances(env, &db, &new.settled).await;
    let ttl = Duration::from_secs(crate::config::token_ttl_secs(env));
    let builder = ClaimsBuilder::new(
        crate::config::issuer(env),
        crate::config::audience(env),
        ttl,
    );
    let now = UnixMillis(worker::Date::now().as_millis() as i64);
    let jti = uuid::Uuid::new_v4().to_string();
    let claims = builder.build(&new.user_id, &new.tenant_id, Tier::Guest, jti, now);
    let token = ring.issue(&claims).map_err(ApiError::internal)?;
    let mut resp: Response = http::json(200, &guest::answer(&token, &claims))?;
    if let Some(d) = &decision {
        crate::limiter::stamp(&mut resp, d);
    }
    Ok(resp)
}
