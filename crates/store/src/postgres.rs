//! The PostgreSQL adapter: for several server replicas on one database. Statements are
//! shared with SQLite (`sql_store!`); what differs is here: JSON list fragments, row locks
//! that make assignment atomic across replicas (`FOR UPDATE SKIP LOCKED`), and the
//! `LISTEN`/`NOTIFY` channel replicas wake each other through.

use std::str::FromStr;
use std::time::Duration;

use futures_util::StreamExt;
use gantry_domain::{LauncherId, PoolId, RunId, StackId, Timestamp, WorkerId};
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::{Connection, Postgres, Row, Transaction};

use crate::LockFenceRecord;
use crate::LogCutRecord;
use crate::UiSessionRecord;
use crate::log_sizes::{LOG_SIZE_COLUMNS, LogSizes, signed};
use crate::sql_rows::*;
use crate::sql_store::sql_store;
use crate::store::{Result, Signal, SignalStream};
use crate::{
    ApiKeyRecord, BlobRecord, CommittedPass, DependencyRecord, FoundSession, HeldRunRecord,
    LogChunkRecord, OutputRecord, OutputReferenceRecord, PoolRecord, RunChange, RunFilter,
    RunRecord, SessionRecord, StackRecord, StateChangeRecord, StateRollbackRecord,
    StateVersionRecord, StoreError, WorkerCountsRecord, WorkerRecord,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The transactions the shared statements (`sql_store!`) run in.
type Tx = Transaction<'static, Postgres>;

/// The channel replicas notify each other on.
const SIGNAL_CHANNEL: &str = "gantry_signals";
/// How long to wait before listening again after the connection could not be restored.
const RELISTEN_DELAY: Duration = Duration::from_secs(1);

/// Gantry's state in a PostgreSQL database, shareable by several server processes.
#[derive(Debug, Clone)]
pub struct PostgresStore {
    // One pool serves both: PostgreSQL has no single-writer rule to work around. Two
    // names keep the shared statements engine-neutral.
    writer: PgPool,
    reader: PgPool,
    /// Connections whose commits do not wait for the WAL flush (`synchronous_commit =
    /// off`): for writes that are flushed right after (`flush`) or recomputed if lost.
    unsynced: PgPool,
    options: PgConnectOptions,
}

impl PostgresStore {
    /// Connects to the database at `url` (`postgres://user[:password]@host[:port]/db`),
    /// and brings its schema up to date. Replicas starting together migrate one at a
    /// time: the migrator holds an advisory lock.
    pub async fn connect(url: &str) -> Result<Self> {
        let options = PgConnectOptions::from_str(url).map_err(|error| {
            StoreError::Config(format!(
                "the database URL {} is not a valid postgres:// URL: {}",
                redact_url(url),
                error.to_string().replace(url, &redact_url(url))
            ))
        })?;
        Self::connect_with(options.application_name("gantry-server"), url).await
    }

    /// `connect`, from parsed options; `url` only names the database in errors.
    async fn connect_with(options: PgConnectOptions, url: &str) -> Result<Self> {
        let unreachable = |error: sqlx::Error| {
            StoreError::Config(format!(
                "cannot connect to the database at {}: {error}",
                redact_url(url)
            ))
        };
        // One connection first, outside the pool: the pool retries a refused connection
        // until its acquire timeout and then reports only that it timed out, where this
        // names the cause (refused, unknown host, login rejected) at once.
        let probe = PgConnection::connect_with(&options).await.map_err(unreachable)?;
        // Closing is a courtesy to the server; the connection was good.
        let _ = probe.close().await;
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // A ping before each use would double the round trips; a connection that
            // broke is dropped when its query fails.
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(unreachable)?;
        MIGRATOR.run(&pool).await?;
        // Connected lazily: a replica that triggers no run never opens one.
        let unsynced = PgPoolOptions::new()
            .max_connections(8)
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect_lazy_with(options.clone().options([("synchronous_commit", "off")]));
        Ok(Self { writer: pool.clone(), reader: pool, unsynced, options })
    }

    /// The ids in the JSON array bound as `$1`, as a one-column table. Through an array:
    /// the planner then knows how few they are and looks each up by index, where it
    /// would scan the whole table against a set-returning function's 100-row guess.
    const IDS: &'static str = "SELECT unnest(ARRAY(SELECT json_array_elements_text($1::json)))";
    /// The `[seq, text]` pairs in the JSON array bound as `$1`, as a table.
    const LOG_CHUNKS: &'static str = "SELECT (value->>0)::bigint AS seq, value->>1 AS text
         FROM json_array_elements($1::json) AS chunks(value)";

    /// What a `SELECT` adds to lock the rows it reads until its transaction ends. Not
    /// `FOR UPDATE`: that would also block inserts whose foreign keys name the row (a
    /// run of the stack, say), which take `FOR KEY SHARE`.
    const LOCK_ROW: &'static str = " FOR NO KEY UPDATE";
    /// What a `SELECT` adds to lock the rows it reads, passing over rows another
    /// transaction holds (a queue's claim: two replicas never wait for each other).
    const SKIP_LOCKED: &'static str = " FOR UPDATE SKIP LOCKED";
    /// The size in bytes of the `text` column, as stored (UTF-8).
    const TEXT_BYTES: &'static str = "octet_length(text)::bigint";

    async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        Ok(self.writer.begin().await?)
    }

    async fn commit(&self, tx: Transaction<'static, Postgres>) -> Result<()> {
        Ok(tx.commit().await?)
    }

    /// A commit returns once PostgreSQL flushed it (`synchronous_commit`): nothing to wait for.
    async fn durable(&self) -> Result<()> {
        Ok(())
    }

    /// Nothing: PostgreSQL keeps a row's former version in the table's files until a
    /// vacuum reclaims it (`docs/security.md`).
    async fn erase_freed(&self) -> Result<()> {
        Ok(())
    }

    fn unsynced(&self) -> &PgPool {
        &self.unsynced
    }

    /// Returns once every commit made so far, on any connection, is on disk. The WAL is
    /// flushed in order, so a durable commit made now covers every one before it. A
    /// commit waits for the flush only when its transaction wrote to the WAL (an xid
    /// alone is not enough): a transactional logical-decoding message is the smallest
    /// such write, needs no table, and no privilege.
    async fn flush(&self) -> Result<()> {
        sqlx::query("SELECT pg_logical_emit_message(true, 'gantry', '')")
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    /// A scheduling pass's writes, in one statement: moves the runs still `QUEUED` among
    /// `promotions` to `READY` and makes the offered `[run, worker]` assignments that
    /// still hold (a run promoted here may be assigned here); returns the runs promoted,
    /// as they are now, and the runs assigned.
    ///
    /// One statement, so one round trip and one commit, on a connection whose commits are
    /// not waited for: it is recomputed if lost (`docs/ARCHITECTURE.md`, "A scheduling
    /// pass's commit is not waited for"). The runs and workers it names are locked first,
    /// skipping rows another replica holds: a run or worker in another replica's batch is
    /// neither promoted nor assigned here (that replica's pass decides it), never given
    /// twice, and no replica waits for another. Rows are locked by primary key alone and
    /// checked afterwards: with the checks in the same scan, the planner may walk a
    /// partial index of every idle worker instead (it did, for 1.6 ms of a 2 ms pass,
    /// while the statistics still described a pool before its fleet registered). One
    /// `UPDATE` of `runs` sets both the state and the worker: a statement may not change
    /// a row twice.
    async fn commit_offered(
        &self,
        promotions: &[RunId],
        pairs: &[[String; 2]],
        at: Timestamp,
    ) -> Result<(Vec<RunRecord>, Vec<RunId>)> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "WITH promotions AS (
                 SELECT json_array_elements_text($1::json) AS id
             ), offered AS (
                 SELECT value->>0 AS run_id, value->>1 AS worker_id
                 FROM json_array_elements($2::json) AS offered(value)
             ), named_runs AS (
                 SELECT id, state, worker_id, stack_id, run_type FROM runs
                 WHERE id = ANY(ARRAY(SELECT id FROM promotions UNION SELECT run_id FROM offered))
                 FOR NO KEY UPDATE SKIP LOCKED
             ), promoted AS (
                 SELECT id FROM named_runs
                 WHERE state = 'QUEUED' AND id IN (SELECT id FROM promotions)
             ), offered_workers AS (
                 SELECT id, current_run_id, drained FROM workers
                 WHERE id = ANY(ARRAY(SELECT worker_id FROM offered))
                 FOR NO KEY UPDATE SKIP LOCKED
             ), made AS (
                 SELECT offered.run_id, offered.worker_id FROM offered
                 JOIN named_runs AS run ON run.id = offered.run_id
                 JOIN offered_workers AS worker ON worker.id = offered.worker_id
                 WHERE run.worker_id IS NULL
                   AND (run.state IN ('READY', 'CONFIRMED') OR run.id IN (SELECT id FROM promoted))
                   AND worker.current_run_id IS NULL AND worker.drained = 0
             ), taken AS (
                 UPDATE workers SET current_run_id = made.run_id
                 FROM made WHERE workers.id = made.worker_id
             ), generations AS (
                 -- A lock-taking run (`RunType::takes_stack_lock`) promoted takes its
                 -- stack's lock: the stack's lock generation goes up and the run records it.
                 UPDATE stacks SET lock_generation = stacks.lock_generation + 1
                 WHERE stacks.id IN (
                     SELECT named_runs.stack_id FROM named_runs
                     JOIN promoted ON promoted.id = named_runs.id
                     WHERE named_runs.run_type IN ('TRACKED', 'TASK')
                 )
                 RETURNING stacks.id, stacks.lock_generation
             )
             -- The `runs_history_on_change` trigger records READY for each promoted run.
             UPDATE runs SET
                 state = CASE WHEN promoted.id IS NULL THEN runs.state ELSE 'READY' END,
                 worker_id = COALESCE(made.worker_id, runs.worker_id),
                 lock_generation = CASE WHEN promoted.id IS NOT NULL AND named_runs.run_type IN ('TRACKED', 'TASK')
                     THEN generations.lock_generation ELSE runs.lock_generation END,
                 updated_at = $3
             FROM named_runs
             LEFT JOIN promoted ON promoted.id = named_runs.id
             LEFT JOIN made ON made.run_id = named_runs.id
             LEFT JOIN generations ON generations.id = named_runs.stack_id
             WHERE runs.id = named_runs.id
               AND (promoted.id IS NOT NULL OR made.run_id IS NOT NULL)
             RETURNING {columns}, promoted.id IS NOT NULL AS promoted,
                       made.run_id IS NOT NULL AS assigned",
            columns = qualified("runs", RUN_COLUMNS),
        )))
        .bind(id_list(promotions))
        .bind(to_json(&pairs))
        .bind(at.unix_millis())
        .fetch_all(&self.unsynced)
        .await?;
        let mut promoted = Vec::new();
        let mut taken = Vec::new();
        for row in &rows {
            let run = run_from_row(row)?;
            if row.try_get::<bool, _>("assigned")? {
                taken.push(run.id);
            }
            if row.try_get::<bool, _>("promoted")? {
                promoted.push(run);
            }
        }
        Ok((promoted, taken))
    }

    async fn notify_replicas(&self, message: &str) -> Result<()> {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(SIGNAL_CHANNEL)
            .bind(message)
            .execute(&self.writer)
            .await?;
        Ok(())
    }

    async fn listen_to_replicas(&self) -> Result<SignalStream> {
        // Its own connection, outside the pool: a listener holds it for good.
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .max_lifetime(None)
            .idle_timeout(None)
            .connect_with(self.options.clone())
            .await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen(SIGNAL_CHANNEL).await?;
        let signals = futures_util::stream::unfold(listener, |mut listener| async move {
            let signal = match listener.try_recv().await {
                Ok(Some(notification)) => Signal::Message(notification.payload().to_owned()),
                // The connection dropped; the listener reconnects and listens again on
                // the next call. Whatever was sent meanwhile is lost.
                Ok(None) => Signal::Gap,
                Err(error) => {
                    tracing::warn!(%error, "lost the database's notification channel; retrying");
                    tokio::time::sleep(RELISTEN_DELAY).await;
                    Signal::Gap
                }
            };
            Some((signal, listener))
        });
        Ok(signals.boxed())
    }
}

