//! An upload's virus scan, recorded by both hosts (the scan workflow of `cognomega-workflows`).

use crate::sql::{Dialects, Executor, SqlError};

/// Upload `$1`'s object key and scan state.
pub const UPLOAD_FOR_SCAN: &str = "SELECT object_key, scan FROM uploads WHERE key = $1";

/// Records upload `$1`'s scan `$2` with the signature `$3` and error `$4` at `$6`; `$5` moves
/// its object key (quarantine) when not null.
pub const SET_SCAN: Dialects = Dialects {
    sqlite: "UPDATE uploads SET scan = $2, signature = $3, scan_error = $4,
                 object_key = COALESCE($5, object_key), scanned_at = $6
             WHERE key = $1",
    postgres: "UPDATE uploads SET scan = $2, signature = $3, scan_error = $4,
                   object_key = COALESCE($5, object_key),
                   scanned_at = to_timestamp($6::float8 / 1000)
               WHERE key = $1",
};

/// Scan states a scan decides: `pending` (never scanned) and `scan_failed` (a replay from the
/// dead-letter queue scans again). Any other state was decided by an earlier delivery.
#[must_use]
pub fn undecided(scan: &str) -> bool {
    matches!(scan, "pending" | "scan_failed")
}

/// Records a scan of upload `key`: its state, the signature found, the error, and its new
/// object key when it moved.
pub async fn set_scan<E: Executor + ?Sized>(
    db: &mut E,
    key: &str,
    scan: &str,
    signature: Option<&str>,
    error: Option<&str>,
    object_key: Option<&str>,
    now_ms: i64,
) -> Result<(), SqlError> {
    let sql = SET_SCAN.pick(db.dialect());
    let args = [
        key.into(),
        scan.into(),
        signature.into(),
        error.into(),
        object_key.into(),
        now_ms.into(),
    ];
    db.execute(sql, &args).await.map(drop)
}
