//! The store's errors.

use gantry_domain::{RunId, RunState};

/// What can go wrong in the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a {kind} named {name:?} already exists")]
    AlreadyExists { kind: &'static str, name: String },
    #[error("{kind} {id} does not exist")]
    NotFound { kind: &'static str, id: String },
    #[error("run {run_id} is {found}, not {expected}: it changed meanwhile")]
    StateConflict { run_id: RunId, expected: RunState, found: RunState },
    #[error("log chunk {received} arrived before chunk {expected}")]
    LogGap { expected: u64, received: u64 },
    #[error(
        "the server secret {name:?} changed while it was being replaced (another replica sealed or rotated it): nothing was written, try again"
    )]
    SecretChanged { name: String },
    #[error(
        "run {run_id}'s log is sealed: the run ended and its log was archived, so nothing more is appended"
    )]
    LogSealed { run_id: RunId },
    /// The database setting is unusable; the message never holds a password.
    #[error("{0}")]
    Config(String),
    #[error("the database is unavailable or refused the query: {0}")]
    Database(#[from] sqlx::Error),
    #[error("the database schema could not be migrated: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("stored data does not parse ({0}): the database was changed outside Gantry")]
    Corrupt(String),
    /// The write was made but could not be synced to disk: it may not survive a crash.
    #[error("cannot make the write durable: {0}")]
    Durability(String),
    #[error("{0:?} is not a valid blob key")]
    InvalidKey(String),
    #[error("the blob is larger than the limit of {limit} bytes")]
    TooLarge { limit: u64 },
    #[error("the blob store failed: {0}")]
    Blob(String),
}