/// The URL with its password replaced, fit for errors and logs.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "<not a URL>".to_owned() };
    let (authority, path) = rest.split_once('/').map_or((rest, None), |(a, p)| (a, Some(p)));
    let authority = match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split_once(':').map_or(user_info, |(user, _)| user);
            if user_info.contains(':') {
                format!("{user}:***@{host}")
            } else {
                format!("{user}@{host}")
            }
        }
        None => authority.to_owned(),
    };
    match path {
        Some(path) => format!("{scheme}://{authority}/{}", redact_query(path)),
        None => format!("{scheme}://{authority}"),
    }
}

/// Drops a `password=` query parameter's value.
fn redact_query(path: &str) -> String {
    let Some((db, query)) = path.split_once('?') else { return path.to_owned() };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{db}?{}", query.join("&"))
}

sql_store!(PostgresStore {
    fn shared(&self) -> bool {
        true
    }

    async fn publish_signal(&self, message: &str) -> Result<()> {
        self.notify_replicas(message).await
    }

    async fn signals(&self) -> Result<Option<SignalStream>> {
        Ok(Some(self.listen_to_replicas().await?))
    }
});

#[cfg(test)]
mod tests {
    use super::*;

    /// A store on a fresh database whose commits wait for the flush by default, whatever
    /// the test cluster's default is; with the database's URL.
    async fn durable_store() -> Option<(PostgresStore, String)> {
        let url = gantry_test_postgres::fresh_database().await?;
        let options =
            PgConnectOptions::from_str(&url).unwrap().options([("synchronous_commit", "on")]);
        Some((PostgresStore::connect_with(options, &url).await.unwrap(), url))
    }

