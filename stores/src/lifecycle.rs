//! SQL of the lifecycle sweeper: pages of the objects rows own (job artifacts, uploads), the
//! tiers of objects no row owns, and the sweep checkpoints.
//!
//! A sweep commits each page in ONE transaction: the tiers and sizes it changed and its
//! checkpoint (phase, cursor, report so far). The object I/O for a page happens before that
//! commit and is idempotent, so a crash anywhere redoes at most one page and records it once.

use cognomega_core::sql::{Dialects, Executor, Row, SqlError};

use crate::{Database, StoreError};

/// A job artifact the sweeper may act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactCandidate {
    /// Its job.
    pub job_id: String,
    /// File name.
    pub name: String,
    /// MIME type.
    pub content_type: String,
    /// Original size.
    pub size: i64,
    /// Stored size.
    pub stored_size: i64,
    /// `none` | `zstd` | `gzip`.
    pub compression: String,
    /// Hex sha256 of the original bytes.
    pub sha256: String,
    /// Recorded tier.
    pub tier: String,
    /// Where the bytes are.
    pub object_key: String,
    /// Row created (epoch ms).
    pub created_at_ms: i64,
    /// Already recompressed.
    pub recompressed: bool,
}

/// An upload the sweeper may act on (its bytes under `uploads/` or `quarantine/`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadCandidate {
    /// The upload's key (its id).
    pub key: String,
    /// Where the bytes are now.
    pub object_key: String,
    /// Bytes.
    pub size: i64,
    /// Recorded tier.
    pub tier: String,
    /// Row created (epoch ms).
    pub created_at_ms: i64,
}

/// What a page changed on one artifact row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactChange {
    /// Its job.
    pub job_id: String,
    /// File name.
    pub name: String,
    /// New tier, if it moved.
    pub tier: Option<String>,
    /// New stored size and compression, if it was recompressed (recorded even when the new
    /// frame was no smaller, so it is not tried again).
    pub recompressed: Option<(i64, String)>,
}

/// A tier change of a row-less object: `None` forgets it (the object was deleted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectChange {
    /// The key.
    pub object_key: String,
    /// Its new tier, or `None` once deleted.
    pub tier: Option<String>,
}

/// One page's changes and the checkpoint after it.
#[derive(Debug, Clone, Default)]
pub struct PageCommit {
    /// The sweep.
    pub sweep_id: i64,
    /// The sweep's clock (also the time recorded on changed rows).
    pub now_ms: i64,
    /// Artifact rows changed.
    pub artifacts: Vec<ArtifactChange>,
    /// Upload rows changed: key and new tier.
    pub uploads: Vec<(String, String)>,
    /// Row-less objects changed.
    pub objects: Vec<ObjectChange>,
    /// Phase the cursor belongs to.
    pub phase: String,
    /// Last key done in `phase`.
    pub cursor: Option<String>,
    /// The report so far (JSON).
    pub report: String,
    /// Bytes saved so far.
    pub bytes_saved: i64,
    /// Objects expired so far.
    pub objects_expired: i64,
}

/// A sweep in progress (fresh or resumed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepRow {
    /// Its id.
    pub id: i64,
    /// The clock it decides by.
    pub now_ms: i64,
    /// Where it stopped.
    pub phase: String,
    /// The last key done in `phase`.
    pub cursor: Option<String>,
    /// The report so far (JSON).
    pub report: String,
    /// True if this row was left unfinished by an earlier run.
    pub resumed: bool,
}

pub use cognomega_core::metrics::LifecycleTotals;

/// Up to `$3` artifacts not yet expired, created at or before `$2` (epoch ms), with object
/// keys after `$1`, in key order: the columns of an [`ArtifactCandidate`] in
/// [`artifact_from`]'s order. PostgreSQL compares with `COLLATE "C"`: byte order, the order
/// SQLite compares text in, so the cursor means the same on both backends.
const ARTIFACT_PAGE: Dialects = Dialects {
    sqlite: "SELECT job_id, name, content_type, size, stored_size, compression, sha256, tier, object_key,
                    created_at, recompressed_at IS NOT NULL AS recompressed
             FROM job_artifacts
             WHERE object_key > $1 AND tier <> 'expired' AND created_at <= $2
             ORDER BY object_key LIMIT $3",
    postgres: "SELECT job_id, name, content_type, size, stored_size, compression, sha256, tier, object_key,
                      (extract(epoch from created_at) * 1000)::bigint AS created_at,
                      recompressed_at IS NOT NULL AS recompressed
               FROM job_artifacts
               WHERE object_key COLLATE \"C\" > $1 AND tier <> 'expired'
                 AND created_at <= to_timestamp($2::float8 / 1000)
               ORDER BY object_key COLLATE \"C\" LIMIT $3",
};

