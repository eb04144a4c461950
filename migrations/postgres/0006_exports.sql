-- Analytics exports: the watermark of every (dataset, format) and the intent log of its parts.
-- Kept in step with migrations/sqlite/0006_exports.sql.

CREATE TABLE export_watermarks (
    dataset   TEXT   NOT NULL,
    format    TEXT   NOT NULL,
    watermark BIGINT NOT NULL,
    PRIMARY KEY (dataset, format)
);

CREATE TABLE export_parts (
    dataset  TEXT   NOT NULL,
    format   TEXT   NOT NULL,
    from_seq BIGINT NOT NULL,
    to_seq   BIGINT NOT NULL,
    state    TEXT   NOT NULL,
    PRIMARY KEY (dataset, format, from_seq)
);
CREATE INDEX export_parts_state ON export_parts (state, dataset, format);

CREATE TABLE export_files (
    object_key TEXT   PRIMARY KEY,
    dataset    TEXT   NOT NULL,
    format     TEXT   NOT NULL,
    from_seq   BIGINT NOT NULL,
    to_seq     BIGINT NOT NULL,
    dt         TEXT   NOT NULL,
    rows       BIGINT NOT NULL,
    bytes      BIGINT NOT NULL,
    sha256     TEXT   NOT NULL
);
CREATE INDEX export_files_part ON export_files (dataset, format, from_seq);
