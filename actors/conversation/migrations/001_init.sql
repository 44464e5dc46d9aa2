-- Conversations, their turns (one per run) and the messages people see.
-- History, as pydantic-ai loads it back, is `base_history` (what a continued conversation
-- started from) followed by the `new_messages` of each completed turn in `seq` order.
CREATE TABLE conversations (
    id           text PRIMARY KEY,
    tenant       text NOT NULL,
    pattern      text NOT NULL,
    agent        text NOT NULL,
    policy       text NOT NULL,
    context      jsonb NOT NULL DEFAULT '{}',
    metadata     jsonb NOT NULL DEFAULT '{}',
    parent_id    text,
    base_history text NOT NULL DEFAULT '[]',
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE turns (
    run_id          text PRIMARY KEY,
    conversation_id text NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    seq             bigint NOT NULL,  -- the command's stream sequence: turns run in this order
    status          text NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled')),
    prompt          text NOT NULL,
    data            jsonb,
    new_messages    text,             -- pydantic-ai JSON of the turn, once completed
    created_at      timestamptz NOT NULL DEFAULT now(),
    finished_at     timestamptz
);

CREATE INDEX turns_open ON turns (conversation_id, seq) WHERE status IN ('queued', 'running');
CREATE INDEX turns_history ON turns (conversation_id, seq) WHERE status = 'completed';

CREATE TABLE messages (
    id              text PRIMARY KEY,
    conversation_id text NOT NULL REFERENCES conversations (id) ON DELETE CASCADE,
    ordinal         bigint NOT NULL,  -- 2 * turn seq, + 1 for the reply: the list reads in turn order
    role            text NOT NULL,
    content         text NOT NULL,
    run_id          text,
    metadata        jsonb NOT NULL DEFAULT '{}',
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE UNIQUE INDEX messages_one_per_role ON messages (run_id, role) WHERE run_id IS NOT NULL;
CREATE INDEX messages_list ON messages (conversation_id, ordinal);
