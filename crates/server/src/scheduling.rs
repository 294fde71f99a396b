//! The scheduling loop: on every wake-up it takes a snapshot of the world, asks the pure
//! scheduler what to do, and commits the promotions and the assignments together in one
//! transaction (an assignment that lost a race is dropped and retried on the next pass).

use std::collections::HashMap;
use std::time::Duration;

use gantry_domain::dependencies::DependencyGraph;
use gantry_domain::scheduler::{
    self, Decision, LockFence, PoolWorkers, RunSnapshot, WaitReason, WorkerAvailability,
};
use gantry_domain::{LauncherId, PoolId, RunId, RunState, StackId, WorkerId};
use gantry_store::{RunRecord, WorkerCountsRecord};

use crate::error::ApiError;
use crate::state::{AppState, now};

/// A pass also runs this often without a wake-up: a safety net, not the dispatch path.
const SAFETY_INTERVAL: Duration = Duration::from_secs(5);

pub(crate) async fn run_scheduler(state: AppState) {
    loop {
        tokio::select! {
            () = state.events.scheduling_requested() => {}
            () = tokio::time::sleep(SAFETY_INTERVAL) => {}
            () = state.shutdown.cancelled() => return,
        }
        if let Err(error) = schedule_once(&state).await {
            tracing::warn!(%error, "scheduling pass failed; retrying on the next wake-up");
        }
    }
}

/// One scheduling pass.
pub(crate) async fn schedule_once(state: &AppState) -> Result<(), ApiError> {
    let requested_at = state.events.take_scheduling_request();
    let started = std::time::Instant::now();
    let Pass { decision, launchers } = pass(state).await?;
    let decided = started.elapsed();
    state
        .waiting
        .replace(decision.waiting.iter().map(|waiting| (waiting.run_id, waiting.reason)).collect());
    let pairs: Vec<(RunId, WorkerId)> = decision
        .assignments
        .iter()
        .map(|assignment| (assignment.run_id, assignment.worker_id))
        .collect();
    // Noted before the commit: a launcher polling at that moment may receive its
    // assignment before this pass gets to note it.
    for (run_id, _) in &pairs {
        state.dispatch_metrics.assigned(*run_id, requested_at);
    }
    // Promotions and assignments in one transaction: a pass commits once, however many
    // runs it moves (and not at all when it moves none).
    let committed = match state.store.commit_pass(&decision.promotions, &pairs, now()).await {
        Ok(committed) => committed,
        Err(error) => {
            for (run_id, _) in &pairs {
                state.dispatch_metrics.not_assigned(*run_id);
            }
            return Err(error.into());
        }
    };
    let lost_race =
        committed.assigned.contains(&false) || committed.promoted.len() < decision.promotions.len();
    for run in committed.promoted {
        tracing::info!(run = %run.id, from = %RunState::Queued, to = %run.state, "run state changed");
        state.events.run_changed(run.id);
    }
    if lost_race {
        // The run was stopped, the worker drained, another server process held or
        // assigned it: decide again from what the store says now.
        state.events.request_scheduling();
    }
    for ((run_id, worker_id), made) in pairs.into_iter().zip(committed.assigned) {
        if !made {
            state.dispatch_metrics.not_assigned(run_id);
            continue;
        }
        tracing::info!(run = %run_id, worker = %worker_id, "run assigned");
        state.events.run_changed(run_id);
        if let Some(launcher_id) = launchers.get(&worker_id) {
            state.events.wake_launcher(*launcher_id);
        }
    }
    tracing::debug!(
        promoted = decision.promotions.len(),
        assigned = decision.assignments.len(),
        waiting = decision.waiting.len(),
        decided_ms = decided.as_secs_f64() * 1000.0,
        total_ms = started.elapsed().as_secs_f64() * 1000.0,
        "scheduling pass"
    );
    Ok(())
}

/// What a scheduling pass decides over the world as it is now.
pub(crate) struct Pass {
    pub(crate) decision: Decision,
    /// The launcher of each worker the decision hands a run to.
    launchers: HashMap<WorkerId, LauncherId>,
}

