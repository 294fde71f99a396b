//! `gantry-launcher sidecar`: the run Pod's native sidecar. It serves the worker
//! container's local API on the socket volume with the run path's worker-facing phases
//! (log relay with masking, reports after the log, sealed uploads), enforces the
//! run's time limits, and when kubelet terminates it (after the worker container exited,
//! or when the operator deletes the Pod) makes sure the server knows how the run ended.
//!
//! It cannot signal the worker container: a time limit fails the run at once, and the
//! operator deletes the Pod because the run ended (the heartbeat names it among the runs
//! to stop). Whether a user stopped the run, the sidecar asks the server when it is
//! terminated before the worker reported an ending.

use std::time::Duration;

use gantry_domain::RunId;
use gantry_proto::agent::{Heartbeat, RunReport};
use gantry_proto::local::WorkerJob;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::config::SidecarConfig;
use super::context::{PodError, instant_of, read_handoff, run_context};
use crate::backoff::Backoff;
use crate::client::AgentClient;
use crate::config::LauncherConfig;
use crate::logs::LogRelay;
use crate::run::conclude::conclude;
use crate::run::execute::serve_worker;
use crate::run::local_api::RunEndpoint;
use crate::run::prepare::Prepared;
use crate::run::state::{ManagedState, ProjectFiles, StateBefore};
use crate::run::{self, Interruption, RunContext, WorkerEnd};

/// Why the run failed when the worker container ended without a report and no one asked
/// for it to stop.
const WORKER_VANISHED: &str = "The worker container exited without reporting how the run ended";