    #[tokio::test]
    async fn only_unsynced_writes_commit_without_waiting_for_the_flush() {
        let Some((store, _)) = durable_store().await else { return };
        let setting = "SELECT current_setting('synchronous_commit')";
        let unsynced: String =
            sqlx::query_scalar(setting).fetch_one(store.unsynced()).await.unwrap();
        assert_eq!(unsynced, "off");
        let mut tx = store.begin().await.unwrap();
        let durable: String = sqlx::query_scalar(setting).fetch_one(&mut *tx).await.unwrap();
        assert_eq!(durable, "on");
        store.commit(tx).await.unwrap();
        let reader: String = sqlx::query_scalar(setting).fetch_one(&store.reader).await.unwrap();
        assert_eq!(reader, "on");
    }

    #[tokio::test]
    async fn a_flush_puts_earlier_unsynced_commits_on_disk_without_privileges() {
        let Some((store, url)) = durable_store().await else { return };
        // As a role with no privilege beyond logging in, as a production database user
        // may be.
        let database = url.rsplit_once('/').unwrap().1;
        let role = format!("plain_{database}");
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE ROLE {role} LOGIN; CREATE TABLE marks (n bigint); GRANT INSERT ON marks TO {role}"
        )))
        .execute(&store.writer)
        .await
        .unwrap();
        let options = PgConnectOptions::from_str(&url)
            .unwrap()
            .username(&role)
            .options([("synchronous_commit", "on")]);
        let connect = |options| PgPoolOptions::new().max_connections(1).connect_with(options);
        let writer = connect(options.clone()).await.unwrap();
        let unsynced =
            connect(options.clone().options([("synchronous_commit", "off")])).await.unwrap();
        let plain = PostgresStore { reader: writer.clone(), writer, unsynced, options };
        let lsn = "SELECT pg_current_wal_insert_lsn()::text";
        let flushed = "SELECT pg_current_wal_flush_lsn() >= $1::pg_lsn";
        for n in 0..20 {
            sqlx::query("INSERT INTO marks VALUES ($1)")
                .bind(n)
                .execute(plain.unsynced())
                .await
                .unwrap();
            let written: String = sqlx::query_scalar(lsn).fetch_one(&store.writer).await.unwrap();
            plain.flush().await.unwrap();
            let on_disk: bool =
                sqlx::query_scalar(flushed).bind(&written).fetch_one(&store.writer).await.unwrap();
            assert!(on_disk, "the WAL up to {written} was not flushed");
        }
    }

    #[test]
    fn urls_lose_their_passwords() {
        assert_eq!(
            redact_url("postgres://gantry:s3cret@db:5432/gantry"),
            "postgres://gantry:***@db:5432/gantry"
        );
        assert_eq!(
            redact_url("postgres://gantry@db/gantry?password=s3cret&sslmode=require"),
            "postgres://gantry@db/gantry?password=***&sslmode=require"
        );
        assert_eq!(redact_url("postgres://db"), "postgres://db");
        assert_eq!(redact_url("s3cret"), "<not a URL>");
    }
}
