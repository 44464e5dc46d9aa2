-- One row per delivery (task run × channel): its status and every attempt, readable as the
-- delivery log. `command` is the Deliver message, kept so a failed delivery can be retried by hand.
CREATE TABLE deliveries (
    id              text PRIMARY KEY,
    tenant          text NOT NULL,
    task_run_id     text NOT NULL,
    task_id         text,
    channel         text NOT NULL,
    target          text NOT NULL,
    status          text NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts        jsonb NOT NULL DEFAULT '[]',
    next_attempt_at timestamptz,
    lease_until     timestamptz,  -- a replica is attempting it until then (a crashed one's lease runs out)
    command         bytea NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz
);

CREATE INDEX deliveries_run ON deliveries (tenant, task_run_id);
