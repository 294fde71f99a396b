-- Fencing tokens on state writes (docs/ARCHITECTURE.md, "Managed state"). Each time a
-- lock-taking run is given its stack's lock, the stack's lock generation goes up by one
-- and the run records the value: a state upload is the stack's current version only
-- while its run still holds the lock under that generation. What a run uploads without
-- it (fenced off: ended by the server meanwhile, or the lock passed on) is kept as an
-- orphaned version, never current until a user adopts it, never pruned.
ALTER TABLE stacks ADD COLUMN lock_generation BIGINT NOT NULL DEFAULT 0;
-- NULL for runs that never held a lock (and those that took it before this migration,
-- which count as generation 0).
ALTER TABLE runs ADD COLUMN lock_generation BIGINT;
ALTER TABLE state_versions ADD COLUMN orphaned BIGINT NOT NULL DEFAULT 0;
-- With `rollback_of`: this version adopts that orphaned one (rather than rolling back).
ALTER TABLE state_versions ADD COLUMN adoption BIGINT NOT NULL DEFAULT 0;
