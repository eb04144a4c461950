-- Idempotency-Key on POST /api/si/ask: a retried ask replays its first answer (core::ai::replay).
CREATE TABLE ask_replays (
    tenant_id    TEXT   NOT NULL,
    key          TEXT   NOT NULL,
    request_hash TEXT   NOT NULL,
    state        TEXT   NOT NULL CHECK (state IN ('pending', 'done')),
    claimed_at   BIGINT NOT NULL,
    response     TEXT,
    PRIMARY KEY (tenant_id, key)
);
CREATE INDEX ask_replays_claimed_at ON ask_replays (claimed_at);
