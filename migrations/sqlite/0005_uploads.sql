-- Direct uploads and their virus-scan status. Kept in step with migrations/postgres/0005_uploads.sql.
CREATE TABLE uploads (
    -- uploads/{tenant}/{uuid}: never derived from user input.
    key          TEXT    PRIMARY KEY,
    seq          INTEGER NOT NULL UNIQUE,
    tenant_id    TEXT    NOT NULL,
    -- Sanitized; metadata only.
    filename     TEXT    NOT NULL,
    content_type TEXT    NOT NULL,
    size         INTEGER NOT NULL,
    sha256       TEXT    NOT NULL,
    -- pending | clean | infected | scan_failed | skipped
    scan         TEXT    NOT NULL,
    signature    TEXT,
    scan_error   TEXT,
    -- Where the bytes are now (moved under quarantine/ when infected).
    object_key   TEXT    NOT NULL,
    request_id   TEXT,
    created_at   INTEGER NOT NULL,
    scanned_at   INTEGER
) WITHOUT ROWID;
CREATE INDEX uploads_tenant ON uploads (tenant_id);
