//! What the SQL adapters share: reading records out of rows of either engine, the
//! column lists, and how lists and maps are kept as JSON text.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::str::FromStr;

use gantry_domain::access::Scope;
use gantry_domain::{EnvironmentVariable, Timestamp};
use serde::{Deserialize, Serialize};
use sqlx::Row;

use crate::LockFenceRecord;
use crate::UiSessionRecord;
use crate::store::Result;
use crate::{
    ApiKeyRecord, BlobRecord, HeldRunRecord, PickupRecord, PoolRecord, RunRecord, SessionRecord,
    StackRecord, StateRollbackRecord, StateVersionRecord, StoreError, WorkerRecord,
};

/// The typed reads a row offers; both engines keep text, 64-bit integers and nothing else
/// in the columns read this way.
pub(crate) trait Columns {
    fn text(&self, column: &str) -> Result<String>;
    fn optional_text(&self, column: &str) -> Result<Option<String>>;
    fn integer(&self, column: &str) -> Result<i64>;
    fn optional_integer(&self, column: &str) -> Result<Option<i64>>;
}

macro_rules! columns_of {
    ($row:ty) => {
        impl Columns for $row {
            fn text(&self, column: &str) -> Result<String> {
                self.try_get(column).map_err(|e| corrupt(column, e))
            }
            fn optional_text(&self, column: &str) -> Result<Option<String>> {
                self.try_get(column).map_err(|e| corrupt(column, e))
            }
            fn integer(&self, column: &str) -> Result<i64> {
                self.try_get(column).map_err(|e| corrupt(column, e))
            }
            fn optional_integer(&self, column: &str) -> Result<Option<i64>> {
                self.try_get(column).map_err(|e| corrupt(column, e))
            }
        }
    };
}

columns_of!(sqlx::sqlite::SqliteRow);
columns_of!(sqlx::postgres::PgRow);

/// The columns of a record read out of a join beside another record, each under a
/// prefix (`prefixed` names them so in the statement).
pub(crate) struct Prefixed<'a, R> {
    row: &'a R,
    prefix: &'static str,
}

impl<R: Columns> Prefixed<'_, R> {
    fn name(&self, column: &str) -> String {
        format!("{}{column}", self.prefix)
    }
}

impl<R: Columns> Columns for Prefixed<'_, R> {
    fn text(&self, column: &str) -> Result<String> {
        self.row.text(&self.name(column))
    }
    fn optional_text(&self, column: &str) -> Result<Option<String>> {
        self.row.optional_text(&self.name(column))
    }
    fn integer(&self, column: &str) -> Result<i64> {
        self.row.integer(&self.name(column))
    }
    fn optional_integer(&self, column: &str) -> Result<Option<i64>> {
        self.row.optional_integer(&self.name(column))
    }
}

/// How output references are kept in `stack_dependencies.output_references`.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredReference {
    pub(crate) output: String,
    pub(crate) variable: String,
    pub(crate) trigger_always: bool,
}

/// A list of ids as a JSON array, for `json_each`: one statement handles them all, so a
/// batch holds the single writer connection for one round trip instead of one per id.
pub(crate) fn id_list<T: Display>(ids: impl IntoIterator<Item = T>) -> String {
    to_json(&ids.into_iter().map(|id| id.to_string()).collect::<Vec<_>>())
}

pub(crate) fn corrupt(column: &str, error: impl Display) -> StoreError {
    StoreError::Corrupt(format!("column {column}: {error}"))
}

pub(crate) fn text(row: &impl Columns, column: &str) -> Result<String> {
    row.text(column)
}

pub(crate) fn optional_text(row: &impl Columns, column: &str) -> Result<Option<String>> {
    row.optional_text(column)
}

pub(crate) fn parsed<T: FromStr>(row: &impl Columns, column: &str) -> Result<T>
where
    T::Err: Display,
{
    text(row, column)?.parse().map_err(|e| corrupt(column, e))
}

pub(crate) fn optional_parsed<T: FromStr>(row: &impl Columns, column: &str) -> Result<Option<T>>
where
    T::Err: Display,
{
    optional_text(row, column)?
        .map(|value| value.parse().map_err(|e| corrupt(column, e)))
        .transpose()
}

