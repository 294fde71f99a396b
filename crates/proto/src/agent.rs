//! The agent plane under `/agent/v1`: every request is opened by a launcher, outbound.
//!
//! A launcher proves possession of the pool private key once per session
//! (`session/challenge`, then `session`), registers its worker slots, long-polls for
//! assignments, acknowledges them, streams logs and reports, and heartbeats. Every upload
//! is idempotent: logs carry sequence numbers, reports are transitions the server accepts
//! again without effect.

use std::collections::BTreeMap;

use gantry_domain::{
    LauncherId, Phase, PoolId, RunId, RunType, StackId, Timestamp, Tool, WorkerId,
};
use serde::{Deserialize, Serialize};
use serde_with::{DisplayFromStr, serde_as};

use crate::Rfc3339;
use crate::api::{EnvironmentVariable, Output};

/// The agent-plane protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// `POST /agent/v1/session/challenge`
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChallengeRequest {
    #[serde_as(as = "DisplayFromStr")]
    pub pool_id: PoolId,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ChallengeResponse {
    pub challenge: String,
    /// SHA-256 of the pool's current certificate: a launcher whose token carries another
    /// one knows the pool was reset and its token replaced.
    #[serde(default)]
    pub certificate_fingerprint: Option<String>,
}

/// What a launcher says about itself. `id` is chosen by the launcher process at start
/// and kept across its sessions, so that a renewed session keeps its workers and the
/// workspaces it holds.
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LauncherInfo {
    #[serde_as(as = "DisplayFromStr")]
    pub id: LauncherId,
    pub version: String,
    pub hostname: String,
    pub protocol_version: u32,
}

/// `POST /agent/v1/session`: the challenge signed with the pool private key.
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenSession {
    #[serde_as(as = "DisplayFromStr")]
    pub pool_id: PoolId,
    pub challenge: String,
    /// Standard base64 of the signature over `gantry_crypto::session_message(challenge)`.
    pub signature: String,
    pub launcher: LauncherInfo,
}

#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SessionOpened {
    /// Bearer token for every other agent-plane request.
    pub session_token: String,
    #[serde_as(as = "DisplayFromStr")]
    pub launcher_id: LauncherId,
    pub expires_in_seconds: u64,
    pub heartbeat_interval_seconds: u64,
    pub poll_timeout_seconds: u64,
    /// The worker lease the launcher grants its workers (absent from older servers).
    #[serde(default)]
    pub worker_lease: Option<crate::lease::LeaseTerms>,
}

/// One worker slot to register; `previous_id` keeps a slot's identity across sessions.
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerRegistration {
    #[serde_as(as = "Option<DisplayFromStr>")]
    #[serde(default)]
    pub previous_id: Option<WorkerId>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// `POST /agent/v1/workers`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RegisterWorkers {
    pub workers: Vec<WorkerRegistration>,
}

#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkersRegistered {
    #[serde_as(as = "Vec<DisplayFromStr>")]
    pub worker_ids: Vec<WorkerId>,
}

/// `POST /agent/v1/workers/leave`: the launcher shrinks. Each worker is drained at once
/// (it gets no new run); an idle one is removed, a busy one stays until its run ends and
/// the launcher asks again.
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LeaveWorkers {
    #[serde_as(as = "Vec<DisplayFromStr>")]
    pub worker_ids: Vec<WorkerId>,
}

#[serde_as]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkersLeft {
    /// Removed from the pool (or already gone).
    #[serde_as(as = "Vec<DisplayFromStr>")]
    pub left: Vec<WorkerId>,
    /// Drained, still executing a run: ask again once it ended.
    #[serde_as(as = "Vec<DisplayFromStr>")]
    pub busy: Vec<WorkerId>,
}

/// `POST /agent/v1/poll`: blocks until an assignment exists for one of the launcher's
/// workers, or `wait_seconds` pass.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Poll {
    pub wait_seconds: u32,
    /// Assignments the launcher executes already, acknowledged or not: the server does
    /// not send them again, so that a poll made before an acknowledgement lands waits
    /// rather than returning the same work at once.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub holding: Vec<HeldAssignment>,
}

/// One assignment a launcher executes.
#[serde_as]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HeldAssignment {
    #[serde_as(as = "DisplayFromStr")]
    pub run_id: RunId,
    pub job: Job,
}

