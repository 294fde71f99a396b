//! Store records as the API shows them: secrets hidden, counts and reasons computed.

use std::collections::HashMap;

use gantry_domain::scheduler::WaitReason;
use gantry_domain::{PoolId, RunId, WorkerStatus};
use gantry_proto::api;
use gantry_store::{
    OutputRecord, PoolRecord, RunRecord, StackRecord, StateChangeRecord, StateVersionRecord,
    WorkerRecord,
};

use crate::error::ApiError;
use crate::scheduling::waiting_reasons;
use crate::state::AppState;

pub(crate) fn pool(
    record: &PoolRecord,
    workers: &[WorkerRecord],
    runs: &[RunRecord],
    stacks: &[StackRecord],
) -> api::Pool {
    let pool_workers: Vec<_> = workers.iter().filter(|w| w.pool_id == record.id).collect();
    let count = |predicate: &dyn Fn(&&WorkerRecord) -> bool| {
        pool_workers.iter().filter(|w| predicate(w)).count() as u32
    };
    api::Pool {
        id: record.id,
        name: record.name.clone(),
        kind: match record.kind {
            gantry_domain::PoolKind::Private => api::PoolKind::Private,
            gantry_domain::PoolKind::Shared => api::PoolKind::Shared,
        },
        description: record.description.clone(),
        labels: record.labels.clone(),
        certificate_fingerprint: record.certificate_fingerprint.clone(),
        key_algorithm: record.key_algorithm.clone(),
        workers: pool_workers.len() as u32,
        busy_workers: count(&|w| w.current_run_id.is_some()),
        drained_workers: count(&|w| w.drained),
        pending_runs: runs
            .iter()
            .filter(|run| run.pool_id == record.id && run.worker_id.is_none())
            .filter(|run| run.state == gantry_domain::RunState::Queued || run.state.wants_worker())
            .count() as u32,
        used_by: stacks
            .iter()
            .filter(|stack| stack.pool_id == record.id)
            .map(|stack| stack.name.clone())
            .collect(),
        created_at: record.created_at,
    }
}

/// The workers users may see: none of a shared pool, which the server runs itself.
pub(crate) fn visible_workers(pool: &PoolRecord, workers: &[WorkerRecord]) -> Vec<api::Worker> {
    match pool.kind {
        gantry_domain::PoolKind::Shared => Vec::new(),
        gantry_domain::PoolKind::Private => workers.iter().map(worker).collect(),
    }
}

pub(crate) fn worker(record: &WorkerRecord) -> api::Worker {
    api::Worker {
        id: record.id,
        pool_id: record.pool_id,
        status: WorkerStatus::of(record.drained, record.current_run_id.is_some()),
        busy: record.current_run_id.is_some(),
        drained: record.drained,
        current_run_id: record.current_run_id,
        metadata: record.metadata.clone(),
        launcher_version: record.launcher_version.clone(),
        hostname: record.hostname.clone(),
        created_at: record.created_at,
        last_seen_at: record.last_seen_at,
    }
}

pub(crate) fn environment(record: &StackRecord) -> Vec<api::EnvironmentVariable> {
    record
        .environment
        .iter()
        .map(|variable| api::EnvironmentVariable {
            name: variable.name.clone(),
            value: (!variable.secret).then(|| variable.value.clone()),
            secret: variable.secret,
            // A secret's value is kept sealed to the pool: `gantry stack secrets reseal`
            // opens it with the old pool key.
            sealed_value: variable.secret.then(|| variable.value.clone()),
        })
        .collect()
}

pub(crate) fn stack(record: &StackRecord, pool_name: &str) -> api::Stack {
    api::Stack {
        id: record.id,
        name: record.name.clone(),
        repository: record.repository.clone(),
        branch: record.branch.clone(),
        project_root: record.project_root.clone(),
        pool_id: record.pool_id,
        pool_name: pool_name.to_owned(),
        tool: record.tool,
        runner_image: record.runner_image.clone(),
        autodeploy: record.autodeploy,
        managed_state: record.managed_state,
        share_sensitive_outputs: record.share_sensitive_outputs,
        environment: environment(record),
        description: record.description.clone(),
        labels: record.labels.clone(),
        trigger_paths: record.trigger_paths.clone(),
        created_at: record.created_at,
        lock_fence: None,
        drift: None,
    }
}

