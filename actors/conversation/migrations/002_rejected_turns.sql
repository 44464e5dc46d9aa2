-- A turn refused by the `reject` policy is kept (no message, no history) so that a redelivered
-- command is refused again instead of being taken once the running turn has ended.
ALTER TABLE turns DROP CONSTRAINT turns_status_check;
ALTER TABLE turns ADD CONSTRAINT turns_status_check
    CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled', 'rejected'));
