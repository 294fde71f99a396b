-- Stacks' schedules. `next_fire_at` moves on by compare-and-set: one server process takes
-- each firing, and a firing missed while none ran stays due until one does. `reconcile`:
-- a drift check of the schedule that finds drift triggers a tracked run.
CREATE TABLE schedules (
    id TEXT PRIMARY KEY,
    stack_id TEXT NOT NULL REFERENCES stacks (id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    cron TEXT NOT NULL,
    time_zone TEXT NOT NULL,
    command TEXT,
    reconcile BIGINT NOT NULL DEFAULT 0,
    next_fire_at BIGINT NOT NULL,
    last_fired_at BIGINT,
    last_outcome TEXT,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX schedules_due ON schedules (next_fire_at);
CREATE INDEX schedules_of_stack ON schedules (stack_id);

-- A firing triggers at most one run, however many times it is taken (a crash before the
-- schedule moved on, two replicas).
CREATE UNIQUE INDEX runs_one_per_schedule_firing ON runs (stack_id, triggered_by)
    WHERE triggered_by LIKE 'schedule:%';

-- Stacks whose last drift check found changes made outside Gantry, until a tracked run
-- finishes: since when, and the check that found it last.
CREATE TABLE stack_drift (
    stack_id TEXT PRIMARY KEY REFERENCES stacks (id) ON DELETE CASCADE,
    run_id TEXT NOT NULL,
    detected_at BIGINT NOT NULL
);
