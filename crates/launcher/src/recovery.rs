//! Recovery on restart: a launcher started with the work directory of one that died
//! (killed, crashed, or its machine rebooted with the work directory on a persistent
//! disk) finishes the runs that one left, before it takes new work. Each launcher
//! instance holds a lock on its own directory for as long as it lives; a directory with
//! run journals whose lock can be taken belongs to a dead instance.
//!
//! For each run journaled there, acting as the dead launcher (its id, so the server
//! knows the run as held by it): wait for the worker it left to end (a container's
//! worker stops on its lease, a process gets SIGHUP when its launcher dies), stopping
//! it after lease + grace; store the state the run left, as `conclude` does, through the
//! workspace as the launcher opened it; send the output it had taken from the worker
//! but not delivered (the log's tail on disk) and say in the log what was lost; report how
//! the run ended (the final report the dead launcher was sending, or a failure saying it
//! died); then remove the container, the workspace and the journal. What cannot be
//! finished (the server unreachable, a refused state) stays for the next start, and a
//! sealed state the server refuses is kept in `<work dir>/unsaved-state`.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use gantry_domain::LauncherId;
use gantry_proto::agent::{Assignment, RunReport, StateStored};
use nix::fcntl::{Flock, FlockArg};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::AgentClient;
use crate::executor::{Executor, TERMINATE_GRACE};
use crate::logs::LogRelay;
use crate::run::journal::{self, JournalEntry};
use crate::run::state::{ProjectFiles, store_state_version};
use crate::run::{RunContext, report_ending, start_log};
use crate::workspace;

/// The lock file in each launcher instance's directory.
const LOCK_FILE: &str = "lock";

/// A launcher instance's directory, locked by this process: released when dropped or
/// when the process dies, however it dies.
#[derive(Debug)]
pub(crate) struct InstanceLock(#[allow(dead_code)] Flock<File>);

/// Locks `instance_dir`; `Ok(None)` when a live launcher holds it.
pub(crate) fn lock_instance(instance_dir: &Path) -> std::io::Result<Option<InstanceLock>> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(nix::libc::O_NOFOLLOW)
        .open(instance_dir.join(LOCK_FILE))?;
    match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
        Ok(lock) => Ok(Some(InstanceLock(lock))),
        Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
        Err((_, errno)) => Err(std::io::Error::from_raw_os_error(errno as i32)),
    }
}

/// A dead instance's directory, claimed by this launcher.
struct DeadInstance {
    dir: PathBuf,
    launcher_id: LauncherId,
    journals: Vec<(PathBuf, JournalEntry)>,
    _lock: InstanceLock,
}

