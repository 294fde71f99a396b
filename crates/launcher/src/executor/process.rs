//! The `process` executor: the worker as a child process in its own process group, with
//! an environment cleared down to what tools need. It does not isolate the run from the
//! launcher's user account: use it for local setups, the `docker` executor elsewhere.

use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use gantry_proto::local::{CAPABILITY_ENV, LAUNCHER_PID_ENV, SOCKET_ENV};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::{Executor, ExecutorError, RunningWorker, WorkerExit, WorkerLaunch};

/// Runs `gantry-worker` as a child process.
#[derive(Debug, Clone)]
pub struct ProcessExecutor {
    /// Passed to the worker (PATH, HOME, ...); nothing else of the launcher's environment
    /// is, least of all the token and the key.
    environment: Vec<(String, String)>,
}

impl ProcessExecutor {
    pub fn new(environment: Vec<(String, String)>) -> Self {
        Self { environment }
    }
}

#[async_trait]
impl Executor for ProcessExecutor {
    async fn start(
        &self,
        launch: &WorkerLaunch,
        output: mpsc::UnboundedSender<String>,
    ) -> Result<Box<dyn RunningWorker>, ExecutorError> {
        let mut child = Command::new(&launch.worker_binary)
            .env_clear()
            .envs(self.environment.iter().map(|(name, value)| (name, value)))
            .env(SOCKET_ENV, &launch.socket_path)
            .env(CAPABILITY_ENV, &launch.capability)
            // A launcher killed outright must not leave a run applying behind its back.
            .env(LAUNCHER_PID_ENV, std::process::id().to_string())
            .current_dir(&launch.workspace)
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ExecutorError::Spawn {
                binary: launch.worker_binary.display().to_string(),
                source,
            })?;
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(forward_lines(stdout, output.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(forward_lines(stderr, output));
        }
        let process_group = child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw);
        Ok(Box::new(ChildWorker { child, process_group, exit: None }))
    }
}

async fn forward_lines(stream: impl AsyncRead + Unpin, output: mpsc::UnboundedSender<String>) {
    let mut lines = BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if output.send(format!("{line}\n")).is_err() {
            return;
        }
    }
}

struct ChildWorker {
    child: Child,
    process_group: Option<Pid>,
    exit: Option<WorkerExit>,
}

impl ChildWorker {
    fn signal(&self, signal: Signal) {
        if let Some(group) = self.process_group {
            // The group may be gone already; that is what we wanted.
            let _ = killpg(group, signal);
        }
    }
}

#[async_trait]
impl RunningWorker for ChildWorker {
    async fn wait(&mut self) -> Result<WorkerExit, ExecutorError> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        let status = self.child.wait().await.map_err(ExecutorError::Wait)?;
        use std::os::unix::process::ExitStatusExt;
        let exit = WorkerExit { code: status.code(), signal: status.signal() };
        self.exit = Some(exit);
        // The worker is gone; tools it left behind in its group go too.
        self.signal(Signal::SIGKILL);
        Ok(exit)
    }

    /// SIGTERM first: the worker passes one SIGINT to the tool, which terraform handles
    /// gracefully. After half the grace period a second SIGTERM makes the worker kill the
    /// tool's own process group (which a SIGKILL of the worker's group would not reach)
    /// and exit; SIGKILL is the last resort.
    async fn terminate(&mut self, grace: Duration) -> Result<WorkerExit, ExecutorError> {
        if let Some(exit) = self.exit {
            return Ok(exit);
        }
        for signal in [Signal::SIGTERM, Signal::SIGTERM] {
            self.signal(signal);
            if let Ok(result) = tokio::time::timeout(grace / 2, self.wait()).await {
                return result;
            }
        }
        self.signal(Signal::SIGKILL);
        self.wait().await
    }
}
