//! The REST API under `/api/v1`: requests users send and the resources they get back.
//! Requests refuse unknown fields so that a typo is an error rather than a silent default.

use std::collections::BTreeMap;

use gantry_domain::{
    PoolId, RunId, RunState, RunType, StackId, Timestamp, Tool, WorkerId, WorkerStatus,
};
use serde::{Deserialize, Serialize};
use serde_with::{DisplayFromStr, serde_as};

use crate::Rfc3339;

/// Every error response: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorResponse {
    pub error: ErrorBody,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// Stable, machine-readable: `not_found`, `invalid_request`, `conflict`, ...
    pub code: String,
    /// For people: says what was wrong with which input.
    pub message: String,
}

/// `POST /api/v1/pools`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreatePool {
    pub name: String,
    /// PEM certificate signing request made with the pool's private key.
    pub csr: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub labels: Vec<String>,
}

/// `POST /api/v1/pools/{pool}/reset`: a new CSR. The pool gets a new certificate and
/// token; launchers holding the old ones are refused from now on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResetPool {
    pub csr: String,
}

/// The answer to pool creation and reset: the only time the token is shown.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolCreated {
    pub pool: Pool,
    pub token: String,
}

/// Whether a pool is hosted by its owner or by the server itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    Private,
    Shared,
}

#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Pool {
    #[serde_as(as = "DisplayFromStr")]
    pub id: PoolId,
    pub name: String,
    pub kind: PoolKind,
    pub description: String,
    pub labels: Vec<String>,
    /// SHA-256 of the pool certificate (private pools).
    pub certificate_fingerprint: Option<String>,
    /// `RSA-4096`, `EC P-256`, ...
    pub key_algorithm: Option<String>,
    pub workers: u32,
    pub busy_workers: u32,
    pub drained_workers: u32,
    pub pending_runs: u32,
    /// The stacks whose runs this pool executes.
    #[serde(default)]
    pub used_by: Vec<String>,
    #[serde_as(as = "Rfc3339")]
    pub created_at: Timestamp,
}

#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Worker {
    #[serde_as(as = "DisplayFromStr")]
    pub id: WorkerId,
    #[serde_as(as = "DisplayFromStr")]
    pub pool_id: PoolId,
    #[serde_as(as = "DisplayFromStr")]
    pub status: WorkerStatus,
    pub busy: bool,
    pub drained: bool,
    #[serde_as(as = "Option<DisplayFromStr>")]
    pub current_run_id: Option<RunId>,
    /// Tags from the launcher's `GANTRY_METADATA_*` variables.
    pub metadata: BTreeMap<String, String>,
    pub launcher_version: String,
    pub hostname: String,
    #[serde_as(as = "Rfc3339")]
    pub created_at: Timestamp,
    #[serde_as(as = "Rfc3339")]
    pub last_seen_at: Timestamp,
}

/// One environment variable of a stack. Secret values are write-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentVariable {
    pub name: String,
    /// Absent in responses when `secret` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default)]
    pub secret: bool,
    /// A secret's value sealed to the pool certificate (`gantry_crypto::seal_secret`,
    /// base64): what the CLI sends instead of `value`, and all the server keeps, shows
    /// and hands to launchers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_value: Option<String>,
}

/// `GET /api/v1/pools/{pool}/certificate`: what a client seals a stack's secrets to.
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolCertificate {
    #[serde_as(as = "DisplayFromStr")]
    pub pool_id: PoolId,
    pub pool_name: String,
    /// PEM, issued by the server's certificate authority.
    pub certificate: String,
    /// SHA-256 of its DER encoding.
    pub fingerprint: String,
}

/// `PUT /api/v1/stacks/{stack}/secrets`: secret variables given again (sealed, or in
/// clear for the server to seal), optionally moving the stack to another pool — which
/// needs every secret variable of the stack, sealed to the new pool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetStackSecrets {
    /// The pool (name or id) to move the stack to; it stays on its pool when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<String>,
    /// Secret variables: each with `sealed_value` or `value`; new names are added.
    pub secrets: Vec<EnvironmentVariable>,
}

