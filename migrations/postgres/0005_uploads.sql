-- Direct uploads and their virus-scan status. Kept in step with migrations/sqlite/0005_uploads.sql.
CREATE SEQUENCE uploads_seq;
CREATE TABLE uploads (
    key          TEXT        PRIMARY KEY,
    seq          BIGINT      NOT NULL UNIQUE DEFAULT nextval('uploads_seq'),
    tenant_id    TEXT        NOT NULL,
    filename     TEXT        NOT NULL,
    content_type TEXT        NOT NULL,
    size         BIGINT      NOT NULL,
    sha256       TEXT        NOT NULL,
    scan         TEXT        NOT NULL,
    signature    TEXT,
    scan_error   TEXT,
    object_key   TEXT        NOT NULL,
    request_id   TEXT,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    scanned_at   TIMESTAMPTZ
);
CREATE INDEX uploads_tenant ON uploads (tenant_id);
