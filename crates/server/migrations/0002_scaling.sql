-- Scaling configuration per app, and where a cold start's time went.
ALTER TABLE apps ADD COLUMN scaling TEXT NOT NULL DEFAULT '{}';
ALTER TABLE executions ADD COLUMN queue_ms DOUBLE PRECISION;
ALTER TABLE executions ADD COLUMN fetch_ms DOUBLE PRECISION;
ALTER TABLE executions ADD COLUMN spawn_ms DOUBLE PRECISION;
