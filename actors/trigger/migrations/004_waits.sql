-- Runs waiting for an event (the executor's `wait_for_event`, schemas/approvals.py WatchEvent): each is
-- resolved once (by the first matching event, a matching webhook of its task, or its expiry) by a
-- conditional UPDATE, whichever replica sees it first, which then answers the executor (CallResolved).
CREATE TABLE waits (
    run_id          text NOT NULL,
    park            integer NOT NULL,
    tool_call_id    text NOT NULL,
    tenant          text NOT NULL,
    subject         text,
    webhook_task_id text,
    filter          jsonb NOT NULL DEFAULT '{}',
    expires_at      timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    resolved_at     timestamptz,
    PRIMARY KEY (run_id, park, tool_call_id),
    CHECK ((subject IS NULL) <> (webhook_task_id IS NULL))
);

CREATE INDEX waits_pending ON waits (expires_at) WHERE resolved_at IS NULL;
CREATE INDEX waits_webhook ON waits (webhook_task_id) WHERE resolved_at IS NULL AND webhook_task_id IS NOT NULL;
