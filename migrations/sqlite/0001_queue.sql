-- The durable queue (SQLite shape). Kept in step with migrations/postgres/0001_queue.sql.
-- Timestamps are INTEGER milliseconds since the Unix epoch: SQLite has no timestamp type, and
-- integer comparisons keep the claim index cheap.

CREATE TABLE queue_messages (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    queue           TEXT    NOT NULL,
    -- 0 = pending (ready, delayed, or retry backoff: see visible_at), 1 = leased (visible_at is
    -- the lease expiry, so an expired lease is simply visible again), 2 = acked (retained only
    -- when the queue sets retain_acked).
    state           INTEGER NOT NULL DEFAULT 0,
    attempts        INTEGER NOT NULL DEFAULT 0,
    body            BLOB    NOT NULL,
    content_type    TEXT,
    request_id      TEXT,
    idempotency_key TEXT,
    enqueued_at     INTEGER NOT NULL,
    visible_at      INTEGER NOT NULL,
    lease_token     INTEGER,
    last_error      TEXT,
    -- Set when the message was dead-lettered: where it failed, after how many deliveries, when.
    original_queue  TEXT,
    failed_attempts INTEGER,
    dead_at         INTEGER,
    acked_at        INTEGER
);

-- The claim path: visible messages of one queue in visibility order.
CREATE INDEX queue_messages_claim ON queue_messages (queue, visible_at, id) WHERE state < 2;
CREATE INDEX queue_messages_acked ON queue_messages (queue, acked_at) WHERE state = 2;
CREATE INDEX queue_messages_dead ON queue_messages (original_queue, dead_at) WHERE dead_at IS NOT NULL;

-- Idempotency keys of sends, valid until expires_at (the queue's dedup window).
CREATE TABLE queue_dedup (
    queue      TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    message_id INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (queue, key)
) WITHOUT ROWID;

-- Settings of every declared queue, so any process can show stats and prune.
CREATE TABLE queue_settings (
    queue      TEXT    PRIMARY KEY,
    settings   TEXT    NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;

-- Drain latency (enqueue -> ack), bucketed as in core's DRAIN_BUCKETS_MS.
CREATE TABLE queue_drain_histogram (
    queue  TEXT    NOT NULL,
    bucket INTEGER NOT NULL,
    count  INTEGER NOT NULL,
    sum_ms INTEGER NOT NULL,
    PRIMARY KEY (queue, bucket)
) WITHOUT ROWID;

-- Monotonic counters (SQLite has no sequences): lease_token is the fencing token source.
CREATE TABLE queue_counters (
    name  TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;
INSERT INTO queue_counters (name, value) VALUES ('lease_token', 0);
