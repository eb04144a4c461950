//! Cleanup (`POST /admin/cleanup`, `cognomega cleanup`): what every host shares. The report,
//! the queue retentions a prune applies, the rule deciding which objects are orphaned and which
//! rows lost their object, and the PostgreSQL statements ([`sql`]). The native run (SQLite and
//! PostgreSQL, any object store) is `cognomega_stores::cleanup`; the edge's (PostgreSQL through
//! Hyperdrive, R2) is in `wrangler/edge`. Both run the same steps in the same order, so the two
//! answer the same report for the same data.

use std::collections::HashSet;
use std::time::Duration;

use serde::Serialize;

use crate::queue::{PruneReport, QueueSettings};
use crate::time::duration_ms;

/// Object prefixes whose objects belong to rows (uploads, quarantined uploads, job artifacts
/// and job inputs).
pub const ROW_OWNED_PREFIXES: [&str; 4] = ["uploads", "quarantine", "artifacts", "inputs"];

/// The default grace period for row-less objects and rows without objects.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(3600);

/// The query of `POST /admin/cleanup` (`dry_run`, `grace_secs`): every key known, every value
/// parsed, or the 400's code and message naming the one that is not.
pub fn query_options<'q>(
    query: impl IntoIterator<Item = (&'q str, &'q str)>,
) -> Result<(bool, Duration), (&'static str, String)> {
    let (mut dry_run, mut grace) = (None, None);
    for (key, value) in query {
        match key {
            "dry_run" => dry_run = Some(value),
            "grace_secs" => grace = Some(value),
            unknown => {
                return Err((
                    "invalid_query",
                    format!("unknown query parameter {unknown:?}; accepted: dry_run, grace_secs"),
                ))
            }
        }
    }
    let dry_run = match dry_run {
        None | Some("false" | "0") => false,
        Some("true" | "1" | "") => true,
        Some(other) => {
            return Err((
                "invalid_dry_run",
                format!("dry_run must be true or false, got {other:?}"),
            ))
        }
    };
    let grace = match grace {
        None => DEFAULT_GRACE,
        Some(raw) => match raw.parse::<u64>() {
            Ok(secs) if secs <= 365 * 24 * 3600 => Duration::from_secs(secs),
            _ => {
                return Err((
                    "invalid_grace",
                    format!("grace_secs must be an integer 0..=31536000, got {raw:?}"),
                ))
            }
        },
    };
    Ok((dry_run, grace))
}

/// What a cleanup deleted (or, dry, would delete).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CleanupReport {
    /// Nothing was changed.
    pub dry_run: bool,
    /// Queue messages and idempotency keys past retention.
    pub messages: PruneReport,
    /// Expired guest tenants with zero balance.
    pub guest_tenants: u64,
    /// Objects no row refers to.
    pub orphaned_objects: u64,
    /// Upload and artifact rows whose object is gone, marked `expired`.
    pub rows_missing_objects: u64,
    /// The tenant ids removed (so a caller can drop them from its caches).
    #[serde(skip)]
    pub removed_tenants: Vec<String>,
}

/// Upper bound of a retention bound into SQL (100 years): PostgreSQL intervals are bounded
/// where SQLite's integers are not, and `Duration::MAX` must mean "practically forever", not an
/// out-of-range error.
pub const MAX_RETENTION_MS: i64 = 100 * 365 * 24 * 3600 * 1000;

/// The declared queues' retentions, as a prune applies them: one entry per queue whose
/// settings parse (a queue whose settings do not parse is skipped).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Retentions {
    /// The queues.
    pub queues: Vec<String>,
    /// Each queue's `retain_acked`, in ms, at most [`MAX_RETENTION_MS`].
    pub retain_acked_ms: Vec<i64>,
    /// Each queue's `dead_retention`, in ms, at most [`MAX_RETENTION_MS`].
    pub dead_retention_ms: Vec<i64>,
}

impl Retentions {
    /// From the `(queue, settings JSON)` rows of `queue_settings` ([`sql::QUEUE_SETTINGS`]).
    pub fn from_declared(declared: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut r = Self::default();
        for (queue, json) in declared {
            let Ok(settings) = serde_json::from_str::<QueueSettings>(&json) else {
                continue;
            };
            r.queues.push(queue);
            r.retain_acked_ms
                .push(duration_ms(settings.retain_acked).min(MAX_RETENTION_MS));
            r.dead_retention_ms
                .push(duration_ms(settings.dead_retention).min(MAX_RETENTION_MS));
        }
        r
    }
}