pub(crate) fn output(record: &OutputRecord) -> api::Output {
    api::Output {
        name: record.name.clone(),
        value: if record.sensitive {
            None
        } else {
            record.value_json.as_deref().and_then(|json| serde_json::from_str(json).ok())
        },
        sensitive: record.sensitive,
    }
}

/// A kept state version; `current` when it is the one the next run starts from.
pub(crate) fn state_version(record: &StateVersionRecord, current: bool) -> api::StateVersion {
    api::StateVersion {
        version: record.seq,
        current,
        run_id: record.run_id,
        sha256: record.blob.sha256.clone(),
        size: record.blob.size,
        created_at: record.blob.created_at,
        rollback_of: record.rollback.as_ref().map(|rollback| rollback.of_seq),
        rolled_back_by: record.rollback.as_ref().map(|rollback| rollback.by.clone()),
        orphaned: record.orphaned,
        adopted_from: record.adoption.as_ref().map(|adoption| adoption.of_seq),
        adopted_by: record.adoption.as_ref().map(|adoption| adoption.by.clone()),
    }
}

/// A sentence saying why a run waits; `stack_name` names stacks for dependencies.
pub(crate) fn wait_reason_text(
    reason: WaitReason,
    pool_name: &str,
    stack_name: impl Fn(gantry_domain::StackId) -> String,
) -> String {
    match reason {
        WaitReason::StackLocked { holder } => {
            format!("waiting for run {holder} to end: it holds the stack's lock")
        }
        WaitReason::StackFenced { run, until } => format!(
            "waiting for the stack's lock: fenced until {} (the worker of run {run} may still be stopping)",
            gantry_proto::format_timestamp(until)
        ),
        WaitReason::Dependency { stack, run } => {
            format!("waiting on dependency {}: its run {run} has not ended", stack_name(stack))
        }
        WaitReason::NoIdleWorker => {
            format!("waiting for a worker: every worker of pool {pool_name} is busy")
        }
        WaitReason::AllWorkersDrained => {
            format!("waiting for a worker: every worker of pool {pool_name} is drained")
        }
        WaitReason::NoWorkers => {
            format!("waiting for a worker: no worker of pool {pool_name} is connected")
        }
    }
}

/// Builds full run views, loading what they need in a few queries.
pub(crate) struct RunViews {
    stacks: HashMap<gantry_domain::StackId, StackRecord>,
    pools: HashMap<PoolId, String>,
    /// Why each waiting run waits, in queue order.
    pub(crate) waiting: Vec<(RunId, WaitReason)>,
    reasons: HashMap<RunId, WaitReason>,
}

impl RunViews {
    pub(crate) async fn load(state: &AppState) -> Result<Self, ApiError> {
        let stacks = state.store.list_stacks().await?.into_iter().map(|s| (s.id, s)).collect();
        let pools = state.store.list_pools().await?.into_iter().map(|p| (p.id, p.name)).collect();
        let waiting = waiting_reasons(state).await?;
        let reasons = waiting.iter().copied().collect();
        Ok(Self { stacks, pools, waiting, reasons })
    }

    /// What one run's view needs, and nothing more. Its wait reason is the last
    /// scheduling pass's: a run just queued has none until the pass that follows.
    async fn load_for(state: &AppState, record: &RunRecord) -> Result<Self, ApiError> {
        let unstarted = record.worker_id.is_none()
            && (record.state == gantry_domain::RunState::Queued || record.state.wants_worker());
        let waiting: Vec<(RunId, WaitReason)> = match unstarted {
            true => state.waiting.reason(record.id).map(|reason| (record.id, reason)),
            false => None,
        }
        .into_iter()
        .collect();
        let mut stack_ids = vec![record.stack_id];
        if let Some((_, WaitReason::Dependency { stack, .. })) = waiting.first() {
            stack_ids.push(*stack);
        }
        let mut stacks = HashMap::new();
        for stack_id in stack_ids {
            if let Some(stack) = state.store.get_stack(stack_id).await? {
                stacks.insert(stack.id, stack);
            }
        }
        let pools = state.store.get_pool(record.pool_id).await?.map(|p| (p.id, p.name));
        let reasons = waiting.iter().copied().collect();
        Ok(Self { stacks, pools: pools.into_iter().collect(), waiting, reasons })
    }

