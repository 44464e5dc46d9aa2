-- What makes a triggered task fire: a webhook secret (stored so signatures can be verified; not
-- encrypted at rest) or a bus subject with a filter; and the webhook ids already accepted.
CREATE TABLE triggers (
    task_id    text PRIMARY KEY,
    tenant     text NOT NULL,
    secret     text,
    config     jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE receipts (
    task_id     text NOT NULL,
    webhook_id  text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task_id, webhook_id)
);
