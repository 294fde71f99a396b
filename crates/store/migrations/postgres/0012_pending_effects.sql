-- Work that must follow a committed change: a run's end reaching the stacks that depend
-- on its stack, a blob that nothing names any more to delete. Each is recorded in the
-- transaction of the change and carried out afterwards by the effects loop of any server
-- process, which claims it until `claimed_until`, deletes the row once it is done, and
-- after a failure tries again from `due_at`. `key` (kind and subject) makes recording
-- one effect twice one row.
CREATE TABLE pending_effects (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    subject TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    due_at BIGINT NOT NULL,
    claimed_until BIGINT,
    attempts BIGINT NOT NULL DEFAULT 0,
    last_error TEXT
);
CREATE INDEX pending_effects_due ON pending_effects (due_at);

-- An upstream run triggers at most one run of each downstream stack, however many times
-- its end is carried out (a crash between the trigger and the effect's deletion, two
-- replicas).
CREATE UNIQUE INDEX runs_one_per_upstream_run ON runs (stack_id, triggered_by)
    WHERE triggered_by LIKE 'dependency:%';
