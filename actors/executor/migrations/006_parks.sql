-- Runs that wait (schemas/approvals.py). A parked run is `waiting`: its request is acked, it holds no slot.
-- `parks` keeps what the run needs to go on (one row per run, its latest park); `approvals` and
-- `event_waits` one row per deferred tool call, decided one by one. A park whose calls are all decided
-- is resumed (ResumeRun); its rows stay as the record of what was asked and decided.
ALTER TABLE runs DROP CONSTRAINT runs_status_check;
ALTER TABLE runs ADD CONSTRAINT runs_status_check
    CHECK (status IN ('running', 'waiting', 'completed', 'failed', 'cancelled'));

CREATE TABLE parks (
    run_id     text PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    tenant     text NOT NULL,
    park       integer NOT NULL,          -- 1 for the run's first park, then 2, …
    request    bytea NOT NULL,            -- the RunRequest, encoded
    origin     text,                      -- its command subject's origin (RunOrigin), NULL for a plain one
    messages   bytea NOT NULL,            -- pydantic-ai JSON: every message so far, the history included
    base       integer NOT NULL,          -- how many of them came from the history (the rest are the run's)
    usage      jsonb NOT NULL DEFAULT '{}',  -- what the run spent before it parked
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE approvals (
    id              text PRIMARY KEY,
    tenant          text NOT NULL,
    run_id          text NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    park            integer NOT NULL,
    tool_call_id    text NOT NULL,
    tool_name       text NOT NULL,
    args            text NOT NULL,
    args_sha256     text NOT NULL,
    agent           text NOT NULL,
    conversation_id text,
    task_id         text,
    parent_run_id   text,
    status          text NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'approved', 'denied', 'edited', 'expired', 'withdrawn')),
    created_at      timestamptz NOT NULL DEFAULT now(),
    expires_at      timestamptz,
    decided_at      timestamptz,
    decided_by      text,
    reason          text,
    edited_args     text,
    UNIQUE (run_id, park, tool_call_id)
);

CREATE INDEX approvals_listed ON approvals (tenant, created_at DESC, id DESC);
CREATE INDEX approvals_expiring ON approvals (expires_at) WHERE status = 'pending';

CREATE TABLE event_waits (
    run_id       text NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    park         integer NOT NULL,
    tool_call_id text NOT NULL,
    watch        jsonb NOT NULL,          -- what it waits for (the call's metadata: subject or webhook, filter, expiry)
    resolved     boolean NOT NULL DEFAULT false,
    result       text,                   -- the tool's return: the event as quoted data, or the timeout
    PRIMARY KEY (run_id, park, tool_call_id)
);
