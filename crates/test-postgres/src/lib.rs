//! Throwaway PostgreSQL for tests and benchmarks: a cluster started with `initdb` and
//! `pg_ctl` in a directory on a free loopback port, and a fresh database per test.
//!
//! The test command starts one cluster for the whole run (`gantry-test-postgres start`)
//! and exports its URL as `GANTRY_TEST_POSTGRES_URL`; each test then takes a database of
//! its own from it with [`fresh_database`]. Under CI a missing cluster fails the test.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

use sqlx::Connection;

/// Names the cluster the test command started: a URL of its maintenance database.
pub const URL_VARIABLE: &str = "GANTRY_TEST_POSTGRES_URL";
/// The role tests connect as (the cluster trusts loopback connections).
const ROLE: &str = "gantry";

/// A PostgreSQL cluster in a directory, running until stopped.
#[derive(Debug)]
pub struct Cluster {
    dir: PathBuf,
    port: u16,
    durability: Durability,
    stopped: bool,
}

/// Why a cluster could not start or stop.
#[derive(Debug)]
pub struct ClusterError(pub String);

impl std::fmt::Display for ClusterError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClusterError {}

/// How durable the cluster is: tests trade crash safety for speed; benchmarks measure
/// what a deployment would run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// `fsync=off`: fast, lost on a machine crash. For tests. Commits stay synchronous
    /// (written to the kernel before they are acknowledged): a PostgreSQL crash
    /// ([`Cluster::crash`]) loses no acknowledged commit, as in a deployment, which
    /// `synchronous_commit=off` would not give (it loses the last ~0.6 s of commits).
    Throwaway,
    /// PostgreSQL's defaults: every commit flushed. For benchmarks.
    Durable,
}

impl Cluster {
    /// Creates a cluster in `dir` (which must not hold one yet) and starts it.
    pub fn start(dir: &Path, durability: Durability) -> Result<Self, ClusterError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| ClusterError(format!("cannot create {}: {e}", dir.display())))?;
        let data = dir.join("data");
        let as_root = running_as_root();
        if as_root {
            // PostgreSQL refuses to run as root: the cluster belongs to `postgres`.
            run(Command::new("chown").args(["-R", "postgres:"]).arg(dir), "chown")?;
        }
        let mut initdb = postgres_command(as_root, "initdb");
        initdb.args(["-U", ROLE, "--auth=trust", "-E", "UTF8", "--no-sync", "-D"]).arg(&data);
        run(&mut initdb, "initdb")?;
        let port = free_port()?;
        let cluster = Self { dir: dir.to_path_buf(), port, durability, stopped: false };
        cluster.start_server()?;
        Ok(cluster)
    }

    /// Stops the server at once (`-m immediate`: what a crash leaves), keeping the cluster
    /// so that [`Self::start_again`] brings it back on the same port. For outage tests.
    pub fn crash(&self) -> Result<(), ClusterError> {
        stop_cluster(&self.dir)
    }

    /// Starts the server of a cluster [`Self::crash`] stopped, on the same port.
    pub fn start_again(&self) -> Result<(), ClusterError> {
        self.start_server()
    }

    fn start_server(&self) -> Result<(), ClusterError> {
        let mut settings = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {} -c max_connections=400",
            self.port,
            self.dir.display()
        );
        if self.durability == Durability::Throwaway {
            settings.push_str(" -c fsync=off -c full_page_writes=off");
        }
        let mut start = postgres_command(running_as_root(), "pg_ctl");
        start
            .args(["-w", "-t", "60", "-D"])
            .arg(self.dir.join("data"))
            .arg("-l")
            .arg(self.dir.join("postgres.log"))
            .args(["-o", &settings, "start"]);
        run(&mut start, "pg_ctl start")
    }

    /// The URL of the cluster's maintenance database.
    pub fn url(&self) -> String {
        format!("postgres://{ROLE}@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the cluster, dropping connections at once.
    pub fn stop(mut self) -> Result<(), ClusterError> {
        self.stopped = true;
        stop_cluster(&self.dir)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.stopped {
            let _ = stop_cluster(&self.dir);
        }
    }
}

/// Stops the cluster created in `dir`.
pub fn stop_cluster(dir: &Path) -> Result<(), ClusterError> {
    let mut stop = postgres_command(running_as_root(), "pg_ctl");
    stop.args(["-w", "-D"]).arg(dir.join("data")).args(["-m", "immediate", "stop"]);
    run(&mut stop, "pg_ctl stop")
}

fn running_as_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

fn postgres_command(as_root: bool, program: &str) -> Command {
    if as_root {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--", program]);
        command
    } else {
        Command::new(program)
    }
}

fn run(command: &mut Command, what: &str) -> Result<(), ClusterError> {
    let output = command.output().map_err(|e| {
        ClusterError(format!(
            "cannot run {what}: {e} (the PostgreSQL server binaries initdb, pg_ctl and postgres must be on PATH)"
        ))
    })?;
    if output.status.success() {
        return Ok(());
    }
    Err(ClusterError(format!(
        "{what} failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )))
}

fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .map_err(|e| ClusterError(format!("cannot find a free port: {e}")))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| ClusterError(e.to_string()))
}

/// A new, empty database on the test command's cluster, as a URL. `None` (with the reason
/// printed) when no cluster was started outside CI; under CI that is a failure.
pub async fn fresh_database() -> Option<String> {
    let Ok(url) = std::env::var(URL_VARIABLE) else {
        if std::env::var("CI").is_ok_and(|ci| ci == "true") {
            panic!(
                "{URL_VARIABLE} is not set: under CI the PostgreSQL tests must run (scripts/test.sh starts a cluster)"
            );
        }
        eprintln!(
            "skipped: {URL_VARIABLE} is not set (scripts/test.sh starts a PostgreSQL cluster and sets it)"
        );
        return None;
    };
    Some(create_database(&url).await)
}

/// Creates a uniquely named database on the cluster whose maintenance URL is `url`.
pub async fn create_database(url: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "gantry_{}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    let mut connection = sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to the test cluster at {url}: {e}"));
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut connection)
        .await
        .unwrap_or_else(|e| panic!("cannot create database {name}: {e}"));
    let base = url.rsplit_once('/').map_or(url, |(base, _)| base);
    format!("{base}/{name}")
}
