-- How a cold start's instance came to be (exec, fork, component) and what starting a
-- template first cost.
ALTER TABLE executions ADD COLUMN start_kind TEXT;
ALTER TABLE executions ADD COLUMN template_ms REAL;
