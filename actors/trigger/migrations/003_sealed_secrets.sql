-- Webhook secrets are sealed at rest from now on (bus/secrets.py); rows from before are sealed by
-- the actor at its next start, which needs the key, so it happens there and not in SQL.
COMMENT ON COLUMN triggers.secret IS 'the whsec_ secret, sealed: fernet:<token> (plaintext only in rows from before sealing)';
