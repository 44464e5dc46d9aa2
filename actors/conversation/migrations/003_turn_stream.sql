-- Whether anybody watches the turn's tokens: a turn posted without `stream` runs without
-- publishing text deltas (pydantic-ai's plain run, about a third less CPU).
ALTER TABLE turns ADD COLUMN stream boolean NOT NULL DEFAULT true;
