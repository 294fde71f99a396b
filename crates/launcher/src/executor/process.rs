//! The `process` executor: the worker as a child process in its own process group, with
//! an environment cleared down to what tools need. Run as root, it runs each run as a
//! user of its own (one UID per slot, taken for the run and given back after it): the
//! run's workspace, home and socket belong to that user alone, so one run cannot read
//! another's, nor the launcher's key file or memory. Run as another user, it runs runs
//! as that same user and therefore allows only one slot: use it for local setups, the
//! `docker` executor elsewhere.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use gantry_proto::local::{
    CAPABILITY_ENV, INPUT_CAPABILITY, INPUT_ENV, LAUNCHER_PID_ENV, SOCKET_ENV,
};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use super::{Executor, ExecutorError, RunningWorker, WorkerExit, WorkerHandle, WorkerLaunch};

/// Runs `gantry-worker` as a child process.
#[derive(Debug, Clone)]
pub struct ProcessExecutor {
    /// Passed to the worker (PATH, HOME, ...); nothing else of the launcher's environment
    /// is, least of all the token and the key.
    environment: Vec<(String, String)>,
    /// The users runs run as, when the launcher may switch users.
    run_users: Option<Arc<RunUsers>>,
}

/// The first UID of the users runs run as, one per slot (`GANTRY_LAUNCHER_RUN_UID_BASE`).
pub(crate) const DEFAULT_RUN_UID_BASE: u32 = 61_000;

/// Why the process executor cannot serve this launcher's configuration.
#[derive(Debug, thiserror::Error)]
pub enum ProcessExecutorError {
    #[error(
        "GANTRY_LAUNCHER_WORKER_SLOTS={slots} with the process executor needs root: runs of several slots must run as users of their own, or one run could read another's workspace, environment and socket. Run the launcher as root, use GANTRY_LAUNCHER_EXECUTOR=docker, or one slot"
    )]
    SharedUser { slots: u32 },
    #[error("running runs as users of their own needs root, and this process is not")]
    NotRoot,
}

impl ProcessExecutor {
    /// Runs workers as the launcher's own user, whatever it is: for a launcher whose runs
    /// are trusted (benchmarks, tests of the executor itself).
    pub fn new(environment: Vec<(String, String)>) -> Self {
        Self { environment, run_users: None }
    }

    /// The executor a launcher with `slots` slots uses: as root, each run as its own
    /// user from `uid_base` on; otherwise as the launcher's user, one slot only.
    pub fn for_launcher(
        environment: Vec<(String, String)>,
        slots: u32,
        uid_base: u32,
    ) -> Result<Self, ProcessExecutorError> {
        match Self::isolated(environment.clone(), slots, uid_base) {
            Err(ProcessExecutorError::NotRoot) if slots <= 1 => Ok(Self::new(environment)),
            Err(ProcessExecutorError::NotRoot) => Err(ProcessExecutorError::SharedUser { slots }),
            isolated => isolated,
        }
    }

    /// Runs each run as a user of its own (UIDs `uid_base` to `uid_base + slots - 1`),
    /// which only root may do.
    pub fn isolated(
        environment: Vec<(String, String)>,
        slots: u32,
        uid_base: u32,
    ) -> Result<Self, ProcessExecutorError> {
        if !nix::unistd::geteuid().is_root() {
            return Err(ProcessExecutorError::NotRoot);
        }
        let free = (0..slots).map(|slot| uid_base + slot).rev().collect();
        let users = RunUsers { free: std::sync::Mutex::new(free) };
        Ok(Self { environment, run_users: Some(Arc::new(users)) })
    }

    /// How runs are separated, in words for the launcher's start-up line.
    pub fn isolation(&self) -> &'static str {
        match self.run_users {
            Some(_) => "each run as a user of its own",
            None => "runs as the launcher's own user, not isolated from it",
        }
    }
}

