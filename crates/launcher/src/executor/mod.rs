//! Executors start the worker for a run and stop it: `process` runs it as a child
//! process (local use), `docker` in a container of the stack's runner image. The run
//! path is the same whatever the executor.

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
}

/// A started worker.
#[async_trait]
pub trait RunningWorker: Send {
    /// Waits for the worker to end. Cancel-safe: it may be awaited again.
    async fn wait(&mut self) -> Result<WorkerExit, ExecutorError>;

    /// Asks the worker to stop (SIGTERM), and kills it after `grace`.
    async fn terminate(&mut self, grace: Duration) -> Result<WorkerExit, ExecutorError>;
}
