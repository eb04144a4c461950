//! Upload statements both hosts run (`$n`, the same text on SQLite and PostgreSQL).

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
