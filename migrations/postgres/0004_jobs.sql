-- Jobs and their artifacts. Kept in step with migrations/sqlite/0004_jobs.sql.

CREATE SEQUENCE jobs_seq;

CREATE TABLE jobs (
    id               TEXT        PRIMARY KEY,
    seq              BIGINT      NOT NULL UNIQUE DEFAULT nextval('jobs_seq'),
    tenant_id        TEXT        NOT NULL,
    type             TEXT        NOT NULL,
    status           TEXT        NOT NULL,
    idempotency_key  TEXT,
    params           TEXT        NOT NULL,
    input_key        TEXT        NOT NULL,
    progress         REAL        NOT NULL DEFAULT 0,
    stage            TEXT,
    attempts         INTEGER     NOT NULL DEFAULT 0,
    error            TEXT,
    credits_charged  BIGINT      NOT NULL DEFAULT 0,
    cancel_requested BOOLEAN     NOT NULL DEFAULT false,
    request_id       TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    started_at       TIMESTAMPTZ,
    finished_at      TIMESTAMPTZ,
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX jobs_tenant ON jobs (tenant_id, id);

CREATE TABLE job_artifacts (
    job_id       TEXT        NOT NULL REFERENCES jobs (id),
    name         TEXT        NOT NULL,
    content_type TEXT        NOT NULL,
    size         BIGINT      NOT NULL,
    stored_size  BIGINT      NOT NULL,
    compression  TEXT        NOT NULL,
    sha256       TEXT        NOT NULL,
    tier         TEXT        NOT NULL,
    object_key   TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (job_id, name)
);