fn artifact_from(row: &Row) -> Result<ArtifactCandidate, SqlError> {
    Ok(ArtifactCandidate {
        job_id: row.text(0)?,
        name: row.text(1)?,
        content_type: row.text(2)?,
        size: row.int(3)?,
        stored_size: row.int(4)?,
        compression: row.text(5)?,
        sha256: row.text(6)?,
        tier: row.text(7)?,
        object_key: row.text(8)?,
        created_at_ms: row.int(9)?,
        recompressed: row.bool(10)?,
    })
}

/// Up to `limit` artifacts not yet expired, created at or before `created_before_ms`, with
/// object keys after `after`, in key order.
pub async fn artifact_page(
    db: &Database,
    after: Option<&str>,
    created_before_ms: i64,
    limit: u32,
) -> Result<Vec<ArtifactCandidate>, StoreError> {
    let mut read = crate::sql::Reader(db);
    let args = [
        after.unwrap_or("").into(),
        created_before_ms.into(),
        i64::from(limit).into(),
    ];
    let rows = read
        .query(ARTIFACT_PAGE.pick(read.dialect()), &args)
        .await?;
    Ok(rows.iter().map(artifact_from).collect::<Result<_, _>>()?)
}

/// Up to `$3` uploads not yet expired, created at or before `$2` (epoch ms), with keys after
/// `$1`, in key order (byte order, as [`ARTIFACT_PAGE`]): `key, object_key, size, tier,
/// created_at` (epoch ms).
const UPLOAD_PAGE: Dialects = Dialects {
    sqlite: "SELECT key, object_key, size, tier, created_at FROM uploads
             WHERE key > $1 AND tier <> 'expired' AND created_at <= $2
             ORDER BY key LIMIT $3",
    postgres: "SELECT key, object_key, size, tier, (extract(epoch from created_at) * 1000)::bigint FROM uploads
               WHERE key COLLATE \"C\" > $1 AND tier <> 'expired'
                 AND created_at <= to_timestamp($2::float8 / 1000)
               ORDER BY key COLLATE \"C\" LIMIT $3",
};

/// Up to `limit` uploads not yet expired, created at or before `created_before_ms`, with keys
/// after `after`, in key order.
pub async fn upload_page(
    db: &Database,
    after: Option<&str>,
    created_before_ms: i64,
    limit: u32,
) -> Result<Vec<UploadCandidate>, StoreError> {
    let mut read = crate::sql::Reader(db);
    let args = [
        after.unwrap_or("").into(),
        created_before_ms.into(),
        i64::from(limit).into(),
    ];
    let rows = read.query(UPLOAD_PAGE.pick(read.dialect()), &args).await?;
    Ok(rows
        .iter()
        .map(|r| {
            Ok(UploadCandidate {
                key: r.text(0)?,
                object_key: r.text(1)?,
                size: r.int(2)?,
                tier: r.text(3)?,
                created_at_ms: r.int(4)?,
            })
        })
        .collect::<Result<_, SqlError>>()?)
}

/// Row-less objects' keys and tiers, their keys matching the `LIKE` pattern `$1`.
const OBJECT_TIERS: &str =
    "SELECT object_key, tier FROM lifecycle_objects WHERE object_key LIKE $1 ESCAPE '\\'";

/// Recorded tiers of row-less objects under `prefix`.
pub async fn object_tiers(
    db: &Database,
    prefix: &str,
) -> Result<std::collections::HashMap<String, String>, StoreError> {
    let pattern = format!("{}%", prefix.replace('%', "\\%").replace('_', "\\_"));
    let rows = cognomega_core::sql::Executor::query(
        &mut crate::sql::Reader(db),
        OBJECT_TIERS,
        &[pattern.into()],
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| Ok((r.text(0)?, r.text(1)?)))
        .collect::<Result<_, cognomega_core::sql::SqlError>>()?)
}

/// The unfinished sweep: `id, now_ms, phase, cursor, report`.
const FIND_SWEEP: &str = "SELECT id, now_ms, phase, cursor, report FROM lifecycle_sweeps
    WHERE finished_at IS NULL ORDER BY id DESC LIMIT 1";

