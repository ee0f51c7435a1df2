-- A running sync marks itself alive; a run whose marks stop (its server was killed or lost)
-- is recorded as aborted by whichever server notices.
ALTER TABLE sync_runs ADD COLUMN heartbeat_at BIGINT;
CREATE INDEX sync_runs_running ON sync_runs (heartbeat_at) WHERE outcome = 1;
