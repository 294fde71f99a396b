//! What the store keeps, as plain records of domain types.

use std::collections::BTreeMap;

use gantry_domain::access::{Role, Scope};
use gantry_domain::{
    EnvironmentVariable, LauncherId, PoolId, PoolKind, RunId, RunState, RunType, StackId,
    Timestamp, Tool, WorkerId,
};

/// Where a blob is in the blob store, and what it must hash to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlobRecord {
    pub key: String,
    /// SHA-256 of the stored bytes, lowercase hex.
    pub sha256: String,
    pub size: u64,
    pub created_at: Timestamp,
}

/// One version of a stack's managed state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateVersionRecord {
    pub stack_id: StackId,
    /// 1, 2, ... per stack; the highest is the current state.
    pub seq: u64,
    /// The run whose apply produced it (part of the blob's encryption context): for a
    /// rollback, the run that produced the version it restores.
    pub run_id: RunId,
    /// Its blob; `created_at` is when this version was made (for a rollback: when it was
    /// rolled back), which for others is when their blob was stored.
    pub blob: BlobRecord,
    /// Set when a user made this version by rolling back to an earlier one.
    pub rollback: Option<StateRollbackRecord>,
    /// Uploaded by a run that no longer held the stack's lock (fenced off): kept, never
    /// the current state unless adopted, never pruned.
    pub orphaned: bool,
    /// Set when a user made this version by adopting an orphaned one.
    pub adoption: Option<StateRollbackRecord>,
}

/// When a state a run uploads may become its stack's current version: the run is still
/// in `run_state` (as the caller read it) and still holds the stack's lock under the
/// stack's current lock generation, which `lock_generation` (what the run's launcher
/// sent; `None` from launchers that send none) must equal too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateFence {
    pub run_state: RunState,
    pub lock_generation: Option<u64>,
}

/// How a version that restores an earlier one came about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateRollbackRecord {
    /// The version whose blob and producing run this one repeats.
    pub of_seq: u64,
    /// Who asked: the name of the API key they used.
    pub by: String,
}

/// An API key; only the hash of its secret is kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiKeyRecord {
    pub id: String,
    pub name: String,
    pub secret_hash: String,
    pub role: Role,
    /// The pools and stacks it reaches (everything when empty).
    pub scope: Scope,
    /// The name of the key that created it, or `gantry server` / `gantry up`.
    pub created_by: String,
    pub created_at: Timestamp,
    pub expires_at: Option<Timestamp>,
    /// Updated at most about once a minute: a hint for people, not an audit trail.
    pub last_used_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

impl ApiKeyRecord {
    /// Whether the key may be used at `now`: neither revoked nor expired.
    pub fn is_active(&self, now: Timestamp) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|at| at > now)
    }
}

/// A web UI session, found by the hash of its cookie.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UiSessionRecord {
    pub id_hash: String,
    /// The API key it signed in with: the session ends with it.
    pub key_id: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolRecord {
    pub id: PoolId,
    pub name: String,
    pub kind: PoolKind,
    pub description: String,
    pub labels: Vec<String>,
    pub certificate_pem: Option<String>,
    pub certificate_fingerprint: Option<String>,
    pub key_algorithm: Option<String>,
    /// Launchers whose session started before this exit after their current runs.
    pub cycle_requested_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// A launcher session, found by the hash of its bearer token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    pub token_hash: String,
    pub pool_id: PoolId,
    pub launcher_id: LauncherId,
    /// The pool certificate the session was opened with: a pool reset ends the session.
    pub certificate_fingerprint: String,
    pub hostname: String,
    pub launcher_version: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

/// A session as a request authenticates with it: the session and what its pool says now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundSession {
    pub session: SessionRecord,
    /// The pool's current certificate: a session opened with another one has ended.
    pub pool_certificate_fingerprint: Option<String>,
    /// When the pool was last asked to cycle.
    pub pool_cycle_requested_at: Option<Timestamp>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkerRecord {
    pub id: WorkerId,
    pub pool_id: PoolId,
    pub launcher_id: LauncherId,
    pub metadata: BTreeMap<String, String>,
    pub launcher_version: String,
    pub hostname: String,
    pub drained: bool,
    pub current_run_id: Option<RunId>,
    pub created_at: Timestamp,
    pub last_seen_at: Timestamp,
}

/// How many workers one pool has, by state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerCountsRecord {
    pub pool_id: PoolId,
    pub connected: u64,
    pub busy: u64,
    pub drained: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StackRecord {
    pub id: StackId,
    pub name: String,
    pub repository: String,
    pub branch: String,
    pub project_root: String,
    pub pool_id: PoolId,
    pub tool: Tool,
    pub runner_image: Option<String>,
    pub autodeploy: bool,
    /// Gantry keeps the stack's Terraform state, encrypted to the pool key.
    pub managed_state: bool,
    /// Its sensitive outputs may reach dependent stacks, sealed to the pool key.
    pub share_sensitive_outputs: bool,
    pub environment: Vec<EnvironmentVariable>,
    pub description: String,
    pub labels: Vec<String>,
    /// Globs of repository paths outside the project root whose pushes trigger it too.
    pub trigger_paths: Vec<String>,
    pub created_at: Timestamp,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunRecord {
    pub id: RunId,
    pub stack_id: StackId,
    pub pool_id: PoolId,
    pub run_type: RunType,
    pub state: RunState,
    pub branch: String,
    pub commit_sha: Option<String>,
    pub commit_message: Option<String>,
    /// The stack's setting when the run was triggered.
    pub autodeploy: bool,
    pub worker_id: Option<WorkerId>,
    pub prioritized: bool,
    pub has_changes: Option<bool>,
    pub failure: Option<String>,
    pub triggered_by: String,
    /// A TASK's command.
    pub command: Option<String>,
    /// A user asked to stop the run while it executed.
    pub stop_requested_at: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    /// The stack's lock generation when this lock-taking run was given the lock; `None`
    /// before (and for runs that never take it).
    pub lock_generation: Option<u64>,
}

/// A run one of a launcher's workers holds, with what its assignment is made of while it
/// waits for the worker to pick it up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldRunRecord {
    pub run: RunRecord,
    /// Only for a run waiting to be picked up: `READY` (a plan) or `CONFIRMED` (an apply).
    pub pickup: Option<PickupRecord>,
}

/// What an assignment is made of, read together with the run it hands out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PickupRecord {
    /// `None`: the run's stack does not exist.
    pub stack: Option<StackRecord>,
    /// The sequence number the run's next log chunk takes.
    pub next_log_seq: u64,
    /// Whether the stack depends on other stacks, whose outputs may be its inputs.
    pub has_upstreams: bool,
    /// Who wrote the run's commit, once its plan checked it out and its launcher said.
    pub commit_author: Option<CommitAuthorRecord>,
}

