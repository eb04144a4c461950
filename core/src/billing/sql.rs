//! The settlement statements both hosts run: the per-tenant balance update and the guest flag
//! of a settled batch. Each takes the batch's deltas as one JSON object (tenant → delta, as
//! text), so a batch is two statements whatever its number of tenants, and touches the
//! balances in key order (concurrent batches lock them in one order and cannot deadlock).
//! SQLite and PostgreSQL spell JSON and time differently, so each has its variant, side by side.

/// PostgreSQL (natively through sqlx, on the edge through tokio-postgres): adds the deltas `$1`
/// to the balances; returns `tenant_id, balance, updated_at` (epoch ms, for the edge's KV
/// write-through).
pub const PG_ADD_BALANCES: &str = "INSERT INTO balances (tenant_id, balance)
     SELECT key, value::bigint FROM jsonb_each_text($1::text::jsonb) ORDER BY key
     ON CONFLICT (tenant_id) DO UPDATE SET balance = balances.balance + EXCLUDED.balance, updated_at = now()
     RETURNING tenant_id, balance, (extract(epoch FROM updated_at) * 1000)::bigint";

/// PostgreSQL: flags the guests of `$1` whose balance is below the floor `$2` (keeping the time
/// they were first flagged), and unflags the others.
pub const PG_FLAG_GUESTS: &str = "UPDATE tenants t SET flagged_at = CASE
         WHEN t.tier = 'guest' AND b.balance < $2 THEN COALESCE(t.flagged_at, now()) END
     FROM balances b
     WHERE b.tenant_id = t.id AND t.id IN (SELECT jsonb_object_keys($1::text::jsonb))";

/// SQLite: adds the deltas `$1` to the balances at `$2` (epoch ms); returns `tenant_id,
/// balance, updated_at`.
pub const SQLITE_ADD_BALANCES: &str = "INSERT INTO balances (tenant_id, balance, updated_at)
     SELECT key, value, $2 FROM json_each($1) WHERE true ORDER BY key
     ON CONFLICT (tenant_id) DO UPDATE SET balance = balance + excluded.balance, updated_at = excluded.updated_at
     RETURNING tenant_id, balance, updated_at";

/// SQLite: flags the guests of `$1` whose balance is below `$2` at `$3` (epoch ms), and
/// unflags the others.
pub const SQLITE_FLAG_GUESTS: &str = "UPDATE tenants SET flagged_at = CASE
         WHEN tier = 'guest' AND (SELECT balance FROM balances b WHERE b.tenant_id = tenants.id) < $2
         THEN COALESCE(flagged_at, $3) END
     WHERE id IN (SELECT key FROM json_each($1))";

/// PostgreSQL: a tenant — `$1` id, `$2` tier, `$3` email. (SQLite's variant also sets
/// `created_at`, which PostgreSQL defaults.)
pub const PG_INSERT_TENANT: &str = "INSERT INTO tenants (id, tier, email) VALUES ($1, $2, $3)";

/// PostgreSQL: a tenant's user — `$1` id, `$2` tenant, `$3` email.
pub const PG_INSERT_USER: &str = "INSERT INTO users (id, tenant_id, email) VALUES ($1, $2, $3)";

/// Before an ask (both backends): tenant `$1`'s flag, stored balance (null before its first
/// settlement) and tokens recorded in the UTC day starting at `$2` (epoch seconds), in one read;
/// no row when the tenant does not exist.
pub const ASK_STANDING: &str = "SELECT t.flagged_at IS NOT NULL, b.balance,
            (SELECT d.tokens FROM usage_day_tokens d
             WHERE d.tenant_id = t.id AND d.day_start = $2)
     FROM tenants t LEFT JOIN balances b ON b.tenant_id = t.id
     WHERE t.id = $1";

/// Tenants with at least one ledger entry (both backends).
pub const LEDGER_TENANTS: &str = "SELECT COUNT(DISTINCT tenant_id) FROM ledger_entries";

/// PostgreSQL: recomputes every balance from the ledger, writing only those that differ;
/// returns the corrected ones as `tenant_id, balance, updated_at` (epoch ms).
pub const PG_REBUILD_BALANCES: &str = "INSERT INTO balances (tenant_id, balance)
     SELECT tenant_id, SUM(delta)::bigint FROM ledger_entries GROUP BY tenant_id
     ON CONFLICT (tenant_id) DO UPDATE SET balance = EXCLUDED.balance, updated_at = now()
     WHERE balances.balance <> EXCLUDED.balance
     RETURNING tenant_id, balance, (extract(epoch FROM updated_at) * 1000)::bigint";

/// PostgreSQL: a queued credit adjustment — `$1` id, `$2` idempotency key, `$3` tenant, `$4`
/// delta, `$5` reason; no row back when the key was used (the first one stands).
pub const PG_INSERT_ADJUSTMENT: &str =
    "INSERT INTO credit_adjustments (id, idempotency_key, tenant_id, delta, reason, status)
     VALUES ($1, $2, $3, $4, $5, 'queued') ON CONFLICT (idempotency_key) DO NOTHING RETURNING id";

/// The adjustment recorded under idempotency key `$1` (both backends): `id`.
pub const ADJUSTMENT_BY_KEY: &str = "SELECT id FROM credit_adjustments WHERE idempotency_key = $1";

/// PostgreSQL: adjustment `$1` — `id, tenant_id, delta, reason, status, created_at,
/// applied_at` (times in epoch ms).
pub const PG_ADJUSTMENT: &str = "SELECT id, tenant_id, delta, reason, status,
            (extract(epoch from created_at) * 1000)::bigint,
            (extract(epoch from applied_at) * 1000)::bigint
     FROM credit_adjustments WHERE id = $1";

/// Whether tenant `$1` is flagged (out of credits); no row when it does not exist.
pub const TENANT_STATUS: &str = "SELECT flagged_at IS NOT NULL FROM tenants WHERE id = $1";
