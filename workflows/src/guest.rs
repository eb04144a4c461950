//! `POST /auth/guest`, written once: the optional body (`{"email"}`), the rate-limit bucket a
//! request draws from, the new tenant with its starting grant in one transaction (so its first
//! billable request, however soon, sees the grant), and the answer. The host checks the bucket
//! and signs the token with its key ring.

use cognomega_core::api::{json_body, Refusal};
use cognomega_core::auth::{valid_email, Claims};
use cognomega_core::billing::BillingConfig;

use crate::ports::WriteHost;
use crate::settle::{create_guest, Settled};

/// The email a guest asks with, if any: an empty body is none; a body that is not
/// `{"email": "name@example.com"}` is refused.
pub fn request(body: &[u8]) -> Result<Option<String>, Refusal> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct GuestRequest {
        email: Option<String>,
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let email = json_body::<GuestRequest>(body)?.email;
    if email.as_deref().is_some_and(|e| !valid_email(e)) {
        return Err(Refusal::new(
            400,
            "invalid_email",
            "email must look like name@example.com (≤ 254 characters)",
        ));
    }
    Ok(email)
}

/// The rate-limit bucket of a guest request: per email (lower-cased: one mailbox, one bucket),
/// else per client address.
#[must_use]
pub fn bucket(email: Option<&str>, client: Option<&str>) -> String {
    match email {
        Some(email) => format!("guest:email:{}", email.to_lowercase()),
        None => format!("guest:ip:{}", client.unwrap_or("unknown")),
    }
}

/// A new guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewGuest {
    /// Its tenant.
    pub tenant_id: String,
    /// Its user.
    pub user_id: String,
    /// The grant's settlement (the balance a cache takes).
    pub settled: Settled,
}

/// Creates a guest tenant and user with the starting grant, in one transaction.
pub async fn create<H: WriteHost + ?Sized>(
    host: &H,
    email: Option<&str>,
    billing: &BillingConfig,
) -> Result<NewGuest, Refusal> {
    let (tenant_id, user_id) = (host.fresh_id(), host.fresh_id());
    let failed =
        |e: cognomega_core::sql::SqlError| Refusal::internal(format!("creating the guest: {e}"));
    let mut tx = host.begin().await.map_err(failed)?;
    let (grant, floor) = (billing.guest_grant, billing.guest_floor);
    let now = host.now_ms();
    let settled = create_guest(&mut *tx, &tenant_id, &user_id, email, grant, floor, now)
        .await
        .map_err(failed)?;
    tx.commit().await.map_err(failed)?;
    Ok(NewGuest {
        tenant_id,
        user_id,
        settled,
    })
}

/// The answer: the token and who it names.
#[must_use]
pub fn answer(token: &str, claims: &Claims) -> serde_json::Value {
    serde_json::json!({
        "token": token,
        "token_type": "Bearer",
        "expires_in": claims.exp - claims.iat,
        "tenant_id": claims.tenant,
        "user_id": claims.sub,
    })
}
