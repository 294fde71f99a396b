-- Globs of repository paths outside a stack's project root whose pushes trigger it too
-- (a JSON list of strings).
ALTER TABLE stacks ADD COLUMN trigger_paths TEXT NOT NULL DEFAULT '[]';
