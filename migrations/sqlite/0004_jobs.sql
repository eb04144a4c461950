-- Jobs and their artifacts. Kept in step with migrations/postgres/0004_jobs.sql.

CREATE TABLE jobs (
    -- UUIDv7: time-ordered, so "newest first" is ORDER BY id DESC.
    id               TEXT    PRIMARY KEY,
    seq              INTEGER NOT NULL UNIQUE,
    tenant_id        TEXT    NOT NULL,
    type             TEXT    NOT NULL,
    -- queued | running | succeeded | failed | cancelled | dead
    status           TEXT    NOT NULL,
    idempotency_key  TEXT,
    params           TEXT    NOT NULL,
    input_key        TEXT    NOT NULL,
    progress         REAL    NOT NULL DEFAULT 0,
    stage            TEXT,
    attempts         INTEGER NOT NULL DEFAULT 0,
    error            TEXT,
    credits_charged  INTEGER NOT NULL DEFAULT 0,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    request_id       TEXT,
    created_at       INTEGER NOT NULL,
    started_at       INTEGER,
    finished_at      INTEGER,
    UNIQUE (tenant_id, idempotency_key)
) WITHOUT ROWID;
CREATE INDEX jobs_tenant ON jobs (tenant_id, id);

CREATE TABLE job_artifacts (
    job_id       TEXT    NOT NULL REFERENCES jobs (id),
    name         TEXT    NOT NULL,
    content_type TEXT    NOT NULL,
    size         INTEGER NOT NULL,
    stored_size  INTEGER NOT NULL,
    compression  TEXT    NOT NULL,
    sha256       TEXT    NOT NULL,
    tier         TEXT    NOT NULL,
    object_key   TEXT    NOT NULL,
    created_at   INTEGER NOT NULL,
    PRIMARY KEY (job_id, name)
) WITHOUT ROWID;
