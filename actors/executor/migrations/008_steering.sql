-- Steering messages: user messages added to a run still going (POST /v1/runs/{id}/messages,
-- actors/executor/steering.py). `seq` orders a run's messages (1, 2, ...); `message_id` is the
-- caller's id, stored once per run (a repeated POST answers the stored one). `delivered_at` is set
-- when the agent was given the message: one still NULL when the run (re)starts or resumes is given then.
CREATE TABLE steering (
    run_id       text NOT NULL,
    seq          integer NOT NULL CHECK (seq > 0),
    message_id   text NOT NULL,
    content      text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    delivered_at timestamptz,
    PRIMARY KEY (run_id, seq),
    UNIQUE (run_id, message_id)
);
