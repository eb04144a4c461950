-- The hash chain over the ledger, sealed after the fact by `cognomega audit` and the
-- `ledger-seal` schedule (the settlement path never reads or hashes). Row `pos` seals ledger
-- entry `entry_seq`: hash = SHA-256(hash of pos - 1 || the entry's canonical bytes), the genesis
-- predecessor being 32 zero bytes, so editing or deleting a sealed entry breaks its link.
-- `entry_id` keeps the sealed entry's id so a deleted entry can still be named. Positions follow
-- `entry_seq` (see stores/src/ledger_chain.rs). Kept in step with
-- migrations/postgres/0009_ledger_chain.sql. Times: epoch ms.
CREATE TABLE ledger_chain (
    pos       INTEGER PRIMARY KEY,
    entry_seq INTEGER NOT NULL UNIQUE,
    entry_id  TEXT    NOT NULL,
    hash      TEXT    NOT NULL,
    sealed_at INTEGER NOT NULL
);
