-- Run logs that are sealed once archived and capped per run (docs/ARCHITECTURE.md, "Run
-- logs"). A sealed log refuses appends: its archive is the whole log.
ALTER TABLE runs ADD COLUMN log_sealed_at BIGINT;
-- Ended runs without chunks here are archived already or never logged anything.
UPDATE runs SET log_sealed_at = updated_at
    WHERE state IN ('FINISHED', 'FAILED', 'STOPPED', 'DISCARDED', 'CANCELED', 'SKIPPED')
      AND NOT EXISTS (SELECT 1 FROM run_logs l WHERE l.run_id = runs.id);

-- How a run's stored log splits into the head (kept whole from chunk 0), the chunks cut
-- and the tail (kept up to its share of the per-run limit, newest last). `head_end` is
-- the first chunk after the head and `tail_start` the first one kept of the tail; both
-- are absent while the whole log is head.
CREATE TABLE run_log_sizes (
    run_id TEXT PRIMARY KEY REFERENCES runs (id) ON DELETE CASCADE,
    head_bytes BIGINT NOT NULL,
    tail_bytes BIGINT NOT NULL,
    head_end BIGINT,
    tail_start BIGINT,
    cut_bytes BIGINT NOT NULL,
    cut_chunks BIGINT NOT NULL
);
