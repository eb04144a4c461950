-- Effects of the `probe` queue: one row per probe key, however often it is delivered. Used by
-- `cognomega probe` to check a worker fleet end to end, and by the crash tests.
CREATE TABLE queue_probe_effects (
    key        TEXT        PRIMARY KEY,
    deliveries INTEGER     NOT NULL DEFAULT 1,
    first_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