pub(crate) fn timestamp(row: &impl Columns, column: &str) -> Result<Timestamp> {
    row.integer(column).map(Timestamp::from_unix_millis)
}

pub(crate) fn optional_timestamp(row: &impl Columns, column: &str) -> Result<Option<Timestamp>> {
    Ok(row.optional_integer(column)?.map(Timestamp::from_unix_millis))
}

pub(crate) fn flag(row: &impl Columns, column: &str) -> Result<bool> {
    Ok(row.integer(column)? != 0)
}

pub(crate) fn optional_flag(row: &impl Columns, column: &str) -> Result<Option<bool>> {
    Ok(row.optional_integer(column)?.map(|value| value != 0))
}

/// A count or sequence number, which is never negative.
pub(crate) fn count(row: &impl Columns, column: &str) -> Result<u64> {
    u64::try_from(row.integer(column)?).map_err(|error| corrupt(column, error))
}

pub(crate) fn json<T: for<'de> Deserialize<'de>>(row: &impl Columns, column: &str) -> Result<T> {
    serde_json::from_str(&text(row, column)?).map_err(|e| corrupt(column, e))
}

pub(crate) fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).expect("plain data serializes")
}

/// How environment variables are kept in the `environment` column.
#[derive(Serialize, Deserialize)]
pub(crate) struct StoredVariable {
    pub(crate) name: String,
    pub(crate) value: String,
    pub(crate) secret: bool,
}

pub(crate) fn already_exists(kind: &'static str, name: &str, error: sqlx::Error) -> StoreError {
    match &error {
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StoreError::AlreadyExists { kind, name: name.to_owned() }
        }
        _ => StoreError::Database(error),
    }
}

pub(crate) const POOL_COLUMNS: &str = "id, name, kind, description, labels, certificate_pem, certificate_fingerprint, key_algorithm, cycle_requested_at, created_at, updated_at";

pub(crate) fn pool_from_row(row: &impl Columns) -> Result<PoolRecord> {
    Ok(PoolRecord {
        id: parsed(row, "id")?,
        name: text(row, "name")?,
        kind: parsed(row, "kind")?,
        description: text(row, "description")?,
        labels: json(row, "labels")?,
        certificate_pem: optional_text(row, "certificate_pem")?,
        certificate_fingerprint: optional_text(row, "certificate_fingerprint")?,
        key_algorithm: optional_text(row, "key_algorithm")?,
        cycle_requested_at: optional_timestamp(row, "cycle_requested_at")?,
        created_at: timestamp(row, "created_at")?,
        updated_at: timestamp(row, "updated_at")?,
    })
}

pub(crate) fn session_from_row(row: &impl Columns) -> Result<SessionRecord> {
    Ok(SessionRecord {
        token_hash: text(row, "token_hash")?,
        pool_id: parsed(row, "pool_id")?,
        launcher_id: parsed(row, "launcher_id")?,
        certificate_fingerprint: text(row, "certificate_fingerprint")?,
        hostname: text(row, "hostname")?,
        launcher_version: text(row, "launcher_version")?,
        created_at: timestamp(row, "created_at")?,
        expires_at: timestamp(row, "expires_at")?,
    })
}

pub(crate) const WORKER_COLUMNS: &str = "id, pool_id, launcher_id, metadata, launcher_version, hostname, drained, current_run_id, created_at, last_seen_at";

pub(crate) fn worker_from_row(row: &impl Columns) -> Result<WorkerRecord> {
    Ok(WorkerRecord {
        id: parsed(row, "id")?,
        pool_id: parsed(row, "pool_id")?,
        launcher_id: parsed(row, "launcher_id")?,
        metadata: json::<BTreeMap<String, String>>(row, "metadata")?,
        launcher_version: text(row, "launcher_version")?,
        hostname: text(row, "hostname")?,
        drained: flag(row, "drained")?,
        current_run_id: optional_parsed(row, "current_run_id")?,
        created_at: timestamp(row, "created_at")?,
        last_seen_at: timestamp(row, "last_seen_at")?,
    })
}

pub(crate) const STACK_COLUMNS: &str = "id, name, repository, branch, project_root, pool_id, tool, runner_image, autodeploy, managed_state, share_sensitive_outputs, environment, description, labels, trigger_paths, created_at";