#[serde_as]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PollResponse {
    pub assignments: Vec<Assignment>,
    /// Runs on this launcher that a user asked to stop.
    #[serde_as(as = "Vec<DisplayFromStr>")]
    #[serde(default)]
    pub stop_run_ids: Vec<RunId>,
    /// The pool is being cycled: take no more work, finish the runs in progress, exit.
    #[serde(default)]
    pub cycle: bool,
}

/// Which part of a run a worker executes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Job {
    /// Check out, initialize, plan; maybe apply when the server says so.
    Plan,
    /// Apply the plan a previous job made and the user confirmed.
    Apply,
}

/// The stack as a launcher needs it.
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackSpec {
    #[serde_as(as = "DisplayFromStr")]
    pub id: StackId,
    pub name: String,
    pub repository: String,
    pub branch: String,
    pub project_root: String,
    #[serde_as(as = "DisplayFromStr")]
    pub tool: Tool,
    pub runner_image: Option<String>,
    pub environment: Vec<EnvironmentVariable>,
    /// The stack lets its sensitive outputs reach its dependents, sealed to the pool key.
    #[serde(default)]
    pub share_sensitive_outputs: bool,
    /// The stack's labels, for the run initialization policy.
    #[serde(default)]
    pub labels: Vec<String>,
}

/// A run handed to one of the launcher's workers.
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Assignment {
    #[serde_as(as = "DisplayFromStr")]
    pub run_id: RunId,
    #[serde_as(as = "DisplayFromStr")]
    pub worker_id: WorkerId,
    #[serde(rename = "run_type")]
    #[serde_as(as = "DisplayFromStr")]
    pub run_type: RunType,
    pub job: Job,
    pub stack: StackSpec,
    /// The commit to check out; the branch head when absent.
    pub commit: Option<String>,
    /// A TASK's command.
    #[serde(default)]
    pub command: Option<String>,
    /// Values from the outputs of the stacks this one depends on, as environment
    /// variables.
    #[serde(default)]
    pub inputs: Vec<(String, String)>,
    /// Sensitive upstream outputs the run references: sealed to the pool key, fetched
    /// and opened by the launcher, never seen by the server.
    #[serde(default)]
    pub sealed_inputs: Vec<SealedInput>,
    /// The sequence number of the run's next log chunk: an apply continues the log its
    /// plan wrote.
    #[serde(default)]
    pub log_next_seq: u64,
    /// Gantry manages the stack's Terraform state: the launcher brings it in before the
    /// run and stores the new state after an apply.
    #[serde(default)]
    pub managed_state: bool,
    /// The stack's current managed state, if any.
    #[serde(default)]
    pub state: Option<StateVersion>,
    /// For an apply: the encrypted workspace its plan stored.
    #[serde(default)]
    pub workspace: Option<BlobRef>,
    // What the run initialization policy judges besides the above. Absent from servers
    // before they were added: the policy then sees them as unknown.
    /// The commit's message, as the run's plan found it when it checked the commit out.
    #[serde(default)]
    pub commit_message: Option<String>,
    /// The commit's author, as the run's plan found it: an apply is judged on the same
    /// commit as its plan without a checkout.
    #[serde(default)]
    pub commit_author: Option<CommitAuthor>,
    /// Who or what triggered the run: an API key's name, `dependency:<run>`, ...
    #[serde(default)]
    pub triggered_by: Option<String>,
    #[serde_as(as = "Option<Rfc3339>")]
    #[serde(default)]
    pub created_at: Option<Timestamp>,
    /// When the run's state last changed.
    #[serde_as(as = "Option<Rfc3339>")]
    #[serde(default)]
    pub updated_at: Option<Timestamp>,
    /// The stack's autodeploy setting when the run was triggered: a tracked run with
    /// changes applies without a confirmation.
    #[serde(default)]
    pub autodeploy: Option<bool>,
    /// For a run that holds its stack's lock: the lock's generation, a fencing token its
    /// state upload carries (`LOCK_GENERATION_HEADER`). Absent from older servers.
    #[serde(default)]
    pub lock_generation: Option<u64>,
}

/// Who wrote a commit and when, as git records it (the author, not the committer).
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitAuthor {
    pub name: String,
    pub email: String,
    #[serde_as(as = "Rfc3339")]
    pub authored_at: Timestamp,
}

