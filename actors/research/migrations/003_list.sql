-- GET /v1/research: a tenant's jobs newest first, paged by (created_at, id).
CREATE INDEX jobs_listed ON jobs (tenant, created_at DESC, id DESC);
