-- Analytics exports: the watermark of every (dataset, format) and the intent log of its parts.
-- Kept in step with migrations/postgres/0006_exports.sql. Every exported table already has a
-- monotonic insertion column (`seq`), the watermark.

-- The highest seq planned into a part. Advanced only by compare-and-swap, in the transaction
-- that plans the parts, so two runs never plan overlapping ranges.
CREATE TABLE export_watermarks (
    dataset   TEXT    NOT NULL,
    format    TEXT    NOT NULL,
    watermark INTEGER NOT NULL,
    PRIMARY KEY (dataset, format)
) WITHOUT ROWID;

-- One row per part (rows with seq in from_seq..=to_seq): 'planned' when its range is claimed,
-- 'complete' once every file of it is written and recorded in export_files.
CREATE TABLE export_parts (
    dataset  TEXT    NOT NULL,
    format   TEXT    NOT NULL,
    from_seq INTEGER NOT NULL,
    to_seq   INTEGER NOT NULL,
    state    TEXT    NOT NULL,
    PRIMARY KEY (dataset, format, from_seq)
) WITHOUT ROWID;
CREATE INDEX export_parts_state ON export_parts (state, dataset, format);

-- The files of complete parts (one per event date): what _manifest.json lists.
CREATE TABLE export_files (
    object_key TEXT    PRIMARY KEY,
    dataset    TEXT    NOT NULL,
    format     TEXT    NOT NULL,
    from_seq   INTEGER NOT NULL,
    to_seq     INTEGER NOT NULL,
    dt         TEXT    NOT NULL,
    rows       INTEGER NOT NULL,
    bytes      INTEGER NOT NULL,
    sha256     TEXT    NOT NULL
) WITHOUT ROWID;
CREATE INDEX export_files_part ON export_files (dataset, format, from_seq);