/// Serves the run's worker until `terminated` (SIGTERM), then returns once the server
/// knows how the run ended.
pub async fn sidecar(
    config: LauncherConfig,
    mut sidecar: SidecarConfig,
    terminated: CancellationToken,
) -> Result<(), PodError> {
    // Opened for the masking of the log; the worker's environment comes from init.
    crate::stack_secrets::open_in_place(&config, &mut sidecar.pod.assignment);
    let assignment = &sidecar.pod.assignment;
    let workspace_dir = &sidecar.pod.workspace_dir;
    // No worker binary is fetched here: the binaries directory is never used.
    let context = run_context(sidecar.pod.adopt(config), &sidecar.pod, workspace_dir, None)?;
    let handoff = match read_handoff(&sidecar.pod.scratch_dir, assignment) {
        Ok(handoff) => handoff,
        Err(error) => {
            // No log position to go on from: the failure itself says why.
            report_failed(&context.client, assignment.run_id, error.to_string()).await;
            return Err(error);
        }
    };
    let workspace = context.workspace(assignment.run_id);
    let project =
        crate::workspace::project_directory(&workspace, &assignment.stack.project_root).map_err(
            |problem| PodError::Handoff { path: workspace.display().to_string(), problem },
        )?;
    // What the sidecar acts on comes from the assignment and its own configuration; the
    // hand-off only adds what init worked out (the environment with opened inputs).
    let job = WorkerJob {
        run_id: assignment.run_id,
        run_type: assignment.run_type,
        job: assignment.job,
        tool_executable: assignment.stack.tool.executable().to_owned(),
        working_directory: project.display().to_string(),
        command: assignment.command.clone(),
        collect_sensitive_outputs: context.config.sensitive_output_upload
            && assignment.stack.share_sensitive_outputs,
        debug: context.config.debug,
        ..handoff.job
    };
    let managed_state = match handoff.managed_state {
        true => {
            let files = ProjectFiles::open(&workspace, &assignment.stack.project_root).map_err(
                |problem| PodError::Handoff { path: workspace.display().to_string(), problem },
            )?;
            let before = match (handoff.state_before, handoff.state_lineage, handoff.state_serial) {
                (Some(sha256), Some(lineage), Some(serial)) => Some(StateBefore {
                    sha256,
                    identity: crate::state_check::StateIdentity { lineage, serial },
                }),
                _ => None,
            };
            ManagedState::for_run(&context, assignment, std::sync::Arc::new(files), before)
        }
        false => None,
    };
    let deadline = instant_of(handoff.deadline_unix_ms);
    // A sidecar restarted by kubelet goes on where the server's log is (its predecessor
    // delivered more than init did), after what that one had taken from the worker but
    // not delivered. Numbered from the hand-off instead, its lines would be taken for
    // ones the server has, and dropped.
    let next_seq = match context.client.upload_logs(assignment.run_id, Vec::new()).await {
        Ok(next_seq) => next_seq.max(handoff.log_next_seq),
        Err(error) => {
            tracing::warn!(%error, "cannot ask the server where the run's log is; going on from init's hand-off");
            handoff.log_next_seq
        }
    };
    let undelivered = run::undelivered_output(&context, assignment.run_id, next_seq);
    let (logs, upload) = run::start_log(&context, assignment, next_seq);
    for text in &undelivered {
        logs.append(text);
    }
    // Init opened them into the worker's environment; they are masked here too.
    run::mask_sealed_inputs(&logs, assignment, &job.environment);
    // A sidecar restarted by kubelet finds its predecessor's socket.
    let _ = tokio::fs::remove_file(&sidecar.socket_path).await;
    let socket_path = sidecar.socket_path.clone();
    let watch = async |endpoint: &RunEndpoint| {
        // The worker container runs as the runner image's user.
        if let Err(error) = open_socket(&socket_path) {
            tracing::warn!(%error, "cannot open the socket to the worker container's user");
        }
        watch_worker(&context, endpoint, &logs, &terminated, deadline, &sidecar.pod.notes_path)
            .await
    };
    let prepared = Prepared { job, managed_state };
    let gone = serve_worker(
        &context,
        assignment,
        prepared,
        &logs,
        &sidecar.socket_path,
        &sidecar.capability,
        watch,
    )
    .await;
    if let Some((endpoint, end)) = gone {
        conclude(&context, assignment, &workspace, &endpoint, &logs, end).await;
    }
    logs.finish(upload).await;
    tracing::info!(run = %assignment.run_id, "the run is over in this Pod");
    // Kubelet ends a native sidecar after the worker container: until then, stay.
    terminated.cancelled().await;
    // A workspace volume may outlive the Pod (`spec.pod.workspaceVolume`).
    crate::workspace::remove(&workspace).await;
    let _ = tokio::fs::remove_file(super::context::handoff_path(&sidecar.pod.scratch_dir)).await;
    Ok(())
}

/// Opens the socket to every user. The socket volume is the worker container's too, and a
/// restarted sidecar binds while the run's code runs: whatever it put in the socket's
/// place by then is not followed. The file is opened as a path without following a link,
/// checked to be a socket, and changed through that descriptor.
fn open_socket(path: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
    let opened = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_PATH | nix::libc::O_NOFOLLOW)
        .open(path)?;
    if !opened.metadata()?.file_type().is_socket() {
        return Err(std::io::Error::other(format!(
            "{} is not the socket the sidecar bound",
            path.display()
        )));
    }
    // A descriptor opened with O_PATH takes no fchmod; its /proc link names the same file.
    let by_descriptor = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&opened));
    std::fs::set_permissions(by_descriptor, std::fs::Permissions::from_mode(0o666))
}

