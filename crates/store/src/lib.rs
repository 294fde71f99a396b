//! Gantry's persistent state behind one `Store` trait, its SQLite adapter, the
//! migrations, and the contract suite every adapter must pass (feature `contract`).
//!
//! The store checks nothing about the domain's rules beyond the atomicity it is asked
//! for: callers decide transitions with `gantry_domain`, and the store applies them with
//! compare-and-set so that two writers can never both win.

mod audit;
mod blobs;
mod effects;
mod error;
mod group_commit;
mod log_sizes;
mod object_blobs;
mod postgres;
mod records;
mod schedules;
mod sql_rows;
mod sql_store;
mod sqlite;
mod store;
mod webhooks;

#[cfg(feature = "contract")]
pub mod contract;

pub use audit::{
    AUDIT_GENESIS, AuditBreak, AuditEntry, AuditFilter, AuditRecord, audit_hash, verify_audit_chain,
};
pub use blobs::{BlobStore, BlobStream, BlobWritten, is_valid_blob_key};
pub use effects::{Effect, PendingEffectRecord};
pub use error::StoreError;
pub use object_blobs::{BlobLocation, ObjectBlobStore, S3Credentials, S3Settings};
pub use postgres::{PostgresStore, redact_url};
pub use records::CommitAuthorRecord;
pub use records::LockFenceRecord;
pub use records::LogCutRecord;
pub use records::StateFence;
pub use records::UiSessionRecord;
pub use records::{
    ApiKeyRecord, BlobRecord, CommittedPass, DependencyRecord, FoundSession, HeldRunRecord,
    LogChunkRecord, OutputRecord, OutputReferenceRecord, PickupRecord, PoolRecord, RunChange,
    RunFilter, RunRecord, SessionRecord, StackRecord, StateChangeRecord, StateRollbackRecord,
    StateVersionRecord, WorkerCountsRecord, WorkerRecord,
};
pub use schedules::{DriftRecord, ScheduleRecord};
pub use sqlite::SqliteStore;
pub use store::{Signal, SignalStream, Store};
pub use webhooks::{DELIVERY_RETENTION, DeliveryRecord, WebhookRecord};
