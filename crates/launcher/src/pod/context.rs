//! What both Pod modes share: the run context over the Pod's volumes, the first session,
//! the hand-off file, and the one error type whose variants map to exit codes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use gantry_proto::agent::Assignment;
use gantry_proto::pod::{HANDOFF_FILE, HANDOFF_VERSION, PodHandoff};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, shown};
use crate::client::{AgentClient, ClientError};
use crate::config::{EXIT_USAGE, LauncherConfig};
use crate::metrics::LauncherMetrics;
use crate::run::RunContext;

use super::config::PodConfig;

/// Where sealed blobs go in the scratch volume.
const SCRATCH_SUBDIRECTORY: &str = "blobs";

/// Why a Pod mode ended without doing its part.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("stopped before a session with the server was open")]
    Stopped,
    #[error("cannot prepare {path}: {source}")]
    Directory { path: String, source: std::io::Error },
    /// The run failed here; the server was told why, and its log says it.
    #[error("the run failed: {0}")]
    RunFailed(String),
    #[error("the init container's hand-off {path} is unusable: {problem}")]
    Handoff { path: String, problem: String },
}

impl PodError {
    /// The process exit code: a configuration problem (a key the server refuses, a reset
    /// pool) is a usage error like any bad setting; anything else is a failure.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Client(error) if error.is_fatal() => EXIT_USAGE as u8,
            Self::Client(_)
            | Self::Stopped
            | Self::Directory { .. }
            | Self::RunFailed(_)
            | Self::Handoff { .. } => 1,
        }
    }
}

/// The run context of a Pod: the run's workspace lives in the workspace volume, the
/// worker binaries are cached in `binaries_dir`. Sealed blobs pass through the scratch
/// volume, never the workspace volume: the sidecar writes them and reads them back by
/// path while the run's code still runs, so they must be where that code cannot put a
/// link in their way, in a volume the worker container does not mount.
pub(super) fn run_context(
    config: LauncherConfig,
    pod: &PodConfig,
    binaries_dir: &Path,
    pod_runner: Option<super::PodRunner>,
) -> Result<Arc<RunContext>, PodError> {
    use std::os::unix::fs::DirBuilderExt;
    // An emptyDir's own directory is open to every user, and its mode is kubelet's: the
    // blobs go one level down, private to the user init and the sidecar run as.
    let scratch_dir = pod.scratch_dir.join(SCRATCH_SUBDIRECTORY);
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(&scratch_dir).map_err(
        |source| PodError::Directory { path: scratch_dir.display().to_string(), source },
    )?;
    let workspace_dir = &pod.workspace_dir;
    Ok(Arc::new(RunContext {
        client: Arc::new(AgentClient::new(&config)?),
        runs_dir: workspace_dir.to_path_buf(),
        sockets_dir: workspace_dir.to_path_buf(),
        scratch_dir,
        metrics: Arc::new(LauncherMetrics::new(1)),
        worker_binaries: crate::worker_binary::WorkerBinaries::new(
            config.worker.clone(),
            binaries_dir,
        ),
        pod_runner,
        config,
    }))
}

/// Opens the first session, retrying while the server is unreachable, until `stop` or
/// the run's `deadline`.
pub(super) async fn connect(
    client: &AgentClient,
    stop: &CancellationToken,
    deadline: Instant,
) -> Result<(), PodError> {
    let mut backoff = Backoff::new(Duration::from_secs(30));
    loop {
        match client.connect().await {
            Ok(()) => return Ok(()),
            Err(error) if error.is_transient() && Instant::now() < deadline => {
                let delay = backoff.delay();
                tracing::warn!("{error}; retrying in {}", shown(delay));
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = stop.cancelled() => return Err(PodError::Stopped),
                }
            }
            Err(error) => return Err(error.into()),
        }
    }
}

/// The hand-off lives in the scratch volume, which only init and the sidecar mount: a
/// sidecar restarted while the run's code runs reads what init wrote, not a file the
/// worker container could have rewritten (its lineage and serial rules, its deadline, the
/// environment whose opened inputs it masks).
pub(super) fn handoff_path(scratch_dir: &Path) -> PathBuf {
    scratch_dir.join(HANDOFF_FILE)
}

