-- API keys get a role, a scope, an expiry, their creator, their last use and a
-- revocation time. Keys made before roles existed were all administrators.
ALTER TABLE api_keys ADD COLUMN role TEXT NOT NULL DEFAULT 'admin';
-- The written selectors (`pool:NAME`, ...) as a JSON array; empty reaches everything.
ALTER TABLE api_keys ADD COLUMN scope TEXT NOT NULL DEFAULT '[]';
ALTER TABLE api_keys ADD COLUMN created_by TEXT NOT NULL DEFAULT 'gantry server';
ALTER TABLE api_keys ADD COLUMN expires_at BIGINT;
ALTER TABLE api_keys ADD COLUMN last_used_at BIGINT;
ALTER TABLE api_keys ADD COLUMN revoked_at BIGINT;

-- Web UI sessions, found by the hash of their cookie: signing out or revoking the key
-- deletes them, so the cookie stops working at once.
CREATE TABLE ui_sessions (
    id_hash TEXT PRIMARY KEY,
    key_id TEXT NOT NULL REFERENCES api_keys (id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX ui_sessions_key ON ui_sessions (key_id);