fn default_branch() -> String {
    "main".to_owned()
}

/// `POST /api/v1/stacks`
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateStack {
    pub name: String,
    /// Any git URL the pool's launchers can reach (`https://`, `ssh://`, `file://`).
    pub repository: String,
    #[serde(default = "default_branch")]
    pub branch: String,
    /// Directory of the Terraform configuration inside the repository.
    #[serde(default)]
    pub project_root: String,
    /// Pool name or id; the server's shared pool when absent.
    #[serde(default)]
    pub pool: Option<String>,
    #[serde_as(as = "Option<DisplayFromStr>")]
    #[serde(default)]
    pub tool: Option<Tool>,
    #[serde(default)]
    pub runner_image: Option<String>,
    /// Apply plans with changes without waiting for a confirmation.
    #[serde(default)]
    pub autodeploy: bool,
    /// Gantry keeps the stack's Terraform state, encrypted to the pool key; the
    /// configuration's own backend is replaced by a local one.
    #[serde(default)]
    pub managed_state: bool,
    /// Let the stack's sensitive outputs reach the stacks that depend on it, sealed to
    /// the pool key (its launchers must also set GANTRY_SENSITIVE_OUTPUT_UPLOAD_ENABLED).
    #[serde(default)]
    pub share_sensitive_outputs: bool,
    #[serde(default)]
    pub environment: Vec<EnvironmentVariable>,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub labels: Vec<String>,
    /// Globs of repository paths outside the project root whose pushes trigger the stack
    /// too (a shared module, a variables file): `modules/**`, `shared/*.tf`.
    #[serde(default)]
    pub trigger_paths: Vec<String>,
}

#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Stack {
    #[serde_as(as = "DisplayFromStr")]
    pub id: StackId,
    pub name: String,
    pub repository: String,
    pub branch: String,
    pub project_root: String,
    #[serde_as(as = "DisplayFromStr")]
    pub pool_id: PoolId,
    pub pool_name: String,
    #[serde_as(as = "DisplayFromStr")]
    pub tool: Tool,
    pub runner_image: Option<String>,
    pub autodeploy: bool,
    pub managed_state: bool,
    #[serde(default)]
    pub share_sensitive_outputs: bool,
    pub environment: Vec<EnvironmentVariable>,
    pub description: String,
    pub labels: Vec<String>,
    /// Absent from older servers.
    #[serde(default)]
    pub trigger_paths: Vec<String>,
    #[serde_as(as = "Rfc3339")]
    pub created_at: Timestamp,
    /// The stack's lock stays taken after its last holder ended, while that run's worker
    /// may still be stopping; absent when it is not fenced (and from older servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lock_fence: Option<StackLockFence>,
    /// A drift check found the infrastructure changed outside Gantry; absent when none did
    /// since the last tracked run finished (and from older servers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drift: Option<StackDrift>,
}

/// A stack found drifted: its real infrastructure differs from its state.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackDrift {
    /// The drift check (a proposed run) that found it last.
    #[serde_as(as = "DisplayFromStr")]
    pub run_id: RunId,
    /// When a check first found it.
    #[serde_as(as = "Rfc3339")]
    pub since: Timestamp,
}

/// A stack's lock fenced after its holder ended (docs/scheduling.md, "Fencing"): no
/// tracked run or task of the stack starts before `until`, unless an administrator
/// lifts the fence (`POST /api/v1/stacks/{stack}/unfence`).
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StackLockFence {
    /// The run whose worker may still be executing it.
    #[serde_as(as = "DisplayFromStr")]
    pub run_id: RunId,
    #[serde_as(as = "Rfc3339")]
    pub until: Timestamp,
}