/// A [`PruneReport`] from the three counts a statement returned (negative counts are 0).
#[must_use]
pub fn prune_report(acked: i64, dead: i64, dedup_keys: i64) -> PruneReport {
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    PruneReport {
        acked: count(acked),
        dead: count(dead),
        dedup_keys: count(dedup_keys),
    }
}

/// An upload or artifact row as cleanup reads it ([`sql::UPLOAD_ROWS`],
/// [`sql::ARTIFACT_ROWS`]): four text columns in the order its query selects them, and the
/// creation time (epoch ms).
pub type ObjectRow = (String, String, String, String, i64);

/// A row whose object is gone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MissingRow {
    /// An upload row.
    Upload {
        /// `uploads.key`.
        key: String,
        /// The object it points at.
        object_key: String,
    },
    /// A job artifact row.
    Artifact {
        /// `job_artifacts.job_id`.
        job_id: String,
        /// `job_artifacts.name`.
        name: String,
        /// The object it points at.
        object_key: String,
    },
}

/// Every object key a row refers to, and the rows (older than `before_ms`, not yet expired)
/// whose object is not in `present` (the listed objects). `uploads` are
/// `(key, object_key, tier, scan, created_ms)`, `artifacts`
/// `(job_id, name, object_key, tier, created_ms)`, `inputs` the jobs' input keys.
#[must_use]
pub fn rows_and_keys(
    uploads: Vec<ObjectRow>,
    artifacts: Vec<ObjectRow>,
    inputs: Vec<String>,
    present: &HashSet<String>,
    before_ms: i64,
) -> (Vec<MissingRow>, HashSet<String>) {
    let mut missing = Vec::new();
    let mut owned: HashSet<String> = inputs.into_iter().collect();
    for (key, object_key, tier, scan, created) in uploads {
        // A pending upload is left out of the missing check: the scanner moves its object to
        // quarantine/ before it updates the row. It still owns its key.
        let settled = scan != "pending" && tier != "expired";
        if settled && created < before_ms && !present.contains(&object_key) {
            missing.push(MissingRow::Upload {
                key,
                object_key: object_key.clone(),
            });
        }
        // The scanner records an infected upload's quarantine/ key first and then moves the
        // object (which keeps its age): the key on either side of that move is owned.
        if let Some(before) = object_key.strip_prefix("quarantine/") {
            owned.insert(before.to_owned());
        } else {
            owned.insert(format!("quarantine/{object_key}"));
        }
        owned.insert(object_key);
    }
    for (job_id, name, object_key, tier, created) in artifacts {
        if tier != "expired" && created < before_ms && !present.contains(&object_key) {
            missing.push(MissingRow::Artifact {
                job_id,
                name,
                object_key: object_key.clone(),
            });
        }
        owned.insert(object_key);
    }
    (missing, owned)
}

/// The listed `(key, last written epoch ms)` objects older than `before_ms` that no row owns,
/// sorted by key.
#[must_use]
pub fn orphaned<K: AsRef<str> + Ord>(
    listed: Vec<(K, i64)>,
    owned: &HashSet<String>,
    before_ms: i64,
) -> Vec<K> {
    let mut orphaned: Vec<K> = listed
        .into_iter()
        .filter(|(key, modified)| *modified < before_ms && !owned.contains(key.as_ref()))
        .map(|(key, _)| key)
        .collect();
    orphaned.sort();
    orphaned
}

/// What a cleanup may touch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CleanupOptions {
    /// Only count.
    pub dry_run: bool,
    /// Guest token lifetime: a guest tenant older than this (plus `grace`) holds no live token.
    pub token_ttl: Duration,
    /// Objects and rows younger than this are never touched (writes in flight).
    pub grace: Duration,
}

/// What a cleanup needs from its host: the database, the queue's prune (the native driver's
/// own, or on the edge the dead letters its dlq Worker records), object listing and deletes,
/// and what the host caches per tenant.
#[cfg_attr(not(target_arch = "wasm32"), async_trait::async_trait)]
#[cfg_attr(target_arch = "wasm32", async_trait::async_trait(?Send))]
pub trait CleanupHost: crate::queue::MaybeSendSync {
    /// Statements, each committed on its own.
    fn db(&self) -> Box<dyn crate::sql::Executor + '_>;