/// Waits until the worker reported how the run ended, a time limit passed, or kubelet
/// terminates the sidecar.
async fn watch_worker(
    context: &RunContext,
    endpoint: &RunEndpoint,
    logs: &LogRelay,
    terminated: &CancellationToken,
    deadline: Instant,
    notes_path: &std::path::Path,
) -> Option<WorkerEnd> {
    let limits = &context.config.limits;
    let mut notes = OperatorNotes::default();
    // The first tick is at once: a note left before the sidecar started is logged first.
    let mut notes_ticks = tokio::time::interval(NOTES_INTERVAL);
    let interruption = loop {
        let silence_deadline = logs.last_activity() + limits.logs_timeout;
        tokio::select! {
            () = endpoint.concluded() => break None,
            () = terminated.cancelled() => {
                if endpoint.conclusion().is_some() {
                    break None;
                }
                let stopped = stop_requested(&context.client, endpoint.run_id).await;
                break stopped.then_some(Interruption::Stopped);
            }
            () = tokio::time::sleep_until(deadline) => break Some(Interruption::RunTimeout),
            _ = notes_ticks.tick() => {
                if let Some(note) = notes.fresh(notes_path).await {
                    logs.append(&format!("{note}\n"));
                }
            }
            () = tokio::time::sleep_until(silence_deadline) => {
                if logs.last_activity() + limits.logs_timeout > Instant::now() {
                    continue;
                }
                break Some(Interruption::LogsTimeout);
            }
        }
    };
    Some(WorkerEnd { interruption, unexplained: WORKER_VANISHED.to_owned() })
}

/// How often the sidecar looks for a new note from the operator.
const NOTES_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// The operator's notes file as last read (kubelet updates a Secret's files in place).
#[derive(Debug, Default)]
struct OperatorNotes {
    last: String,
}

impl OperatorNotes {
    /// The file's text when it changed and is not empty.
    async fn fresh(&mut self, path: &std::path::Path) -> Option<String> {
        let text = tokio::fs::read_to_string(path).await.ok()?;
        let text = text.trim();
        if text.is_empty() || text == self.last {
            return None;
        }
        self.last = text.to_owned();
        Some(self.last.clone())
    }
}

/// Whether the server wants the run stopped: a user asked to, or it ended already. The
/// heartbeat's answer says it for the runs named; it names no worker, since the operator
/// heartbeats for those.
async fn stop_requested(client: &AgentClient, run_id: RunId) -> bool {
    let heartbeat = Heartbeat { worker_ids: Vec::new(), running_run_ids: vec![run_id] };
    let mut backoff = Backoff::new(Duration::from_secs(5));
    for _ in 0..5 {
        match client.heartbeat(&heartbeat).await {
            Ok(answer) => return answer.stop_run_ids.contains(&run_id),
            Err(error) if error.is_transient() => tokio::time::sleep(backoff.delay()).await,
            Err(error) => {
                tracing::warn!(run = %run_id, %error, "cannot ask whether the run was stopped");
                return false;
            }
        }
    }
    false
}

/// Reports a failure that no log line can precede.
async fn report_failed(client: &AgentClient, run_id: RunId, message: String) {
    let mut backoff = Backoff::new(Duration::from_secs(5));
    for _ in 0..5 {
        match client.report(run_id, RunReport::Failed { message: message.clone() }).await {
            Ok(_) => return,
            Err(error) if error.is_transient() => tokio::time::sleep(backoff.delay()).await,
            Err(error) => {
                tracing::warn!(run = %run_id, %error, "cannot report how the run ended");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::open_socket;

    fn mode(path: &std::path::Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn the_bound_socket_is_opened_to_every_user() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("worker.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        open_socket(&socket).unwrap();
        assert_eq!(mode(&socket), 0o666);
    }

    #[test]
    fn what_the_run_put_in_the_sockets_place_is_not_changed() {
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "the sidecar's own file").unwrap();
        std::fs::set_permissions(&victim, std::fs::Permissions::from_mode(0o600)).unwrap();
        let socket = dir.path().join("worker.sock");
        std::os::unix::fs::symlink(&victim, &socket).unwrap();
        assert!(open_socket(&socket).is_err(), "a link is not followed");
        assert_eq!(mode(&victim), 0o600);

        std::fs::remove_file(&socket).unwrap();
        std::fs::hard_link(&victim, &socket).unwrap();
        let error = open_socket(&socket).unwrap_err().to_string();
        assert!(error.contains("is not the socket"), "{error}");
        assert_eq!(mode(&victim), 0o600);
    }
}
