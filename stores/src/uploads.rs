//! SQL of direct uploads.

use cognomega_core::sql::Executor as _;

use crate::queue::now_ms;
use crate::{Database, StoreError, Tx};

pub use cognomega_core::files::sql::Upload;

/// A new upload row.
#[derive(Debug, Clone)]
pub struct NewUpload<'a> {
    /// Key (also where the bytes are).
    pub key: &'a str,
    /// Owner.
    pub tenant_id: &'a str,
    /// Sanitized filename.
    pub filename: &'a str,
    /// Content type.
    pub content_type: &'a str,
    /// Bytes.
    pub size: i64,
    /// Hex sha256.
    pub sha256: &'a str,
    /// Initial scan status: `pending` or `skipped`.
    pub scan: &'a str,
    /// Submitting request.
    pub request_id: Option<&'a str>,
}

use cognomega_core::files::sql::INSERT;

/// Inserts an upload.
pub async fn insert(tx: &mut Tx, u: &NewUpload<'_>) -> Result<(), StoreError> {
    let (sql, args) = INSERT.stamped(
        tx.dialect(),
        vec![
            u.key.into(),
            u.tenant_id.into(),
            u.filename.into(),
            u.content_type.into(),
            u.size.into(),
            u.sha256.into(),
            u.scan.into(),
            u.request_id.into(),
        ],
        now_ms().0,
    );
    tx.query_opt(sql, &args).await?;
    Ok(())
}

/// An upload by key; with `tenant`, only the tenant's own.
pub async fn get(
    db: &Database,
    key: &str,
    tenant: Option<&str>,
) -> Result<Option<Upload>, StoreError> {
    let mut read = crate::sql::Reader(db);
    Ok(cognomega_core::files::sql::get(&mut read, key, tenant).await?)
}

/// Bytes a tenant has stored in uploads (quarantined ones included: they still take space until
/// the lifecycle sweeper expires them; expired ones no longer count).
pub async fn used_bytes(db: &Database, tenant: &str) -> Result<i64, StoreError> {
    let row = cognomega_core::sql::Executor::query_opt(
        &mut crate::sql::Reader(db),
        cognomega_core::files::sql::USED_BYTES,
        &[tenant.into()],
    )
    .await?;
    Ok(row.map(|r| r.int(0)).transpose()?.unwrap_or(0))
}

/// Records a scan outcome: `clean`, `infected` (with signature and the quarantine key), or
/// `scan_failed` (with the error) — the statement the scan workflow runs on both hosts.
pub async fn set_scan(
    db: &Database,
    key: &str,
    scan: &str,
    signature: Option<&str>,
    error: Option<&str>,
    object_key: Option<&str>,
) -> Result<(), StoreError> {
    cognomega_core::files::scan::set_scan(
        &mut db.clone(),
        key,
        scan,
        signature,
        error,
        object_key,
        now_ms().0,
    )
    .await?;
    Ok(())
}
