-- Kept in step with migrations/sqlite/0015_voice_sessions.sql.
-- Realtime voice sessions (GET /voice/sessions): the audio seconds so far (milliseconds), kept
-- with every chunk, so a session is billed once when it closes — by its own process, or, when
-- that process died (its heartbeat stopped), by the sweep of any other.
CREATE TABLE voice_sessions (
    id           TEXT    NOT NULL PRIMARY KEY,
    tenant_id    TEXT    NOT NULL,
    audio_ms     BIGINT NOT NULL DEFAULT 0,
    opened_at    BIGINT NOT NULL,
    heartbeat_at BIGINT NOT NULL,
    closed_at    BIGINT
);
CREATE INDEX voice_sessions_open ON voice_sessions (tenant_id) WHERE closed_at IS NULL;
CREATE INDEX voice_sessions_heartbeat ON voice_sessions (heartbeat_at) WHERE closed_at IS NULL;
