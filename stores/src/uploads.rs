//! SQL of direct uploads.

use serde::Serialize;

use crate::queue::now_ms;
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

const COLS_SQLITE: &str =
    "key, tenant_id, filename, content_type, size, sha256, scan, signature, scan_error, object_key, created_at";
const COLS_PG: &str = "key, tenant_id, filename, content_type, size, sha256, scan, signature, scan_error, object_key, \
    (extract(epoch from created_at) * 1000)::bigint";

type Row = (
    String,
    String,
    String,
    String,
    i64,
    String,
    String,
    Option<String>,
    Option<String>,
    String,
    i64,
);

fn from_row(r: Row) -> Upload {
    Upload {
        key: r.0,
        tenant_id: r.1,
        filename: r.2,
        content_type: r.3,
        size: r.4,
        sha256: r.5,
        scan: r.6,
        signature: r.7,
        scan_error: r.8,
        object_key: r.9,
        created_at_ms: r.10,
    }
}

/// Inserts an upload.
pub async fn insert(tx: &mut Tx, u: &NewUpload<'_>) -> Result<(), StoreError> {
    match tx {
        Tx::Sqlite { tx, .. } => {
            sqlx::query(
                "INSERT INTO uploads (key, seq, tenant_id, filename, content_type, size, sha256, scan, object_key, request_id, created_at)
                 VALUES (?1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM uploads), ?2, ?3, ?4, ?5, ?6, ?7, ?1, ?8, ?9)",
            )
            .bind(u.key)
            .bind(u.tenant_id)
            .bind(u.filename)
            .bind(u.content_type)
            .bind(u.size)
            .bind(u.sha256)
            .bind(u.scan)
            .bind(u.request_id)
            .bind(now_ms().0)
            .execute(&mut **tx)
            .await?;
        }
        Tx::Postgres { tx, .. } => {
            sqlx::query(
                "INSERT INTO uploads (key, tenant_id, filename, content_type, size, sha256, scan, object_key, request_id)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $1, $8)",
            )
            .bind(u.key)
            .bind(u.tenant_id)
            .bind(u.filename)
            .bind(u.content_type)
            .bind(u.size)
            .bind(u.sha256)
            .bind(u.scan)
            .bind(u.request_id)
            .execute(&mut **tx)
            .await?;
        }
    }
    Ok(())
}

/// An upload by key; with `tenant`, only the tenant's own.
pub async fn get(
    db: &Database,
    key: &str,
    tenant: Option<&str>,
) -> Result<Option<Upload>, StoreError> {
    let row: Option<Row> = match db {
        Database::Sqlite(s) => {
            sqlx::query_as(&format!(
            "SELECT {COLS_SQLITE} FROM uploads WHERE key = ?1 AND (?2 IS NULL OR tenant_id = ?2)"
        ))
            .bind(key)
            .bind(tenant)
            .fetch_optional(&s.read)
            .await?
        }
        Database::Postgres(pg) => {
            sqlx::query_as(&format!(
            "SELECT {COLS_PG} FROM uploads WHERE key = $1 AND ($2::text IS NULL OR tenant_id = $2)"
        ))
            .bind(key)
            .bind(tenant)
            .fetch_optional(&pg.pool)
            .await?
        }
    };
    Ok(row.map(from_row))
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
/// `scan_failed` (with the error).
pub async fn set_scan(
    db: &Database,
    key: &str,
    scan: &str,
    signature: Option<&str>,
    error: Option<&str>,
    object_key: Option<&str>,
) -> Result<(), StoreError> {
    match db {
        Database::Sqlite(s) => {
            sqlx::query(
                "UPDATE uploads SET scan = ?2, signature = ?3, scan_error = ?4, object_key = COALESCE(?5, object_key), scanned_at = ?6
                 WHERE key = ?1",
            )
            .bind(key)
            .bind(scan)
            .bind(signature)
            .bind(error)
            .bind(object_key)
            .bind(now_ms().0)
            .execute(&s.write)
            .await?;
        }
        Database::Postgres(pg) => {
            sqlx::query(
                "UPDATE uploads SET scan = $2, signature = $3, scan_error = $4, object_key = COALESCE($5, object_key), scanned_at = now()
                 WHERE key = $1",
            )
            .bind(key)
            .bind(scan)
            .bind(signature)
            .bind(error)
            .bind(object_key)
            .execute(&pg.pool)
            .await?;
        }
    }
    Ok(())
}