    /// A transaction.
    async fn begin(&self) -> Result<Box<dyn crate::sql::Transaction + '_>, crate::sql::SqlError>;

    /// Prunes queue messages and idempotency keys past retention, or (`dry_run`) counts them.
    async fn prune(&self, dry_run: bool) -> Result<PruneReport, String>;

    /// Every object under `prefix/` whose key the host's store accepts: `(key, last written
    /// epoch ms)`.
    async fn list(&self, prefix: &str) -> Result<Vec<(String, i64)>, String>;

    /// Deletes an object.
    async fn delete(&self, key: &str) -> Result<(), String>;

    /// Drops what the host caches for removed tenants (best effort).
    async fn forget(&self, _tenants: &[String]) {}

    /// Now, epoch milliseconds.
    fn now_ms(&self) -> i64;
}

fn sql_error(e: crate::sql::SqlError) -> String {
    e.to_string()
}

/// Runs a cleanup (see `cognomega_stores::cleanup` for what goes): the queue prune, expired
/// guest tenants, then object garbage — the row-owned prefixes listed *before* the rows are
/// read (an object written after the listing belongs to a row younger than the grace), objects
/// older than the grace no row owns deleted, rows older than the grace whose object was not
/// listed marked `expired`. Every step is idempotent: a run cut short is finished by the next.
pub async fn run<H: CleanupHost + ?Sized>(
    host: &H,
    opts: CleanupOptions,
) -> Result<CleanupReport, String> {
    let now = host.now_ms();
    let grace_ms = duration_ms(opts.grace);
    if !opts.dry_run {
        // Ask keys past their 24 hours go with the expired queue keys.
        let cutoff = now.saturating_sub(crate::ai::replay::KEY_TTL_MS);
        (host
            .db()
            .execute(crate::ai::replay::PRUNE, &[cutoff.into()])
            .await)
            .map_err(sql_error)?;
    }
    let messages = host.prune(opts.dry_run).await?;
    let cutoff = now
        .saturating_sub(duration_ms(opts.token_ttl))
        .saturating_sub(grace_ms);
    let statement = sql::EXPIRED.pick(host.db().dialect());
    let guests = (host.db().query(statement, &[cutoff.into()]).await)
        .map_err(sql_error)?
        .iter()
        .map(|r| r.text(0))
        .collect::<Result<Vec<_>, _>>()
        .map_err(sql_error)?;
    if !opts.dry_run && !guests.is_empty() {
        let ids = serde_json::to_string(&guests).map_err(|e| e.to_string())?;
        let mut tx = host.begin().await.map_err(sql_error)?;
        for delete in sql::DELETE_TENANTS {
            let statement = delete.pick(tx.dialect());
            tx.execute(statement, &[ids.as_str().into()])
                .await
                .map_err(sql_error)?;
        }
        tx.commit().await.map_err(sql_error)?;
        host.forget(&guests).await;
    }
    let (orphaned, missing) = object_garbage(host, now - grace_ms).await?;
    if !opts.dry_run {
        for key in &orphaned {
            host.delete(key).await?;
        }
        if !missing.is_empty() {
            let mut tx = host.begin().await.map_err(sql_error)?;
            for row in &missing {
                match row {
                    MissingRow::Upload { key, object_key } => {
                        let args = [key.into(), object_key.into(), now.into()];
                        tx.execute(sql::EXPIRE_UPLOAD, &args).await
                    }
                    MissingRow::Artifact {
                        job_id,
                        name,
                        object_key,
                    } => {
                        let args = [job_id.into(), name.into(), object_key.into(), now.into()];
                        tx.execute(sql::EXPIRE_ARTIFACT, &args).await
                    }
                }
                .map_err(sql_error)?;
            }
            tx.commit().await.map_err(sql_error)?;
        }
    }
    Ok(CleanupReport {
        dry_run: opts.dry_run,
        messages,
        guest_tenants: guests.len() as u64,
        orphaned_objects: orphaned.len() as u64,
        rows_missing_objects: missing.len() as u64,
        removed_tenants: if opts.dry_run { Vec::new() } else { guests },
    })
}

