-- Tasks, stop requests, pool cycling and stack dependencies.

ALTER TABLE runs ADD COLUMN command TEXT;
ALTER TABLE runs ADD COLUMN stop_requested_at BIGINT;

ALTER TABLE pools ADD COLUMN cycle_requested_at BIGINT;

-- The stack's sensitive outputs may reach the stacks that depend on it, sealed to the
-- pool key by the launcher that produced them.
ALTER TABLE stacks ADD COLUMN share_sensitive_outputs INTEGER NOT NULL DEFAULT 0;

-- "downstream depends on upstream", with the upstream outputs it reads (JSON list of
-- {output, variable, trigger_always}).
CREATE TABLE stack_dependencies (
    downstream_stack_id TEXT NOT NULL REFERENCES stacks (id) ON DELETE CASCADE,
    upstream_stack_id TEXT NOT NULL REFERENCES stacks (id) ON DELETE CASCADE,
    output_references TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (downstream_stack_id, upstream_stack_id)
);
CREATE INDEX stack_dependencies_upstream ON stack_dependencies (upstream_stack_id);

-- The scheduler asks each pool for only as many idle workers as it has runs to place.
CREATE INDEX workers_idle ON workers (pool_id, created_at, id)
    WHERE current_run_id IS NULL AND drained = 0;

-- Every state a run enters is recorded in the statement that makes it enter it, so a
-- state change is one statement (and one round trip to the database) instead of a
-- transaction of three.
CREATE TRIGGER runs_history_on_insert AFTER INSERT ON runs
BEGIN
    INSERT INTO run_states (run_id, seq, state, at)
    VALUES (NEW.id, 0, NEW.state, NEW.created_at);
END;

CREATE TRIGGER runs_history_on_change AFTER UPDATE OF state ON runs
WHEN NEW.state != OLD.state
BEGIN
    INSERT INTO run_states (run_id, seq, state, at)
    SELECT NEW.id, COALESCE(MAX(seq) + 1, 0), NEW.state, NEW.updated_at
    FROM run_states WHERE run_id = NEW.id;
END;

-- A run that leaves its worker frees it, in the same statement.
CREATE TRIGGER runs_release_worker AFTER UPDATE OF worker_id ON runs
WHEN OLD.worker_id IS NOT NULL AND NEW.worker_id IS NULL
BEGIN
    UPDATE workers SET current_run_id = NULL
    WHERE id = OLD.worker_id AND current_run_id = OLD.id;
END;
