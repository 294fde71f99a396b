//! The run Pod's contract between the Kubernetes operator and the launcher's `init` and
//! `sidecar` modes (see `docs/operator.md`): the variables the operator sets on those two
//! containers, the files they share through the Pod's volumes, and the hand-off file
//! `init` leaves for `sidecar`. Init and sidecar come from the same launcher image, but
//! the file still carries a version so that a mismatched Pod fails with a clear reason.

use gantry_domain::RunId;
use serde::{Deserialize, Serialize};
use serde_with::{DisplayFromStr, serde_as};

use crate::local::WorkerJob;

/// The launcher id the Pod acts as: the operator's, for that pool (a ULID).
pub const LAUNCHER_ID_ENV: &str = "GANTRY_LAUNCHER_ID";
/// The assignment as the operator received it from its poll, as JSON.
pub const ASSIGNMENT_FILE_ENV: &str = "GANTRY_ASSIGNMENT_FILE";
/// The workspace volume: init prepares the run there, the worker works there.
pub const WORKSPACE_DIR_ENV: &str = "GANTRY_WORKSPACE_DIR";
/// The binaries volume: init puts the worker binary there.
pub const BINARIES_DIR_ENV: &str = "GANTRY_BINARIES_DIR";
/// The socket volume: the sidecar serves the worker's local API there.
pub const SOCKET_DIR_ENV: &str = "GANTRY_SOCKET_DIR";
/// The scratch volume: sealed blobs on their way to and from the server. Only init and
/// the sidecar mount it; the worker container, which runs the run's code, never does.
pub const SCRATCH_DIR_ENV: &str = "GANTRY_SCRATCH_DIR";

/// Init only: the worker container's image as the operator chose it (the stack's runner
/// image or the operator's default), which the run initialization policy reads as
/// `docker_image`.
pub const RUNNER_IMAGE_ENV: &str = "GANTRY_RUNNER_IMAGE";
/// Init only: the version of the stack's tool that image carries, when the pool declares
/// it (`spec.pod.runnerImages`). Init cannot look inside the image, and nothing of it may
/// run before the policy allows the run.
pub const RUNNER_TOOL_VERSION_ENV: &str = "GANTRY_RUNNER_TOOL_VERSION";

/// The worker binary's name in the binaries volume.
pub const WORKER_BINARY_FILE: &str = "gantry-worker";
/// The local API socket's name in the socket volume.
pub const SOCKET_FILE: &str = "worker.sock";
/// Beside the assignment file (both from the run's Secret): what the operator sees of
/// the Pod and its containers cannot, such as a worker image that cannot be pulled. The
/// sidecar writes each new text into the run log, since it alone writes the log once
/// init has started.
pub const NOTES_FILE: &str = "notes";
/// The hand-off file's name in the scratch volume (init and the sidecar only).
pub const HANDOFF_FILE: &str = "gantry-handoff.json";

/// The hand-off format this crate writes and reads.
pub const HANDOFF_VERSION: u32 = 1;

/// What `init` leaves for `sidecar`, besides the prepared workspace. It holds nothing the
/// worker does not receive anyway (its job), and the sidecar takes everything it acts on
/// from the assignment and its own configuration where it can.
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PodHandoff {
    pub version: u32,
    #[serde_as(as = "DisplayFromStr")]
    pub run_id: RunId,
    /// The worker's job, its environment with the opened sealed inputs included.
    pub job: WorkerJob,
    /// The next run log sequence number: init's lines are all on the server.
    pub log_next_seq: u64,
    /// When the run's time limit ends, in milliseconds since the Unix epoch: counted from
    /// the start of init, as the launcher counts it from the acknowledgement.
    pub deadline_unix_ms: u64,
    /// The run keeps its managed state through Gantry, and may change it.
    #[serde(default)]
    pub managed_state: bool,
    /// The SHA-256 of the state the run started from, to tell whether it changed.
    #[serde(default)]
    pub state_before: Option<String>,
    /// The lineage and serial of that state: the next version must keep the lineage and
    /// may not lower the serial.
    #[serde(default)]
    pub state_lineage: Option<String>,
    #[serde(default)]
    pub state_serial: Option<u64>,
}
