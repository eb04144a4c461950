//! `lifecycle` → the sweeper: what the object store's own lifecycle rules cannot do.
//!
//! - Recompresses text artifacts at the archive zstd level once they are old enough (no provider
//!   can re-encode an object).
//! - On the local folder, enforces the whole policy: records the Infrequent Access tier (a
//!   folder has no storage classes) and deletes what has expired.
//! - Keeps the database true on every backend: each artifact's and upload's tier is recorded,
//!   and an expired one says `expired` (the API then shows that instead of a download link). On
//!   S3/R2 it also deletes expired objects itself, as a backstop to the bucket rule, so the row
//!   never claims an object the bucket still holds or the reverse for long.
//!
//! # Object age
//!
//! An object's age is counted from its database row's `created_at` wherever a row owns it (job
//! artifacts, uploads, quarantined uploads), and from the store's last-modified time otherwise
//! (`exports/` until exports have rows). Not last-modified for owned objects: recompression
//! rewrites an artifact and would restart its clock.
//!
//! # Resumable and idempotent
//!
//! A sweep walks three kinds of pages in a fixed order (artifacts by object key, uploads by
//! key, then the row-less prefixes by key). The object I/O of a page comes first and is
//! idempotent (a recompression that already happened finds nothing smaller to write; deleting
//! a deleted object succeeds); then one transaction records the page's row changes together
//! with the sweep's checkpoint (phase, cursor, report so far). A sweep that stops midway, for
//! whatever reason, is resumed by the next one from its checkpoint and with its original clock;
//! a finished sweep followed by another changes nothing.

use std::sync::Arc;

use bytes::Bytes;
use cognomega_core::queue::catalog::named;
use cognomega_core::queue::{HandlerError, MessageBatch, QueueName, QueueSettings};

use crate::typed::{Decoded, TypedHandler, Unreadable};
use cognomega_r2_lifecycle::codec::{self, Compression, Encoded};
use cognomega_r2_lifecycle::policy::{Policy, Tier, RECOMPRESSIBLE_PREFIX};
use cognomega_r2_lifecycle::sweep::{steps, Count, ObjectState, Steps, SweepReport};
use cognomega_stores::lifecycle::{
    self as store, ArtifactCandidate, ArtifactChange, ObjectChange, PageCommit, UploadCandidate,
};
use cognomega_stores::objects::{ObjectError, ObjectKey, ObjectMeta, Objects, PutMeta};
use cognomega_stores::{Database, StoreError};
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

/// The queue name.
pub const QUEUE: &str = "lifecycle";

/// The message on `lifecycle`: run one sweep now. A scheduler sends one a day (or as often as
/// it likes: a sweep with nothing due changes nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepMessage {
    /// Only report what would change.
    #[serde(default)]
    pub dry_run: bool,
}

/// The queue.
#[must_use]
pub fn queue() -> QueueName {
    named(QUEUE)
}

/// Settings: one sweep at a time per process, a long heartbeated lease, a few retries (a failed
/// sweep resumes from its checkpoint), then the DLQ.
#[must_use]
pub fn settings() -> QueueSettings {
    QueueSettings {
        max_batch_size: 1,
        max_concurrency: 1,
        lease: std::time::Duration::from_secs(300),
        max_retries: 5,
        retry_delay: std::time::Duration::from_secs(30),
        max_retry_delay: std::time::Duration::from_secs(600),
        dead_letter_queue: Some(named("lifecycle.dlq")),
        ..QueueSettings::default()
    }
}

/// Sweep failures (the sweep stops; its checkpoint stays for the next run).
#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The object store failed.
    #[error(transparent)]
    Objects(#[from] ObjectError),
    /// A checkpoint's report could not be read or written.
    #[error("sweep checkpoint: {0}")]
    Checkpoint(#[from] serde_json::Error),
    /// A blocking recompression task died.
    #[error("recompression task failed: {0}")]
    Task(String),
}

/// How a sweep ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepOutcome {
    /// What it did (for a resumed sweep: the whole run, before and after the stop).
    pub report: SweepReport,
    /// It continued a sweep an earlier run left unfinished.
    pub resumed: bool,
    /// It stopped before the end (cancelled); the next sweep resumes it.
    pub interrupted: bool,
    /// The clock it decided by (epoch ms).
    pub now_ms: i64,
}

/// Phases, in order. Row-less prefixes follow as `objects:<rule>`.
const ARTIFACTS: &str = "artifacts";
const UPLOADS: &str = "uploads";
const OBJECTS: &str = "objects:";

