-- The durable queue (PostgreSQL shape). Kept in step with migrations/sqlite/0001_queue.sql.

CREATE TABLE queue_messages (
    id              BIGSERIAL   PRIMARY KEY,
    queue           TEXT        NOT NULL,
    -- 0 = pending (ready, delayed, or retry backoff: see visible_at), 1 = leased (visible_at is
    -- the lease expiry, so an expired lease is simply visible again), 2 = acked (retained only
    -- when the queue sets retain_acked).
    state           SMALLINT    NOT NULL DEFAULT 0,
    attempts        INTEGER     NOT NULL DEFAULT 0,
    body            BYTEA       NOT NULL,
    content_type    TEXT,
    request_id      TEXT,
    idempotency_key TEXT,
    enqueued_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    visible_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    lease_token     BIGINT,
    last_error      TEXT,
    original_queue  TEXT,
    failed_attempts INTEGER,
    dead_at         TIMESTAMPTZ,
    acked_at        TIMESTAMPTZ
);

-- A queue table churns: every row is inserted, updated and deleted within seconds. Vacuum it
-- eagerly so dead tuples do not pile up under the claim index.
ALTER TABLE queue_messages SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_analyze_scale_factor = 0.02,
    fillfactor = 80
);

CREATE INDEX queue_messages_claim ON queue_messages (queue, visible_at, id) WHERE state < 2;
CREATE INDEX queue_messages_acked ON queue_messages (queue, acked_at) WHERE state = 2;
CREATE INDEX queue_messages_dead ON queue_messages (original_queue, dead_at) WHERE dead_at IS NOT NULL;

CREATE TABLE queue_dedup (
    queue      TEXT        NOT NULL,
    key        TEXT        NOT NULL,
    message_id BIGINT      NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (queue, key)
);

CREATE TABLE queue_settings (
    queue      TEXT        PRIMARY KEY,
    settings   TEXT        NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE queue_drain_histogram (
    queue  TEXT     NOT NULL,
    bucket SMALLINT NOT NULL,
    count  BIGINT   NOT NULL,
    sum_ms BIGINT   NOT NULL,
    PRIMARY KEY (queue, bucket)
);

-- Fencing tokens: one value per claim.
CREATE SEQUENCE queue_lease_token_seq;
