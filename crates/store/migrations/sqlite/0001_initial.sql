-- Gantry's schema. Timestamps are milliseconds since the Unix epoch, booleans 0/1,
-- ids ULID text, lists and maps JSON text: the same column types on every engine.

CREATE TABLE server_secrets (
    name TEXT PRIMARY KEY,
    value BLOB NOT NULL,
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
    pinned_launcher_id TEXT,
    prioritized BIGINT NOT NULL DEFAULT 0,
    has_changes BIGINT,
    failure TEXT,
    triggered_by TEXT NOT NULL,
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
