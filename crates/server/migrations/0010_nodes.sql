-- The fleet's nodes (`--role node`), as their heartbeats register them: where each is reached,
-- which start of its process this is, its instance budget, and its last report (its pools, as
-- JSON). A node not heard from for a second is lost; the row stays, and the next heartbeat
-- (the same start: back from a partition; a new one: restarted) renews it.
CREATE TABLE nodes (
    id          TEXT PRIMARY KEY,
    address     TEXT NOT NULL,
    incarnation TEXT NOT NULL,
    capacity    BIGINT NOT NULL,
    running     BIGINT NOT NULL,
    pools       TEXT NOT NULL,
    first_seen  BIGINT NOT NULL,
    last_seen   BIGINT NOT NULL
);
