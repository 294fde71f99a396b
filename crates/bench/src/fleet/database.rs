//! The database the fleet benchmark's servers keep their state in: SQLite in the
//! server's data directory, or PostgreSQL, a durable cluster started here for the
//! benchmark, which one or several server replicas share. Optionally the cluster loads
//! `pg_stat_statements`, to say which statements the database's time goes to.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use gantry_test_postgres::{Cluster, Durability};
use sqlx::Connection as _;

use super::cpu::process_tree_cpu_time;

/// Which store the servers under test use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FleetDatabase {
    /// SQLite in the server's data directory: one server process.
    #[default]
    Sqlite,
    /// A PostgreSQL cluster on this machine, with PostgreSQL's durable defaults (every
    /// commit flushed), shared by all replicas.
    Postgres,
}

impl std::fmt::Display for FleetDatabase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Sqlite => "SQLite",
            Self::Postgres => "PostgreSQL",
        })
    }
}

/// One statement's share of the database's time, from `pg_stat_statements`.
#[derive(Debug, Clone, PartialEq)]
pub struct StatementStats {
    pub calls: i64,
    pub total: Duration,
    pub rows: i64,
    /// Normalized (`$1` for constants), whitespace collapsed.
    pub query: String,
}

/// The WAL PostgreSQL wrote in a phase (`pg_stat_wal`): a durable commit waits for a
/// flush, so flushes and their duration bound what commits one after another cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalStats {
    pub records: i64,
    pub bytes: i64,
    /// `fdatasync` calls (or their equivalent) on the WAL.
    pub syncs: i64,
    /// Their total duration: measured with `--database-stats` only.
    pub sync_time: Option<Duration>,
}

/// What PostgreSQL did in one phase.
#[derive(Debug, Clone, PartialEq)]
pub struct DatabaseStats {
    pub wal: WalStats,
    /// The statements with the most execution time (commits excluded: a statement's
    /// time ends before its commit flushes the WAL); with `--database-stats` only.
    pub statements: Vec<StatementStats>,
}

/// A running PostgreSQL cluster and the database the servers share.
#[derive(Debug)]
pub(crate) struct PostgresCluster {
    cluster: Cluster,
    pub(crate) database_url: String,
    /// The postmaster: every backend is its child.
    pub(crate) postmaster: i32,
    /// `pg_stat_statements` is loaded and WAL flushes are timed.
    detailed: bool,
}

/// Statements listed per phase with `--database-stats`.
const STATEMENTS_SHOWN: i64 = 25;
/// Backends publish their statistics at most once a second: a reading waits for them.
const STATISTICS_DELAY: Duration = Duration::from_millis(1500);

impl PostgresCluster {
    /// Creates and starts a durable cluster in `dir` (whose parent the `postgres` user
    /// must be able to traverse when this runs as root) and creates one database on it.
    /// `detailed`: with `pg_stat_statements` and timed WAL flushes.
    pub(crate) async fn start(dir: &Path, detailed: bool) -> anyhow::Result<Self> {
        let cluster_dir = dir.to_path_buf();
        let cluster =
            tokio::task::spawn_blocking(move || Cluster::start(&cluster_dir, Durability::Durable))
                .await?
                .context("cannot start a PostgreSQL cluster")?;
        if detailed {
            enable_detailed_statistics(&cluster, dir).await?;
        }
        let database_url = gantry_test_postgres::create_database(&cluster.url()).await;
        if detailed {
            let mut connection = sqlx::PgConnection::connect(&database_url).await?;
            sqlx::query("CREATE EXTENSION pg_stat_statements").execute(&mut connection).await?;
        }
        let postmaster = postmaster_pid(dir)?;
        Ok(Self { cluster, database_url, postmaster, detailed })
    }

    /// CPU time of the postmaster and all its backends so far.
    pub(crate) fn cpu_time(&self) -> anyhow::Result<Duration> {
        process_tree_cpu_time(self.postmaster)
    }