/// The UIDs not taken by a running run.
#[derive(Debug)]
struct RunUsers {
    free: std::sync::Mutex<Vec<u32>>,
}

impl RunUsers {
    fn take(self: &Arc<Self>) -> Option<RunUser> {
        let uid = self.free.lock().ok()?.pop()?;
        Some(RunUser { uid, users: Arc::clone(self) })
    }
}

/// A UID lent to one run, given back when the run's worker is gone.
#[derive(Debug)]
struct RunUser {
    uid: u32,
    users: Arc<RunUsers>,
}

impl Drop for RunUser {
    fn drop(&mut self) {
        if let Ok(mut free) = self.users.free.lock() {
            free.push(self.uid);
        }
    }
}

/// Hands the run's workspace, home and socket to `uid` alone, and opens the launcher's
/// directories above them to be passed through (never listed) by it. Returns the home.
fn hand_over(launch: &WorkerLaunch, uid: u32) -> std::io::Result<PathBuf> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let traversable = std::fs::Permissions::from_mode(0o711);
    for dir in [launch.workspace.parent(), launch.socket_path.parent()].into_iter().flatten() {
        std::fs::set_permissions(dir, traversable.clone())?;
    }
    if let Some(unreachable) = unreachable_ancestor(&launch.workspace)
        .or_else(|| unreachable_ancestor(&launch.socket_path))
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "the run's user (UID {uid}) cannot pass through {}: make it searchable by others (chmod o+x) or choose another GANTRY_LAUNCHER_WORK_DIR",
                unreachable.display()
            ),
        ));
    }
    super::give_to_run_user(&launch.workspace, &launch.socket_path, uid)?;
    std::fs::set_permissions(&launch.workspace, std::fs::Permissions::from_mode(0o700))?;
    let home = home_of(launch);
    let _ = std::fs::remove_dir_all(&home);
    std::fs::DirBuilder::new().mode(0o700).create(&home)?;
    std::os::unix::fs::lchown(&home, Some(uid), Some(uid))?;
    std::fs::set_permissions(&launch.socket_path, std::fs::Permissions::from_mode(0o600))?;
    Ok(home)
}

/// A run's own home directory, beside its workspace (never packed with it).
fn home_of(launch: &WorkerLaunch) -> PathBuf {
    crate::workspace::home_beside(&launch.workspace)
}

/// The first directory above `path` that others may not pass through.
fn unreachable_ancestor(path: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    path.ancestors().skip(1).find_map(|dir| {
        let mode = std::fs::metadata(dir).ok()?.permissions().mode();
        (mode & 0o001 == 0).then(|| dir.to_path_buf())
    })
}

