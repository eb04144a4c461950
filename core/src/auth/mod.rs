//! Authentication: RS256 JWTs with rotating keys published as a JWKS, and the constant-time
//! comparison behind the admin key.
//!
//! - The issuer holds a [`KeyRing`]: [`KeyRing::issue`] signs [`Claims`] (minted by a
//!   [`ClaimsBuilder`]) with the current [`SigningKey`] and names it in the header `kid`.
//! - [`KeyRing::jwks`] publishes the current and recently retired public keys as a [`Jwks`],
//!   so a rotation never breaks tokens that are still live.
//! - Anyone holding the [`Jwks`] alone (the edge host reads it from KV) can [`verify`]. Only
//!   RS256 with a known `kid` is accepted; each refusal is a distinct [`AuthError`] with a
//!   stable [`AuthError::code`], all of them `401`.
//!
//! Pure Rust (`rsa` 0.10, constant-time) and runtime-free, so it builds for wasm32; "now" is
//! passed in, as everywhere in the core.

mod claims;
mod compare;
mod email;
mod error;
mod jwt;
mod keys;
mod ring;

#[cfg(test)]
mod tests;

pub use claims::{Claims, ClaimsBuilder, Tier, Validation};
pub use compare::constant_time_eq;
pub use email::valid_email;
pub use error::{AuthError, KeyError};
pub use jwt::{verify, MAX_TOKEN_BYTES};
pub use keys::{Jwk, Jwks, KeyId, SigningKey, GENERATED_KEY_BITS, MAX_KEY_BITS, MIN_KEY_BITS};
pub use ring::KeyRing;
/// A buffer that is wiped on drop; [`SigningKey::to_pkcs8_pem`] returns the PEM in one.
pub use zeroize::Zeroizing;

/// The subprotocol a WebSocket route answers with when the client offers it.
pub const WEBSOCKET_PROTOCOL: &str = "cognomega";

/// What a 401 `missing_token` says: how to send the token, or (when an `Authorization` header
/// came but is not a bearer token) what it must look like.
#[must_use]
pub const fn missing_token(authorization_present: bool) -> &'static str {
    if authorization_present {
        "the Authorization header must be: Bearer <token>"
    } else {
        "send Authorization: Bearer <token>; get one from POST /auth/guest"
    }
}

/// The bearer token of a request: its `Authorization: Bearer <token>` header when it has one
/// (and nothing else then), else, for a WebSocket a browser opened (which cannot set
/// `Authorization`), a subprotocol `bearer.<token>` offered beside [`WEBSOCKET_PROTOCOL`]
/// (`new WebSocket(url, ["cognomega", "bearer." + token])`). `websocket_protocols` are the
/// `Sec-WebSocket-Protocol` header values (each a comma-separated list).
pub fn bearer_token<'a>(
    authorization: Option<&'a str>,
    websocket_protocols: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    let Some(value) = authorization else {
        return websocket_protocols
            .into_iter()
            .flat_map(|v| v.split(','))
            .find_map(|p| p.trim().strip_prefix("bearer."))
            .filter(|t| !t.is_empty());
    };
    value
        .strip_prefix("Bearer ")
        .or_else(|| value.strip_prefix("bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}
