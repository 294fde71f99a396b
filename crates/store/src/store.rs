//! The `Store` trait: every read and atomic write the server needs.

use async_trait::async_trait;
use gantry_domain::{EnvironmentVariable, LauncherId, PoolId, RunId, StackId, Timestamp, WorkerId};

use crate::LogCutRecord;
use crate::UiSessionRecord;
use crate::{
    ApiKeyRecord, BlobRecord, CommittedPass, DependencyRecord, FoundSession, HeldRunRecord,
    LogChunkRecord, OutputRecord, PoolRecord, RunChange, RunFilter, RunRecord, SessionRecord,
    StackRecord, StateChangeRecord, StateVersionRecord, StoreError, WorkerCountsRecord,
    WorkerRecord,
};

pub(crate) type Result<T> = std::result::Result<T, StoreError>;

/// What a server process hears from the others sharing its store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signal {
    /// A message some process published (this one included).
    Message(String),
    /// The channel was interrupted: messages sent meanwhile are lost.
    Gap,
}

/// Signals, for as long as the process listens.
pub type SignalStream = futures_util::stream::BoxStream<'static, Signal>;

/// Gantry's persistent state. Implementations must be safe to share between tasks and,
/// for engines that allow it, between server replicas.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// The secret stored under `name`, storing `candidate` first if there is none. Every
    /// caller gets the same value, even when several race to create it.
    async fn secret_or_insert(
        &self,
        name: &str,
        candidate: &[u8],
        now: Timestamp,
    ) -> Result<Vec<u8>>;
    /// Every server secret: its name and its stored value, by name.
    async fn list_secrets(&self) -> Result<Vec<(String, Vec<u8>)>>;
    /// Replaces server secrets in one transaction: each `(name, expected, new)` is written
    /// only if the row still holds `expected`; if any changed meanwhile (another replica
    /// sealed or rotated them), nothing is written and the error is `SecretChanged`.
    async fn replace_secrets(&self, replacements: &[(&str, &[u8], &[u8])]) -> Result<()>;

    async fn insert_api_key(&self, key: &ApiKeyRecord) -> Result<()>;
    async fn find_api_key(&self, secret_hash: &str) -> Result<Option<ApiKeyRecord>>;
    /// The key with this id (a prefix of its hash: not a secret).
    async fn get_api_key(&self, id: &str) -> Result<Option<ApiKeyRecord>>;
    async fn count_api_keys(&self) -> Result<u64>;
    /// Every key, revoked ones included, oldest first.
    async fn list_api_keys(&self) -> Result<Vec<ApiKeyRecord>>;
    /// Marks the key revoked at `at` (kept if it already was) and ends its UI sessions,
    /// atomically; returns the key as it is now, `NotFound` when there is none.
    async fn revoke_api_key(&self, id: &str, at: Timestamp) -> Result<ApiKeyRecord>;
    /// Records that the key was used at `at`.
    async fn touch_api_key(&self, id: &str, at: Timestamp) -> Result<()>;

    /// Stores a web UI session; sessions that expired before its creation are removed.
    async fn insert_ui_session(&self, session: &UiSessionRecord) -> Result<()>;
    /// The UI session with this hash and the key it signed in with.
    async fn find_ui_session(
        &self,
        id_hash: &str,
    ) -> Result<Option<(UiSessionRecord, ApiKeyRecord)>>;
    async fn delete_ui_session(&self, id_hash: &str) -> Result<()>;

    /// Appends to the audit log, chained to the last entry in the same transaction so that
    /// concurrent appends (several replicas) line up rather than fork. There is no way to
    /// change or remove an entry.
    async fn append_audit(&self, entry: &crate::AuditEntry) -> Result<crate::AuditRecord>;
    /// The audit entries the filter selects, oldest first.
    async fn list_audit(&self, filter: &crate::AuditFilter) -> Result<Vec<crate::AuditRecord>>;

    /// Fails with `AlreadyExists` when the name is taken.
    async fn insert_pool(&self, pool: &PoolRecord) -> Result<()>;
    async fn get_pool(&self, id: PoolId) -> Result<Option<PoolRecord>>;
    async fn find_pool_by_name(&self, name: &str) -> Result<Option<PoolRecord>>;
    async fn list_pools(&self) -> Result<Vec<PoolRecord>>;

    /// Gives the pool a new certificate and ends every session opened with the old one,
    /// atomically. Returns the updated pool.
    async fn reset_pool_certificate(
        &self,
        pool_id: PoolId,
        certificate_pem: &str,
        fingerprint: &str,
        key_algorithm: &str,
        at: Timestamp,
    ) -> Result<PoolRecord>;

    /// Asks the pool's launchers to exit after their current runs; returns the pool.
    async fn request_pool_cycle(&self, pool_id: PoolId, at: Timestamp) -> Result<PoolRecord>;

    async fn insert_session(&self, session: &SessionRecord) -> Result<()>;
    /// The session with this token hash, with what its pool says now.
    async fn find_session(&self, token_hash: &str) -> Result<Option<FoundSession>>;
    async fn delete_session(&self, token_hash: &str) -> Result<()>;
    /// Removes sessions that expired before `now`; returns how many.
    async fn delete_expired_sessions(&self, now: Timestamp) -> Result<u64>;

    /// Registers a worker, or takes over the worker with the same id in the same pool
    /// (new launcher, metadata and liveness; its drained flag and run are kept).
    async fn register_worker(&self, worker: &WorkerRecord) -> Result<WorkerRecord>;
    async fn get_worker(&self, id: WorkerId) -> Result<Option<WorkerRecord>>;
    /// All workers, or those of one pool, oldest first.
    async fn list_workers(&self, pool_id: Option<PoolId>) -> Result<Vec<WorkerRecord>>;
    /// The launcher's workers, oldest first.
    async fn launcher_workers(&self, launcher_id: LauncherId) -> Result<Vec<WorkerRecord>>;
    /// The runs held by the launcher's workers in the pool: handed to them, or executing.
    async fn launcher_runs(
        &self,
        launcher_id: LauncherId,
        pool_id: PoolId,
    ) -> Result<Vec<RunRecord>> {
        let held = self.held_runs(launcher_id, pool_id).await?;
        Ok(held.into_iter().map(|held| held.run).collect())
    }
    /// `launcher_runs`, each waiting to be picked up with its stack, its next log sequence
    /// number and whether the stack has upstream dependencies: a launcher woken for an
    /// assignment gets it after one read.
    async fn held_runs(
        &self,
        launcher_id: LauncherId,
        pool_id: PoolId,
    ) -> Result<Vec<HeldRunRecord>>;
    /// For every pool that has workers: how many, how many busy, how many drained.
    async fn worker_counts(&self) -> Result<Vec<WorkerCountsRecord>>;
    /// Up to `limit` idle, undrained workers of the pool, oldest first: the order in which
    /// they receive runs.
    async fn idle_workers(&self, pool_id: PoolId, limit: u32) -> Result<Vec<WorkerRecord>>;
    /// Marks the launcher's workers alive; returns the ids it no longer owns.
    async fn touch_workers(
        &self,
        launcher_id: LauncherId,
        worker_ids: &[WorkerId],
        now: Timestamp,
    ) -> Result<Vec<WorkerId>>;
    async fn delete_workers(&self, worker_ids: &[WorkerId]) -> Result<()>;
    /// Deletes those of the workers that are still dead and free when the statement runs:
    /// last seen before `seen_before`, and no run names them as its worker. A worker
    /// that heart-beat or took a run since the caller read it is kept, so that no run is
    /// left on a worker that no longer exists. Returns the ids deleted.
    async fn delete_dead_workers(
        &self,
        worker_ids: &[WorkerId],
        seen_before: Timestamp,
    ) -> Result<Vec<WorkerId>>;
    /// Drains (or undrains) one worker; `None` when it does not exist.
    async fn set_worker_drained(
        &self,
        worker_id: WorkerId,
        drained: bool,
    ) -> Result<Option<WorkerRecord>>;
    /// Drains (or undrains) every worker of the pool; returns them.
    async fn set_pool_drained(&self, pool_id: PoolId, drained: bool) -> Result<Vec<WorkerRecord>>;

    /// Fails with `AlreadyExists` when the name is taken.
    async fn insert_stack(&self, stack: &StackRecord) -> Result<()>;
    async fn get_stack(&self, id: StackId) -> Result<Option<StackRecord>>;
    async fn find_stack_by_name(&self, name: &str) -> Result<Option<StackRecord>>;
    async fn list_stacks(&self) -> Result<Vec<StackRecord>>;
    /// Sets stacks' pools and environments in one transaction — a stack moved to another
    /// pool, secret values given again or resealed, clear values sealed at an upgrade —
    /// and erases what the rows held before from the database's files where the engine
    /// can (SQLite). `NotFound`, and nothing written, when a stack is gone.
    async fn update_stack_environments(
        &self,
        updates: &[(StackId, PoolId, Vec<EnvironmentVariable>)],
    ) -> Result<()>;

    /// Inserts the run and its first state; returns once they are on disk.
    async fn insert_run(&self, run: &RunRecord) -> Result<()> {
        self.insert_run_visible_first(run, &|| {}).await
    }
    /// Inserts the run and its first state, and calls `visible` as soon as every reader
    /// sees them, before they reach the disk; returns once they are on disk. For a
    /// trigger: the scheduling pass starts while the insert is being flushed, instead of
    /// after (see `docs/ARCHITECTURE.md`, "A run is scheduled before its insert is on
    /// disk").
    async fn insert_run_visible_first(
        &self,
        run: &RunRecord,
        visible: &(dyn Fn() + Send + Sync),
    ) -> Result<()>;
    async fn get_run(&self, id: RunId) -> Result<Option<RunRecord>>;
    /// The run, with the launcher of the worker it is handed to (if any): what a launcher
    /// may say about a run is decided from both.
    async fn get_run_with_launcher(
        &self,
        id: RunId,
    ) -> Result<Option<(RunRecord, Option<LauncherId>)>>;
    async fn list_runs(&self, filter: &RunFilter) -> Result<Vec<RunRecord>>;
    /// Every run that has not ended, oldest first.
    async fn active_runs(&self) -> Result<Vec<RunRecord>>;
    async fn run_history(&self, id: RunId) -> Result<Vec<StateChangeRecord>>;
    /// Applies the change if the run is still in `change.from`, else `StateConflict`.
    /// With `fence_stack_until`, fences the run's stack until then in the same
    /// transaction (a later fence of the stack wins over an earlier one).
    async fn change_run(&self, change: &RunChange) -> Result<RunRecord>;
    /// The stacks fenced at `now` (`RunChange::fence_stack_until`), whose lock-taking
    /// runs must not start yet.
    async fn lock_fences(&self, now: Timestamp) -> Result<Vec<crate::LockFenceRecord>>;
    /// Lifts the stack's fence before its time (an administrator knows its holder
    /// stopped); returns the fence lifted, `None` when none was in force at `now`.
    async fn lift_lock_fence(
        &self,
        stack_id: StackId,
        now: Timestamp,
    ) -> Result<Option<crate::LockFenceRecord>>;
    /// Lifts the fence `run_id` left on its stack before its time, if `holder` is the
    /// launcher recorded as executing it (it reported that the execution ended); returns
    /// the fence lifted, `None` when no such fence was in force at `now`.
    async fn lift_lock_fence_of_run(
        &self,
        run_id: RunId,
        holder: LauncherId,
        now: Timestamp,
    ) -> Result<Option<crate::LockFenceRecord>>;
    /// Records the commit a run's plan checked out, with its author when the launcher
    /// said who it is (launchers before that did not).
    async fn set_run_commit(
        &self,
        id: RunId,
        sha: &str,
        message: &str,
        author: Option<&crate::CommitAuthorRecord>,
    ) -> Result<()>;
    /// Moves the run to the front of its pool's queue.
    async fn prioritize_run(&self, id: RunId, at: Timestamp) -> Result<RunRecord>;
    /// Records that a user asked to stop the run (the first request counts).
    async fn request_run_stop(&self, id: RunId, at: Timestamp) -> Result<RunRecord>;
    /// Hands a run waiting for a worker to an idle, undrained worker: both or neither.
    /// Returns whether it happened.
    async fn assign_run(&self, run_id: RunId, worker_id: WorkerId, now: Timestamp) -> Result<bool> {
        let made = self.assign_runs(&[(run_id, worker_id)], now).await?;
        Ok(made.first().copied().unwrap_or(false))
    }
    /// Makes each assignment as `assign_run` would, all in one transaction (`commit_pass`
    /// without promotions).
    async fn assign_runs(
        &self,
        assignments: &[(RunId, WorkerId)],
        now: Timestamp,
    ) -> Result<Vec<bool>> {
        Ok(self.commit_pass(&[], assignments, now).await?.assigned)
    }
    /// Moves the runs still `QUEUED` among these to `READY`, in one transaction; returns
    /// them as they are now (`commit_pass` without assignments).
    async fn promote_runs(&self, run_ids: &[RunId], at: Timestamp) -> Result<Vec<RunRecord>> {
        Ok(self.commit_pass(run_ids, &[], at).await?.promoted)
    }
    /// A scheduling pass's decision, in one transaction: moves the runs still `QUEUED`
    /// among `promotions` to `READY`, then makes each assignment as `assign_run` would (a
    /// run promoted here may be assigned here). A run or a worker offered again later in
    /// the batch is refused there (a scheduling decision never does so).
    async fn commit_pass(
        &self,
        promotions: &[RunId],
        assignments: &[(RunId, WorkerId)],
        at: Timestamp,
    ) -> Result<CommittedPass>;

    /// Returns once the database answers a query: whether this process can serve now.
    async fn ping(&self) -> Result<()>;

    /// Appends chunks in order; chunks already stored are skipped. Returns the next
    /// sequence number expected, or `LogGap` (after storing what came in order), or
    /// `LogSealed` once `seal_log` sealed the run's log. The run keeps at most about
    /// `max_bytes` of text: the first half (the head, chunks kept whole from chunk 0) and
    /// the newest chunks up to the other half (the tail); the chunks in between are cut
    /// (`log_cut`). The newest chunk is always kept, so the next number stays known.
    async fn append_logs(
        &self,
        run_id: RunId,
        chunks: &[(u64, String)],
        max_bytes: u64,
        now: Timestamp,
    ) -> Result<u64>;
    async fn read_logs(
        &self,
        run_id: RunId,
        from_seq: u64,
        limit: u32,
    ) -> Result<Vec<LogChunkRecord>>;
    /// What the per-run limit cut from the run's log so far, if anything.
    async fn log_cut(&self, run_id: RunId) -> Result<Option<LogCutRecord>>;
    /// Seals the run's log: from now on appends are refused (`LogSealed`). Waits for the
    /// appends under way, so that every chunk ever accepted is readable once this
    /// returns. Sealing again is not an error.
    async fn seal_log(&self, run_id: RunId, at: Timestamp) -> Result<()>;
    /// Runs that ended before `ended_before` whose log is not sealed yet, or is sealed
    /// but still has chunks here (its archive is not written yet), leaving out `skip`:
    /// what may move to the blob store. Oldest first.
    async fn runs_with_logs_to_archive(
        &self,
        ended_before: Timestamp,
        skip: &[RunId],
        limit: u32,
    ) -> Result<Vec<RunId>>;
    /// Removes the run's log chunks (once they are archived elsewhere).
    async fn delete_logs(&self, run_id: RunId) -> Result<()>;

    async fn replace_outputs(&self, run_id: RunId, outputs: &[OutputRecord]) -> Result<()>;
    async fn outputs(&self, run_id: RunId) -> Result<Vec<OutputRecord>>;

    /// Records (or replaces) the run's blob for `purpose` (`workspace`, `plan`).
    async fn put_run_blob(&self, run_id: RunId, purpose: &str, blob: &BlobRecord) -> Result<()>;
    /// Records the run's blob for `purpose` unless it has one already: returns whether
    /// this one was recorded. What a record must never replace (an archived log) uses it.
    async fn put_run_blob_once(
        &self,
        run_id: RunId,
        purpose: &str,
        blob: &BlobRecord,
    ) -> Result<bool>;
    async fn run_blob(&self, run_id: RunId, purpose: &str) -> Result<Option<BlobRecord>>;

    /// Appends a version of the stack's managed state, produced by `run_id`.
    async fn add_state_version(
        &self,
        stack_id: StackId,
        run_id: RunId,
        blob: &BlobRecord,
    ) -> Result<StateVersionRecord>;
    /// Appends a version of the stack's managed state that run `run_id` uploaded. In the
    /// same transaction as the append, it becomes the current version only if `fence`
    /// still holds (the run is in `fence.run_state` and holds the stack's lock under the
    /// stack's lock generation); otherwise, or without a fence, it is kept as an orphaned
    /// version. An upload the stack already has (the current version, or an orphaned
    /// one, from this run with this SHA-256) is returned as it is. Returns the version
    /// and whether it was added now.
    async fn add_run_state_version(
        &self,
        stack_id: StackId,
        run_id: RunId,
        fence: Option<crate::StateFence>,
        blob: &BlobRecord,
    ) -> Result<(StateVersionRecord, bool)>;
    /// The stack's newest managed state that is not orphaned.
    async fn current_state_version(&self, stack_id: StackId) -> Result<Option<StateVersionRecord>>;
    /// The stack's kept state versions, orphaned ones included, newest first.
    async fn list_state_versions(&self, stack_id: StackId) -> Result<Vec<StateVersionRecord>>;
    /// Makes version `to_seq` the stack's current state again by appending a version
    /// with its blob and producing run, recording the rollback and `by` (history is never
    /// rewritten). `NotFound` (kind "state version") when the stack keeps no version
    /// `to_seq` that is not orphaned (those are adopted). Serialized with the stack's other
    /// state-version writes, so a version being pruned is either restored first or found
    /// missing.
    async fn rollback_state_version(
        &self,
        stack_id: StackId,
        to_seq: u64,
        by: &str,
        at: Timestamp,
    ) -> Result<StateVersionRecord>;
    /// Makes the orphaned version `seq` the stack's current state by appending a version
    /// with its blob and producing run, recording the adoption and `by`, as
    /// `rollback_state_version` does. `NotFound` (kind "orphaned state version") when the
    /// stack has no orphaned version `seq`.
    async fn adopt_state_version(
        &self,
        stack_id: StackId,
        seq: u64,
        by: &str,
        at: Timestamp,
    ) -> Result<StateVersionRecord>;
    /// Deletes every version of the stack but the newest `keep` that are not orphaned
    /// (orphaned versions are never deleted here), and returns the keys of
    /// the blobs that no version names any more. Returns once the deletion is on disk:
    /// the caller deletes those blobs afterwards, so a crash in between leaves at worst a
    /// blob nothing names, never a version whose blob is gone.
    async fn prune_state_versions(&self, stack_id: StackId, keep: u32) -> Result<Vec<String>>;

    /// Adds or replaces a dependency (the caller has checked it closes no cycle).
    async fn put_dependency(&self, dependency: &DependencyRecord) -> Result<()>;
    /// Removes a dependency; returns whether there was one.
    async fn delete_dependency(&self, downstream: StackId, upstream: StackId) -> Result<bool>;
    async fn list_dependencies(&self) -> Result<Vec<DependencyRecord>>;

    /// Claims this interval's turn of the periodic job `name`: true for exactly one
    /// caller per `every`, however many processes share the store.
    async fn claim_periodic(
        &self,
        name: &str,
        every: std::time::Duration,
        now: Timestamp,
    ) -> Result<bool>;

    /// Claims up to `limit` pending effects that are due by `now` and not claimed, or
    /// whose claim ran out: each for `lease`, by exactly one caller however many
    /// processes share the store. Oldest due first.
    async fn claim_effects(
        &self,
        now: Timestamp,
        lease: std::time::Duration,
        limit: u32,
    ) -> Result<Vec<crate::PendingEffectRecord>>;
    /// Removes an effect that was carried out.
    async fn complete_effect(&self, effect: &crate::Effect) -> Result<()>;
    /// Releases the claim on an effect whose try failed with `error`: due again at
    /// `due_at`.
    async fn postpone_effect(
        &self,
        effect: &crate::Effect,
        due_at: Timestamp,
        error: &str,
    ) -> Result<()>;
    /// Every effect not carried out yet, oldest first.
    async fn pending_effects(&self) -> Result<Vec<crate::PendingEffectRecord>>;
    /// Records effects that follow no run change (a duplicate blob to delete), durably.
    async fn add_effects(&self, effects: &[crate::Effect], at: Timestamp) -> Result<()>;

    /// Registers a repository's webhook; `AlreadyExists` when its provider and repository
    /// key have one.
    async fn insert_webhook(&self, webhook: &crate::WebhookRecord) -> Result<()>;
    /// Every webhook, oldest first.
    async fn list_webhooks(&self) -> Result<Vec<crate::WebhookRecord>>;
    /// Removes a webhook; whether there was one.
    async fn delete_webhook(&self, id: &str) -> Result<bool>;
    /// Adds a delivery to the log (and forgets those older than `DELIVERY_RETENTION`);
    /// `false` when its digest was recorded before, whose record stays.
    async fn record_delivery(&self, delivery: &crate::DeliveryRecord) -> Result<bool>;
    async fn get_delivery(
        &self,
        provider: &str,
        digest: &str,
    ) -> Result<Option<crate::DeliveryRecord>>;
    /// The newest deliveries first.
    async fn list_deliveries(&self, limit: u32) -> Result<Vec<crate::DeliveryRecord>>;

    /// Adds a stack's schedule.
    async fn insert_schedule(&self, schedule: &crate::ScheduleRecord) -> Result<()>;
    /// The schedules of one stack, or of every stack; oldest first.
    async fn list_schedules(&self, stack_id: Option<StackId>)
    -> Result<Vec<crate::ScheduleRecord>>;
    /// Schedules due at `now`, the longest due first.
    async fn due_schedules(&self, now: Timestamp, limit: u32)
    -> Result<Vec<crate::ScheduleRecord>>;
    /// Records that the firing at `fired_at` was taken, with `outcome`, and that the
    /// schedule fires next at `next_fire_at` — only while it is still due at `fired_at`:
    /// `false` when another process took that firing first (or the schedule is gone).
    async fn advance_schedule(
        &self,
        id: &str,
        fired_at: Timestamp,
        next_fire_at: Timestamp,
        outcome: &str,
    ) -> Result<bool>;
    /// Removes a schedule; whether there was one.
    async fn delete_schedule(&self, id: &str) -> Result<bool>;
    /// Marks a stack drifted, as `drift.run_id` found it; a stack drifted already keeps
    /// when it was first found.
    async fn mark_drifted(&self, drift: &crate::DriftRecord) -> Result<()>;
    /// Marks a stack not drifted; whether it was.
    async fn clear_drift(&self, stack_id: StackId) -> Result<bool>;
    /// The drifted stacks, the longest drifted first.
    async fn drifted_stacks(&self) -> Result<Vec<crate::DriftRecord>>;

    /// Whether several server processes may share this store (and hear each other's
    /// signals). An embedded engine belongs to one process.
    fn shared(&self) -> bool {
        false
    }
    /// Sends `message` to every process sharing the store, this one included.
    async fn publish_signal(&self, _message: &str) -> Result<()> {
        Ok(())
    }
    /// What the processes sharing the store publish; `None` when the store has only this
    /// process.
    async fn signals(&self) -> Result<Option<SignalStream>> {
        Ok(None)
    }
}