/// Lists the row-owned prefixes, then reads the rows: objects older than `before_ms` that no
/// row owns, and rows (older than `before_ms`) whose object was not listed.
async fn object_garbage<H: CleanupHost + ?Sized>(
    host: &H,
    before_ms: i64,
) -> Result<(Vec<String>, Vec<MissingRow>), String> {
    let mut listed = Vec::new();
    for prefix in ROW_OWNED_PREFIXES {
        listed.extend(host.list(prefix).await?);
    }
    let present: HashSet<String> = listed.iter().map(|(k, _)| k.clone()).collect();
    let mut db = host.db();
    let dialect = db.dialect();
    let object_rows = |rows: Vec<crate::sql::Row>| {
        rows.iter()
            .map(|r| Ok((r.text(0)?, r.text(1)?, r.text(2)?, r.text(3)?, r.int(4)?)))
            .collect::<Result<Vec<ObjectRow>, crate::sql::SqlError>>()
    };
    let uploads = db.query(sql::UPLOADS.pick(dialect), &[]).await;
    let uploads = uploads.and_then(object_rows).map_err(sql_error)?;
    let artifacts = db.query(sql::ARTIFACTS.pick(dialect), &[]).await;
    let artifacts = artifacts.and_then(object_rows).map_err(sql_error)?;
    let inputs = (db.query(sql::JOB_INPUT_KEYS, &[]).await)
        .and_then(|rows| rows.iter().map(|r| r.text(0)).collect())
        .map_err(sql_error)?;
    let (missing, owned) = rows_and_keys(uploads, artifacts, inputs, &present, before_ms);
    Ok((orphaned(listed, &owned, before_ms), missing))
}

/// The tenant-row deletes, users first (they reference the tenant); `$ids` is the dialect's
/// list of tenant ids, or nothing for the bare prefixes.
macro_rules! tenant_deletes {
    ($($ids:literal)?) => {
        [
            concat!("DELETE FROM users WHERE tenant_id IN" $(, " ", $ids)?),
            concat!("DELETE FROM balances WHERE tenant_id IN" $(, " ", $ids)?),
            concat!("DELETE FROM kv WHERE key IN" $(, " ", $ids)?),
            concat!("DELETE FROM tenants WHERE id IN" $(, " ", $ids)?),
        ]
    };
}

/// What keeps a guest tenant `t` (see [`sql::EXPIRED_GUESTS`]), then the order.
macro_rules! guest_conditions {
    () => {
        "
          AND COALESCE((SELECT b.balance FROM balances b WHERE b.tenant_id = t.id), 0) = 0
          AND COALESCE((SELECT SUM(l.delta) FROM ledger_entries l WHERE l.tenant_id = t.id), 0) = 0
          AND NOT EXISTS (SELECT 1 FROM jobs j
                          WHERE j.tenant_id = t.id AND j.status IN ('queued', 'running'))
          AND NOT EXISTS (SELECT 1 FROM uploads u WHERE u.tenant_id = t.id AND u.scan = 'pending')
        ORDER BY t.id"
    };
}

/// The cleanup's SQL. The PostgreSQL statements (tables and columns of `migrations/postgres`)
/// run unchanged through sqlx natively and through tokio-postgres on the edge: every parameter
/// has the type its Rust value has in both (`text[]`, `bigint[]`, `bigint`, `text`). The
/// dialect-neutral pieces are shared with the SQLite statements, which stay in the native store
/// (but for `SQLITE_EXPIRED_GUESTS`, built from the same conditions here).
pub mod sql {
    use crate::sql::Dialects;

    /// Every declared queue: `(queue, settings JSON)`.
    pub const QUEUE_SETTINGS: &str = "SELECT queue, settings FROM queue_settings";

    /// `(queues text[], retain_acked_ms bigint[], dead_retention_ms bigint[])` ⇒ what the
    /// prune would delete: `(acked, dead, dedup_keys)` counts.
    pub const PRUNABLE: &str = "SELECT
                   (SELECT COUNT(*) FROM queue_messages m
                      JOIN unnest($1::text[], $2::bigint[]) AS k(queue, keep) ON m.queue = k.queue
                     WHERE m.state = 2 AND m.acked_at < now() - k.keep * interval '1 millisecond'),
                   (SELECT COUNT(*) FROM queue_messages m
                      JOIN unnest($1::text[], $3::bigint[]) AS k(queue, keep) ON m.original_queue = k.queue
                     WHERE m.dead_at IS NOT NULL AND m.dead_at < now() - k.keep * interval '1 millisecond'),
                   (SELECT COUNT(*) FROM queue_dedup WHERE expires_at <= now())";

