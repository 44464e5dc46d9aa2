-- Usage rollups (GET /v1/usage): a run started for a task names it, and a task's or a conversation's
-- runs are found by index; the runs under them are found through runs_parent.
ALTER TABLE runs ADD COLUMN task_id text;

CREATE INDEX runs_tenant_task ON runs (tenant, task_id) WHERE task_id IS NOT NULL;
CREATE INDEX runs_tenant_conversation ON runs (tenant, conversation_id) WHERE conversation_id IS NOT NULL;
