-- Several control replicas may share one store (PostgreSQL). A build is a job any of them
-- may run: the one that claimed it holds a lease it keeps renewing; a lease that runs out
-- means its replica stopped, and another claims the build again (`attempt` counts the claims,
-- and only the current claim may finish it). `draft` is the draft the build was asked for, as
-- JSON, so that the replica running it need not be the one that accepted it.
ALTER TABLE builds ADD COLUMN claimed_by TEXT;
ALTER TABLE builds ADD COLUMN lease_until BIGINT;
ALTER TABLE builds ADD COLUMN attempt BIGINT NOT NULL DEFAULT 0;
ALTER TABLE builds ADD COLUMN draft TEXT;
CREATE INDEX builds_by_lease ON builds (status, lease_until);
-- The replica that began an execution: at its next start it fails what it left running, and
-- only that.
ALTER TABLE executions ADD COLUMN replica TEXT;