    /// Forgets the statistics gathered so far, so that the next reading covers one
    /// phase.
    pub(crate) async fn reset_statistics(&self) -> anyhow::Result<()> {
        tokio::time::sleep(STATISTICS_DELAY).await;
        let mut connection = sqlx::PgConnection::connect(&self.database_url).await?;
        sqlx::query("SELECT pg_stat_reset_shared('wal')").execute(&mut connection).await?;
        if self.detailed {
            sqlx::query("SELECT pg_stat_statements_reset()").execute(&mut connection).await?;
        }
        Ok(())
    }

    /// What the database did since the last reset.
    pub(crate) async fn statistics(&self) -> anyhow::Result<DatabaseStats> {
        tokio::time::sleep(STATISTICS_DELAY).await;
        let mut connection = sqlx::PgConnection::connect(&self.database_url).await?;
        let (records, bytes, syncs, sync_ms): (i64, i64, i64, f64) = sqlx::query_as(
            "SELECT wal_records, wal_bytes::bigint, wal_sync, wal_sync_time FROM pg_stat_wal",
        )
        .fetch_one(&mut connection)
        .await?;
        let wal = WalStats {
            records,
            bytes,
            syncs,
            sync_time: self.detailed.then(|| milliseconds(sync_ms)),
        };
        if !self.detailed {
            return Ok(DatabaseStats { wal, statements: Vec::new() });
        }
        let rows: Vec<(i64, f64, i64, String)> = sqlx::query_as(
            "SELECT calls, total_exec_time, rows, query FROM pg_stat_statements
             WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
               AND query NOT LIKE '%pg_stat%'
             ORDER BY total_exec_time DESC LIMIT $1",
        )
        .bind(STATEMENTS_SHOWN)
        .fetch_all(&mut connection)
        .await?;
        let statements = rows
            .into_iter()
            .map(|(calls, total_ms, rows, query)| StatementStats {
                calls,
                total: milliseconds(total_ms),
                rows,
                query: query.split_whitespace().collect::<Vec<_>>().join(" "),
            })
            .collect();
        Ok(DatabaseStats { wal, statements })
    }

    /// Stops the cluster at once (its data directory stays, for `--keep-server-data`).
    pub(crate) fn stop(self) -> anyhow::Result<()> {
        Ok(self.cluster.stop()?)
    }
}

fn milliseconds(ms: f64) -> Duration {
    Duration::from_secs_f64(ms.max(0.0) / 1000.0)
}

/// Preloads `pg_stat_statements` and times WAL flushes. Preloading takes a restart:
/// `pg_ctl restart` starts the postmaster again with the options it was first started
/// with, but not its log file: without one, the postmaster would hold this process's
/// pipes open.
async fn enable_detailed_statistics(cluster: &Cluster, dir: &Path) -> anyhow::Result<()> {
    let mut connection = sqlx::PgConnection::connect(&cluster.url()).await?;
    for setting in [
        "ALTER SYSTEM SET shared_preload_libraries = 'pg_stat_statements'",
        "ALTER SYSTEM SET track_wal_io_timing = on",
    ] {
        sqlx::query(setting).execute(&mut connection).await?;
    }
    connection.close().await?;
    let mut restart = if nix::unistd::geteuid().is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", "pg_ctl"]);
        command
    } else {
        Command::new("pg_ctl")
    };
    restart
        .args(["-w", "-t", "60", "-m", "fast", "-D"])
        .arg(dir.join("data"))
        .arg("-l")
        .arg(dir.join("postgres.log"))
        .arg("restart");
    let output = tokio::task::spawn_blocking(move || restart.output()).await??;
    anyhow::ensure!(
        output.status.success(),
        "restarting PostgreSQL with pg_stat_statements failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// The first line of the cluster's `postmaster.pid`.
fn postmaster_pid(dir: &Path) -> anyhow::Result<i32> {
    let path = dir.join("data").join("postmaster.pid");
    let text = std::fs::read_to_string(&path)
        .with_context(|| format!("cannot read {}", path.display()))?;
    text.lines()
        .next()
        .and_then(|line| line.trim().parse().ok())
        .with_context(|| format!("{} does not start with a process id", path.display()))
}
