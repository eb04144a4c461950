-- Tenants, users, usage, the append-only credit ledger, cached balances, adjustments, and the
-- KV role. Kept in step with migrations/postgres/0003_billing.sql. Timestamps: epoch ms.

CREATE TABLE tenants (
    id         TEXT    PRIMARY KEY,
    tier       TEXT    NOT NULL,
    email      TEXT,
    created_at INTEGER NOT NULL,
    -- Set when a settlement took a guest's balance below the floor: new billable work gets 402.
    flagged_at INTEGER
) WITHOUT ROWID;

CREATE TABLE users (
    id         TEXT    PRIMARY KEY,
    tenant_id  TEXT    NOT NULL REFERENCES tenants (id),
    email      TEXT,
    created_at INTEGER NOT NULL
) WITHOUT ROWID;

-- One row per usage event; (tenant_id, idempotency_key) makes a redelivered or re-posted event
-- a no-op. seq is the insertion order (the ETL watermark).
CREATE TABLE usage_events (
    seq             INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id       TEXT    NOT NULL,
    idempotency_key TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    quantity        INTEGER NOT NULL,
    credits         INTEGER NOT NULL,
    occurred_at     INTEGER NOT NULL,
    received_at     INTEGER NOT NULL,
    meta            TEXT,
    request_id      TEXT,
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX usage_events_window ON usage_events (tenant_id, occurred_at);

-- Append-only. id is the settlement id: a settlement applied twice finds its id and does nothing.
-- delta is signed integer credits (a charge is negative).
CREATE TABLE ledger_entries (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    id         TEXT    NOT NULL UNIQUE,
    tenant_id  TEXT    NOT NULL,
    delta      INTEGER NOT NULL,
    kind       TEXT    NOT NULL,
    ref        TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX ledger_entries_tenant ON ledger_entries (tenant_id, seq);

-- Balances derived from the ledger (the KV role's durable table); rebuildable at any time.
CREATE TABLE balances (
    tenant_id  TEXT    PRIMARY KEY,
    balance    INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE credit_adjustments (
    id              TEXT    PRIMARY KEY,
    idempotency_key TEXT    NOT NULL UNIQUE,
    tenant_id       TEXT    NOT NULL,
    delta           INTEGER NOT NULL,
    reason          TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    created_at      INTEGER NOT NULL,
    applied_at      INTEGER
) WITHOUT ROWID;

-- The KV role (Workers KV on the edge): namespaced keys, optional expiry.
CREATE TABLE kv (
    namespace  TEXT    NOT NULL,
    key        TEXT    NOT NULL,
    value      BLOB    NOT NULL,
    expires_at INTEGER,
    PRIMARY KEY (namespace, key)
) WITHOUT ROWID;