pub(crate) fn stack_from_row(row: &impl Columns) -> Result<StackRecord> {
    let environment: Vec<StoredVariable> = json(row, "environment")?;
    Ok(StackRecord {
        id: parsed(row, "id")?,
        name: text(row, "name")?,
        repository: text(row, "repository")?,
        branch: text(row, "branch")?,
        project_root: text(row, "project_root")?,
        pool_id: parsed(row, "pool_id")?,
        tool: parsed(row, "tool")?,
        runner_image: optional_text(row, "runner_image")?,
        autodeploy: flag(row, "autodeploy")?,
        managed_state: flag(row, "managed_state")?,
        share_sensitive_outputs: flag(row, "share_sensitive_outputs")?,
        environment: environment
            .into_iter()
            .map(|v| EnvironmentVariable { name: v.name, value: v.value, secret: v.secret })
            .collect(),
        description: text(row, "description")?,
        labels: json(row, "labels")?,
        trigger_paths: json(row, "trigger_paths")?,
        created_at: timestamp(row, "created_at")?,
    })
}

/// `columns` (a list as above), each prefixed with `table.`: for a join naming them twice.
pub(crate) fn qualified(table: &str, columns: &str) -> String {
    columns.split(", ").map(|column| format!("{table}.{column}")).collect::<Vec<_>>().join(", ")
}