/// Decides a pass. Its cost does not grow with the number of idle workers: for each pool
/// with runs to place it loads only as many idle workers as it has runs, and the per-pool
/// counts only when some pool has too few (they only explain why a run waits). A pass with
/// nothing to place reads the active runs and nothing else; the dependencies are read only
/// when a run that takes its stack's lock waits in the queue.
pub(crate) async fn pass(state: &AppState) -> Result<Pass, ApiError> {
    let runs = state.store.active_runs().await?;
    // Read after the runs: a run failed with its stack fenced (one transaction) is either
    // still active above, holding the lock, or ended with its fence visible here.
    let fences = lock_fences(state, &runs).await?;
    let snapshots: Vec<RunSnapshot> = runs.iter().map(snapshot).collect();
    let mut workers = WorkerAvailability::default();
    let mut launchers = HashMap::new();
    let mut short = false;
    let mut demand: Vec<(PoolId, usize)> =
        scheduler::worker_demand(&snapshots).into_iter().collect();
    demand.sort();
    let mut idle_by_pool = Vec::with_capacity(demand.len());
    for (pool_id, wanted) in demand {
        let limit = u32::try_from(wanted).unwrap_or(u32::MAX);
        let idle = state.store.idle_workers(pool_id, limit).await?;
        launchers.extend(idle.iter().map(|worker| (worker.id, worker.launcher_id)));
        short |= idle.len() < wanted;
        idle_by_pool.push((pool_id, idle.iter().map(|worker| worker.id).collect::<Vec<_>>()));
    }
    let counts: HashMap<PoolId, WorkerCountsRecord> = match short {
        true => state.store.worker_counts().await?.into_iter().map(|c| (c.pool_id, c)).collect(),
        false => HashMap::new(),
    };
    for (pool_id, idle) in idle_by_pool {
        // Without counts (no pool is short, or this pool's workers left since they were
        // listed), the idle workers are the ones known to be connected: with enough of
        // them, no run waits for a reason the counts would give.
        let (connected, drained) = match counts.get(&pool_id) {
            Some(counts) => (
                usize::try_from(counts.connected).unwrap_or(usize::MAX),
                usize::try_from(counts.drained).unwrap_or(usize::MAX),
            ),
            None => (idle.len(), 0),
        };
        workers.insert(pool_id, PoolWorkers { idle, connected, drained });
    }
    let queued_lock_takers = snapshots
        .iter()
        .any(|run| run.state == RunState::Queued && run.run_type.takes_stack_lock());
    let graph = match queued_lock_takers {
        true => dependency_graph(state).await?,
        false => DependencyGraph::default(),
    };
    let decision = scheduler::schedule_fenced(&snapshots, &workers, &graph, &fences);
    // A run whose end is still to reach its dependents holds them back.
    let decision = crate::effects::hold_back(state, decision, &runs, &graph).await?;
    Ok(Pass { decision, launchers })
}

/// The fences of the stacks with a lock-taking run in the queue, in force now; none read
/// when no such run waits.
async fn lock_fences(
    state: &AppState,
    runs: &[RunRecord],
) -> Result<HashMap<StackId, LockFence>, ApiError> {
    let waiting: std::collections::HashSet<StackId> = runs
        .iter()
        .filter(|run| run.state == RunState::Queued && run.run_type.takes_stack_lock())
        .map(|run| run.stack_id)
        .collect();
    if waiting.is_empty() {
        return Ok(HashMap::new());
    }
    Ok(state
        .store
        .lock_fences(now())
        .await?
        .into_iter()
        .filter(|fence| waiting.contains(&fence.stack_id))
        .map(|fence| (fence.stack_id, LockFence { run: fence.run_id, until: fence.until }))
        .collect())
}

/// The dependency graph of all stacks.
pub(crate) async fn dependency_graph(state: &AppState) -> Result<DependencyGraph, ApiError> {
    let edges = state.store.list_dependencies().await?;
    Ok(DependencyGraph::new(edges.into_iter().map(|edge| (edge.downstream, edge.upstream))))
}

fn snapshot(run: &RunRecord) -> RunSnapshot {
    RunSnapshot {
        id: run.id,
        stack_id: run.stack_id,
        pool_id: run.pool_id,
        run_type: run.run_type,
        state: run.state,
        worker_id: run.worker_id,
        prioritized: run.prioritized,
        drift: crate::schedules::is_drift_check(&run.triggered_by),
        queued_at: run.created_at,
    }
}

/// Why each waiting run waits, as the scheduler sees it now, in queue order.
pub(crate) async fn waiting_reasons(
    state: &AppState,
) -> Result<Vec<(RunId, WaitReason)>, ApiError> {
    let Pass { decision, .. } = pass(state).await?;
    Ok(decision.waiting.into_iter().map(|waiting| (waiting.run_id, waiting.reason)).collect())
}