/// `POST /api/v1/stacks/{stack}/runs`
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TriggerRun {
    #[serde(rename = "type", default = "tracked")]
    #[serde_as(as = "DisplayFromStr")]
    pub run_type: RunType,
    /// A commit SHA; the head of the stack's branch when absent, resolved by the launcher.
    #[serde(default)]
    pub commit: Option<String>,
    /// For a TASK: the command to run in the stack's project root, after `init`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

/// `POST /api/v1/runs/{run}/fail`: an administrator ends a stuck run as FAILED.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailRun {
    /// Why, in the run's failure message next to who failed it.
    pub reason: String,
}

fn tracked() -> RunType {
    RunType::Tracked
}

/// One state a run went through, and when.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateChange {
    #[serde_as(as = "DisplayFromStr")]
    pub state: RunState,
    #[serde_as(as = "Rfc3339")]
    pub at: Timestamp,
}

/// A Terraform output of a run. Sensitive outputs carry no value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Output {
    pub name: String,
    #[serde(default)]
    pub value: Option<serde_json::Value>,
    pub sensitive: bool,
}

#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Run {
    #[serde_as(as = "DisplayFromStr")]
    pub id: RunId,
    #[serde_as(as = "DisplayFromStr")]
    pub stack_id: StackId,
    pub stack_name: String,
    #[serde_as(as = "DisplayFromStr")]
    pub pool_id: PoolId,
    #[serde(rename = "type")]
    #[serde_as(as = "DisplayFromStr")]
    pub run_type: RunType,
    #[serde_as(as = "DisplayFromStr")]
    pub state: RunState,
    pub branch: String,
    pub commit: Option<String>,
    pub commit_message: Option<String>,
    pub autodeploy: bool,
    /// A TASK's command.
    #[serde(default)]
    pub command: Option<String>,
    /// A user moved it to the front of its pool's queue.
    #[serde(default)]
    pub prioritized: bool,
    /// A user asked to stop it; its launcher is stopping it.
    #[serde(default)]
    pub stop_requested: bool,
    /// Who or what triggered it: `admin`, `dependency:<run>`, ...
    #[serde(default)]
    pub triggered_by: String,
    #[serde_as(as = "Option<DisplayFromStr>")]
    pub worker_id: Option<WorkerId>,
    /// Whether the plan found changes, once planning ended.
    pub has_changes: Option<bool>,
    /// Why the run failed, for FAILED runs.
    pub failure: Option<String>,
    /// Why the run has not started yet, for QUEUED and READY runs.
    pub waiting_reason: Option<String>,
    pub history: Vec<StateChange>,
    pub outputs: Vec<Output>,
    #[serde_as(as = "Rfc3339")]
    pub created_at: Timestamp,
    #[serde_as(as = "Rfc3339")]
    pub updated_at: Timestamp,
}

/// A piece of a run's log. Sequence numbers start at 0 and have no gaps.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogChunk {
    pub seq: u64,
    pub text: String,
    #[serde_as(as = "Rfc3339")]
    pub at: Timestamp,
}

/// `GET /api/v1/runs/{id}/logs?from=N`: chunks with `seq >= N`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogPage {
    pub chunks: Vec<LogChunk>,
    /// Ask for `from=next_seq` next.
    pub next_seq: u64,
    /// The run has ended and every chunk has been returned.
    pub complete: bool,
}

/// `GET /api/v1/pools`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PoolList {
    pub pools: Vec<Pool>,
}

/// `GET /api/v1/workers`, `GET /api/v1/pools/{pool}/workers`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkerList {
    pub workers: Vec<Worker>,
}

/// `GET /api/v1/stacks`
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StackList {
    pub stacks: Vec<Stack>,
}

/// `GET /api/v1/runs?stack=S&limit=N`, newest first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunList {
    pub runs: Vec<Run>,
}

/// The last event of `GET /api/v1/runs/{id}/logs/stream`: the run ended and every log
/// chunk was sent.
#[serde_as]
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StreamEnd {
    #[serde_as(as = "DisplayFromStr")]
    pub state: RunState,
}

/// One entry of a pool's queue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct QueueEntry {
    pub run: Run,
    /// Executing (or handed to a worker) rather than waiting.
    pub in_progress: bool,
}

