-- Portable SQL: the same statements run on SQLite and PostgreSQL.
CREATE TABLE orgs (
    name        TEXT PRIMARY KEY,
    created_at  BIGINT NOT NULL
);

CREATE TABLE tokens (
    id          TEXT PRIMARY KEY,
    org         TEXT NOT NULL REFERENCES orgs(name),
    name        TEXT NOT NULL,
    secret_hash TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

CREATE TABLE apps (
    org            TEXT NOT NULL REFERENCES orgs(name),
    name           TEXT NOT NULL,
    runtime        TEXT NOT NULL,
    description    TEXT NOT NULL,
    env            TEXT NOT NULL,
    active_version BIGINT,
    created_at     BIGINT NOT NULL,
    PRIMARY KEY (org, name)
);

-- Version 0 is the mutable draft; 1, 2, 3, … are immutable.
CREATE TABLE versions (
    org             TEXT NOT NULL,
    app             TEXT NOT NULL,
    version         BIGINT NOT NULL,
    runtime         TEXT NOT NULL,
    rust_target     TEXT,
    toolchain       TEXT,
    source_digest   TEXT,
    source_kind     TEXT,
    compile_status  TEXT NOT NULL,
    compile_error   TEXT,
    build_id        TEXT,
    artifact_digest TEXT,
    artifact_size   BIGINT,
    artifact_target TEXT,
    env             TEXT NOT NULL,
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (org, app, version)
);

CREATE TABLE builds (
    id          TEXT PRIMARY KEY,
    org         TEXT NOT NULL,
    app         TEXT NOT NULL,
    status      TEXT NOT NULL,
    error       TEXT,
    log         TEXT NOT NULL,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT
);

CREATE TABLE executions (
    id                 TEXT PRIMARY KEY,
    org                TEXT NOT NULL,
    app                TEXT NOT NULL,
    version            BIGINT NOT NULL,
    status             TEXT NOT NULL,
    trigger            TEXT NOT NULL,
    started_at         BIGINT NOT NULL,
    finished_at        BIGINT,
    cold_start_ms      DOUBLE PRECISION,
    init_ms            DOUBLE PRECISION,
    duration_ms        DOUBLE PRECISION,
    billed_duration_ms BIGINT,
    response_status    BIGINT,
    error              TEXT,
    logs               TEXT NOT NULL
);
CREATE INDEX executions_by_app ON executions (org, app, started_at);
