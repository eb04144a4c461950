//! SQL of direct uploads.

use cognomega_core::sql::{Dialects, Executor as _, Row, SqlError};
use serde::Serialize;

use crate::queue::now_ms;
use crate::stamped::Stamped;
use crate::{Database, StoreError, Tx};

/// An upload row. Times are epoch milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Upload {
    /// `uploads/{tenant}/{uuid}`.
    pub key: String,
    /// Owner.
    pub tenant_id: String,
    /// Sanitized filename.
    pub filename: String,
    /// Sniffed-and-declared content type.
    pub content_type: String,
    /// Bytes.
    pub size: i64,
    /// Hex sha256.
    pub sha256: String,
    /// pending | clean | infected | scan_failed | skipped
    pub scan: String,
    /// The signature name when infected.
    pub signature: Option<String>,
    /// Why the scan failed.
    pub scan_error: Option<String>,
    /// Where the bytes are now.
    pub object_key: String,
    /// Created.
    pub created_at_ms: i64,
}

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

/// The columns of an [`Upload`], in [`from_row`]'s order (SQLite: times in epoch ms).
macro_rules! sqlite_columns {
    () => {
        "key, tenant_id, filename, content_type, size, sha256, scan, signature, scan_error, \
         object_key, created_at"
    };
}

/// The columns of an [`Upload`], in [`from_row`]'s order (PostgreSQL: times read as epoch ms).
macro_rules! pg_columns {
    () => {
        "key, tenant_id, filename, content_type, size, sha256, scan, signature, scan_error, \
         object_key, (extract(epoch from created_at) * 1000)::bigint"
    };
}

fn from_row(r: &Row) -> Result<Upload, SqlError> {
    Ok(Upload {
        key: r.text(0)?,
        tenant_id: r.text(1)?,
        filename: r.text(2)?,
        content_type: r.text(3)?,
        size: r.int(4)?,
        sha256: r.text(5)?,
        scan: r.text(6)?,
        signature: r.opt_text(7)?,
        scan_error: r.opt_text(8)?,
        object_key: r.text(9)?,
        created_at_ms: r.int(10)?,
    })
}

const INSERT: Stamped = Stamped(cognomega_core::files::sql::INSERT);

/// Inserts an upload.
pub async fn insert(tx: &mut Tx, u: &NewUpload<'_>) -> Result<(), StoreError> {
    let (sql, args) = INSERT.bind(
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

/// Upload `$1`, of tenant `$2` unless null.
const GET: Dialects = Dialects {
    sqlite: concat!(
        "SELECT ",
        sqlite_columns!(),
        " FROM uploads WHERE key = $1 AND ($2 IS NULL OR tenant_id = $2)"
    ),
    postgres: concat!(
        "SELECT ",
        pg_columns!(),
        " FROM uploads WHERE key = $1 AND ($2::text IS NULL OR tenant_id = $2)"
    ),
};

/// An upload by key; with `tenant`, only the tenant's own.
pub async fn get(
    db: &Database,
    key: &str,
    tenant: Option<&str>,
) -> Result<Option<Upload>, StoreError> {
    let mut read = crate::sql::Reader(db);
    let row = read
        .query_opt(GET.pick(read.dialect()), &[key.into(), tenant.into()])
        .await?;
    Ok(row.as_ref().map(from_row).transpose()?)
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
