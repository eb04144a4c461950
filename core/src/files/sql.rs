//! Upload statements both hosts run (`$n`; where the dialects differ, both texts side by side).

use crate::sql::{Dialects, Executor, SqlError};

/// Bytes tenant `$1` keeps in uploads: quarantined ones count (they take space until the
/// lifecycle sweeper expires them), expired ones do not.
pub const USED_BYTES: &str = "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM uploads
     WHERE tenant_id = $1 AND tier <> 'expired'";

/// Upload `$1` of tenant `$2` as a job input: its `scan`, `size` and `object_key`.
pub const AS_INPUT: &str =
    "SELECT scan, size, object_key FROM uploads WHERE key = $1 AND tenant_id = $2";

/// A new upload — `$1` key (also its object key), `$2` tenant, `$3` filename, `$4` content
/// type, `$5` size, `$6` sha256, `$7` scan, `$8` request id (SQLite: `$9` now) — returning its
/// `created_at` (epoch ms). SQLite has no sequences: the single writer makes `MAX(seq) + 1` safe.
pub const INSERT: crate::sql::Dialects = crate::sql::Dialects {
    sqlite: "INSERT INTO uploads (key, seq, tenant_id, filename, content_type, size, sha256, scan, object_key, request_id, created_at)
             VALUES ($1, (SELECT COALESCE(MAX(seq), 0) + 1 FROM uploads), $2, $3, $4, $5, $6, $7, $1, $8, $9)
             RETURNING created_at",
    postgres: "INSERT INTO uploads (key, tenant_id, filename, content_type, size, sha256, scan, object_key, request_id)
               VALUES ($1, $2, $3, $4, $5, $6, $7, $1, $8)
               RETURNING (extract(epoch FROM created_at) * 1000)::bigint",
};

/// An upload row. Times are epoch milliseconds.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
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

/// The columns of an [`Upload`], in [`from_row`]'s order (SQLite: times in epoch ms).
macro_rules! sqlite_upload_columns {
    () => {
        "key, tenant_id, filename, content_type, size, sha256, scan, signature, scan_error, \
         object_key, created_at"
    };
}

/// The columns of an [`Upload`], in [`from_row`]'s order (PostgreSQL: times read as epoch ms).
macro_rules! pg_upload_columns {
    () => {
        "key, tenant_id, filename, content_type, size, sha256, scan, signature, scan_error, \
         object_key, (extract(epoch from created_at) * 1000)::bigint"
    };
}

fn from_row(r: &crate::sql::Row) -> Result<Upload, SqlError> {
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

/// Upload `$1`, of tenant `$2` unless null.
pub const GET: Dialects = Dialects {
    sqlite: concat!(
        "SELECT ",
        sqlite_upload_columns!(),
        " FROM uploads WHERE key = $1 AND ($2 IS NULL OR tenant_id = $2)"
    ),
    postgres: concat!(
        "SELECT ",
        pg_upload_columns!(),
        " FROM uploads WHERE key = $1 AND ($2::text IS NULL OR tenant_id = $2)"
    ),
};

/// An upload by key; with `tenant`, only the tenant's own.
pub async fn get<E: Executor + ?Sized>(
    db: &mut E,
    key: &str,
    tenant: Option<&str>,
) -> Result<Option<Upload>, SqlError> {
    let statement = GET.pick(db.dialect());
    let row = db
        .query_opt(statement, &[key.into(), tenant.into()])
        .await?;
    row.as_ref().map(from_row).transpose()
}
