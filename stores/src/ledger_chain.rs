//! The hash chain over the ledger: sealing entries after the fact, and verifying the chain
//! against the current ledger rows.
//!
//! Row `pos` of `ledger_chain` seals one ledger entry: `hash(pos) = SHA-256(hash(pos - 1) ||
//! canonical bytes of the entry)`, with 32 zero bytes before position 1. Editing a sealed
//! entry changes its recomputed hash; deleting one leaves its chain row without a ledger row.
//!
//! The settlement path never reads or hashes: sealing runs later, from the `ledger-seal`
//! schedule (a `seal_ledger` maintenance task) and at the start of `cognomega audit`.
//!
//! # Why sealing never forks, never misses an entry and never scans the whole ledger
//!
//! Positions follow `seq`: every sealing transaction reads the chain head (highest `pos`, and
//! the `entry_seq` it seals) and seals the entries with `seq` above the head's, in `seq` order.
//! That is only complete if no entry can still appear below the head later, so sealing stops at
//! a *safely visible* `seq`:
//!
//! - SQLite has one writer; a sealing transaction is `BEGIN IMMEDIATE`, so every `seq` it sees
//!   is committed and no lower one can commit afterwards.
//! - On PostgreSQL a sequence hands out numbers before their transactions commit, so a lower
//!   `seq` can become visible after a higher one. Like the exports, the sealer first takes
//!   `SHARE` on `ledger_entries` for one `MAX(seq)` read: the lock waits for every inserting
//!   transaction (an `INSERT` holds `ROW EXCLUSIVE` until it commits), so no entry at or below
//!   that `MAX(seq)` can appear later. Settlements wait at most that one read.
//!
//! Hence each run reads only the entries above the head (an index range on `seq`, no anti-join
//! over the ledger), and an unsealed entry at or below the head can only have been inserted
//! behind the chain's back: [`verify`] reports it.
//!
//! Concurrent sealers cannot fork the chain: every sealing transaction first serializes on the
//! chain (SQLite: the single writer; PostgreSQL: a transaction-scoped advisory lock), then reads
//! the head, so the second one continues from the first one's head. Sealing twice seals nothing
//! new. Each transaction seals at most [`SEAL_BATCH`] entries, so a first seal of millions of
//! entries never holds the SQLite writer for long.

use cognomega_core::sql::Executor as _;
use futures::TryStreamExt;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::QueryBuilder;

use crate::audit::{Finding, Problem, MAX_LISTED};
use crate::queue::now_ms;
use crate::{Database, StoreError};

/// Entries sealed per transaction at most.
pub const SEAL_BATCH: usize = 10_000;

/// The predecessor of position 1.
pub const GENESIS: [u8; 32] = [0; 32];

/// The advisory lock that serializes PostgreSQL sealers (`ledgerch` in ASCII).
const PG_SEAL_LOCK: i64 = 0x6c65_6467_6572_6368;

/// A SQLite sealing transaction: the writer from the start (so it reads a head no other writer
/// can move), committed without waiting for the disk because a lost seal is simply sealed again,
/// with the same hashes.
const SQLITE_SEAL_BEGIN: &str = "PRAGMA synchronous = NORMAL; BEGIN IMMEDIATE";

/// A ledger entry as the chain commits to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainedEntry {
    /// Insertion order.
    pub seq: i64,
    /// Settlement id.
    pub id: String,
    /// Tenant.
    pub tenant_id: String,
    /// Signed credits.
    pub delta: i64,
    /// `usage`, `grant` or `adjustment`.
    pub kind: String,
    /// The source's reference, if any.
    pub reference: Option<String>,
    /// Creation time in microseconds since the Unix epoch (SQLite keeps milliseconds).
    pub created_at_us: i64,
}

impl ChainedEntry {
    /// The canonical bytes: `seq`, `delta` and `created_at_us` as 8-byte big-endian integers,
    /// strings as a 4-byte big-endian length and their UTF-8, `reference` as one byte (0 = none,
    /// 1 = some) before its string, in the order seq, id, tenant_id, delta, kind, reference,
    /// created_at_us. Length prefixes make the encoding unambiguous.
    #[must_use]
    pub fn canonical_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(64 + self.id.len() + self.tenant_id.len());
        out.extend_from_slice(&self.seq.to_be_bytes());
        push_str(&mut out, &self.id);
        push_str(&mut out, &self.tenant_id);
        out.extend_from_slice(&self.delta.to_be_bytes());
        push_str(&mut out, &self.kind);
        match &self.reference {
            None => out.push(0),
            Some(r) => {
                out.push(1);
                push_str(&mut out, r);
            }
        }
        out.extend_from_slice(&self.created_at_us.to_be_bytes());
        out
    }

    /// `SHA-256(prev || canonical bytes)`.
    #[must_use]
    pub fn link(&self, prev: &[u8; 32]) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(prev);
        h.update(self.canonical_bytes());
        h.finalize().into()
    }
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    // Ledger strings are ids and kinds, far below 4 GiB.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

