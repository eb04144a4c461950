//! Upload statements both hosts run (`$n`, the same text on SQLite and PostgreSQL).

/// Bytes tenant `$1` keeps in uploads: quarantined ones count (they take space until the
/// lifecycle sweeper expires them), expired ones do not.
pub const USED_BYTES: &str = "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) FROM uploads
     WHERE tenant_id = $1 AND tier <> 'expired'";
