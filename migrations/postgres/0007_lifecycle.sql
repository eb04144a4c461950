-- Lifecycle tiers and the sweeper. Kept in step with migrations/sqlite/0007_lifecycle.sql.
--
-- Tiers: hot -> infrequent_access -> expired (the object deleted, the row kept so the API can
-- say so). The sweeper's times are epoch milliseconds (BIGINT), not TIMESTAMPTZ: they come
-- from the sweep's own clock (injectable, so tests age objects without waiting), and both
-- backends then share one representation.

ALTER TABLE job_artifacts ADD COLUMN recompressed_at BIGINT;
ALTER TABLE job_artifacts ADD COLUMN tier_changed_at BIGINT;
CREATE INDEX job_artifacts_object_key ON job_artifacts (object_key);

ALTER TABLE uploads ADD COLUMN tier TEXT NOT NULL DEFAULT 'hot';
ALTER TABLE uploads ADD COLUMN tier_changed_at BIGINT;

CREATE TABLE lifecycle_objects (
    object_key      TEXT   PRIMARY KEY,
    tier            TEXT   NOT NULL,
    tier_changed_at BIGINT NOT NULL
);

CREATE TABLE lifecycle_sweeps (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    started_at      BIGINT NOT NULL,
    now_ms          BIGINT NOT NULL,
    phase           TEXT   NOT NULL,
    cursor          TEXT,
    report          TEXT   NOT NULL,
    bytes_saved     BIGINT NOT NULL DEFAULT 0,
    objects_expired BIGINT NOT NULL DEFAULT 0,
    finished_at     BIGINT
);
