-- Periodic jobs (liveness sweeps, session expiry) run once per interval however many
-- server processes share the database: each claims the interval by moving last_run_at.
CREATE TABLE periodic_work (
    name TEXT PRIMARY KEY,
    last_run_at BIGINT NOT NULL
);