#[async_trait]
impl Executor for ProcessExecutor {
    async fn start(
        &self,
        launch: &WorkerLaunch,
        output: mpsc::UnboundedSender<String>,
    ) -> Result<Box<dyn RunningWorker>, ExecutorError> {
        let run_user = match &self.run_users {
            Some(users) => Some(users.take().ok_or(ExecutorError::NoRunUser)?),
            None => None,
        };
        let mut command = Command::new(&launch.worker_binary);
        command.env_clear().envs(self.environment.iter().map(|(name, value)| (name, value)));
        let mut home = None;
        if let Some(user) = &run_user {
            let (workspace_launch, uid) = (launch.clone(), user.uid);
            let run_home = tokio::task::spawn_blocking(move || hand_over(&workspace_launch, uid))
                .await
                .map_err(|error| ExecutorError::HandOver(std::io::Error::other(error.to_string())))?
                .map_err(ExecutorError::HandOver)?;
            command
                .uid(user.uid)
                .gid(user.uid)
                .env("HOME", &run_home)
                .env("USER", format!("gantry-run-{}", user.uid));
            home = Some(run_home);
        }
        if launch.capability_on_input {
            // On its input rather than in its environment block: the worker has nothing to
            // re-execute itself without, and no other process inherits the pipe.
            command.env(INPUT_ENV, INPUT_CAPABILITY).stdin(Stdio::piped());
        } else {
            command.env(CAPABILITY_ENV, &launch.capability).stdin(Stdio::null());
        }
        let mut child = command
            .env(SOCKET_ENV, &launch.socket_path)
            // A launcher killed outright must not leave a run applying behind its back.
            .env(LAUNCHER_PID_ENV, std::process::id().to_string())
            .current_dir(&launch.workspace)
            .process_group(0)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| ExecutorError::Spawn {
                binary: launch.worker_binary.display().to_string(),
                source,
            })?;
        if let Some(mut stdin) = child.stdin.take() {
            use tokio::io::AsyncWriteExt as _;
            let line = format!("{}\n", launch.capability);
            // A worker that died before reading says why on its own output.
            let _ = stdin.write_all(line.as_bytes()).await;
        }
        if let Some(stdout) = child.stdout.take() {
            tokio::spawn(forward_lines(stdout, output.clone()));
        }
        if let Some(stderr) = child.stderr.take() {
            tokio::spawn(forward_lines(stderr, output));
        }
        let process_group = child.id().and_then(|id| i32::try_from(id).ok()).map(Pid::from_raw);
        Ok(Box::new(ChildWorker { child, process_group, exit: None, home, _run_user: run_user }))
    }

    /// The worker is no child of this launcher: it is watched through `/proc`. When its
    /// launcher died, the kernel sent it SIGHUP (see `gantry-worker`): it is usually
    /// gone or going.
    async fn reclaim(
        &self,
        _run_id: gantry_domain::RunId,
        handle: Option<&WorkerHandle>,
        patience: Duration,
        output: mpsc::UnboundedSender<String>,
    ) -> Result<Option<WorkerExit>, ExecutorError> {
        let Some(WorkerHandle::Process { pid, boot_id, start_ticks }) = handle else {
            return Ok(None);
        };
        let worker = LeftWorker { pid: *pid, boot_id: boot_id.clone(), start_ticks: *start_ticks };
        if !worker.lives() {
            return Ok(None);
        }
        if !worker.ends_within(patience).await {
            let _ = output.send(format!(
                "gantry-launcher: the worker was still running {} after the launcher came back: stopping it\n",
                humantime::format_duration(patience)
            ));
            let grace = super::TERMINATE_GRACE;
            for signal in [Signal::SIGTERM, Signal::SIGTERM, Signal::SIGKILL] {
                worker.signal(signal);
                if worker.ends_within(grace / 2).await {
                    break;
                }
            }
        }
        // Not a child: how it ended is not known here.
        Ok(Some(WorkerExit { code: None, signal: None }))
    }
}

/// A worker process a dead launcher started.
struct LeftWorker {
    pid: u32,
    boot_id: String,
    start_ticks: u64,
}

impl LeftWorker {
    /// Whether it still runs: the same process, not a later one with its id.
    fn lives(&self) -> bool {
        identity(self.pid).is_some_and(|(boot_id, start_ticks)| {
            boot_id == self.boot_id && start_ticks == self.start_ticks
        })
    }

    async fn ends_within(&self, patience: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + patience;
        while self.lives() {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        true
    }

    /// Signals its process group, only while it is known to be the same process.
    fn signal(&self, signal: Signal) {
        if self.lives()
            && let Ok(pid) = i32::try_from(self.pid)
        {
            let _ = killpg(Pid::from_raw(pid), signal);
        }
    }
}

/// What tells a process apart from a later one with the same id: the boot it started in
/// and its start time in clock ticks since then (field 22 of `/proc/<pid>/stat`).
fn identity(pid: u32) -> Option<(String, u64)> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces: count after it.
    let after_name = &stat[stat.rfind(')')? + 1..];
    let start_ticks = after_name.split_whitespace().nth(19)?.parse().ok()?;
    // A zombie has ended: its parent is gone and it waits to be reaped.
    let state = after_name.split_whitespace().next()?;
    (state != "Z").then(|| (boot_id.trim().to_owned(), start_ticks))
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
    /// The run's own home, removed with the worker.
    home: Option<PathBuf>,
    /// Given back to the free UIDs once the worker and its group are gone.
    _run_user: Option<RunUser>,
}

