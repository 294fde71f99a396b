//! Executors start the worker for a run and stop it: `process` runs it as a child
//! process (local use), `docker` in a container of the stack's runner image. The run
//! path is the same whatever the executor. A worker a killed launcher left behind is
//! found again by a launcher started with the same work directory (`reclaim`).

pub mod docker;
mod process;
pub mod registry_auth;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use gantry_domain::{RunId, RunType, WorkerId};
use tokio::sync::mpsc;

pub use docker::{DockerExecutor, DockerSettings};
pub(crate) use process::DEFAULT_RUN_UID_BASE;
pub use process::{ProcessExecutor, ProcessExecutorError};

/// How long a stopped worker may take to exit before it is killed.
pub(crate) const TERMINATE_GRACE: Duration = Duration::from_secs(10);

/// What an executor needs to start one run's worker.
#[derive(Debug, Clone)]
pub struct WorkerLaunch {
    /// The worker executable: local, or downloaded and verified for this run.
    pub worker_binary: PathBuf,
    pub run_id: RunId,
    pub worker_id: WorkerId,
    /// Read-only (proposed) or write: some mounts reach only one kind.
    pub run_type: RunType,
    pub workspace: PathBuf,
    /// The per-run unix socket of the launcher's local API.
    pub socket_path: PathBuf,
    /// The per-run capability the worker presents on that socket.
    pub capability: String,
    /// Whether the worker reads its capability on standard input. Only a worker of this
    /// launcher's own release is known to: one downloaded from the server may be older,
    /// and reads it only from its environment (which it scrubs before running anything).
    pub capability_on_input: bool,
    pub runner_image: Option<String>,
}

/// How a worker ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerExit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl WorkerExit {
    pub fn success(self) -> bool {
        self.code == Some(0)
    }
}

impl fmt::Display for WorkerExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(code), _) => write!(f, "exit code {code}"),
            (None, Some(signal)) => write!(f, "signal {signal}"),
            (None, None) => f.write_str("an unknown status"),
        }
    }
}

/// Where a started worker runs, as a run's journal keeps it: what a launcher started
/// again with the same work directory looks for.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkerHandle {
    Container {
        id: String,
    },
    /// A process, told apart from a later one with the same id by the boot it started in
    /// and its start time (clock ticks since that boot).
    Process {
        pid: u32,
        boot_id: String,
        start_ticks: u64,
    },
}

/// Why a worker could not be started or watched.
#[derive(Debug, thiserror::Error)]
pub enum ExecutorError {
    #[error("cannot start the worker {binary}: {source}")]
    Spawn { binary: String, source: std::io::Error },
    #[error("cannot watch the worker: {0}")]
    Wait(std::io::Error),
    #[error("{0}")]
    Docker(String),
    #[error("every run user of this launcher is taken: more runs than slots")]
    NoRunUser,
    #[error("cannot give the run its own user: {0}")]
    HandOver(std::io::Error),
}

/// Gives a run's workspace and socket to `uid`, the user its worker runs as, so that it
/// can write the one and reach its launcher through the other. Without the right to
/// change owners (a docker executor's launcher not running as root), they are opened to
/// everyone instead, as [`crate::workspace::hand_over_tree`] does: the launcher's work
/// directory above them stays closed to other users.
fn give_to_run_user(workspace: &Path, socket: &Path, uid: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    crate::workspace::hand_over_tree(workspace, Some(uid))?;
    std::os::unix::fs::lchown(socket, Some(uid), Some(uid))
        .or_else(|_| std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o666)))
}

/// Starts workers.
#[async_trait]
pub trait Executor: Send + Sync + fmt::Debug {
    /// Starts the worker; what it prints on its own (diagnostics, a crash) is sent
    /// line by line to `output`, for the run log.
    async fn start(
        &self,
        launch: &WorkerLaunch,
        output: mpsc::UnboundedSender<String>,
    ) -> Result<Box<dyn RunningWorker>, ExecutorError>;

    /// The worker of `run_id` an earlier launcher with this work directory started
    /// (`handle`, when its journal says): waits at most `patience` for it to end, stops it
    /// if it does not, and removes what is left of it. What it printed on its own and is
    /// still to be had goes to `output`. `Ok(None)`: nothing of it is left to wait for.
    async fn reclaim(
        &self,
        run_id: RunId,
        handle: Option<&WorkerHandle>,
        patience: Duration,
        output: mpsc::UnboundedSender<String>,
    ) -> Result<Option<WorkerExit>, ExecutorError>;

    /// Removes what earlier launchers with this work directory left of runs other than
    /// `keep` (those are being recovered, or run on a live launcher).
    async fn remove_leftovers(&self, _keep: &[RunId]) -> Result<(), ExecutorError> {
        Ok(())
    }
}

/// A started worker.
#[async_trait]
pub trait RunningWorker: Send {
    /// Waits for the worker to end. Cancel-safe: it may be awaited again.
    async fn wait(&mut self) -> Result<WorkerExit, ExecutorError>;

    /// Asks the worker to stop (SIGTERM), and kills it after `grace`.
    async fn terminate(&mut self, grace: Duration) -> Result<WorkerExit, ExecutorError>;

    /// Where it runs, for the run's journal.
    fn handle(&self) -> Option<WorkerHandle>;
}
