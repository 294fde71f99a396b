-- Gantry's schema on PostgreSQL: the same tables, columns and meanings as the SQLite
-- migrations up to their 0003 (which this one file reaches at once: PostgreSQL support
-- began there). Timestamps are milliseconds since the Unix epoch, booleans 0/1, ids ULID
-- text, lists and maps JSON text, so both adapters share their statements. Every integer
-- is BIGINT: the adapters read them all as 64-bit.

CREATE TABLE server_secrets (
    name TEXT PRIMARY KEY,
    value BYTEA NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE api_keys (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    secret_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL
);

CREATE TABLE pools (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    kind TEXT NOT NULL,
    description TEXT NOT NULL,
    labels TEXT NOT NULL,
    certificate_pem TEXT,
    certificate_fingerprint TEXT,
    key_algorithm TEXT,
    cycle_requested_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);

CREATE TABLE sessions (
    token_hash TEXT PRIMARY KEY,
    pool_id TEXT NOT NULL REFERENCES pools (id) ON DELETE CASCADE,
    launcher_id TEXT NOT NULL,
    certificate_fingerprint TEXT NOT NULL,
    hostname TEXT NOT NULL,
    launcher_version TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_pool ON sessions (pool_id);

CREATE TABLE workers (
    id TEXT PRIMARY KEY,
    pool_id TEXT NOT NULL REFERENCES pools (id) ON DELETE CASCADE,
    launcher_id TEXT NOT NULL,
    metadata TEXT NOT NULL,
    launcher_version TEXT NOT NULL,
    hostname TEXT NOT NULL,
    drained BIGINT NOT NULL DEFAULT 0,
    current_run_id TEXT,
    created_at BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL
);
CREATE INDEX workers_pool ON workers (pool_id);
CREATE INDEX workers_launcher ON workers (launcher_id);
-- The scheduler asks each pool for only as many idle workers as it has runs to place.
CREATE INDEX workers_idle ON workers (pool_id, created_at, id)
    WHERE current_run_id IS NULL AND drained = 0;

CREATE TABLE stacks (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    repository TEXT NOT NULL,
    branch TEXT NOT NULL,
    project_root TEXT NOT NULL,
    pool_id TEXT NOT NULL REFERENCES pools (id),
    tool TEXT NOT NULL,
    runner_image TEXT,
    autodeploy BIGINT NOT NULL,
    managed_state BIGINT NOT NULL DEFAULT 0,
    -- The stack's sensitive outputs may reach the stacks that depend on it, sealed to
    -- the pool key by the launcher that produced them.
    share_sensitive_outputs BIGINT NOT NULL DEFAULT 0,
    environment TEXT NOT NULL,
    description TEXT NOT NULL,
    labels TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    stack_id TEXT NOT NULL REFERENCES stacks (id),
    pool_id TEXT NOT NULL,
    run_type TEXT NOT NULL,
    state TEXT NOT NULL,
    branch TEXT NOT NULL,
    commit_sha TEXT,
    commit_message TEXT,
    autodeploy BIGINT NOT NULL,
    worker_id TEXT,
    prioritized BIGINT NOT NULL DEFAULT 0,
    has_changes BIGINT,
    failure TEXT,
    triggered_by TEXT NOT NULL,
    command TEXT,
    stop_requested_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX runs_stack ON runs (stack_id, created_at);
CREATE INDEX runs_active ON runs (state)
    WHERE state NOT IN ('FINISHED', 'FAILED', 'STOPPED', 'DISCARDED', 'CANCELED', 'SKIPPED');

CREATE TABLE run_states (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    state TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE run_logs (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq BIGINT NOT NULL,
    text TEXT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE run_outputs (
    run_id TEXT NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    value TEXT,
    sensitive BIGINT NOT NULL,
    PRIMARY KEY (run_id, name)
);

-- Encrypted blobs: where each is in the blob store, and its digest. The server keeps
-- ciphertext only.
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

-- Every state a run enters is recorded by the statement that makes it enter it, and a
-- run that leaves its worker frees it in the same statement, as on SQLite. A run's
-- updates are serialized by its row lock, so the next history number cannot race.
CREATE FUNCTION gantry_record_run_state() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO run_states (run_id, seq, state, at)
        VALUES (NEW.id, 0, NEW.state, NEW.created_at);
    ELSIF NEW.state IS DISTINCT FROM OLD.state THEN
        INSERT INTO run_states (run_id, seq, state, at)
        SELECT NEW.id, COALESCE(MAX(seq) + 1, 0), NEW.state, NEW.updated_at
        FROM run_states WHERE run_id = NEW.id;
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER runs_history_on_insert AFTER INSERT ON runs
    FOR EACH ROW EXECUTE FUNCTION gantry_record_run_state();
CREATE TRIGGER runs_history_on_change AFTER UPDATE OF state ON runs
    FOR EACH ROW EXECUTE FUNCTION gantry_record_run_state();

CREATE FUNCTION gantry_release_worker() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    UPDATE workers SET current_run_id = NULL
    WHERE id = OLD.worker_id AND current_run_id = OLD.id;
    RETURN NULL;
END;
$$;

CREATE TRIGGER runs_release_worker AFTER UPDATE OF worker_id ON runs
    FOR EACH ROW WHEN (OLD.worker_id IS NOT NULL AND NEW.worker_id IS NULL)
    EXECUTE FUNCTION gantry_release_worker();
