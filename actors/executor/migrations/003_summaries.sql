-- A conversation's older messages, summarized for the model once its history passed the agent's
-- context budget (actors/executor/compaction.py). `covers` is how many messages of the
-- conversation's history, from its start, the summary stands for: a history only grows, so the
-- summary holds for every later turn, and the next turn starts from the latest one that fits.
CREATE TABLE summaries (
    tenant          text NOT NULL,
    conversation_id text NOT NULL,
    covers          integer NOT NULL CHECK (covers > 0),
    summary         text NOT NULL,
    agent           text NOT NULL,
    model           text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, conversation_id, covers)
);