/// A sensitive output of an upstream stack's run that a run receives as an environment
/// variable: `GET /runs/{run}/inputs/{upstream_run}` serves the upstream run's sealed
/// sensitive outputs, `blob` says what to check.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedInput {
    pub variable: String,
    pub output: String,
    pub upstream_stack: String,
    #[serde_as(as = "DisplayFromStr")]
    pub upstream_stack_id: StackId,
    #[serde_as(as = "DisplayFromStr")]
    pub upstream_run_id: RunId,
    pub blob: BlobRef,
}

/// How an output value becomes an environment variable: a string as it is, anything
/// else as JSON, which Terraform reads for complex `TF_VAR_` values.
pub fn environment_value(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(text) => text.clone(),
        other => other.to_string(),
    }
}

/// A stored, encrypted blob: what to check after downloading it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BlobRef {
    /// SHA-256 of the ciphertext, lowercase hex.
    pub sha256: String,
    pub size: u64,
}

/// A version of a stack's managed state: the run that produced it, and its blob. The run
/// id is part of the blob's encryption context.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateVersion {
    #[serde_as(as = "DisplayFromStr")]
    pub run_id: RunId,
    pub blob: BlobRef,
}

/// Header carrying a blob's SHA-256 on uploads and downloads.
pub const SHA256_HEADER: &str = "x-gantry-sha256";
/// Header naming the run whose apply produced a state version: part of the state blob's
/// encryption context.
pub const STATE_RUN_HEADER: &str = "x-gantry-state-run";
/// Header carrying, on a state upload, the lock generation of the run's assignment: the
/// server makes the state current only while the run still holds the lock under it.
pub const LOCK_GENERATION_HEADER: &str = "x-gantry-lock-generation";

/// The answer to `PUT /agent/v1/runs/{run}/state`: the blob stored, and the version it
/// became. `orphaned`: the run no longer held its stack's lock (the server ended it
/// meanwhile, or the lock passed on), so the state was kept as an orphaned version that
/// is not current until a user adopts it (status 202; 201 for a new current version,
/// 200 for a retried upload). Older servers answer with the blob's fields only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateStored {
    /// SHA-256 of the ciphertext, lowercase hex.
    pub sha256: String,
    pub size: u64,
    #[serde(default)]
    pub version: Option<u64>,
    #[serde(default)]
    pub orphaned: bool,
}

/// `POST /agent/v1/runs/{run}/ack`: the launcher took the assignment.
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Acknowledge {
    #[serde_as(as = "DisplayFromStr")]
    pub worker_id: WorkerId,
    pub job: Job,
}

/// `POST /agent/v1/heartbeat`: the launcher is alive, and this is what it holds.
#[serde_as]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Heartbeat {
    #[serde_as(as = "Vec<DisplayFromStr>")]
    pub worker_ids: Vec<WorkerId>,
    /// Runs executing on this launcher now.
    #[serde_as(as = "Vec<DisplayFromStr>")]
    pub running_run_ids: Vec<RunId>,
}

#[serde_as]
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct HeartbeatResponse {
    /// Workers the server no longer knows: register them again.
    #[serde_as(as = "Vec<DisplayFromStr>")]
    pub unknown_worker_ids: Vec<WorkerId>,
    /// Runs this launcher must stop: they ended, were taken from it, or a user asked.
    #[serde_as(as = "Vec<DisplayFromStr>")]
    pub stop_run_ids: Vec<RunId>,
    /// The pool is being cycled: take no more work, finish the runs in progress, exit.
    #[serde(default)]
    pub cycle: bool,
}

/// What a worker (through its launcher) reports about a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RunReport {
    /// The launcher checked out this commit.
    CommitResolved {
        sha: String,
        message: String,
        /// Absent from launchers before it was added.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        author: Option<CommitAuthor>,
    },
    PhaseStarted {
        #[serde(with = "phase_text")]
        phase: Phase,
    },
    Planned {
        has_changes: bool,
    },
    /// The launcher stored the encrypted workspace of a plan that waits for confirmation.
    WorkspaceStored {
        sha256: String,
        size: u64,
    },
    Outputs {
        outputs: Vec<Output>,
    },
    Applied,
    /// A task's command finished successfully.
    Performed,
    /// The launcher stopped the run (a user asked, or the launcher shut down).
    Stopped,
    Failed {
        message: String,
    },
}

/// `POST /agent/v1/runs/{run}/reports`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportRequest {
    pub report: RunReport,
}

