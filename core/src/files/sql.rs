//! Upload statements both hosts run (`$n`, the same text on SQLite and PostgreSQL).

/// Bytes tenant `$1` keeps in uploads: quarantined ones count (they take space until the
/// lifecycle sweeper expires them), expired ones do not.
pub const USED_BYTES: &str = "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM uploads
     WHERE tenant_id = $1 AND tier <> 'expired'";

/// Upload `$1` of tenant `$2` as a job input: its `scan`, `size` and `object_key`.
pub const AS_INPUT: &str =
    "SELECT scan, size, object_key FROM uploads WHERE key = $1 AND tenant_id = $2";