    /// `(queues text[], retain_acked_ms bigint[])`: deletes acked messages past retention.
    pub const PRUNE_ACKED: &str = "DELETE FROM queue_messages m
                 USING unnest($1::text[], $2::bigint[]) AS p(queue, keep)
                 WHERE m.queue = p.queue AND m.state = 2
                   AND m.acked_at < now() - p.keep * interval '1 millisecond'";

    /// `(queues text[], dead_retention_ms bigint[])`: deletes dead messages past retention (by
    /// the queue they died in).
    pub const PRUNE_DEAD: &str = "DELETE FROM queue_messages m
                 USING unnest($1::text[], $2::bigint[]) AS p(queue, keep)
                 WHERE m.original_queue = p.queue AND m.dead_at IS NOT NULL
                   AND m.dead_at < now() - p.keep * interval '1 millisecond'";

    /// Deletes expired idempotency keys.
    pub const PRUNE_DEDUP: &str = "DELETE FROM queue_dedup WHERE expires_at <= now()";

    /// What keeps a guest tenant `t` (dialect-neutral), then `ORDER BY t.id`: follows a
    /// dialect's `SELECT t.id FROM tenants t WHERE t.tier = 'guest' AND t.created_at < …`.
    /// A guest goes only with zero in both the balance cache table and the ledger, no queued
    /// or running job and no upload waiting for its scan.
    pub const GUEST_CONDITIONS: &str = guest_conditions!();

    /// `(cutoff_ms bigint)` ⇒ the ids of guest tenants created before the cutoff with nothing
    /// left ([`GUEST_CONDITIONS`]), ordered.
    pub const EXPIRED_GUESTS: &str = concat!(
        "SELECT t.id FROM tenants t WHERE t.tier = 'guest'
                   AND t.created_at < to_timestamp($1::bigint / 1000.0) ",
        guest_conditions!()
    );

    /// SQLite (`created_at` in epoch ms): [`EXPIRED_GUESTS`] — `(cutoff_ms)` ⇒ the ids of guest
    /// tenants created before the cutoff with nothing left ([`GUEST_CONDITIONS`]), ordered.
    pub const SQLITE_EXPIRED_GUESTS: &str = concat!(
        "SELECT t.id FROM tenants t WHERE t.tier = 'guest' AND t.created_at < $1 ",
        guest_conditions!()
    );

    /// The deletes of a tenant's mutable rows, users first (they reference the tenant), each
    /// to be followed by a dialect's list of tenant ids. Usage events and ledger entries are
    /// append-only (the audit trail) and stay.
    pub const TENANT_DELETES: [&str; 4] = tenant_deletes!();

    /// `(tenant ids text[])`: [`TENANT_DELETES`] for PostgreSQL, to run in order in one
    /// transaction.
    pub const DELETE_TENANT_ROWS: [&str; 4] = tenant_deletes!("(SELECT unnest($1::text[]))");

    /// Every upload: `(key, object_key, tier, scan, created_ms)`.
    pub const UPLOAD_ROWS: &str =
        "SELECT key, object_key, tier, scan, (extract(epoch from created_at) * 1000)::bigint
                 FROM uploads";

    /// Every job artifact: `(job_id, name, object_key, tier, created_ms)`.
    pub const ARTIFACT_ROWS: &str =
        "SELECT job_id, name, object_key, tier, (extract(epoch from created_at) * 1000)::bigint
                 FROM job_artifacts";

    /// Every job's input object key.
    pub const JOB_INPUT_KEYS: &str = "SELECT input_key FROM jobs";

    /// `(cutoff_ms)` ⇒ the ids of guest tenants created before the cutoff with nothing left.
    pub const EXPIRED: Dialects = Dialects {
        sqlite: SQLITE_EXPIRED_GUESTS,
        postgres: EXPIRED_GUESTS,
    };

    /// `(tenant ids, a JSON array)`: [`TENANT_DELETES`], to run in order in one transaction.
    pub const DELETE_TENANTS: [Dialects; 4] = {
        let sqlite = tenant_deletes!("(SELECT value FROM json_each($1))");
        let postgres = tenant_deletes!("(SELECT jsonb_array_elements_text($1::text::jsonb))");
        [
            Dialects {
                sqlite: sqlite[0],
                postgres: postgres[0],
            },
            Dialects {
                sqlite: sqlite[1],
                postgres: postgres[1],
            },
            Dialects {
                sqlite: sqlite[2],
                postgres: postgres[2],
            },
            Dialects {
                sqlite: sqlite[3],
                postgres: postgres[3],
            },
        ]
    };