/// A new sweep started at `$1` deciding by `$2`, in phase `$3` with the report `$4`: its `id`.
const INSERT_SWEEP: &str = "INSERT INTO lifecycle_sweeps (started_at, now_ms, phase, report)
    VALUES ($1, $2, $3, $4) RETURNING id";

/// PostgreSQL: two sweeps starting at once would both open a row; the lock makes one wait
/// and resume the other's.
const PG_LOCK_SWEEPS: &str = "LOCK TABLE lifecycle_sweeps IN SHARE ROW EXCLUSIVE MODE";

/// The unfinished sweep to resume, else a new one deciding by `now_ms`.
pub async fn open_sweep(
    db: &Database,
    now_ms: i64,
    started_ms: i64,
    first_phase: &str,
    empty_report: &str,
) -> Result<SweepRow, StoreError> {
    let fresh = NewSweep {
        now_ms,
        started_ms,
        first_phase,
        empty_report,
    };
    Ok(match db {
        // Two statements, no transaction: a deferred SQLite transaction that reads and then
        // writes fails at once ("database is locked") when another process (a running
        // `serve`) wrote in between, where a lone write waits its turn. This process's
        // single writer connection serialises the pair against its own sweeps.
        Database::Sqlite(_) => find_or_insert_sweep(&mut db.clone(), &fresh).await?,
        Database::Postgres(_) => {
            let mut tx = db.begin().await?;
            tx.execute(PG_LOCK_SWEEPS, &[]).await?;
            let sweep = find_or_insert_sweep(&mut tx, &fresh).await?;
            tx.commit().await?;
            sweep
        }
    })
}

/// A sweep [`open_sweep`] starts when none is unfinished.
struct NewSweep<'a> {
    now_ms: i64,
    started_ms: i64,
    first_phase: &'a str,
    empty_report: &'a str,
}

/// The unfinished sweep, else a new one ([`open_sweep`]'s two statements).
async fn find_or_insert_sweep<E: Executor + ?Sized>(
    db: &mut E,
    fresh: &NewSweep<'_>,
) -> Result<SweepRow, SqlError> {
    if let Some(r) = db.query_opt(FIND_SWEEP, &[]).await? {
        return Ok(SweepRow {
            id: r.int(0)?,
            now_ms: r.int(1)?,
            phase: r.text(2)?,
            cursor: r.opt_text(3)?,
            report: r.text(4)?,
            resumed: true,
        });
    }
    let args = [
        fresh.started_ms.into(),
        fresh.now_ms.into(),
        fresh.first_phase.into(),
        fresh.empty_report.into(),
    ];
    let id = db
        .query_opt(INSERT_SWEEP, &args)
        .await?
        .map(|r| r.int(0))
        .transpose()?
        .ok_or_else(|| SqlError::new("INSERT … RETURNING id returned no row"))?;
    Ok(SweepRow {
        id,
        now_ms: fresh.now_ms,
        phase: fresh.first_phase.to_owned(),
        cursor: None,
        report: fresh.empty_report.to_owned(),
        resumed: false,
    })
}

/// Records upload `$1`'s new tier `$2`, changed at `$3` (ms).
const UPLOAD_TIER: &str = "UPDATE uploads SET tier = $2, tier_changed_at = $3 WHERE key = $1";

/// Records row-less object `$1`'s tier `$2`, changed at `$3` (ms).
const RECORD_OBJECT_TIER: &str = "INSERT INTO lifecycle_objects (object_key, tier, tier_changed_at) VALUES ($1, $2, $3)
     ON CONFLICT (object_key) DO UPDATE SET tier = excluded.tier, tier_changed_at = excluded.tier_changed_at";

/// Forgets the row-less object `$1` (deleted).
const FORGET_OBJECT: &str = "DELETE FROM lifecycle_objects WHERE object_key = $1";

/// Checkpoints sweep `$1`: its phase, cursor, report and totals so far.
const CHECKPOINT_SWEEP: &str = "UPDATE lifecycle_sweeps SET phase = $2, cursor = $3, report = $4, bytes_saved = $5, objects_expired = $6
                 WHERE id = $1";

/// Records artifact (`$1` job, `$2` name)'s changes at `$6` (ms): its new tier `$3`, and its
/// recompressed stored size `$4` and compression `$5`, each unless null.
const ARTIFACT_CHANGE: &str = "UPDATE job_artifacts SET
        tier = COALESCE($3, tier),
        tier_changed_at = CASE WHEN CAST($3 AS TEXT) IS NULL THEN tier_changed_at ELSE $6 END,
        stored_size = COALESCE($4, stored_size),
        compression = COALESCE($5, compression),
        recompressed_at = CASE WHEN CAST($4 AS BIGINT) IS NULL THEN recompressed_at ELSE $6 END
     WHERE job_id = $1 AND name = $2";