    fn stack_name(&self, stack: gantry_domain::StackId) -> String {
        self.stacks.get(&stack).map_or_else(|| stack.to_string(), |stack| stack.name.clone())
    }

    pub(crate) async fn run(
        &self,
        state: &AppState,
        record: &RunRecord,
    ) -> Result<api::Run, ApiError> {
        let (record, history) = with_history(state, record).await?;
        let outputs = state.store.outputs(record.id).await?;
        Ok(self.assemble(&record, &history, &outputs))
    }

    fn assemble(
        &self,
        record: &RunRecord,
        history: &[StateChangeRecord],
        outputs: &[OutputRecord],
    ) -> api::Run {
        let pool_name = self.pools.get(&record.pool_id).map(String::as_str).unwrap_or("?");
        let waiting_reason = match (record.worker_id, self.reasons.get(&record.id)) {
            (_, Some(reason)) => {
                Some(wait_reason_text(*reason, pool_name, |stack| self.stack_name(stack)))
            }
            (Some(worker), None) if record.state.wants_worker() => {
                Some(format!("handed to worker {worker}: waiting for its launcher to start it"))
            }
            _ => None,
        };
        api::Run {
            id: record.id,
            stack_id: record.stack_id,
            stack_name: self
                .stacks
                .get(&record.stack_id)
                .map(|s| s.name.clone())
                .unwrap_or_default(),
            pool_id: record.pool_id,
            run_type: record.run_type,
            state: record.state,
            branch: record.branch.clone(),
            commit: record.commit_sha.clone(),
            commit_message: record.commit_message.clone(),
            autodeploy: record.autodeploy,
            command: record.command.clone(),
            prioritized: record.prioritized,
            stop_requested: record.stop_requested_at.is_some() && !record.state.is_terminal(),
            triggered_by: record.triggered_by.clone(),
            worker_id: record.worker_id,
            has_changes: record.has_changes,
            failure: record.failure.clone(),
            waiting_reason,
            history: history
                .iter()
                .map(|change| api::StateChange { state: change.state, at: change.at })
                .collect(),
            outputs: outputs.iter().map(output).collect(),
            created_at: record.created_at,
            updated_at: record.updated_at,
        }
    }
}

/// How many times a run is read again when its history moved on meanwhile.
const HISTORY_REREADS: usize = 3;

/// The run with its history, as of one moment. The record comes first and the history
/// after, so a change between the two shows in the history only: a page would show a run
/// APPLYING, with its stop button, above a timeline that ends FINISHED. The history moves
/// in the same statement as the run's state, so when it ends in another state than the
/// record's, the record is read again, until they agree.
async fn with_history(
    state: &AppState,
    record: &RunRecord,
) -> Result<(RunRecord, Vec<StateChangeRecord>), ApiError> {
    let mut record = record.clone();
    let mut history = state.store.run_history(record.id).await?;
    for _ in 0..HISTORY_REREADS {
        let ahead = history.last().is_some_and(|last| last.state != record.state);
        if !ahead {
            break;
        }
        let Some(newer) = state.store.get_run(record.id).await? else { break };
        record = newer;
        history = state.store.run_history(record.id).await?;
    }
    Ok((record, history))
}

/// The view of a run just queued, with its stack and pool: its history is its first state
/// and it has no outputs.
pub(crate) fn queued_run(
    record: &RunRecord,
    stack: StackRecord,
    pool: Option<PoolRecord>,
) -> api::Run {
    let views = RunViews {
        stacks: HashMap::from([(stack.id, stack)]),
        pools: pool.into_iter().map(|pool| (pool.id, pool.name)).collect(),
        waiting: Vec::new(),
        reasons: HashMap::new(),
    };
    let first = StateChangeRecord { state: record.state, at: record.created_at };
    views.assemble(record, &[first], &[])
}

/// One run's full view.
pub(crate) async fn run(state: &AppState, record: &RunRecord) -> Result<api::Run, ApiError> {
    RunViews::load_for(state, record).await?.run(state, record).await
}
