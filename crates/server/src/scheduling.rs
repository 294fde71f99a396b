//! The scheduling loop: on every wake-up it takes a snapshot of the world, asks the pure
//! scheduler what to do, and commits each promotion and assignment atomically (an
//! assignment that lost a race is simply dropped and retried on the next pass).

use std::collections::HashMap;
use std::time::Duration;

use gantry_domain::scheduler::{self, Decision, RunSnapshot, WaitReason, WorkerSnapshot};
use gantry_domain::{RunEvent, RunId};
use gantry_store::{RunRecord, WorkerRecord};

use crate::error::ApiError;
use crate::lifecycle;
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
    let runs = state.store.active_runs().await?;
    let workers = state.store.list_workers(None).await?;
    let decision = decide(&runs, &workers);
    let by_id: HashMap<RunId, &RunRecord> = runs.iter().map(|run| (run.id, run)).collect();
    for run_id in &decision.promotions {
        if let Some(run) = by_id.get(run_id) {
            match lifecycle::apply(state, run, &RunEvent::Promote, lifecycle::Details::default())
                .await
            {
                Ok(_) => {}
                Err(error) if lifecycle::lost_race(&error) => {}
                Err(error) => return Err(error),
            }
        }
    }
    let launchers: HashMap<_, _> =
        workers.iter().map(|worker| (worker.id, worker.launcher_id)).collect();
    for assignment in &decision.assignments {
        if state.store.assign_run(assignment.run_id, assignment.worker_id, now()).await? {
            tracing::info!(run = %assignment.run_id, worker = %assignment.worker_id, "run assigned");
            state.events.run_changed(assignment.run_id);
            if let Some(launcher_id) = launchers.get(&assignment.worker_id) {
                state.events.wake_launcher(*launcher_id);
            }
        }
    }
    Ok(())
}

/// The pure scheduler's decision over store records.
pub(crate) fn decide(runs: &[RunRecord], workers: &[WorkerRecord]) -> Decision {
    let runs: Vec<RunSnapshot> = runs
        .iter()
        .map(|run| RunSnapshot {
            id: run.id,
            stack_id: run.stack_id,
            pool_id: run.pool_id,
            run_type: run.run_type,
            state: run.state,
            worker_id: run.worker_id,
            prioritized: run.prioritized,
            queued_at: run.created_at,
        })
        .collect();
    let workers: Vec<WorkerSnapshot> = workers
        .iter()
        .map(|worker| WorkerSnapshot {
            id: worker.id,
            pool_id: worker.pool_id,
            drained: worker.drained,
            busy: worker.current_run_id.is_some(),
        })
        .collect();
    scheduler::schedule(&runs, &workers)
}

/// Why each waiting run waits, as the scheduler sees it now.
pub(crate) fn waiting_reasons(
    runs: &[RunRecord],
    workers: &[WorkerRecord],
) -> HashMap<RunId, WaitReason> {
    decide(runs, workers)
        .waiting
        .into_iter()
        .map(|waiting| (waiting.run_id, waiting.reason))
        .collect()
}