    /// Every upload: `(key, object_key, tier, scan, created_ms)`.
    pub const UPLOADS: Dialects = Dialects {
        sqlite: "SELECT key, object_key, tier, scan, created_at FROM uploads",
        postgres: UPLOAD_ROWS,
    };

    /// Every job artifact: `(job_id, name, object_key, tier, created_ms)`.
    pub const ARTIFACTS: Dialects = Dialects {
        sqlite: "SELECT job_id, name, object_key, tier, created_at FROM job_artifacts",
        postgres: ARTIFACT_ROWS,
    };

    /// `(key, object_key, now_ms bigint)`: marks an upload expired while it still points at
    /// that object.
    pub const EXPIRE_UPLOAD: &str = "UPDATE uploads SET tier = 'expired', tier_changed_at = $3 \
         WHERE key = $1 AND object_key = $2";

    /// `(job_id, name, object_key, now_ms bigint)`: marks an artifact expired while it still
    /// points at that object.
    pub const EXPIRE_ARTIFACT: &str =
        "UPDATE job_artifacts SET tier = 'expired', tier_changed_at = $4 \
         WHERE job_id = $1 AND name = $2 AND object_key = $3";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_pieces_compose() {
        assert_eq!(
            sql::DELETE_TENANT_ROWS[0],
            format!("{} (SELECT unnest($1::text[]))", sql::TENANT_DELETES[0])
        );
        assert!(sql::EXPIRED_GUESTS.ends_with(sql::GUEST_CONDITIONS));
        assert!(sql::SQLITE_EXPIRED_GUESTS.ends_with(sql::GUEST_CONDITIONS));
        assert!(sql::GUEST_CONDITIONS.trim_end().ends_with("ORDER BY t.id"));
    }

    #[test]
    fn retentions_skip_bad_settings_and_clamp() {
        let good = serde_json::to_string(&QueueSettings::default()).unwrap_or_default();
        let r = Retentions::from_declared([
            ("a".to_owned(), good),
            ("b".to_owned(), "not json".to_owned()),
        ]);
        assert_eq!(r.queues, ["a"]);
        assert!(r.retain_acked_ms[0] <= MAX_RETENTION_MS);
        assert!(r.dead_retention_ms[0] <= MAX_RETENTION_MS);
    }

    #[test]
    fn ownership_and_orphans() {
        let uploads = vec![
            (
                "u1".into(),
                "uploads/t/1".into(),
                "hot".into(),
                "clean".into(),
                0,
            ),
            (
                "u2".into(),
                "quarantine/uploads/t/2".into(),
                "hot".into(),
                "infected".into(),
                0,
            ),
            (
                "u3".into(),
                "uploads/t/3".into(),
                "hot".into(),
                "pending".into(),
                0,
            ),
        ];
        let artifacts = vec![(
            "j".into(),
            "a".into(),
            "artifacts/t/j/a".into(),
            "expired".into(),
            0,
        )];
        let present: HashSet<String> = ["quarantine/uploads/t/2".to_owned()].into();
        let (missing, owned) =
            rows_and_keys(uploads, artifacts, vec!["inputs/t/j".into()], &present, 10);
        assert_eq!(
            missing,
            [MissingRow::Upload {
                key: "u1".into(),
                object_key: "uploads/t/1".into()
            }]
        );
        for key in [
            "uploads/t/1",
            "quarantine/uploads/t/1",
            "uploads/t/2",
            "quarantine/uploads/t/2",
            "uploads/t/3",
            "artifacts/t/j/a",
            "inputs/t/j",
        ] {
            assert!(owned.contains(key), "{key}");
        }
        let listed = vec![
            ("uploads/t/9".to_owned(), 5),
            ("uploads/t/8".to_owned(), 20),
            ("inputs/t/j".to_owned(), 5),
            ("artifacts/x".to_owned(), 1),
        ];
        assert_eq!(orphaned(listed, &owned, 10), ["artifacts/x", "uploads/t/9"]);
    }
}
