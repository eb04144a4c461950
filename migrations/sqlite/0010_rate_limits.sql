-- Cost-guard counters per fixed UTC window. Kept in step with the other dialect's
-- 0010_rate_limits.sql; rate-limit buckets need no table here: the embedded shape has one
-- server, which keeps them in memory.
--
-- Billable quantity counted per tenant, metric (tokens_per_day, job_runs_per_hour) and window
-- start (unix seconds), in the transaction that enqueues the work.
CREATE TABLE cost_counters (
    tenant_id    TEXT    NOT NULL,
    metric       TEXT    NOT NULL,
    window_start INTEGER NOT NULL,
    used         INTEGER NOT NULL CHECK (used >= 0),
    PRIMARY KEY (tenant_id, metric, window_start)
);
