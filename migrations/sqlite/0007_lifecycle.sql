-- Lifecycle tiers and the sweeper. Kept in step with migrations/postgres/0007_lifecycle.sql.
--
-- Tiers: hot -> infrequent_access -> expired (the object deleted, the row kept so the API can
-- say so). Times are epoch milliseconds, written from the sweep's own clock.

ALTER TABLE job_artifacts ADD COLUMN recompressed_at INTEGER;
ALTER TABLE job_artifacts ADD COLUMN tier_changed_at INTEGER;
-- The sweeper pages through artifacts by object key (its resumable cursor).
CREATE INDEX job_artifacts_object_key ON job_artifacts (object_key);

ALTER TABLE uploads ADD COLUMN tier TEXT NOT NULL DEFAULT 'hot';
ALTER TABLE uploads ADD COLUMN tier_changed_at INTEGER;

-- Tiers of objects no row owns (exports/ until it has rows of its own), by key.
CREATE TABLE lifecycle_objects (
    object_key      TEXT    PRIMARY KEY,
    tier            TEXT    NOT NULL,
    tier_changed_at INTEGER NOT NULL
) WITHOUT ROWID;

-- One row per sweep that may change something (dry runs are not recorded). A row without
-- finished_at is a sweep that stopped midway: the next sweep resumes it from phase + cursor
-- with the same now_ms, so it decides exactly what the first would have.
CREATE TABLE lifecycle_sweeps (
    id              INTEGER PRIMARY KEY,
    started_at      INTEGER NOT NULL,
    now_ms          INTEGER NOT NULL,
    phase           TEXT    NOT NULL,
    cursor          TEXT,
    -- The SweepReport so far (JSON).
    report          TEXT    NOT NULL,
    bytes_saved     INTEGER NOT NULL DEFAULT 0,
    objects_expired INTEGER NOT NULL DEFAULT 0,
    finished_at     INTEGER
);
