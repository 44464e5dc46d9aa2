-- Research jobs and their sub-runs. Every finished sub-run is recorded here before the job moves on,
-- so a job resumed after a crash re-runs nothing that finished (docs/protocol.md, "Research jobs").
CREATE TABLE jobs (
    id                  text PRIMARY KEY,
    tenant              text NOT NULL,
    spec                jsonb NOT NULL,          -- the StartResearch command
    notification_secret text NOT NULL,           -- whsec_ key signing the job's webhook notification
    status              text NOT NULL DEFAULT 'queued',
    stopped_by          text,                    -- the limit that ended it early
    error               text,
    cancel_reason       text,                    -- set once a cancel was asked
    report              text,
    citations           jsonb NOT NULL DEFAULT '[]',
    created_at          timestamptz NOT NULL DEFAULT now(),
    started_at          timestamptz,
    finished_at         timestamptz
);

CREATE TABLE subruns (
    run_id      text PRIMARY KEY,                -- the executor run id: <job>-plan, <job>-q<depth>-<n>, ...
    job_id      text NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
    seq         bigserial,                       -- creation order
    kind        text NOT NULL,
    depth       int NOT NULL DEFAULT 0,
    question    text,
    why         text,
    status      text NOT NULL DEFAULT 'pending', -- pending, running, completed, failed, cancelled
    output      text,
    error       text,
    sources     jsonb NOT NULL DEFAULT '[]',
    usage       jsonb NOT NULL DEFAULT '{}',
    started_at  timestamptz,
    finished_at timestamptz
);

CREATE INDEX subruns_job ON subruns (job_id, seq);