/// Who wrote a commit and when, as git records it (the author, not the committer).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitAuthorRecord {
    pub name: String,
    pub email: String,
    pub authored_at: Timestamp,
}

/// One state a run entered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateChangeRecord {
    pub state: RunState,
    pub at: Timestamp,
}

/// A compare-and-set change of a run: applied only if the run is still in `from`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunChange {
    pub run_id: RunId,
    pub from: RunState,
    pub to: RunState,
    pub at: Timestamp,
    /// The run leaves its worker: both sides of the link are cleared.
    pub release_worker: bool,
    pub failure: Option<String>,
    pub has_changes: Option<bool>,
    /// Recorded as pending in the change's transaction, only if the change applies.
    pub effects: Vec<crate::Effect>,
    /// The run's blobs of these purposes are forgotten in the change's transaction, and
    /// their deletion recorded as pending effects.
    pub release_blobs: Vec<String>,
    /// The run's worker may still be executing it (its launcher was lost, or the run was
    /// failed under it): the run's stack stays fenced until then, recorded in the same
    /// transaction as the change (`Store::lock_fences`).
    pub fence_stack_until: Option<Timestamp>,
    /// The launcher whose worker may still be executing the run, when known: its report
    /// that the execution ended lifts the fence early (`Store::lift_lock_fence_of_run`).
    pub fence_holder: Option<LauncherId>,
}

impl RunChange {
    pub fn new(run_id: RunId, from: RunState, to: RunState, at: Timestamp) -> Self {
        Self {
            run_id,
            from,
            to,
            at,
            release_worker: false,
            failure: None,
            has_changes: None,
            effects: Vec::new(),
            release_blobs: Vec::new(),
            fence_stack_until: None,
            fence_holder: None,
        }
    }
}

/// A stack whose lock stays taken after its holder ended, because the holder's worker
/// may still be executing it: no lock-taking run of the stack starts before `until`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LockFenceRecord {
    pub stack_id: StackId,
    /// The run whose worker may still be executing it.
    pub run_id: RunId,
    pub until: Timestamp,
    pub created_at: Timestamp,
}

/// What a scheduling pass's commit did (`Store::commit_pass`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommittedPass {
    /// The runs promoted to `READY`, as they are now, in the order asked for.
    pub promoted: Vec<RunRecord>,
    /// For each assignment offered, whether it was made.
    pub assigned: Vec<bool>,
}

/// Which runs to list, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunFilter {
    pub stack_id: Option<StackId>,
    pub limit: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogChunkRecord {
    pub seq: u64,
    pub text: String,
    pub at: Timestamp,
}

/// The chunks the per-run limit cut from a log: chunk `at_seq` and the `chunks - 1`
/// after it, `bytes` of text in all. The head ends before `at_seq`; the tail kept starts
/// at `at_seq + chunks`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogCutRecord {
    pub at_seq: u64,
    pub chunks: u64,
    pub bytes: u64,
}

/// A Terraform output: its JSON value, absent for sensitive outputs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputRecord {
    pub name: String,
    pub value_json: Option<String>,
    pub sensitive: bool,
}

/// How a downstream stack reads one upstream output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutputReferenceRecord {
    pub output: String,
    pub variable: String,
    pub trigger_always: bool,
}

/// "downstream depends on upstream".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyRecord {
    pub downstream: StackId,
    pub upstream: StackId,
    pub references: Vec<OutputReferenceRecord>,
    pub created_at: Timestamp,
}
