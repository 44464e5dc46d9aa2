-- A task may run a pipeline (actors/executor/pipelines.py) instead of a single agent.
ALTER TABLE tasks ADD COLUMN pipeline text;