/// Lowercase hex.
#[must_use]
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn unhex(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || !s.is_ascii() {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).ok()?;
    }
    Some(out)
}

/// The last sealed position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChainHead {
    /// Chain position (1-based).
    pub pos: i64,
    /// The ledger `seq` it seals.
    pub entry_seq: i64,
    /// Its hash (hex SHA-256).
    pub hash: String,
}

/// What one [`seal`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SealReport {
    /// Entries sealed now.
    pub sealed: u64,
    /// The head afterwards (`None`: the ledger is empty).
    pub head: Option<ChainHead>,
}

/// Seals every ledger entry not sealed yet, in `seq` order; `progress` gets the number sealed
/// by each transaction.
///
/// # Errors
/// Database errors.
pub async fn seal(
    db: &Database,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<SealReport, StoreError> {
    let upto = match db {
        Database::Sqlite(_) => i64::MAX,
        Database::Postgres(p) => {
            let mut tx = p.pool.begin().await?;
            sqlx::query("LOCK TABLE ledger_entries IN SHARE MODE")
                .execute(&mut *tx)
                .await?;
            let max: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(seq), 0) FROM ledger_entries")
                .fetch_one(&mut *tx)
                .await?;
            tx.commit().await?;
            max
        }
    };
    let mut report = SealReport::default();
    loop {
        let (n, head) = seal_batch(db, upto).await?;
        report.sealed += n as u64;
        report.head = head;
        progress(n as u64);
        if n < SEAL_BATCH {
            return Ok(report);
        }
    }
}

type EntryRow = (i64, String, String, i64, String, Option<String>);

