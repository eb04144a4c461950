-- Periodic schedules: the leader lease (one row, renewed while the leader lives) and every
-- tick enqueued, unique per (schedule, tick time), so no tick is ever enqueued twice.
-- Times are Unix milliseconds. Kept in step with the other dialect's 0008_schedules.sql.
CREATE TABLE schedule_leader (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    holder     TEXT    NOT NULL,
    term       BIGINT  NOT NULL,
    expires_at BIGINT  NOT NULL
);

CREATE TABLE schedule_ticks (
    schedule    TEXT   NOT NULL,
    tick_at     BIGINT NOT NULL,
    enqueued_at BIGINT NOT NULL,
    enqueued_by TEXT   NOT NULL,
    message_id  BIGINT,
    PRIMARY KEY (schedule, tick_at)
);
