-- GET /v1/conversations: a tenant's conversations, latest activity first, paged by (updated_at, id).
-- `updated_at` now also moves when a turn starts or ends (store.insert_turn, store.finish_turn).
CREATE INDEX conversations_listed ON conversations (tenant, updated_at DESC, id DESC);