/// One sealing transaction: up to [`SEAL_BATCH`] entries above the head, at most `upto`.
async fn seal_batch(db: &Database, upto: i64) -> Result<(usize, Option<ChainHead>), StoreError> {
    let limit = i64::try_from(SEAL_BATCH).unwrap_or(i64::MAX);
    match db {
        Database::Sqlite(s) => {
            let mut tx = s.begin_relaxed(SQLITE_SEAL_BEGIN).await?;
            let head = read_head_sqlite(&mut tx).await?;
            let after = head.as_ref().map_or(0, |h| h.entry_seq);
            type SqliteRow = (i64, String, String, i64, String, Option<String>, i64);
            let rows: Vec<SqliteRow> = sqlx::query_as(
                "SELECT seq, id, tenant_id, delta, kind, ref, created_at FROM ledger_entries
                     WHERE seq > ?1 AND seq <= ?2 ORDER BY seq LIMIT ?3",
            )
            .bind(after)
            .bind(upto)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
            let entries: Vec<ChainedEntry> = rows
                .into_iter()
                .map(|(seq, id, tenant_id, delta, kind, reference, ms)| {
                    entry((seq, id, tenant_id, delta, kind, reference), ms * 1000)
                })
                .collect();
            let (links, new_head) = chain_links(head, &entries);
            let now = now_ms().0;
            for chunk in links.chunks(1000) {
                let mut qb: QueryBuilder<sqlx::Sqlite> = QueryBuilder::new(
                    "INSERT INTO ledger_chain (pos, entry_seq, entry_id, hash, sealed_at) ",
                );
                qb.push_values(chunk, |mut b, (pos, e, hash)| {
                    b.push_bind(*pos)
                        .push_bind(e.seq)
                        .push_bind(e.id.as_str())
                        .push_bind(hash.as_str())
                        .push_bind(now);
                });
                qb.build().execute(&mut *tx).await?;
            }
            tx.commit().await?;
            Ok((entries.len(), new_head))
        }
        Database::Postgres(p) => {
            let mut tx = p.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock($1)")
                .bind(PG_SEAL_LOCK)
                .execute(&mut *tx)
                .await?;
            let head: Option<(i64, i64, String)> = sqlx::query_as(
                "SELECT pos, entry_seq, hash FROM ledger_chain ORDER BY pos DESC LIMIT 1",
            )
            .fetch_optional(&mut *tx)
            .await?;
            let head = head.map(|(pos, entry_seq, hash)| ChainHead {
                pos,
                entry_seq,
                hash,
            });
            let after = head.as_ref().map_or(0, |h| h.entry_seq);
            type PgRow = (
                i64,
                String,
                String,
                i64,
                String,
                Option<String>,
                chrono::DateTime<chrono::Utc>,
            );
            let rows: Vec<PgRow> = sqlx::query_as(
                "SELECT seq, id, tenant_id, delta, kind, ref, created_at FROM ledger_entries
                 WHERE seq > $1 AND seq <= $2 ORDER BY seq LIMIT $3",
            )
            .bind(after)
            .bind(upto)
            .bind(limit)
            .fetch_all(&mut *tx)
            .await?;
            let entries: Vec<ChainedEntry> = rows
                .into_iter()
                .map(|(seq, id, tenant_id, delta, kind, reference, at)| {
                    entry(
                        (seq, id, tenant_id, delta, kind, reference),
                        at.timestamp_micros(),
                    )
                })
                .collect();
            let (links, new_head) = chain_links(head, &entries);
            if !links.is_empty() {
                let pos: Vec<i64> = links.iter().map(|l| l.0).collect();
                let seqs: Vec<i64> = links.iter().map(|l| l.1.seq).collect();
                let ids: Vec<&str> = links.iter().map(|l| l.1.id.as_str()).collect();
                let hashes: Vec<&str> = links.iter().map(|l| l.2.as_str()).collect();
                // clock_timestamp: now() is the transaction's start, before the lock wait.
                sqlx::query(
                    "INSERT INTO ledger_chain (pos, entry_seq, entry_id, hash, sealed_at)
                     SELECT *, clock_timestamp()
                     FROM UNNEST($1::bigint[], $2::bigint[], $3::text[], $4::text[])",
                )
                .bind(&pos)
                .bind(&seqs)
                .bind(&ids)
                .bind(&hashes)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok((entries.len(), new_head))
        }
    }
}

async fn read_head_sqlite(
    tx: &mut sqlx::Transaction<'_, sqlx::Sqlite>,
) -> Result<Option<ChainHead>, StoreError> {
    let head: Option<(i64, i64, String)> =
        sqlx::query_as("SELECT pos, entry_seq, hash FROM ledger_chain ORDER BY pos DESC LIMIT 1")
            .fetch_optional(&mut **tx)
            .await?;
    Ok(head.map(|(pos, entry_seq, hash)| ChainHead {
        pos,
        entry_seq,
        hash,
    }))
}

fn entry(row: EntryRow, created_at_us: i64) -> ChainedEntry {
    let (seq, id, tenant_id, delta, kind, reference) = row;
    ChainedEntry {
        seq,
        id,
        tenant_id,
        delta,
        kind,
        reference,
        created_at_us,
    }
}

/// The chain rows (position, entry, hex hash) continuing from `head`, and the new head.
fn chain_links(
    head: Option<ChainHead>,
    entries: &[ChainedEntry],
) -> (Vec<(i64, &ChainedEntry, String)>, Option<ChainHead>) {
    let mut pos = head.as_ref().map_or(0, |h| h.pos);
    // A stored head that is not hex was tampered with; continuing from its zero bytes keeps
    // the chain growing, and verification reports the tampered row.
    let mut prev = head
        .as_ref()
        .and_then(|h| unhex(&h.hash))
        .unwrap_or(GENESIS);
    let mut out = Vec::with_capacity(entries.len());
    for e in entries {
        pos += 1;
        prev = e.link(&prev);
        out.push((pos, e, hex(&prev)));
    }
    let new_head = out
        .last()
        .map(|(pos, e, hash)| ChainHead {
            pos: *pos,
            entry_seq: e.seq,
            hash: hash.clone(),
        })
        .or(head);
    (out, new_head)
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ChainVerification {
    /// Chain rows walked.
    pub length: u64,
    /// The last position.
    pub head: Option<ChainHead>,
    /// Ledger entries above the head, not sealed yet (not a finding: the next seal takes them).
    pub unsealed_above_head: u64,
    /// Every problem found, at most [`MAX_LISTED`] per problem.
    pub findings: Vec<Finding>,
    /// Problems found in all, listed or not.
    pub problems: u64,
}

impl ChainVerification {
    fn push(&mut self, f: Finding) {
        self.problems += 1;
        let listed = self
            .findings
            .iter()
            .filter(|x| x.problem == f.problem)
            .count();
        if listed < MAX_LISTED {
            self.findings.push(f);
        }
    }
}

/// A chain row with the ledger row it seals, if that still exists.
struct Walked {
    pos: i64,
    entry_seq: i64,
    entry_id: String,
    hash: String,
    entry: Option<ChainedEntry>,
}

/// Ledger entries at or below seq `$1` (the chain head's) that no chain row seals, at most
/// `$2`: `seq, id, tenant_id`.
const UNSEALED_BELOW: &str = "SELECT seq, id, tenant_id FROM ledger_entries e WHERE seq <= $1
       AND NOT EXISTS (SELECT 1 FROM ledger_chain c WHERE c.entry_seq = e.seq)
     ORDER BY seq LIMIT $2";

/// How many ledger entries lie above seq `$1` (the chain head's).
const COUNT_ABOVE: &str = "SELECT COUNT(*) FROM ledger_entries WHERE seq > $1";

/// Walks the chain in position order and recomputes every hash from the current ledger row,
/// then looks for unsealed entries at or below the head. `progress` gets the rows walked, in
/// steps.
///
/// Each position is checked against its own stored predecessor, so one edited entry is one
/// finding (not one per later position), and a rewritten chain row shows up at its successor.
///
/// # Errors
/// Database errors.
pub async fn verify(
    db: &Database,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<ChainVerification, StoreError> {
    let mut out = ChainVerification::default();
    let mut walker = Walker::default();
    const SQL: &str = "SELECT c.pos, c.entry_seq, c.entry_id, c.hash,
                e.seq, e.id, e.tenant_id, e.delta, e.kind, e.ref, e.created_at
         FROM ledger_chain c LEFT JOIN ledger_entries e ON e.seq = c.entry_seq
         ORDER BY c.pos";
    match db {
        Database::Sqlite(s) => {
            type R = (
                i64,
                i64,
                String,
                String,
                Option<i64>,
                Option<String>,
                Option<String>,
                Option<i64>,
                Option<String>,
                Option<String>,
                Option<i64>,
            );
            let mut rows = sqlx::query_as::<_, R>(SQL).fetch(&s.read);
            while let Some(r) = rows.try_next().await? {
                let entry = walked_entry(r.4, r.5, r.6, r.7, r.8, r.9, r.10.map(|ms| ms * 1000));
                walker.step(&mut out, walked(r.0, r.1, r.2, r.3, entry), progress);
            }
        }
        Database::Postgres(p) => {
            type R = (
                i64,
                i64,
                String,
                String,
                Option<i64>,
                Option<String>,
                Option<String>,
                Option<i64>,
                Option<String>,
                Option<String>,
                Option<chrono::DateTime<chrono::Utc>>,
            );
            let mut rows = sqlx::query_as::<_, R>(SQL).fetch(&p.pool);
            while let Some(r) = rows.try_next().await? {
                let us = r.10.map(|t| t.timestamp_micros());
                let entry = walked_entry(r.4, r.5, r.6, r.7, r.8, r.9, us);
                walker.step(&mut out, walked(r.0, r.1, r.2, r.3, entry), progress);
            }
        }
    }
    progress(walker.unreported);
    out.head = walker.head;
    let head_seq = out.head.as_ref().map_or(0, |h| h.entry_seq);
    let behind = crate::sql::Reader(db)
        .query(
            UNSEALED_BELOW,
            &[head_seq.into(), crate::audit::listed_limit().into()],
        )
        .await?;
    for r in &behind {
        let seq = r.int(0)?;
        out.push(Finding {
            problem: Problem::Unsealed,
            pos: None,
            seq: Some(seq),
            id: Some(r.text(1)?),
            tenant_id: Some(r.text(2)?),
            detail: format!(
                "entry {seq} is below the chain head (seq {head_seq}) but was never sealed: \
                 it was inserted behind the chain's back"
            ),
        });
    }
    let above = cognomega_core::sql::Executor::query_opt(
        &mut crate::sql::Reader(db),
        COUNT_ABOVE,
        &[head_seq.into()],
    )
    .await?
    .map(|r| r.int(0))
    .transpose()?;
    out.unsealed_above_head = above.map_or(0, |n| u64::try_from(n).unwrap_or(0));
    Ok(out)
}

#[allow(clippy::too_many_arguments)]
fn walked_entry(
    seq: Option<i64>,
    id: Option<String>,
    tenant_id: Option<String>,
    delta: Option<i64>,
    kind: Option<String>,
    reference: Option<String>,
    created_at_us: Option<i64>,
) -> Option<ChainedEntry> {
    Some(ChainedEntry {
        seq: seq?,
        id: id?,
        tenant_id: tenant_id?,
        delta: delta?,
        kind: kind?,
        reference,
        created_at_us: created_at_us?,
    })
}

fn walked(
    pos: i64,
    entry_seq: i64,
    entry_id: String,
    hash: String,
    entry: Option<ChainedEntry>,
) -> Walked {
    Walked {
        pos,
        entry_seq,
        entry_id,
        hash,
        entry,
    }
}

/// The walk's state between rows.
#[derive(Default)]
struct Walker {
    prev: Option<[u8; 32]>,
    head: Option<ChainHead>,
    unreported: u64,
}

impl Walker {
    fn step(&mut self, out: &mut ChainVerification, row: Walked, progress: &(dyn Fn(u64) + Sync)) {
        out.length += 1;
        let expected_pos = self.head.as_ref().map_or(1, |h| h.pos + 1);
        if row.pos != expected_pos {
            out.push(Finding {
                problem: Problem::PositionMissing,
                pos: Some(expected_pos),
                seq: None,
                id: None,
                tenant_id: None,
                detail: format!(
                    "chain positions {expected_pos}..{} are missing: chain rows were deleted",
                    row.pos - 1
                ),
            });
        }
        let prev = self.prev.unwrap_or(GENESIS);
        // Compared as bytes: formatting a million hashes as hex costs more than hashing.
        let stored = unhex(&row.hash);
        match &row.entry {
            None => out.push(Finding {
                problem: Problem::Deleted,
                pos: Some(row.pos),
                seq: Some(row.entry_seq),
                id: Some(row.entry_id.clone()),
                tenant_id: None,
                detail: format!(
                    "ledger entry {} ({}) sealed at position {} no longer exists",
                    row.entry_seq, row.entry_id, row.pos
                ),
            }),
            Some(e) => {
                if stored != Some(e.link(&prev)) {
                    out.push(Finding {
                        problem: Problem::Altered,
                        pos: Some(row.pos),
                        seq: Some(e.seq),
                        id: Some(e.id.clone()),
                        tenant_id: Some(e.tenant_id.clone()),
                        detail: format!(
                            "ledger entry {} ({}) does not match the hash sealed at position {}: \
                             it (or the chain row) was changed after sealing",
                            e.seq, e.id, row.pos
                        ),
                    });
                }
            }
        }
        // The next row links to what is stored, so an edit is reported once.
        self.prev = Some(stored.unwrap_or(GENESIS));
        self.head = Some(ChainHead {
            pos: row.pos,
            entry_seq: row.entry_seq,
            hash: row.hash,
        });
        self.unreported += 1;
        if self.unreported == 10_000 {
            progress(self.unreported);
            self.unreported = 0;
        }
    }
}

/// The hash stored at chain position `$1`.
const HASH_AT: &str = "SELECT hash FROM ledger_chain WHERE pos = $1";

/// The hash stored at `pos`, if the chain has it (to compare with an earlier report's head).
///
/// # Errors
/// Database errors.
pub async fn hash_at(db: &Database, pos: i64) -> Result<Option<String>, StoreError> {
    let row = cognomega_core::sql::Executor::query_opt(
        &mut crate::sql::Reader(db),
        HASH_AT,
        &[pos.into()],
    )
    .await?;
    Ok(row.map(|r| r.text(0)).transpose()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ChainedEntry {
        ChainedEntry {
            seq: 7,
            id: "usage-7".into(),
            tenant_id: "t1".into(),
            delta: -3,
            kind: "usage".into(),
            reference: Some("k".into()),
            created_at_us: 1_700_000_000_000_000,
        }
    }

    #[test]
    fn every_field_changes_the_link() {
        let base = sample().link(&GENESIS);
        let edits: [fn(&mut ChainedEntry); 7] = [
            |e| e.seq += 1,
            |e| e.id.push('x'),
            |e| e.tenant_id.push('x'),
            |e| e.delta -= 1,
            |e| e.kind = "grant".into(),
            |e| e.reference = None,
            |e| e.created_at_us += 1,
        ];
        for edit in edits {
            let mut e = sample();
            edit(&mut e);
            assert_ne!(e.link(&GENESIS), base, "{e:?}");
        }
        assert_ne!(sample().link(&[1; 32]), base);
    }

    #[test]
    fn strings_are_length_prefixed() {
        // Without prefixes ("ab","c") and ("a","bc") would encode alike.
        let mut a = sample();
        a.id = "ab".into();
        a.tenant_id = "c".into();
        let mut b = sample();
        b.id = "a".into();
        b.tenant_id = "bc".into();
        assert_ne!(a.canonical_bytes(), b.canonical_bytes());
        let mut none = sample();
        none.reference = None;
        let mut empty = sample();
        empty.reference = Some(String::new());
        assert_ne!(none.canonical_bytes(), empty.canonical_bytes());
    }

    #[test]
    fn hex_round_trips() {
        let h = sample().link(&GENESIS);
        assert_eq!(unhex(&hex(&h)), Some(h));
        assert_eq!(unhex("zz"), None);
    }
}
