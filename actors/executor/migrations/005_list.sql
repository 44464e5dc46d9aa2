-- GET /v1/runs: a tenant's runs newest first, paged by (created_at, id). It also serves what
-- runs_tenant_created did (a tenant's runs in a time window, for usage rollups). A filter by task,
-- conversation or parent has its own index (runs_tenant_task, runs_tenant_conversation, runs_parent);
-- one by agent or status reads this one and skips the rows that do not match (no more indexes to
-- keep up on every run's start and end).
CREATE INDEX runs_listed ON runs (tenant, created_at DESC, id DESC);
DROP INDEX runs_tenant_created;