/// Writes the hand-off whole or not at all (a temporary file renamed), readable only by
/// the user init and the sidecar run as.
pub(super) async fn write_handoff(scratch_dir: &Path, handoff: &PodHandoff) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    let path = handoff_path(scratch_dir);
    let partial = path.with_extension("partial");
    let text =
        serde_json::to_vec(handoff).map_err(|e| format!("cannot encode the hand-off: {e}"))?;
    let written = (|| -> std::io::Result<()> {
        use std::io::Write;
        // Replace whatever is in the way, never write through it.
        match std::fs::remove_file(&partial) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&partial)?;
        file.write_all(&text)?;
        file.sync_all()?;
        std::fs::rename(&partial, &path)
    })();
    written.map_err(|e| format!("cannot write the hand-off {}: {e}", path.display()))
}

/// The largest hand-off read: a worker's job with its environment, far below this.
const MAX_HANDOFF_BYTES: u64 = 64 << 20;

/// Reads init's hand-off and checks it is for this run.
pub(super) fn read_handoff(
    scratch_dir: &Path,
    assignment: &Assignment,
) -> Result<PodHandoff, PodError> {
    let path = handoff_path(scratch_dir);
    let unusable =
        |problem: String| PodError::Handoff { path: path.display().to_string(), problem };
    // No container of the run's mounts this volume; read as if one did all the same (a
    // volume misconfigured by hand): a link in the hand-off's place is refused, and so is
    // a hard link, a fifo or a file larger than any hand-off.
    let volume = crate::confined::Confined::open(scratch_dir).map_err(|e| {
        unusable(format!("{e} (did the init container succeed in this Pod's volume?)"))
    })?;
    let mut file = match volume.read(Path::new(HANDOFF_FILE), MAX_HANDOFF_BYTES) {
        Ok(Some(file)) => file,
        Ok(None) => {
            return Err(unusable(
                "it does not exist (did the init container succeed in this Pod's volume?)"
                    .to_owned(),
            ));
        }
        Err(refusal) => return Err(unusable(refusal.to_string())),
    };
    let mut text = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut text).map_err(|e| unusable(e.to_string()))?;
    let handoff: PodHandoff = serde_json::from_slice(&text).map_err(|e| {
        unusable(format!("not a hand-off (JSON error at line {}, column {})", e.line(), e.column()))
    })?;
    if handoff.version != HANDOFF_VERSION {
        return Err(unusable(format!(
            "format version {}, this launcher reads {HANDOFF_VERSION}: init and sidecar must come from the same launcher image",
            handoff.version
        )));
    }
    if handoff.run_id != assignment.run_id || handoff.job.job != assignment.job {
        return Err(unusable(format!(
            "it is for run {} ({:?}), the assignment for run {} ({:?})",
            handoff.run_id, handoff.job.job, assignment.run_id, assignment.job
        )));
    }
    Ok(handoff)
}

/// A wall-clock instant as milliseconds since the Unix epoch.
pub(super) fn unix_ms(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| u64::try_from(since.as_millis()).unwrap_or(u64::MAX))
}

/// The monotonic instant of a wall-clock time in milliseconds since the Unix epoch: the
/// deadline init computed, in the sidecar's clock.
pub(super) fn instant_of(unix_ms_then: u64) -> Instant {
    let now = unix_ms(SystemTime::now());
    Instant::now() + Duration::from_millis(unix_ms_then.saturating_sub(now))
}

#[cfg(test)]
mod tests {
    use gantry_domain::{RunId, RunType};
    use gantry_proto::agent::Job;
    use gantry_proto::local::WorkerJob;

    use super::*;

