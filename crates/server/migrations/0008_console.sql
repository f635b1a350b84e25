-- The web console's sign-in sessions: only a hash of the session id (the cookie) is stored;
-- a session lasts until it expires, its owner signs out, or the token it was opened with is
-- revoked.
CREATE TABLE console_sessions (
    id_hash     TEXT PRIMARY KEY,
    org         TEXT NOT NULL REFERENCES orgs(name),
    token_id    TEXT NOT NULL REFERENCES tokens(id),
    csrf        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL
);
