//! `POST /auth/guest`'s shared workflow (`cognomega_workflows::guest`), its writes run natively
//! on SQLite and PostgreSQL (as `sqlite::name` and `postgres::name`): the body is read or
//! refused with the native codes, the bucket is per email or address, and a new guest's tenant
//! and starting grant commit together (its balance and ledger hold the grant at once; a grant
//! below the floor flags it).

use std::sync::atomic::{AtomicU32, Ordering};

use cognomega_core::auth::{Claims, Tier};
use cognomega_core::billing::BillingConfig;
use cognomega_core::objects::{Fetched, NewObject, ObjectStore};
use cognomega_core::sql::{Executor, Outbound, SqlError, Transaction};
use cognomega_stores::billing::{ledger_balance, stored_balance, tenant_status};
use cognomega_stores::Database;
use cognomega_testkit::{Backend, TestDb};
use cognomega_workflows::guest;
use cognomega_workflows::ports::WriteHost;

/// Object storage the guest workflow never touches.
struct NoObjects;

#[async_trait::async_trait]
impl ObjectStore for NoObjects {
    async fn get(&self, key: &str) -> Result<Fetched, String> {
        Err(format!("no object store here ({key})"))
    }
    async fn put(&self, object: NewObject<'_>) -> Result<(), String> {
        Err(format!("no object store here ({})", object.key))
    }
    async fn delete(&self, key: &str) -> Result<(), String> {
        Err(format!("no object store here ({key})"))
    }
}

/// The native database as the workflow's host, with predictable ids.
struct Host<'a> {
    db: &'a Database,
    next: AtomicU32,
}

#[async_trait::async_trait]
impl WriteHost for Host<'_> {
    fn objects(&self) -> &dyn ObjectStore {
        &NoObjects
    }
    fn db(&self) -> Box<dyn Executor + '_> {
        Box::new(self.db.clone())
    }
    async fn begin(&self) -> Result<Box<dyn Transaction + '_>, SqlError> {
        self.db.transaction().await
    }
    async fn send(&self, messages: Vec<Outbound<'_>>) -> Result<(), String> {
        Err(format!(
            "the guest workflow sends nothing ({} sent)",
            messages.len()
        ))
    }
    async fn balance(&self, tenant: &str) -> Result<i64, String> {
        Err(format!("the guest workflow reads no balance ({tenant})"))
    }
    fn now_ms(&self) -> i64 {
        1_767_312_000_000
    }
    fn fresh_id(&self) -> String {
        format!("id-{}", self.next.fetch_add(1, Ordering::Relaxed))
    }
}

fn code(body: &[u8]) -> Option<&'static str> {
    guest::request(body).err().map(|r| r.code)
}

#[test]
fn bodies_are_read_or_refused_with_the_native_codes() {
    assert_eq!(guest::request(b"").ok(), Some(None));
    assert_eq!(guest::request(b" \n ").ok(), Some(None));
    assert_eq!(guest::request(b"{}").ok(), Some(None));
    let email = guest::request(br#"{"email":"Ada@Example.com"}"#)
        .ok()
        .flatten();
    assert_eq!(email.as_deref(), Some("Ada@Example.com"));
    assert_eq!(code(br#"{"email":"nope"}"#), Some("invalid_email"));
    assert_eq!(code(b"{"), Some("invalid_json"));
    assert_eq!(code(br#"{"mail":"a@b.co"}"#), Some("invalid_body"));
    assert_eq!(code(br#"{"email":7}"#), Some("invalid_body"));
    // One mailbox, one bucket; without an email, one per address.
    assert_eq!(
        guest::bucket(Some("Ada@Example.com"), Some("10.0.0.1")),
        guest::bucket(Some("ada@example.com"), Some("10.0.0.2"))
    );
    assert_eq!(guest::bucket(None, Some("10.0.0.1")), "guest:ip:10.0.0.1");
    assert_eq!(guest::bucket(None, None), "guest:ip:unknown");
}

async fn a_new_guest_holds_its_grant_at_once(backend: Backend) -> anyhow::Result<()> {
    let tdb = TestDb::new(backend).await?;
    let db = tdb.db();
    let host = Host {
        db,
        next: AtomicU32::new(0),
    };
    let billing = BillingConfig {
        guest_grant: 1000,
        guest_floor: 0,
        ..BillingConfig::default()
    };
    let new = guest::create(&host, Some("ada@example.com"), &billing).await?;
    assert_eq!(
        (new.tenant_id.as_str(), new.user_id.as_str()),
        ("id-0", "id-1")
    );
    // Committed with the tenant: the balance, the ledger and what a cache takes.
    assert_eq!(stored_balance(db, "id-0").await?, Some(1000));
    assert_eq!(ledger_balance(db, "id-0").await?, 1000);
    assert_eq!(new.settled.balances.get("id-0").map(|b| b.0), Some(1000));
    assert_eq!(tenant_status(db, "id-0").await?, Some(false));

    // A grant below the floor flags the guest from the start; no grant writes no ledger entry.
    let stingy = BillingConfig {
        guest_grant: 0,
        guest_floor: 10,
        ..BillingConfig::default()
    };
    let poor = guest::create(&host, None, &stingy).await?;
    assert_eq!(ledger_balance(db, &poor.tenant_id).await?, 0);
    assert!(poor.settled.balances.is_empty());

    let claims = Claims {
        iss: "cognomega".into(),
        aud: "cognomega-api".into(),
        sub: new.user_id.clone(),
        tenant: new.tenant_id.clone(),
        tier: Tier::Guest,
        iat: 100,
        nbf: None,
        exp: 160,
        jti: "j".into(),
    };
    let answer = guest::answer("t0k3n", &claims);
    assert_eq!(
        answer,
        serde_json::json!({
            "token": "t0k3n",
            "token_type": "Bearer",
            "expires_in": 60,
            "tenant_id": "id-0",
            "user_id": "id-1",
        })
    );
    Ok(())
}

cognomega_testkit::both_backends!(a_new_guest_holds_its_grant_at_once);
