-- One row per run: what ran, how it ended, what it cost. `result` is the encoded terminal
-- output, so a redelivered request for a finished run re-announces it instead of running again.
CREATE TABLE runs (
    id               text PRIMARY KEY,
    tenant           text NOT NULL,
    agent            text NOT NULL,
    model            text NOT NULL DEFAULT '',
    offline          boolean NOT NULL DEFAULT false,
    status           text NOT NULL CHECK (status IN ('running', 'completed', 'failed', 'cancelled')),
    conversation_id  text,
    parent_run_id    text,
    attempt          integer NOT NULL DEFAULT 1,
    cancel_requested boolean NOT NULL DEFAULT false,
    usage            jsonb NOT NULL DEFAULT '{}',
    error            text,
    result           bytea,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz
);

CREATE INDEX runs_tenant_created ON runs (tenant, created_at DESC);
CREATE INDEX runs_parent ON runs (parent_run_id) WHERE parent_run_id IS NOT NULL;
