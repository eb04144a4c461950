-- Tokens recorded per tenant and UTC day: the sum of `quantity` over the tenant's
-- `tokens_in` and `tokens_out` usage events whose `occurred_at` falls in the day starting at
-- `day_start` (unix seconds). The usage-writer adds to it in the transaction that inserts the
-- events (new events only, so a duplicate key adds nothing); `POST /api/si/ask` reads one row
-- for its daily token budget instead of summing the day's events. Saturates at the largest
-- INTEGER. Kept in step with migrations/postgres/0011_usage_day_tokens.sql.
CREATE TABLE usage_day_tokens (
    tenant_id TEXT    NOT NULL,
    day_start INTEGER NOT NULL,
    tokens    INTEGER NOT NULL CHECK (tokens >= 0),
    PRIMARY KEY (tenant_id, day_start)
);

-- Only today (and later) matters to the budget. TOTAL rather than SUM: SUM fails on overflow;
-- TOTAL is exact below 2^53 and the cap keeps the cast in range.
INSERT INTO usage_day_tokens (tenant_id, day_start, tokens)
SELECT tenant_id, (occurred_at / 86400000) * 86400, CAST(MIN(TOTAL(quantity), 9.2e18) AS INTEGER)
FROM usage_events
WHERE kind IN ('tokens_in', 'tokens_out')
  AND occurred_at >= (CAST(strftime('%s', 'now') AS INTEGER) / 86400) * 86400000
GROUP BY tenant_id, (occurred_at / 86400000) * 86400;
