-- Tasks (durable definitions) and task runs (one per firing). A timed firing is unique on
-- (task, scheduled time) and any other firing on its firing id, so replicas racing, restarts and
-- redelivered commands all yield one run.
CREATE TABLE tasks (
    id                  text PRIMARY KEY,
    tenant              text NOT NULL,
    task_type           text NOT NULL,
    prompt              text NOT NULL,
    agent               text NOT NULL,
    inputs              jsonb NOT NULL DEFAULT '{}',
    schedule_expression text,
    interval_seconds    double precision,
    run_at              timestamptz,
    timezone            text NOT NULL DEFAULT 'UTC',
    trigger_config      jsonb,
    notification_config jsonb,
    thread              boolean NOT NULL DEFAULT false,
    misfire_policy      text NOT NULL,
    overlap_policy      text NOT NULL,
    enabled             boolean NOT NULL DEFAULT true,
    next_run_at         timestamptz,
    notification_secret text NOT NULL,
    created_at          timestamptz NOT NULL,
    updated_at          timestamptz NOT NULL
);

CREATE INDEX tasks_due ON tasks (next_run_at) WHERE enabled AND next_run_at IS NOT NULL;
CREATE INDEX tasks_tenant ON tasks (tenant, id);

CREATE TABLE task_runs (
    id              text PRIMARY KEY,  -- also the executor run id
    task_id         text NOT NULL REFERENCES tasks (id) ON DELETE CASCADE,
    tenant          text NOT NULL,
    fired_by        text NOT NULL,
    scheduled_for   timestamptz,
    firing_id       text UNIQUE,
    conversation_id text,
    status          text NOT NULL,
    output          text,
    error           text,
    event           jsonb,
    usage           jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL,
    started_at      timestamptz,
    finished_at     timestamptz
);

CREATE UNIQUE INDEX task_runs_slot ON task_runs (task_id, scheduled_for) WHERE scheduled_for IS NOT NULL;
CREATE INDEX task_runs_task ON task_runs (task_id, created_at DESC);
CREATE INDEX task_runs_unstarted ON task_runs (created_at) WHERE status = 'queued';