impl Drop for ChildWorker {
    fn drop(&mut self) {
        // Whatever the run left running under its UID goes before the UID is lent again.
        self.signal(Signal::SIGKILL);
        if let Some(home) = &self.home {
            let _ = std::fs::remove_dir_all(home);
        }
    }
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

    fn handle(&self) -> Option<WorkerHandle> {
        let pid = u32::try_from(self.process_group?.as_raw()).ok()?;
        let (boot_id, start_ticks) = identity(pid)?;
        Some(WorkerHandle::Process { pid, boot_id, start_ticks })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process in a group of its own, as workers are started.
    /// `sh -c command` leading a process group of its own. Its output goes nowhere: a
    /// child `sh` forks (its `sleep`) must not hold the test's output open after it.
    fn group_leader(command: &str) -> std::process::Child {
        use std::os::unix::process::CommandExt;
        std::process::Command::new("sh")
            .args(["-c", command])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap()
    }

    fn handle_of(child: &std::process::Child) -> WorkerHandle {
        let (boot_id, start_ticks) = identity(child.id()).unwrap();
        WorkerHandle::Process { pid: child.id(), boot_id, start_ticks }
    }

    #[tokio::test]
    async fn a_worker_left_running_is_waited_for_then_stopped_and_a_later_process_is_left_alone() {
        let executor = ProcessExecutor::new(Vec::new());
        let run_id = gantry_domain::RunId::generate();
        let (output, mut said) = mpsc::unbounded_channel();

        // One that ends within the patience is waited for, and not signalled.
        let mut ending = group_leader("sleep 0.3");
        let handle = handle_of(&ending);
        let reclaim =
            executor.reclaim(run_id, Some(&handle), Duration::from_secs(5), output.clone());
        let (reclaimed, status) = tokio::join!(reclaim, async {
            tokio::task::spawn_blocking(move || ending.wait().unwrap()).await.unwrap()
        });
        assert!(reclaimed.unwrap().is_some());
        assert_eq!(status.code(), Some(0), "it ended on its own");
        assert!(said.try_recv().is_err(), "nothing to say about one that ended");

        // One that outlives the patience is stopped (SIGTERM to its group).
        let mut lingering = group_leader("sleep 30");
        let handle = handle_of(&lingering);
        let started = std::time::Instant::now();
        let reclaim = executor.reclaim(run_id, Some(&handle), Duration::from_millis(300), output);
        let (reclaimed, status) = tokio::join!(reclaim, async {
            tokio::task::spawn_blocking(move || lingering.wait().unwrap()).await.unwrap()
        });
        assert!(reclaimed.unwrap().is_some());
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(Signal::SIGTERM as i32));
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
        assert!(said.try_recv().unwrap().contains("stopping it"));

        // A process with the journaled id but another start time is not the worker.
        let mut other = group_leader("sleep 30");
        let WorkerHandle::Process { pid, boot_id, start_ticks } = handle_of(&other) else {
            unreachable!()
        };
        let stale = WorkerHandle::Process { pid, boot_id, start_ticks: start_ticks + 1 };
        let (output, _) = mpsc::unbounded_channel();
        let reclaimed = executor.reclaim(run_id, Some(&stale), Duration::from_millis(100), output);
        assert!(reclaimed.await.unwrap().is_none());
        assert!(other.try_wait().unwrap().is_none(), "left alone");
        // The whole group: `sh` may have forked its `sleep` rather than become it.
        let group = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
        nix::sys::signal::killpg(group, Signal::SIGKILL).unwrap();
        other.wait().unwrap();
    }
}
