-- Rate-limit buckets shared by every server, and cost-guard counters per fixed UTC window.
-- Kept in step with the other dialect's 0010_rate_limits.sql.
--
-- UNLOGGED: a bucket check writes no WAL, so its commit does not wait for the disk; a crash
-- empties the table, which only gives every caller a full bucket again.
CREATE UNLOGGED TABLE rate_limit_buckets (
    key        TEXT             PRIMARY KEY,
    tokens     DOUBLE PRECISION NOT NULL,
    -- The last check's answer: `tokens` alone cannot tell a refusal from a pass that took the
    -- last whole token.
    allowed    BOOLEAN          NOT NULL,
    updated_at TIMESTAMPTZ      NOT NULL
);

-- Billable quantity counted per tenant, metric (tokens_per_day, job_runs_per_hour) and window
-- start (unix seconds), in the transaction that enqueues the work.
CREATE TABLE cost_counters (
    tenant_id    TEXT   NOT NULL,
    metric       TEXT   NOT NULL,
    window_start BIGINT NOT NULL,
    used         BIGINT NOT NULL CHECK (used >= 0),
    PRIMARY KEY (tenant_id, metric, window_start)
);
