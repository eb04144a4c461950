-- The transactional outbox (core::outbox): messages a write staged in its transaction, sent to
-- a broker that cannot join it (Cloudflare Queues) by a relay after the commit. The native
-- queue lives in this database, so the native hosts only read it; the table is on both
-- backends so the outbox's statements are tested on both. Times are epoch milliseconds.
-- Kept in step with migrations/sqlite/0013_outbox.sql.
CREATE TABLE outbox (
    id            BIGSERIAL PRIMARY KEY,
    batch         TEXT    NOT NULL,
    queue         TEXT    NOT NULL,
    body          TEXT    NOT NULL,
    request_id    TEXT,
    created_at    BIGINT  NOT NULL,
    attempts      INTEGER NOT NULL DEFAULT 0,
    claim         TEXT,
    claimed_until BIGINT,
    sent_at       BIGINT,
    last_error    TEXT
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL;
CREATE INDEX outbox_batch ON outbox (batch) WHERE sent_at IS NULL;
CREATE INDEX outbox_claim ON outbox (claim);
CREATE INDEX outbox_sent_at ON outbox (sent_at) WHERE sent_at IS NOT NULL;