    fn handoff(run_id: RunId, job: Job) -> PodHandoff {
        PodHandoff {
            version: HANDOFF_VERSION,
            run_id,
            job: WorkerJob {
                run_id,
                run_type: RunType::Tracked,
                job,
                tool_executable: "terraform".to_owned(),
                working_directory: "/gantry/workspace/run/infra".to_owned(),
                environment: vec![("TF_VAR_region".to_owned(), "eu-1".to_owned())],
                plan_file: "gantry.tfplan".to_owned(),
                command: None,
                collect_sensitive_outputs: false,
                debug: false,
            },
            log_next_seq: 7,
            deadline_unix_ms: 1_700_000_000_000,
            managed_state: true,
            state_before: Some("ab".repeat(32)),
            state_lineage: Some("1d6c".to_owned()),
            state_serial: Some(3),
        }
    }

    fn assignment(run_id: RunId, job: Job) -> Assignment {
        let mut assignment: Assignment = serde_json::from_value(serde_json::json!({
            "run_id": run_id.to_string(),
            "worker_id": gantry_domain::WorkerId::generate().to_string(),
            "run_type": "TRACKED",
            "job": "plan",
            "stack": {
                "id": gantry_domain::StackId::generate().to_string(),
                "name": "app", "repository": "file:///repo", "branch": "main",
                "project_root": "infra", "tool": "terraform", "runner_image": null,
                "environment": [],
            },
            "commit": null,
        }))
        .unwrap();
        assignment.job = job;
        assignment
    }

    #[tokio::test]
    async fn the_hand_off_reaches_the_sidecar_of_the_same_run_only() {
        let dir = tempfile::tempdir().unwrap();
        let run_id = RunId::generate();
        write_handoff(dir.path(), &handoff(run_id, Job::Plan)).await.unwrap();
        let read = read_handoff(dir.path(), &assignment(run_id, Job::Plan)).unwrap();
        assert_eq!((read.log_next_seq, read.state_before.as_deref()), (7, Some(&*"ab".repeat(32))));
        assert!(!dir.path().join("gantry-handoff.partial").exists());

        for (other, job, expected) in [
            (RunId::generate(), Job::Plan, "the assignment for run"),
            (run_id, Job::Apply, "the assignment for run"),
        ] {
            let error = read_handoff(dir.path(), &assignment(other, job)).unwrap_err().to_string();
            assert!(error.contains(expected), "{error}");
        }
        let mut newer = handoff(run_id, Job::Plan);
        newer.version = HANDOFF_VERSION + 1;
        write_handoff(dir.path(), &newer).await.unwrap();
        let error = read_handoff(dir.path(), &assignment(run_id, Job::Plan)).unwrap_err();
        assert!(error.to_string().contains("the same launcher image"), "{error}");

        let empty = tempfile::tempdir().unwrap();
        let error = read_handoff(empty.path(), &assignment(run_id, Job::Plan)).unwrap_err();
        assert!(error.to_string().contains("did the init container succeed"), "{error}");
    }

    #[tokio::test]
    async fn links_left_in_the_volume_are_neither_read_nor_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, "untouched").unwrap();
        let run_id = RunId::generate();
        // A worker of an earlier Pod on this volume left links where init writes and
        // where the sidecar reads.
        std::os::unix::fs::symlink(&victim, dir.path().join("gantry-handoff.partial")).unwrap();
        write_handoff(dir.path(), &handoff(run_id, Job::Plan)).await.unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
        assert!(read_handoff(dir.path(), &assignment(run_id, Job::Plan)).is_ok());

        std::fs::remove_file(dir.path().join(HANDOFF_FILE)).unwrap();
        std::os::unix::fs::symlink("/proc/self/environ", dir.path().join(HANDOFF_FILE)).unwrap();
        let error = read_handoff(dir.path(), &assignment(run_id, Job::Plan)).unwrap_err();
        assert!(error.to_string().contains("is a symbolic link"), "{error}");
    }

    #[test]
    fn a_deadline_crosses_processes_as_wall_clock_time() {
        let in_a_minute = unix_ms(SystemTime::now() + Duration::from_secs(60));
        let left = instant_of(in_a_minute) - Instant::now();
        assert!(left > Duration::from_secs(58) && left <= Duration::from_secs(60), "{left:?}");
        let past = instant_of(unix_ms(SystemTime::now()) - 5_000);
        assert!(past <= Instant::now() + Duration::from_millis(5));
    }
}
