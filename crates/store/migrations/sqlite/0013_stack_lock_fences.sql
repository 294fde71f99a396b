-- Stacks whose lock stays taken after its holder ended, while the holder's worker may
-- still be executing it (its launcher was lost, or the run was failed under it): no
-- lock-taking run of the stack starts before `until_at` (docs/scheduling.md, "Fencing").
-- Written in the transaction that ends the run.
CREATE TABLE stack_lock_fences (
    stack_id TEXT PRIMARY KEY REFERENCES stacks (id) ON DELETE CASCADE,
    run_id TEXT NOT NULL,
    until_at BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