/// Finishes the runs dead instances with this work directory left, and removes what
/// else they left (containers of runs no journal names). Returns once every run found
/// was dealt with, or `stop` is cancelled (what is left then is recovered next time).
pub(crate) async fn recover(
    context: &Arc<RunContext>,
    executor: &Arc<dyn crate::executor::Executor>,
    own_instance: &Path,
    stop: &CancellationToken,
) {
    let work_dir = &context.config.work_dir;
    let (dead, live_runs) = scan(work_dir, own_instance);
    let keep: Vec<_> = dead
        .iter()
        .flat_map(|instance| instance.journals.iter().map(|(_, entry)| entry.assignment.run_id))
        .chain(live_runs)
        .collect();
    if let Err(error) = executor.remove_leftovers(&keep).await {
        tracing::warn!(%error, "cannot remove what earlier launchers left behind");
    }
    for instance in dead {
        tokio::select! {
            () = recover_instance(context, executor, instance, stop) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// The dead instances of `work_dir` (locked, with their journals), and the runs live
/// instances journal (their containers are not leftovers).
fn scan(work_dir: &Path, own_instance: &Path) -> (Vec<DeadInstance>, Vec<gantry_domain::RunId>) {
    let mut dead = Vec::new();
    let mut live_runs = Vec::new();
    let Ok(entries) = std::fs::read_dir(work_dir) else { return (dead, live_runs) };
    for dir in entries.flatten().map(|entry| entry.path()) {
        let Some(launcher_id) = dir.file_name().and_then(|name| name.to_str()?.parse().ok()) else {
            continue;
        };
        let journal_dir = journal::directory(&dir.join("runs"));
        if dir == own_instance || !journal_dir.is_dir() {
            continue;
        }
        match lock_instance(&dir) {
            Ok(Some(lock)) => {
                let journals = journal::read_all(&journal_dir);
                tracing::info!(launcher = %launcher_id, runs = journals.len(), "found the directory of a launcher that died: recovering its runs");
                dead.push(DeadInstance { dir, launcher_id, journals, _lock: lock });
            }
            Ok(None) => {
                let journals = journal::read_all(&journal_dir);
                live_runs.extend(journals.iter().map(|(_, entry)| entry.assignment.run_id));
            }
            Err(error) => {
                tracing::warn!(path = %dir.display(), %error, "cannot lock a launcher directory: leaving it alone");
            }
        }
    }
    (dead, live_runs)
}

/// Acts as the dead launcher to finish its runs, then removes its directory.
async fn recover_instance(
    context: &Arc<RunContext>,
    executor: &Arc<dyn Executor>,
    instance: DeadInstance,
    stop: &CancellationToken,
) {
    let mut config = context.config.clone();
    config.launcher_id = instance.launcher_id;
    let client = match AgentClient::new(&config) {
        Ok(client) => Arc::new(client),
        Err(error) => {
            tracing::error!(%error, "cannot act as the launcher that died; its runs stay for the next start");
            return;
        }
    };
    match crate::launcher::connect(&client, stop).await {
        Ok(true) => {}
        Ok(false) => return,
        Err(error) => {
            tracing::error!(%error, "cannot open a session as the launcher that died; its runs stay for the next start");
            return;
        }
    }
    let dead_context = Arc::new(RunContext {
        client: Arc::clone(&client),
        runs_dir: instance.dir.join("runs"),
        sockets_dir: crate::launcher::socket_dir(&instance.dir),
        scratch_dir: instance.dir.join("scratch"),
        metrics: Arc::clone(&context.metrics),
        worker_binaries: crate::worker_binary::WorkerBinaries::new(
            config.worker.clone(),
            &config.work_dir,
        ),
        pod_runner: None,
        config,
    });
    // Its workers renewed their lease at most a lease ago; they stop within the grace
    // after it runs out.
    let lease = client.worker_lease();
    let patience = Duration::from_millis(lease.valid_for_ms)
        + Duration::from_secs(lease.grace_seconds)
        + TERMINATE_GRACE;
    let mut all_recovered = true;
    for (path, entry) in instance.journals {
        all_recovered &=
            recover_run(&dead_context, executor.as_ref(), &path, entry, patience).await;
    }
    if !all_recovered {
        return;
    }
    // Its workers leave the pool now rather than when the server notices it died.
    if let Err(error) = client.close().await {
        tracing::warn!(%error, "cannot deregister the workers of the launcher that died; the server will notice");
    }
    workspace::remove(&dead_context.sockets_dir).await;
    workspace::remove(&instance.dir).await;
    tracing::info!(launcher = %instance.launcher_id, "the runs of the launcher that died are recovered");
}

/// Finishes one run; false when something of it stays for the next start.
async fn recover_run(
    context: &Arc<RunContext>,
    executor: &dyn Executor,
    journal_path: &Path,
    entry: JournalEntry,
    patience: Duration,
) -> bool {
    let assignment = &entry.assignment;
    let run_id = assignment.run_id;
    tracing::info!(run = %run_id, "recovering a run the launcher that died left");
    let (output_sender, mut output) = mpsc::unbounded_channel();
    let reclaimed = executor.reclaim(run_id, entry.worker.as_ref(), patience, output_sender).await;
    let reclaimed = match reclaimed {
        Ok(reclaimed) => reclaimed,
        Err(error) => {
            tracing::error!(run = %run_id, %error, "cannot reclaim the worker the launcher that died left; the run stays for the next start");
            return false;
        }
    };
    let next_seq = match context.client.upload_logs(run_id, Vec::new()).await {
        Ok(next_seq) => next_seq,
        // Sealed or gone: the relay below gives up on its own.
        Err(error) if !error.is_transient() => 0,
        Err(error) => {
            tracing::warn!(run = %run_id, %error, "the server cannot be reached to recover the run; it stays for the next start");
            return false;
        }
    };
    // Read before the relay starts: its own tail replaces what the dead one left.
    let undelivered = crate::run::undelivered_output(context, run_id, next_seq);
    let (logs, upload_task) = start_log(context, assignment, next_seq);
    for text in &undelivered {
        logs.append(text);
    }
    let bytes: usize = undelivered.iter().map(String::len).sum();
    let delivered_now = if bytes == 0 {
        String::new()
    } else {
        format!(
            " The {bytes} bytes above are output the launcher that died had taken from the run but not yet delivered."
        )
    };
    logs.append(&format!(
        "\nThe launcher on {} died while this run was on it; a launcher started again with its work directory takes the run over.{delivered_now} What the run printed after its launcher died is lost.\n",
        context.config.hostname
    ));
    while let Ok(line) = output.try_recv() {
        logs.append(&line);
    }
    if let Some(exit) = reclaimed.filter(|exit| exit.code.is_some()) {
        logs.append(&format!("The worker exited with {exit}.\n"));
    }
    let workspace = context.workspace(run_id);
    // The tool may outlive its worker (a process worker's tool has a group of its own):
    // the state is read once nothing works in the workspace any more.
    if let Some(left) = processes_in(&workspace, patience).await {
        logs.append(&format!(
            "gantry-launcher: {left} process(es) of the run were still working in its workspace after {}: killed\n",
            humantime::format_duration(patience)
        ));
    }
    let report = match entry.final_report.clone() {
        // Its state was stored before that report was written.
        Some(report) => report,
        None => {
            let stored = store_left_state(context, &entry, &workspace).await;
            let message = ending_message(context, &entry.assignment, &logs, stored);
            logs.append(&format!("{message}\n"));
            RunReport::Failed { message }
        }
    };
    report_ending(context, &logs, run_id, report).await;
    logs.finish(upload_task).await;
    workspace::remove(&workspace).await;
    workspace::remove(&workspace::home_beside(&workspace)).await;
    let _ = tokio::fs::remove_file(context.sockets_dir.join(format!("{run_id}.sock"))).await;
    journal::remove(journal_path);
    tracing::info!(run = %run_id, "recovered the run the launcher that died left");
    true
}

/// The state a run that may change its stack's managed state left, stored as `conclude`
/// stores it: through the workspace at the project root found before the run's code
/// ran, checked as a successor of the state it started from. `None`: nothing to store.
async fn store_left_state(
    context: &RunContext,
    entry: &JournalEntry,
    workspace: &Path,
) -> Option<Result<Option<StateStored>, String>> {
    let assignment = &entry.assignment;
    if !(assignment.managed_state && assignment.run_type.takes_stack_lock()) {
        return None;
    }
    let state = entry.state.as_ref()?;
    if !workspace.is_dir() {
        return Some(Err(format!(
            "its workspace {} is gone: the state it left cannot be recovered",
            workspace.display()
        )));
    }
    let files = match ProjectFiles::reopen(workspace, &state.project) {
        Ok(files) => Arc::new(files),
        Err(problem) => return Some(Err(problem)),
    };
    Some(store_state_version(context, assignment, &files, state.before().as_ref()).await)
}

/// The failure a recovered run is reported with, after the run's log says what became of
/// the state it left.
fn ending_message(
    context: &RunContext,
    assignment: &Assignment,
    logs: &LogRelay,
    stored: Option<Result<Option<StateStored>, String>>,
) -> String {
    let died =
        format!("The launcher on {} died while the run was executing", context.config.hostname);
    let stack = &assignment.stack.name;
    match stored {
        Some(Ok(Some(StateStored { orphaned: true, version, .. }))) => {
            let version = version.map_or_else(String::new, |version| format!(" {version}"));
            logs.append(&format!(
                "The server kept the state the run left as orphaned state version{version} of stack {stack}, not as its current state: the run no longer held the stack's lock. Nothing is lost; to make it current: gantry stack state adopt {stack}{version}\n"
            ));
            format!(
                "{died}; the state the run left was recovered and kept as orphaned state version{version}"
            )
        }
        Some(Ok(Some(StateStored { version, .. }))) => {
            logs.append("The state the run left is stored, encrypted to the pool key.\n");
            let version =
                version.map_or_else(String::new, |version| format!(" as version {version}"));
            format!("{died}; the state the run left was recovered and stored{version}")
        }
        Some(Err(problem)) => {
            logs.append(&format!("{problem}\n"));
            format!("{died}; besides, {problem}")
        }
        Some(Ok(None)) | None => died,
    }
}

/// Waits, at most `patience`, until no process has its working directory in
/// `workspace`, then kills those left (they are the run's). Returns how many were killed.
async fn processes_in(workspace: &Path, patience: Duration) -> Option<usize> {
    let deadline = tokio::time::Instant::now() + patience;
    loop {
        let working = working_in(workspace);
        if working.is_empty() {
            return None;
        }
        if tokio::time::Instant::now() >= deadline {
            for pid in &working {
                let _ = nix::sys::signal::kill(*pid, nix::sys::signal::Signal::SIGKILL);
            }
            return Some(working.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The processes whose working directory is in `workspace`.
fn working_in(workspace: &Path) -> Vec<nix::unistd::Pid> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/cwd"))
                .is_ok_and(|cwd| cwd.starts_with(workspace))
        })
        .map(nix::unistd::Pid::from_raw)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_instance_directory_is_locked_by_one_process_at_a_time_and_freed_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let held = lock_instance(dir.path()).unwrap();
        assert!(held.is_some());
        assert!(lock_instance(dir.path()).unwrap().is_none(), "a live instance's lock holds");
        drop(held);
        assert!(lock_instance(dir.path()).unwrap().is_some(), "a dead instance's is free");
    }

    #[test]
    fn only_dead_instances_with_journals_are_claimed() {
        let work = tempfile::tempdir().unwrap();
        let instance = |with_journal: bool| {
            let dir = work.path().join(LauncherId::generate().to_string());
            std::fs::create_dir_all(dir.join("runs")).unwrap();
            if with_journal {
                std::fs::create_dir_all(journal::directory(&dir.join("runs"))).unwrap();
            }
            dir
        };
        let own = instance(true);
        let _own_lock = lock_instance(&own).unwrap();
        let live = instance(true);
        let _live_lock = lock_instance(&live).unwrap();
        let dead = instance(true);
        let _older = instance(false);
        std::fs::create_dir_all(work.path().join("unsaved-state")).unwrap();

        let (claimed, _) = scan(work.path(), &own);
        let dirs: Vec<&PathBuf> = claimed.iter().map(|instance| &instance.dir).collect();
        assert_eq!(dirs, [&dead]);
        // Claimed: a second launcher starting now leaves it to this one.
        assert!(scan(work.path(), &own).0.is_empty());
    }

    #[tokio::test]
    async fn processes_working_in_a_workspace_are_waited_for_then_killed() {
        let workspace = tempfile::tempdir().unwrap();
        let workspace = workspace.path().canonicalize().unwrap();
        let patience = Duration::from_millis(400);
        assert_eq!(processes_in(&workspace, patience).await, None, "none works there");
        let mut ending =
            std::process::Command::new("sleep").arg("0.2").current_dir(&workspace).spawn().unwrap();
        let reaping = std::thread::spawn(move || ending.wait().unwrap());
        assert_eq!(processes_in(&workspace, Duration::from_secs(5)).await, None, "waited for");
        assert!(reaping.join().unwrap().success());
        let mut lingering =
            std::process::Command::new("sleep").arg("30").current_dir(&workspace).spawn().unwrap();
        let reaping = std::thread::spawn(move || lingering.wait().unwrap());
        assert_eq!(processes_in(&workspace, patience).await, Some(1));
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(reaping.join().unwrap().signal(), Some(9));
    }
}
