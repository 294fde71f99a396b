-- Encrypted blobs: a run's workspace between plan and apply, and the versions of each
-- stack's managed Terraform state. The server keeps ciphertext only (in the blob store);
-- these tables hold where each blob is and its digest.

-- Runs are no longer pinned to the launcher that planned them: any worker of the pool
-- can apply from the encrypted workspace.
ALTER TABLE runs DROP COLUMN pinned_launcher_id;

ALTER TABLE stacks ADD COLUMN managed_state BIGINT NOT NULL DEFAULT 0;

CREATE TABLE run_blobs (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    purpose TEXT NOT NULL,
    blob_key TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, purpose)
);

CREATE TABLE state_versions (
    stack_id TEXT NOT NULL REFERENCES stacks (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    run_id TEXT NOT NULL,
    blob_key TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (stack_id, seq)
);
