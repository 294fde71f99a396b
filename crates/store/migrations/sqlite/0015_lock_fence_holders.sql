-- The launcher whose worker was executing the fenced run, when it was known: its report
-- that the execution ended (after its worker stopped) lifts the fence before its time
-- (docs/scheduling.md, "Fencing"). NULL: only time or an administrator lifts it.
ALTER TABLE stack_lock_fences ADD COLUMN holder_launcher_id TEXT;
