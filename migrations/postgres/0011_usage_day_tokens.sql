-- Tokens recorded per tenant and UTC day: the sum of `quantity` over the tenant's
-- `tokens_in` and `tokens_out` usage events whose `occurred_at` falls in the day starting at
-- `day_start` (unix seconds). The usage-writer adds to it in the transaction that inserts the
-- events (new events only, so a duplicate key adds nothing); `POST /api/si/ask` reads one row
-- for its daily token budget instead of summing the day's events. Saturates at the largest
-- BIGINT. Kept in step with migrations/sqlite/0011_usage_day_tokens.sql.
CREATE TABLE usage_day_tokens (
    tenant_id TEXT   NOT NULL,
    day_start BIGINT NOT NULL,
    tokens    BIGINT NOT NULL CHECK (tokens >= 0),
    PRIMARY KEY (tenant_id, day_start)
);

-- Only today (and later) matters to the budget.
INSERT INTO usage_day_tokens (tenant_id, day_start, tokens)
SELECT tenant_id, day_start, LEAST(SUM(quantity), 9223372036854775807)::bigint
FROM (
    SELECT tenant_id, quantity,
           (floor(extract(epoch FROM occurred_at) / 86400) * 86400)::bigint AS day_start
    FROM usage_events
    WHERE kind IN ('tokens_in', 'tokens_out')
      AND occurred_at >= to_timestamp(floor(extract(epoch FROM now()) / 86400) * 86400)
) AS today
GROUP BY tenant_id, day_start;
