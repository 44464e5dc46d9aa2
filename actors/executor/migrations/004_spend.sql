-- Tenant budgets: what each tenant's runs spent per UTC day, added to when a run's usage is recorded
-- (RunStore.finish), so a day's or a month's spend is a read of at most 31 rows by primary key, whatever
-- the number of runs. The day is the one the run finished on; the dollars are the priced part.
CREATE TABLE spend_daily (
    tenant text NOT NULL,
    day    date NOT NULL,
    tokens bigint NOT NULL DEFAULT 0,
    usd    double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, day)
);

INSERT INTO spend_daily (tenant, day, tokens, usd)
SELECT tenant, (COALESCE(finished_at, created_at) AT TIME ZONE 'UTC')::date,
    sum(COALESCE((usage->>'input_tokens')::bigint, 0) + COALESCE((usage->>'output_tokens')::bigint, 0)),
    sum(COALESCE((usage->>'priced_cost_usd')::float8, (usage->>'cost_usd')::float8, 0))
FROM runs WHERE status <> 'running'
GROUP BY 1, 2;