/// `GET /api/v1/pools/{pool}/queue`: in-progress runs first, then the runs waiting, in
/// the order they will get workers, each with why it waits.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Queue {
    pub pool: String,
    pub entries: Vec<QueueEntry>,
}

/// How a downstream stack uses one upstream output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutputReference {
    /// The upstream stack's output.
    pub output: String,
    /// The environment variable of the downstream runs that receives it (`TF_VAR_...`).
    pub variable: String,
    /// Trigger the downstream stack after every upstream tracked run, changed or not.
    #[serde(default)]
    pub trigger_always: bool,
}

/// `POST /api/v1/stacks/{stack}/dependencies`: the stack depends on `upstream`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddDependency {
    /// Upstream stack name or id.
    pub upstream: String,
    #[serde(default)]
    pub references: Vec<OutputReference>,
}

/// A stack this one depends on.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    #[serde_as(as = "DisplayFromStr")]
    pub upstream_id: StackId,
    pub upstream: String,
    pub references: Vec<OutputReference>,
}

/// `GET /api/v1/stacks/{stack}/dependencies`: what the stack depends on, and what
/// depends on it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Dependencies {
    pub upstream: Vec<Dependency>,
    /// Names of the stacks that depend on this one.
    pub downstream: Vec<String>,
}

/// `POST /api/v1/pools/{pool}/drain`, `POST /api/v1/workers/{worker}/drain` and
/// their `undrain` counterparts answer with the workers they changed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Drained {
    pub workers: Vec<Worker>,
}

/// `GET /api/v1/health` (`status`: `ok`, the process is up) and `GET /api/v1/ready`
/// (`ready`, its database answers; otherwise an error, status 503).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub status: String,
    pub version: String,
}

/// One kept version of a stack's managed state. The server holds it as ciphertext only;
/// this describes it.
#[serde_as]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateVersion {
    /// 1, 2, ... per stack; the highest is the current state, the one the next run
    /// starts from.
    pub version: u64,
    pub current: bool,
    /// The run whose apply (or task) produced the state: for a rollback, the run that
    /// produced the version it restores.
    #[serde_as(as = "DisplayFromStr")]
    pub run_id: RunId,
    /// SHA-256 of the ciphertext, lowercase hex.
    pub sha256: String,
    /// Size of the ciphertext in bytes.
    pub size: u64,
    /// When this version was made: stored by its run, or rolled back to.
    #[serde_as(as = "Rfc3339")]
    pub created_at: Timestamp,
    /// For a rollback: the version it restores.
    #[serde(default)]
    pub rollback_of: Option<u64>,
    /// For a rollback: the name of the API key that asked for it.
    #[serde(default)]
    pub rolled_back_by: Option<String>,
    /// Stored by a run that no longer held the stack's lock (the server had ended it, or
    /// the lock had passed on): kept, never pruned, not current unless adopted.
    #[serde(default)]
    pub orphaned: bool,
    /// For an adoption: the orphaned version it made current.
    #[serde(default)]
    pub adopted_from: Option<u64>,
    /// For an adoption: the name of the API key that asked for it.
    #[serde(default)]
    pub adopted_by: Option<String>,
}

/// `GET /api/v1/stacks/{stack}/state/versions`: the versions the server keeps, newest
/// first.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StateVersionList {
    pub stack: String,
    /// How many versions of each stack the server keeps; older ones are deleted.
    pub kept: u32,
    pub versions: Vec<StateVersion>,
}

/// `POST /api/v1/stacks/{stack}/state/rollback`: make an earlier version the current
/// state again. The answer is the new version (`201 Created`), a copy of `to` with its
/// producing run: history is only added to.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RollbackState {
    /// The version to return to.
    pub to: u64,
}

/// `POST /api/v1/stacks/{stack}/state/adopt`: make an orphaned version the current state.
/// The answer is the new version (`201 Created`), a copy of the orphaned one with its
/// producing run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdoptState {
    /// The orphaned version to adopt.
    pub version: u64,
}
