-- Tenants, users, usage, the append-only credit ledger, cached balances, adjustments, and the
-- KV role. Kept in step with migrations/sqlite/0003_billing.sql.

CREATE TABLE tenants (
    id         TEXT        PRIMARY KEY,
    tier       TEXT        NOT NULL,
    email      TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    flagged_at TIMESTAMPTZ
);

CREATE TABLE users (
    id         TEXT        PRIMARY KEY,
    tenant_id  TEXT        NOT NULL REFERENCES tenants (id),
    email      TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE usage_events (
    seq             BIGSERIAL   PRIMARY KEY,
    tenant_id       TEXT        NOT NULL,
    idempotency_key TEXT        NOT NULL,
    kind            TEXT        NOT NULL,
    quantity        BIGINT      NOT NULL,
    credits         BIGINT      NOT NULL,
    occurred_at     TIMESTAMPTZ NOT NULL,
    received_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    meta            TEXT,
    request_id      TEXT,
    UNIQUE (tenant_id, idempotency_key)
);
CREATE INDEX usage_events_window ON usage_events (tenant_id, occurred_at);

CREATE TABLE ledger_entries (
    seq        BIGSERIAL   PRIMARY KEY,
    id         TEXT        NOT NULL UNIQUE,
    tenant_id  TEXT        NOT NULL,
    delta      BIGINT      NOT NULL,
    kind       TEXT        NOT NULL,
    ref        TEXT,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX ledger_entries_tenant ON ledger_entries (tenant_id, seq);

CREATE TABLE balances (
    tenant_id  TEXT        PRIMARY KEY,
    balance    BIGINT      NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE credit_adjustments (
    id              TEXT        PRIMARY KEY,
    idempotency_key TEXT        NOT NULL UNIQUE,
    tenant_id       TEXT        NOT NULL,
    delta           BIGINT      NOT NULL,
    reason          TEXT        NOT NULL,
    status          TEXT        NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    applied_at      TIMESTAMPTZ
);

CREATE TABLE kv (
    namespace  TEXT        NOT NULL,
    key        TEXT        NOT NULL,
    value      BYTEA       NOT NULL,
    expires_at TIMESTAMPTZ,
    PRIMARY KEY (namespace, key)
);