/// Records one page: its row changes and the checkpoint after it, in one transaction.
pub async fn commit_page(db: &Database, page: &PageCommit) -> Result<(), StoreError> {
    let mut tx = db.begin().await?;
    for a in &page.artifacts {
        let args = [
            a.job_id.as_str().into(),
            a.name.as_str().into(),
            a.tier.as_deref().into(),
            a.recompressed.as_ref().map(|r| r.0).into(),
            a.recompressed.as_ref().map(|r| r.1.as_str()).into(),
            page.now_ms.into(),
        ];
        tx.execute(ARTIFACT_CHANGE, &args).await?;
    }
    for (key, tier) in &page.uploads {
        cognomega_core::sql::Executor::execute(
            &mut tx,
            UPLOAD_TIER,
            &[key.into(), tier.into(), page.now_ms.into()],
        )
        .await?;
    }
    for o in &page.objects {
        match &o.tier {
            Some(tier) => {
                cognomega_core::sql::Executor::execute(
                    &mut tx,
                    RECORD_OBJECT_TIER,
                    &[(&o.object_key).into(), tier.into(), page.now_ms.into()],
                )
                .await?;
            }
            None => {
                cognomega_core::sql::Executor::execute(
                    &mut tx,
                    FORGET_OBJECT,
                    &[o.object_key.as_str().into()],
                )
                .await?;
            }
        }
    }
    cognomega_core::sql::Executor::execute(
        &mut tx,
        CHECKPOINT_SWEEP,
        &[
            page.sweep_id.into(),
            page.phase.as_str().into(),
            page.cursor.as_deref().into(),
            page.report.as_str().into(),
            page.bytes_saved.into(),
            page.objects_expired.into(),
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Finishes sweep `$1` with its final report `$2` at `$3` (ms).
const FINISH_SWEEP: &str = "UPDATE lifecycle_sweeps SET report = $2, finished_at = $3, phase = 'done', cursor = NULL WHERE id = $1";

/// Marks a sweep finished with its final report.
pub async fn finish_sweep(
    db: &Database,
    sweep_id: i64,
    report: &str,
    finished_ms: i64,
) -> Result<(), StoreError> {
    cognomega_core::sql::Executor::execute(
        &mut db.clone(),
        FINISH_SWEEP,
        &[sweep_id.into(), report.into(), finished_ms.into()],
    )
    .await?;
    Ok(())
}

/// Objects and stored bytes per recorded tier, over every row-owned and row-less object, in
/// one statement so the three tables are counted at one point in time: `tier, objects, bytes`.
const CENSUS: &str = "SELECT tier, CAST(SUM(n) AS BIGINT), CAST(SUM(b) AS BIGINT) FROM (
        SELECT tier, COUNT(*) AS n, COALESCE(SUM(stored_size), 0) AS b FROM job_artifacts GROUP BY tier
        UNION ALL
        SELECT tier, COUNT(*), COALESCE(SUM(size), 0) FROM uploads GROUP BY tier
        UNION ALL
        SELECT tier, COUNT(*), 0 FROM lifecycle_objects GROUP BY tier
    ) t GROUP BY tier ORDER BY tier";

/// Objects and stored bytes per recorded tier, over every row-owned and row-less object.
pub async fn census(db: &Database) -> Result<Vec<(String, i64, i64)>, StoreError> {
    let rows = crate::sql::Reader(db).query(CENSUS, &[]).await?;
    Ok(rows
        .iter()
        .map(|r| Ok((r.text(0)?, r.int(1)?, r.int(2)?)))
        .collect::<Result<_, SqlError>>()?)
}

/// Rows a sweep may look at (artifacts and uploads not yet expired).
const LIVE_ROWS: &str = "SELECT (SELECT COUNT(*) FROM job_artifacts WHERE tier <> 'expired')
                + (SELECT COUNT(*) FROM uploads WHERE tier <> 'expired')";

/// Rows a sweep may look at (artifacts and uploads not yet expired): a progress bar's length.
pub async fn live_rows(db: &Database) -> Result<u64, StoreError> {
    let n = crate::sql::Reader(db)
        .query_opt(LIVE_ROWS, &[])
        .await?
        .ok_or(StoreError::Sqlx(sqlx::Error::RowNotFound))?
        .int(0)?;
    Ok(u64::try_from(n).unwrap_or(0))
}
