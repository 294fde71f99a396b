-- A stack's state versions are a history users can return to. A rollback is a new
-- version that points at an older version's blob and producing run (the blob's
-- encryption context names that run), and records which version it restores and who
-- asked: history is only ever appended to, and pruned from its oldest end. The same
-- change as SQLite's 0005.
ALTER TABLE state_versions ADD COLUMN rollback_of BIGINT;
ALTER TABLE state_versions ADD COLUMN rolled_back_by TEXT;

-- Rollbacks share blobs: pruning deletes a blob only when no version names it any more.
CREATE INDEX state_versions_blob ON state_versions (blob_key);
