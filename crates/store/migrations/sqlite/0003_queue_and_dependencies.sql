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
-- Releasing a run's worker finds it by the run it holds.
CREATE INDEX workers_current_run ON workers (current_run_id) WHERE current_run_id IS NOT NULL;