/// `columns` of `table`, each named with `prefix` before it.
pub(crate) fn prefixed(table: &str, columns: &str, prefix: &str) -> String {
    columns
        .split(", ")
        .map(|column| format!("{table}.{column} AS {prefix}{column}"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The prefix of a held run's stack columns (`held_run_from_row`).
pub(crate) const PICKUP_STACK: &str = "pickup_stack_";

/// A held run, its stack's columns under `PICKUP_STACK`, and `pickup_next_log_seq` (NULL
/// unless it waits for pickup) and `pickup_upstreams` (a count).
pub(crate) fn held_run_from_row(row: &impl Columns) -> Result<HeldRunRecord> {
    let run = run_from_row(row)?;
    let pickup = match row.optional_integer("pickup_next_log_seq")? {
        None => None,
        Some(next) => {
            let stack = Prefixed { row, prefix: PICKUP_STACK };
            Some(PickupRecord {
                stack: match stack.optional_text("id")? {
                    Some(_) => Some(stack_from_row(&stack)?),
                    None => None,
                },
                next_log_seq: u64::try_from(next)
                    .map_err(|error| corrupt("pickup_next_log_seq", error))?,
                has_upstreams: flag(row, "pickup_upstreams")?,
                commit_author: pickup_commit_author(row)?,
            })
        }
    };
    Ok(HeldRunRecord { run, pickup })
}

/// `pickup_commit_author_name`, `_email` and `pickup_commit_authored_at`: all or none.
fn pickup_commit_author(row: &impl Columns) -> Result<Option<crate::CommitAuthorRecord>> {
    let name = optional_text(row, "pickup_commit_author_name")?;
    let email = optional_text(row, "pickup_commit_author_email")?;
    match (name, email, optional_timestamp(row, "pickup_commit_authored_at")?) {
        (Some(name), Some(email), Some(authored_at)) => {
            Ok(Some(crate::CommitAuthorRecord { name, email, authored_at }))
        }
        (None, None, None) => Ok(None),
        _ => Err(corrupt(
            "pickup_commit_author_name",
            "an author's name, email and time go together",
        )),
    }
}

pub(crate) const RUN_COLUMNS: &str = "id, stack_id, pool_id, run_type, state, branch, commit_sha, commit_message, autodeploy, worker_id, prioritized, has_changes, failure, triggered_by, command, stop_requested_at, created_at, updated_at, lock_generation";

pub(crate) fn run_from_row(row: &impl Columns) -> Result<RunRecord> {
    Ok(RunRecord {
        id: parsed(row, "id")?,
        stack_id: parsed(row, "stack_id")?,
        pool_id: parsed(row, "pool_id")?,
        run_type: parsed(row, "run_type")?,
        state: parsed(row, "state")?,
        branch: text(row, "branch")?,
        commit_sha: optional_text(row, "commit_sha")?,
        commit_message: optional_text(row, "commit_message")?,
        autodeploy: flag(row, "autodeploy")?,
        worker_id: optional_parsed(row, "worker_id")?,
        prioritized: flag(row, "prioritized")?,
        has_changes: optional_flag(row, "has_changes")?,
        failure: optional_text(row, "failure")?,
        triggered_by: text(row, "triggered_by")?,
        command: optional_text(row, "command")?,
        stop_requested_at: optional_timestamp(row, "stop_requested_at")?,
        created_at: timestamp(row, "created_at")?,
        updated_at: timestamp(row, "updated_at")?,
        lock_generation: row
            .optional_integer("lock_generation")?
            .map(|generation| u64::try_from(generation).map_err(|e| corrupt("lock_generation", e)))
            .transpose()?,
    })
}

pub(crate) fn lock_fence_from_row(row: &impl Columns) -> Result<LockFenceRecord> {
    Ok(LockFenceRecord {
        stack_id: parsed(row, "stack_id")?,
        run_id: parsed(row, "run_id")?,
        until: timestamp(row, "until_at")?,
        created_at: timestamp(row, "created_at")?,
    })
}

pub(crate) const STATE_VERSION_COLUMNS: &str = "stack_id, seq, run_id, blob_key, sha256, size, created_at, rollback_of, rolled_back_by, orphaned, adoption";

pub(crate) fn state_version_from_row(row: &impl Columns) -> Result<StateVersionRecord> {
    let rollback =
        match (row.optional_integer("rollback_of")?, optional_text(row, "rolled_back_by")?) {
            (Some(of_seq), Some(by)) => Some(StateRollbackRecord {
                of_seq: u64::try_from(of_seq).map_err(|error| corrupt("rollback_of", error))?,
                by,
            }),
            (None, None) => None,
            _ => return Err(corrupt("rolled_back_by", "set without rollback_of, or the reverse")),
        };
    let (rollback, adoption) =
        if flag(row, "adoption")? { (None, rollback) } else { (rollback, None) };
    Ok(StateVersionRecord {
        stack_id: parsed(row, "stack_id")?,
        seq: count(row, "seq")?,
        run_id: parsed(row, "run_id")?,
        blob: blob_from_row(row)?,
        rollback,
        orphaned: flag(row, "orphaned")?,
        adoption,
    })
}

pub(crate) const API_KEY_COLUMNS: &str = "id, name, secret_hash, role, scope, created_by, created_at, expires_at, last_used_at, revoked_at";

pub(crate) fn api_key_from_row(row: &impl Columns) -> Result<ApiKeyRecord> {
    let scope: Vec<String> = json(row, "scope")?;
    Ok(ApiKeyRecord {
        id: text(row, "id")?,
        name: text(row, "name")?,
        secret_hash: text(row, "secret_hash")?,
        role: parsed(row, "role")?,
        scope: Scope::parse(&scope).map_err(|e| corrupt("scope", e))?,
        created_by: text(row, "created_by")?,
        created_at: timestamp(row, "created_at")?,
        expires_at: optional_timestamp(row, "expires_at")?,
        last_used_at: optional_timestamp(row, "last_used_at")?,
        revoked_at: optional_timestamp(row, "revoked_at")?,
    })
}

pub(crate) fn ui_session_from_row(row: &impl Columns) -> Result<UiSessionRecord> {
    Ok(UiSessionRecord {
        id_hash: text(row, "session_id_hash")?,
        key_id: text(row, "session_key_id")?,
        created_at: timestamp(row, "session_created_at")?,
        expires_at: timestamp(row, "session_expires_at")?,
    })
}

pub(crate) fn blob_from_row(row: &impl Columns) -> Result<BlobRecord> {
    Ok(BlobRecord {
        key: text(row, "blob_key")?,
        sha256: text(row, "sha256")?,
        size: count(row, "size")?,
        created_at: timestamp(row, "created_at")?,
    })
}

pub(crate) fn select(columns: &str, rest: &str) -> sqlx::AssertSqlSafe<String> {
    // Only ever called with the column constants above and literal SQL.
    sqlx::AssertSqlSafe(format!("SELECT {columns} {rest}"))
}
