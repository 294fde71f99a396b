//! The SQLite adapter: the embedded default. One writer connection serializes every
//! write transaction (SQLite allows one writer anyway, and this avoids lock-upgrade
//! failures); a pool of reader connections serves queries concurrently through WAL.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gantry_domain::{LauncherId, PoolId, RunId, StackId, Timestamp, WorkerId};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};

use crate::LockFenceRecord;
use crate::LogCutRecord;
use crate::UiSessionRecord;
use crate::group_commit::GroupCommit;
use crate::log_sizes::{LOG_SIZE_COLUMNS, LogSizes, signed};
use crate::sql_rows::*;
use crate::sql_store::sql_store;
use crate::store::Result;
use crate::{
    ApiKeyRecord, BlobRecord, CommittedPass, DependencyRecord, FoundSession, HeldRunRecord,
    LogChunkRecord, OutputRecord, OutputReferenceRecord, PoolRecord, RunChange, RunFilter,
    RunRecord, SessionRecord, StackRecord, StateChangeRecord, StateRollbackRecord,
    StateVersionRecord, StoreError, WorkerCountsRecord, WorkerRecord,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The transactions the shared statements (`sql_store!`) run in.
type Tx = Transaction<'static, Sqlite>;

/// Gantry's state in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    group_commit: Arc<GroupCommit>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and brings its schema up to date.
    pub async fn open(path: &Path) -> Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // NORMAL: commits do not sync the WAL themselves; every write then waits for
            // a group sync, so a committed log chunk or state change survives a power loss
            // as it would with FULL.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            // Deleted and overwritten content is zeroed, not left in free space: a stack's
            // secrets sealed at an upgrade leave no clear copy in the file.
            .pragma("secure_delete", "on");
        // No ping before each use: an in-process SQLite connection does not go stale, and
        // the ping would double the round trips to the connection's thread.
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .test_before_acquire(false)
            .connect_with(options.clone())
            .await?;
        MIGRATOR.run(&writer).await?;
        // The database and WAL files' names must survive a power loss too.
        if let Some(dir) = path.parent().filter(|dir| !dir.as_os_str().is_empty()) {
            std::fs::File::open(dir).and_then(|dir| dir.sync_all()).map_err(|error| {
                StoreError::Durability(format!("cannot sync {}: {error}", dir.display()))
            })?;
        }
        let reader = SqlitePoolOptions::new()
            .max_connections(8)
            .test_before_acquire(false)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self { writer, reader, group_commit: Arc::new(GroupCommit::new(path)) })
    }

    async fn begin(&self) -> Result<Transaction<'static, Sqlite>> {
        Ok(self.writer.begin().await?)
    }

    /// Commits, and returns once the transaction is on disk.
    async fn commit(&self, tx: Transaction<'static, Sqlite>) -> Result<()> {
        tx.commit().await?;
        self.group_commit.durable().await
    }

    /// A transaction for what is recomputed if a crash loses it (a scheduling pass's
    /// promotions and assignments): committed without waiting for a sync of the WAL. It
    /// is visible at once, and reaches the disk with the next sync, which covers every
    /// transaction before it; why losing it is harmless: `docs/ARCHITECTURE.md`, "A
    /// scheduling pass's commit is not waited for".
    async fn begin_recomputable(&self) -> Result<Transaction<'static, Sqlite>> {
        self.begin().await
    }

    async fn commit_recomputable(&self, tx: Transaction<'static, Sqlite>) -> Result<()> {
        Ok(tx.commit().await?)
    }

    /// How many times the WAL was synced to disk: fewer than the transactions committed
    /// when writers overlap.
    pub fn wal_syncs(&self) -> u64 {
        self.group_commit.syncs()
    }

    /// The ids in the JSON array bound as `$1`, as a one-column table.
    const IDS: &'static str = "SELECT value FROM json_each($1)";
    /// The `[seq, text]` pairs in the JSON array bound as `$1`, as a table.
    const LOG_CHUNKS: &'static str = "SELECT json_extract(value, '$[0]') AS seq, json_extract(value, '$[1]') AS text FROM json_each($1)";
    /// What a `SELECT` adds to lock the rows it reads until its transaction ends:
    /// nothing, since the one writer connection already runs write transactions one at a
    /// time.
    const LOCK_ROW: &'static str = "";
    /// What a `SELECT` adds to pass over rows another transaction holds: nothing, as
    /// above.
    const SKIP_LOCKED: &'static str = "";
    /// The size in bytes of the `text` column, as stored (UTF-8).
    const TEXT_BYTES: &'static str = "length(CAST(text AS BLOB))";

    /// Copies the WAL into the database file and empties it, so that a page image
    /// holding overwritten content (`secure_delete` zeroes it in the new image) lives in
    /// neither file.
    async fn erase_freed(&self) -> Result<()> {
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&self.writer).await?;
        Ok(())
    }

    /// Returns once every write committed so far is on disk.
    async fn durable(&self) -> Result<()> {
        self.group_commit.durable().await
    }

    /// Where a write commits without waiting for the disk: the writer, whose commits
    /// never sync by themselves.
    fn unsynced(&self) -> &SqlitePool {
        &self.writer
    }

    /// Returns once every write committed so far, on `unsynced` too, is on disk: the one
    /// writer's group sync covers them all, so this is `durable`.
    async fn flush(&self) -> Result<()> {
        self.durable().await
    }

    /// A scheduling pass's writes: moves the runs still `QUEUED` among `promotions` to
    /// `READY`, then makes the offered `[run, worker]` assignments that still hold;
    /// returns the runs promoted, as they are now, and the runs assigned. One transaction,
    /// so the pass commits once, and the runs it promotes are READY by the time its
    /// assignments look for runs waiting for a worker. Its commit is not waited for: see
    /// `begin_recomputable`.
    async fn commit_offered(
        &self,
        promotions: &[RunId],
        pairs: &[[String; 2]],
        at: Timestamp,
    ) -> Result<(Vec<RunRecord>, Vec<RunId>)> {
        let mut tx = self.begin_recomputable().await?;
        let rows = match promotions {
            [] => Vec::new(),
            // The `runs_history_on_change` trigger records READY for each.
            ids => {
                // A lock-taking run (`RunType::takes_stack_lock`) promoted takes its
                // stack's lock: the stack's lock generation goes up and the run records it.
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE stacks SET lock_generation = lock_generation + 1
                     WHERE id IN (SELECT stack_id FROM runs WHERE state = 'QUEUED'
                                  AND run_type IN ('TRACKED', 'TASK') AND id IN ({ids}))",
                    ids = Self::IDS
                )))
                .bind(id_list(ids))
                .execute(&mut *tx)
                .await?;
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE runs SET state = 'READY', updated_at = $2,
                         lock_generation = CASE WHEN run_type IN ('TRACKED', 'TASK')
                             THEN (SELECT lock_generation FROM stacks WHERE stacks.id = runs.stack_id)
                             ELSE lock_generation END
                     WHERE state = 'QUEUED' AND id IN ({ids})
                     RETURNING {RUN_COLUMNS}",
                    ids = Self::IDS
                )))
                .bind(id_list(ids))
                .bind(at.unix_millis())
                .fetch_all(&mut *tx)
                .await?
            }
        };
        let taken = match pairs {
            [] => Vec::new(),
            pairs => Self::take_offered(&mut tx, pairs, at).await?,
        };
        if rows.is_empty() && taken.is_empty() {
            tx.rollback().await?;
        } else {
            self.commit_recomputable(tx).await?;
        }
        Ok((rows.iter().map(run_from_row).collect::<Result<_>>()?, taken))
    }

    /// Makes the offered `[run, worker]` assignments that still hold, in `tx`; returns the
    /// runs assigned. The single writer connection makes the batch atomic.
    async fn take_offered(
        tx: &mut Transaction<'static, Sqlite>,
        pairs: &[[String; 2]],
        now: Timestamp,
    ) -> Result<Vec<RunId>> {
        // Each worker that is idle, undrained and offered a run waiting for one takes it;
        // then each run taken points at its worker. Two statements for the whole batch.
        let rows = sqlx::query(
            "WITH offered (run_id, worker_id) AS (
                 SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]')
                 FROM json_each($1)
             )
             UPDATE workers SET current_run_id = offered.run_id
             FROM offered
             WHERE workers.id = offered.worker_id
               AND workers.current_run_id IS NULL AND workers.drained = 0
               AND EXISTS (SELECT 1 FROM runs WHERE runs.id = offered.run_id
                           AND runs.worker_id IS NULL AND runs.state IN ('READY', 'CONFIRMED'))
             RETURNING workers.current_run_id AS run_id",
        )
        .bind(to_json(&pairs))
        .fetch_all(&mut **tx)
        .await?;
        let taken: Vec<RunId> =
            rows.iter().map(|row| parsed(row, "run_id")).collect::<Result<_>>()?;
        if taken.is_empty() {
            return Ok(taken);
        }
        sqlx::query(
            "UPDATE runs SET worker_id = workers.id, updated_at = $2
             FROM workers
             WHERE workers.current_run_id = runs.id
               AND runs.id IN (SELECT value FROM json_each($1))",
        )
        .bind(id_list(&taken))
        .bind(now.unix_millis())
        .execute(&mut **tx)
        .await?;
        Ok(taken)
    }
}

sql_store!(SqliteStore);
