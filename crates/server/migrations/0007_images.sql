-- Image mode: credentials for a registry, per org (the password encrypted with the server's
-- key; never returned), and what unpacking an image's root cost a cold start.
CREATE TABLE registry_credentials (
    org TEXT NOT NULL,
    host TEXT NOT NULL,
    username TEXT NOT NULL,
    secret BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (org, host)
);
ALTER TABLE executions ADD COLUMN unpack_ms REAL;
