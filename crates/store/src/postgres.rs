//! The PostgreSQL adapter: for several server replicas on one database. Statements are
//! shared with SQLite (`sql_store!`); what differs is here: JSON list fragments, row locks
//! that make assignment atomic across replicas (`FOR UPDATE SKIP LOCKED`), and the
//! `LISTEN`/`NOTIFY` channel replicas wake each other through.

use std::str::FromStr;
use std::time::Duration;

use futures_util::StreamExt;
use gantry_domain::{LauncherId, PoolId, RunId, StackId, Timestamp, WorkerId};
use sqlx::postgres::{PgConnectOptions, PgListener, PgPool, PgPoolOptions};
use sqlx::{Postgres, Transaction};

use crate::sql_rows::*;
use crate::sql_store::sql_store;
use crate::store::{Result, Signal, SignalStream};
use crate::{
    ApiKeyRecord, BlobRecord, CommittedPass, DependencyRecord, FoundSession, LogChunkRecord,
    OutputRecord, OutputReferenceRecord, PoolRecord, RunChange, RunFilter, RunRecord,
    SessionRecord, StackRecord, StateChangeRecord, StateVersionRecord, StoreError,
    WorkerCountsRecord, WorkerRecord,
};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

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
        let options = options.application_name("gantry-server");
        let pool = PgPoolOptions::new()
            .max_connections(16)
            // A ping before each use would double the round trips; a connection that
            // broke is dropped when its query fails.
            .test_before_acquire(false)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .map_err(|error| {
                StoreError::Config(format!(
                    "cannot connect to the database at {}: {error}",
                    redact_url(url)
                ))
            })?;
        MIGRATOR.run(&pool).await?;
        Ok(Self { writer: pool.clone(), reader: pool, options })
    }

    /// The ids in the JSON array bound as `$1`, as a one-column table. Through an array:
    /// the planner then knows how few they are and looks each up by index, where it
    /// would scan the whole table against a set-returning function's 100-row guess.
    const IDS: &'static str = "SELECT unnest(ARRAY(SELECT json_array_elements_text($1::json)))";
    /// The `[seq, text]` pairs in the JSON array bound as `$1`, as a table.
    const LOG_CHUNKS: &'static str = "SELECT (value->>0)::bigint AS seq, value->>1 AS text
         FROM json_array_elements($1::json) AS chunks(value)";

    async fn begin(&self) -> Result<Transaction<'static, Postgres>> {
        Ok(self.writer.begin().await?)
    }

    async fn commit(&self, tx: Transaction<'static, Postgres>) -> Result<()> {
        Ok(tx.commit().await?)
    }

    /// A transaction for what is recomputed if a crash loses it (a scheduling pass's
    /// promotions and assignments): its commit does not wait for the WAL flush
    /// (`synchronous_commit = off` for this transaction only). It is visible at once, and
    /// reaches the disk with the next durable commit, since the WAL is flushed in order;
    /// why losing it is harmless: `docs/ARCHITECTURE.md`, "A scheduling pass's commit is
    /// not waited for".
    async fn begin_recomputable(&self) -> Result<Transaction<'static, Postgres>> {
        // One round trip: both statements in one simple query.
        Ok(self.writer.begin_with("BEGIN; SET LOCAL synchronous_commit = off").await?)
    }

    async fn commit_recomputable(&self, tx: Transaction<'static, Postgres>) -> Result<()> {
        Ok(tx.commit().await?)
    }

    /// A commit returns once PostgreSQL flushed it (`synchronous_commit`): nothing to wait for.
    async fn durable(&self) -> Result<()> {
        Ok(())
    }

    /// Makes the offered `[run, worker]` assignments that still hold, in `tx`; returns the
    /// runs assigned. One statement: runs and workers are locked first, skipping rows
    /// another replica holds, so a run or worker in another replica's batch is refused
    /// here, never given twice, and no replica waits for another; then both sides of each
    /// pair that still holds are linked.
    async fn take_offered(
        tx: &mut Transaction<'static, Postgres>,
        pairs: &[[String; 2]],
        now: Timestamp,
    ) -> Result<Vec<RunId>> {
        let taken: Vec<String> = sqlx::query_scalar(
            "WITH offered AS (
                 SELECT value->>0 AS run_id, value->>1 AS worker_id
                 FROM json_array_elements($1::json) AS offered(value)
             ), free_runs AS (
                 SELECT id FROM runs
                 WHERE id IN (SELECT unnest(ARRAY(SELECT run_id FROM offered)))
                   AND worker_id IS NULL AND state IN ('READY', 'CONFIRMED')
                 FOR NO KEY UPDATE SKIP LOCKED
             ), free_workers AS (
                 SELECT id FROM workers
                 WHERE id IN (SELECT unnest(ARRAY(SELECT worker_id FROM offered)))
                   AND current_run_id IS NULL AND drained = 0
                 FOR NO KEY UPDATE SKIP LOCKED
             ), made AS (
                 SELECT offered.run_id, offered.worker_id FROM offered
                 JOIN free_runs ON free_runs.id = offered.run_id
                 JOIN free_workers ON free_workers.id = offered.worker_id
             ), taken AS (
                 UPDATE workers SET current_run_id = made.run_id
                 FROM made WHERE workers.id = made.worker_id
             )
             UPDATE runs SET worker_id = made.worker_id, updated_at = $2
             FROM made WHERE runs.id = made.run_id
             RETURNING runs.id",
        )
        .bind(to_json(&pairs))
        .bind(now.unix_millis())
        .fetch_all(&mut **tx)
        .await?;
        taken.iter().map(|run| run.parse().map_err(|error| corrupt("runs.id", error))).collect()
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

    #[tokio::test]
    async fn only_a_recomputable_transaction_commits_without_waiting_for_the_flush() {
        let Some(url) = gantry_test_postgres::fresh_database().await else { return };
        // One connection, so that whatever a transaction set would stay on the one the
        // next statement gets; durable commits by default, whatever the test cluster's
        // default is.
        let options =
            PgConnectOptions::from_str(&url).unwrap().options([("synchronous_commit", "on")]);
        let pool = PgPoolOptions::new().max_connections(1).connect_with(options.clone()).await;
        let pool = pool.unwrap();
        let store = PostgresStore { writer: pool.clone(), reader: pool.clone(), options };
        let setting = "SELECT current_setting('synchronous_commit')";
        let mut tx = store.begin_recomputable().await.unwrap();
        let inside: String = sqlx::query_scalar(setting).fetch_one(&mut *tx).await.unwrap();
        assert_eq!(inside, "off");
        store.commit_recomputable(tx).await.unwrap();
        let after: String = sqlx::query_scalar(setting).fetch_one(&pool).await.unwrap();
        assert_eq!(after, "on", "the setting ends with the transaction");
        let mut tx = store.begin().await.unwrap();
        let durable: String = sqlx::query_scalar(setting).fetch_one(&mut *tx).await.unwrap();
        assert_eq!(durable, "on");
        store.commit(tx).await.unwrap();
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
