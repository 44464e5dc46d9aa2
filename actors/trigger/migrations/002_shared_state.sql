-- Triggers follow their task (enabled, the last task change applied) and count the events their
-- per-minute limit dropped. Firings (the limit's one-minute window, and which firing ids were
-- already published) and debounced firings not yet due are kept here, so every replica sees the
-- same limit and debounce, and a debounced firing survives a replica's crash.
ALTER TABLE triggers
    ADD COLUMN enabled         boolean NOT NULL DEFAULT true,
    ADD COLUMN dropped         bigint NOT NULL DEFAULT 0,
    ADD COLUMN task_updated_at timestamptz;

CREATE INDEX receipts_received_at ON receipts (received_at);

CREATE TABLE firings (
    task_id   text NOT NULL,
    firing_id text NOT NULL,
    fired_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, firing_id)
);

CREATE INDEX firings_recent ON firings (task_id, fired_at);
CREATE INDEX firings_fired_at ON firings (fired_at);

-- One debounced firing per trigger: the latest event (by `ordinal`: stream sequence, or webhook
-- timestamp) and when it is due (debounce_seconds after the last event).
CREATE TABLE pending (
    task_id   text PRIMARY KEY REFERENCES triggers (task_id) ON DELETE CASCADE,
    firing_id text NOT NULL,
    fired_by  text NOT NULL,
    ordinal   bigint NOT NULL,
    event     jsonb NOT NULL,
    trace     jsonb NOT NULL,
    due_at    timestamptz NOT NULL
);

CREATE INDEX pending_due ON pending (due_at);