/// What the worker does after a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Directive {
    /// Go on with the current job.
    Continue,
    /// The plan is confirmed: apply it now.
    Apply,
    /// Stop here: the plan waits for a confirmation. The launcher encrypts and uploads
    /// the workspace, then reports `WorkspaceStored`.
    UploadWorkspace,
    /// The run is over: stop and clean up.
    Finish,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ReportResponse {
    pub directive: Directive,
}

/// One chunk of run log as the launcher uploads it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogUpload {
    pub seq: u64,
    pub text: String,
}

/// `POST /agent/v1/runs/{run}/logs`: chunks in order. Chunks the server already has are
/// ignored, so a retry after a lost response never duplicates output.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadLogs {
    pub chunks: Vec<LogUpload>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogsAccepted {
    /// The sequence number the server expects next.
    pub next_seq: u64,
}

mod phase_text {
    use gantry_domain::Phase;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        phase: &Phase,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(phase.state().as_str())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Phase, D::Error> {
        let text = String::deserialize(deserializer)?;
        [Phase::Initializing, Phase::Planning, Phase::Applying, Phase::Performing]
            .into_iter()
            .find(|phase| phase.state().as_str() == text)
            .ok_or_else(|| serde::de::Error::custom(format!("{text:?} is not a phase")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_tagged_json() {
        let report = RunReport::PhaseStarted { phase: Phase::Planning };
        let json = serde_json::to_string(&report).unwrap();
        assert_eq!(json, r#"{"kind":"phase_started","phase":"PLANNING"}"#);
        assert_eq!(serde_json::from_str::<RunReport>(&json).unwrap(), report);
    }

    #[test]
    fn an_older_launcher_may_omit_fields_and_a_newer_server_may_add_some() {
        let heartbeat: Heartbeat =
            serde_json::from_str(r#"{"worker_ids":[],"running_run_ids":[],"added_later":1}"#)
                .unwrap();
        assert!(heartbeat.worker_ids.is_empty());
        let registration: WorkerRegistration = serde_json::from_str("{}").unwrap();
        assert!(registration.previous_id.is_none());
    }

    #[test]
    fn a_commit_report_carries_its_author_only_when_known() {
        let older: RunReport =
            serde_json::from_str(r#"{"kind":"commit_resolved","sha":"abc","message":"m"}"#)
                .unwrap();
        assert_eq!(
            older,
            RunReport::CommitResolved { sha: "abc".into(), message: "m".into(), author: None }
        );
        assert_eq!(
            serde_json::to_string(&older).unwrap(),
            r#"{"kind":"commit_resolved","sha":"abc","message":"m"}"#
        );
        let author = CommitAuthor {
            name: "Ada".into(),
            email: "ada@example.invalid".into(),
            authored_at: Timestamp::from_unix_millis(1_700_000_000_000),
        };
        let newer = RunReport::CommitResolved {
            sha: "abc".into(),
            message: "m".into(),
            author: Some(author),
        };
        let json = serde_json::to_string(&newer).unwrap();
        assert!(json.contains(r#""authored_at":"2023-11-14T22:13:20Z""#), "{json}");
        assert_eq!(serde_json::from_str::<RunReport>(&json).unwrap(), newer);
    }

    /// An assignment as a server before the policy's fields sends it: a newer launcher
    /// reads it, the fields unknown.
    #[test]
    fn an_assignment_without_the_policy_fields_is_read_with_them_unknown() {
        let assignment: Assignment = serde_json::from_value(serde_json::json!({
            "run_id": RunId::generate().to_string(),
            "worker_id": WorkerId::generate().to_string(),
            "run_type": "TRACKED",
            "job": "apply",
            "stack": {
                "id": StackId::generate().to_string(), "name": "app", "repository": "r",
                "branch": "main", "project_root": "", "tool": "terraform",
                "runner_image": null, "environment": []
            },
            "commit": "abc",
        }))
        .unwrap();
        assert!(assignment.stack.labels.is_empty());
        assert_eq!(
            (assignment.commit_author, assignment.created_at, assignment.autodeploy),
            (None, None, None)
        );
    }
}

/// `GET /agent/v1/worker-binary?arch=…`: the worker binary the server distributes, to be
/// downloaded from `/agent/v1/worker-binary/content?arch=…` and run only if `signature`
/// (base64 Ed25519 over a fixed label and the SHA-256 digest) verifies with the key the
/// launcher pins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerBinary {
    pub arch: String,
    /// Hex.
    pub sha256: String,
    pub size: u64,
    pub signature: String,
}