/// Prefixes whose objects belong to rows (and are swept through them, not by listing).
const ROW_OWNED: [&str; 3] = ["artifacts/", "uploads/", "quarantine/"];

/// The sweeper; cheap to clone.
#[derive(Debug, Clone)]
pub struct Sweeper {
    db: Database,
    objects: Objects,
    policy: Arc<Policy>,
    page_size: u32,
    parallelism: usize,
}

/// What one object's steps did, for the report and the page commit.
#[derive(Debug, Default)]
struct Done {
    recompressed: Option<Recompressed>,
    tier: Option<Tier>,
}

/// A recompression: stored sizes before and after, and the compression now stored.
#[derive(Debug, Clone, Copy)]
struct Recompressed {
    before: u64,
    after: u64,
    compression: Compression,
}

impl Sweeper {
    /// A sweeper over `db` and `objects` enforcing `policy`, 500 objects per page, as many
    /// recompressions at once as there are cores.
    #[must_use]
    pub fn new(db: Database, objects: Objects, policy: Arc<Policy>) -> Self {
        Self {
            db,
            objects,
            policy,
            page_size: 500,
            parallelism: std::thread::available_parallelism().map_or(2, usize::from),
        }
    }

    /// Objects per page (per checkpoint), at least 1.
    #[must_use]
    pub fn with_page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size.max(1);
        self
    }

    /// The policy it enforces.
    #[must_use]
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// Runs one sweep deciding by `now_ms` (a resumed sweep keeps its own clock), calling
    /// `progress` after every page with the report so far. A dry run changes nothing, records
    /// nothing and always starts from the beginning. `cancel` stops it between pages.
    pub async fn run(
        &self,
        now_ms: i64,
        dry_run: bool,
        progress: &(dyn Fn(&SweepReport) + Send + Sync),
        cancel: &CancellationToken,
    ) -> Result<SweepOutcome, SweepError> {
        let phases = self.phases();
        let first = phases
            .first()
            .cloned()
            .unwrap_or_else(|| ARTIFACTS.to_owned());
        let mut sweep = if dry_run {
            None
        } else {
            let empty = serde_json::to_string(&SweepReport::default())?;
            Some(store::open_sweep(&self.db, now_ms, wall_ms(), &first, &empty).await?)
        };
        let (now_ms, resumed, mut report, start_phase, mut cursor) = match &sweep {
            Some(row) => (
                row.now_ms,
                row.resumed,
                serde_json::from_str(&row.report)?,
                row.phase.clone(),
                row.cursor.clone(),
            ),
            None => (now_ms, false, SweepReport::default(), first, None),
        };
        if resumed {
            tracing::info!(phase = %start_phase, cursor = ?cursor, "resuming an unfinished sweep");
        }
        // A checkpoint from a policy that no longer has its phase: start over (idempotent).
        let start = phases
            .iter()
            .position(|p| *p == start_phase)
            .unwrap_or_else(|| {
                cursor = None;
                0
            });
        for phase in &phases[start..] {
            loop {
                if cancel.is_cancelled() {
                    return Ok(SweepOutcome {
                        report,
                        resumed,
                        interrupted: true,
                        now_ms,
                    });
                }
                let mut commit = PageCommit {
                    sweep_id: sweep.as_ref().map_or(0, |s| s.id),
                    now_ms,
                    phase: phase.clone(),
                    ..PageCommit::default()
                };
                let next = self
                    .page(
                        phase,
                        cursor.as_deref(),
                        now_ms,
                        dry_run,
                        &mut report,
                        &mut commit,
                    )
                    .await?;
                let Some(last) = next else { break };
                cursor = Some(last);
                if let Some(row) = &mut sweep {
                    commit.cursor.clone_from(&cursor);
                    commit.report = serde_json::to_string(&report)?;
                    commit.bytes_saved = clamp_i64(report.bytes_saved);
                    commit.objects_expired = clamp_i64(report.expired.objects);
                    store::commit_page(&self.db, &commit).await?;
                    row.cursor.clone_from(&cursor);
                }
                progress(&report);
            }
            cursor = None;
        }
        report.census = store::census(&self.db)
            .await?
            .into_iter()
            .filter_map(|(tier, objects, bytes)| {
                let tier = tier.parse::<Tier>().ok()?;
                Some((
                    tier,
                    Count {
                        objects: u64::try_from(objects).unwrap_or(0),
                        bytes: u64::try_from(bytes).unwrap_or(0),
                    },
                ))
            })
            .collect();
        if let Some(row) = &sweep {
            store::finish_sweep(&self.db, row.id, &serde_json::to_string(&report)?, now_ms).await?;
        }
        progress(&report);
        Ok(SweepOutcome {
            report,
            resumed,
            interrupted: false,
            now_ms,
        })
    }

    /// The phases this policy needs, in sweep order.
    fn phases(&self) -> Vec<String> {
        let mut phases = vec![ARTIFACTS.to_owned(), UPLOADS.to_owned()];
        for (name, rule) in &self.policy.rules {
            if !ROW_OWNED.iter().any(|owned| {
                rule.prefix.starts_with(owned) || owned.starts_with(rule.prefix.as_str())
            }) {
                phases.push(format!("{OBJECTS}{name}"));
            }
        }
        phases
    }

    /// The youngest age at which any rule over `prefixes` acts, as a creation-time bound.
    fn created_before(&self, prefixes: &[&str], now_ms: i64) -> Option<i64> {
        let days = self
            .policy
            .rules
            .values()
            .filter(|r| prefixes.iter().any(|p| r.prefix.starts_with(p)))
            .filter_map(cognomega_r2_lifecycle::policy::Rule::first_action_days)
            .min()?;
        Some(now_ms - i64::from(days) * cognomega_r2_lifecycle::policy::DAY_MS)
    }

    /// Sweeps one page of `phase` after `cursor`; returns the page's last key, `None` when the
    /// phase has no more.
    async fn page(
        &self,
        phase: &str,
        cursor: Option<&str>,
        now_ms: i64,
        dry_run: bool,
        report: &mut SweepReport,
        commit: &mut PageCommit,
    ) -> Result<Option<String>, SweepError> {
        if phase == ARTIFACTS {
            let Some(before) = self.created_before(&["artifacts/"], now_ms) else {
                return Ok(None);
            };
            let page = store::artifact_page(&self.db, cursor, before, self.page_size).await?;
            let last = page.last().map(|c| c.object_key.clone());
            let results: Vec<_> = futures::stream::iter(page)
                .map(|c| async move {
                    let done = self.artifact(&c, now_ms, dry_run).await?;
                    Ok::<_, SweepError>((c, done))
                })
                .buffered(self.parallelism)
                .try_collect()
                .await?;
            for (c, done) in results {
                report.examined += 1;
                let stored = u64::try_from(c.stored_size).unwrap_or(0);
                let change = tally(report, &done, stored);
                if change.0.is_some() || change.1.is_some() {
                    commit.artifacts.push(ArtifactChange {
                        job_id: c.job_id,
                        name: c.name,
                        tier: change.0,
                        recompressed: change.1,
                    });
                }
            }
            Ok(last)
        } else if phase == UPLOADS {
            let Some(before) = self.created_before(&["uploads/", "quarantine/"], now_ms) else {
                return Ok(None);
            };
            let page = store::upload_page(&self.db, cursor, before, self.page_size).await?;
            let last = page.last().map(|c| c.key.clone());
            let results: Vec<_> = futures::stream::iter(page)
                .map(|c| async move {
                    let done = self.upload(&c, now_ms, dry_run).await?;
                    Ok::<_, SweepError>((c, done))
                })
                .buffered(self.parallelism * 4)
                .try_collect()
                .await?;
            for (c, done) in results {
                report.examined += 1;
                let (tier, _) = tally(report, &done, u64::try_from(c.size).unwrap_or(0));
                if let Some(tier) = tier {
                    commit.uploads.push((c.key, tier));
                }
            }
            Ok(last)
        } else if let Some(name) = phase.strip_prefix(OBJECTS) {
            self.object_page(name, cursor, now_ms, dry_run, report, commit)
                .await
        } else {
            Ok(None)
        }
    }

    async fn artifact(
        &self,
        c: &ArtifactCandidate,
        now_ms: i64,
        dry_run: bool,
    ) -> Result<Done, SweepError> {
        let Some((_, rule)) = self.policy.rule_for(&c.object_key) else {
            return Ok(Done::default());
        };
        let tier = c.tier.parse::<Tier>().unwrap_or(Tier::Hot);
        let state = ObjectState {
            created_ms: c.created_at_ms,
            tier,
            recompressible: !c.recompressed
                && c.object_key.starts_with(RECOMPRESSIBLE_PREFIX)
                && codec::is_text(&c.content_type),
        };
        let todo = steps(rule, state, now_ms);
        let key = ObjectKey::parse(&c.object_key).map_err(ObjectError::from)?;
        let mut done = Done::default();
        if todo.recompress {
            match self.recompress(c, &key, todo, dry_run).await? {
                Fetched::Done(r) => done.recompressed = r,
                Fetched::Missing => {
                    // The object is gone (the bucket's own rule, or lost): the row says so.
                    done.tier = Some(Tier::Expired);
                    return Ok(done);
                }
            }
        }
        self.apply_tier(&key, todo, dry_run, &mut done).await?;
        Ok(done)
    }

    /// Re-encodes one artifact at the archive level (writing it only if that is smaller).
    async fn recompress(
        &self,
        c: &ArtifactCandidate,
        key: &ObjectKey,
        todo: Steps,
        dry_run: bool,
    ) -> Result<Fetched, SweepError> {
        let stored = match self.objects.get_bytes(key).await {
            Ok((_, stored)) => stored,
            Err(e) if e.is_not_found() => return Ok(Fetched::Missing),
            Err(e) => return Err(e.into()),
        };
        let before = stored.len() as u64;
        let level = self.policy.recompress_level;
        let (compression, sha256, max) = (
            c.compression
                .parse::<Compression>()
                .unwrap_or(Compression::None),
            c.sha256.clone(),
            u64::try_from(c.size).unwrap_or(0),
        );
        let stored_for_task = stored.clone();
        let encoded = tokio::task::spawn_blocking(move || {
            reencode(&stored_for_task, compression, &sha256, level, max)
        })
        .await
        .map_err(|e| SweepError::Task(e.to_string()))?;
        let Some(encoded) = encoded else {
            // Not recorded as recompressed, so every sweep reports it until someone looks.
            tracing::warn!(key = %key, "artifact does not match its recorded sha256; left as it is");
            return Ok(Fetched::Done(None));
        };
        let after = encoded.stored_size;
        if after < before && !dry_run {
            let tier = todo
                .tier
                .map_or_else(|| c.tier.clone(), |t| t.as_str().to_owned());
            let put = PutMeta {
                content_type: Some(c.content_type.clone()),
                metadata: Vec::new(),
            }
            .with("sha256", encoded.sha256.clone())
            .with("compression", encoded.compression.as_str())
            .with("original-size", encoded.original_size.to_string())
            .with("tier", tier);
            self.objects
                .put(key, Bytes::from(encoded.bytes), &put)
                .await?;
        }
        Ok(Fetched::Done(Some(Recompressed {
            before,
            after,
            compression: encoded.compression,
        })))
    }

    /// Deletes (when expired) or just records the tier change of `todo`.
    async fn apply_tier(
        &self,
        key: &ObjectKey,
        todo: Steps,
        dry_run: bool,
        done: &mut Done,
    ) -> Result<(), SweepError> {
        let Some(tier) = todo.tier else { return Ok(()) };
        if todo.delete && !dry_run {
            self.objects.delete(key).await?;
        }
        done.tier = Some(tier);
        Ok(())
    }

    async fn upload(
        &self,
        c: &UploadCandidate,
        now_ms: i64,
        dry_run: bool,
    ) -> Result<Done, SweepError> {
        let Some((_, rule)) = self.policy.rule_for(&c.object_key) else {
            return Ok(Done::default());
        };
        let state = ObjectState {
            created_ms: c.created_at_ms,
            tier: c.tier.parse::<Tier>().unwrap_or(Tier::Hot),
            recompressible: false,
        };
        let todo = steps(rule, state, now_ms);
        let key = ObjectKey::parse(&c.object_key).map_err(ObjectError::from)?;
        let mut done = Done::default();
        self.apply_tier(&key, todo, dry_run, &mut done).await?;
        Ok(done)
    }

    /// One page of a row-less prefix, by listing the store (sorted by key).
    async fn object_page(
        &self,
        rule_name: &str,
        cursor: Option<&str>,
        now_ms: i64,
        dry_run: bool,
        report: &mut SweepReport,
        commit: &mut PageCommit,
    ) -> Result<Option<String>, SweepError> {
        let Some(rule) = self.policy.rules.get(rule_name) else {
            return Ok(None);
        };
        if rule.first_action_days().is_none() {
            return Ok(None);
        }
        let prefix = rule.prefix.trim_end_matches('/');
        let prefix = ObjectKey::parse(prefix).map_err(ObjectError::from)?;
        let listed = self.objects.list_all(Some(&prefix)).await?;
        let page: Vec<ObjectMeta> = listed
            .into_iter()
            .filter(|m| cursor.is_none_or(|c| m.key.as_str() > c))
            .take(self.page_size as usize)
            .collect();
        let Some(last) = page.last().map(|m| m.key.to_string()) else {
            return Ok(None);
        };
        let tiers = store::object_tiers(&self.db, &rule.prefix).await?;
        for meta in page {
            report.examined += 1;
            let state = ObjectState {
                created_ms: meta.last_modified.timestamp_millis(),
                tier: tiers
                    .get(meta.key.as_str())
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(Tier::Hot),
                recompressible: false,
            };
            let todo = steps(rule, state, now_ms);
            let mut done = Done::default();
            self.apply_tier(&meta.key, todo, dry_run, &mut done).await?;
            let (tier, _) = tally(report, &done, meta.size);
            if let Some(tier) = tier {
                commit.objects.push(ObjectChange {
                    object_key: meta.key.to_string(),
                    // A deleted object needs no record; its listing entry is gone.
                    tier: (tier != Tier::Expired.as_str()).then_some(tier),
                });
            }
        }
        Ok(Some(last))
    }
}

