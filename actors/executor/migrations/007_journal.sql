-- A run's journal (actors/executor/journal.py): each model response and each tool result of its agent
-- run, as pydantic-ai's durable-execution JSON codec wrote it, so a run redone after a crash replays
-- what had finished instead of doing it again. `segment` is the stretch of the run (0, then the number
-- of the park it resumed from), so a resumed run's keys never meet an earlier stretch's. A row with no
-- payload is the side-effect ledger's mark that a side-effecting tool call started; its result, once it
-- has one, is its own row. A run's rows are deleted when it finishes.
CREATE TABLE journal (
    run_id      text NOT NULL,
    segment     integer NOT NULL,
    key         text NOT NULL,
    tenant      text NOT NULL,
    payload     jsonb,
    recorded_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, segment, key)
);