/// Adds one object's outcome to the report; returns the row changes (tier; stored size and
/// compression after a recompression).
fn tally(
    report: &mut SweepReport,
    done: &Done,
    stored: u64,
) -> (Option<String>, Option<(i64, String)>) {
    let mut current = stored;
    let recompressed = done.recompressed.map(|r| {
        report.recompressed.add(r.before);
        report.bytes_saved += r.before.saturating_sub(r.after);
        current = r.after;
        (clamp_i64(r.after), r.compression.as_str().to_owned())
    });
    let tier = done.tier.map(|tier| {
        match tier {
            Tier::Expired => report.expired.add(current),
            Tier::InfrequentAccess => report.to_infrequent_access.add(current),
            Tier::Hot => {}
        }
        tier.as_str().to_owned()
    });
    (tier, recompressed)
}

/// A recompression's object read.
enum Fetched {
    /// Read; re-encoded unless it failed its checksum.
    Done(Option<Recompressed>),
    /// No object under the key.
    Missing,
}

/// The archive-level encoding of `stored`, checked against the row's sha256. An object already
/// re-encoded by an earlier run that crashed before recording it (zstd bytes, row still saying
/// `none`) is recognised by trying zstd. `None` if neither matches.
fn reencode(
    stored: &[u8],
    compression: Compression,
    sha256: &str,
    level: codec::ZstdLevel,
    max_output: u64,
) -> Option<Encoded> {
    let attempt = |compression| {
        codec::recompress(stored, compression, level, max_output)
            .ok()
            .filter(|e| e.sha256 == sha256)
    };
    attempt(compression).or_else(|| {
        (compression != Compression::Zstd)
            .then(|| attempt(Compression::Zstd))
            .flatten()
    })
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn wall_ms() -> i64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// The `lifecycle` consumer: one sweep per message, deciding by the wall clock.
#[derive(Debug, Clone)]
pub struct SweepConsumer {
    sweeper: Sweeper,
}

impl SweepConsumer {
    /// A consumer running `sweeper`.
    #[must_use]
    pub fn new(sweeper: Sweeper) -> Self {
        Self { sweeper }
    }
}

#[async_trait::async_trait]
impl TypedHandler for SweepConsumer {
    type Message = SweepMessage;
    const WHAT: &'static str = "sweep";
    const UNREADABLE: Unreadable = Unreadable::DeadLetter;

    async fn handle(
        &self,
        batch: &mut MessageBatch,
        messages: Vec<Decoded<SweepMessage>>,
    ) -> Result<(), HandlerError> {
        for Decoded {
            id, body: message, ..
        } in messages
        {
            let outcome = self
                .sweeper
                .run(
                    wall_ms(),
                    message.dry_run,
                    &|_: &SweepReport| {},
                    &CancellationToken::new(),
                )
                .await
                .map_err(HandlerError::retryable)?;
            let r = &outcome.report;
            tracing::info!(
                dry_run = message.dry_run,
                resumed = outcome.resumed,
                examined = r.examined,
                recompressed = r.recompressed.objects,
                bytes_saved = r.bytes_saved,
                to_infrequent_access = r.to_infrequent_access.objects,
                expired = r.expired.objects,
                "lifecycle sweep finished"
            );
            batch.ack(id);
        }
        Ok(())
    }
}
