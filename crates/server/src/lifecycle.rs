//! Run lifecycle operations shared by the REST API, the agent plane and the background
//! tasks: the domain decides each transition, the store applies it atomically, and the
//! right parties are woken.

use gantry_domain::{RunContext, RunEvent, RunId, RunState, RunType, Timestamp, transition};
use gantry_store::{RunChange, RunRecord, StackRecord, StoreError};

use crate::error::ApiError;
use crate::state::{AppState, now};

/// Longest failure message kept; tool output belongs in the log, not here.
const MAX_FAILURE_LENGTH: usize = 4096;

/// Extra facts recorded with a transition.
#[derive(Debug, Default)]
pub(crate) struct Details {
    pub failure: Option<String>,
    pub has_changes: Option<bool>,
    /// The run's worker may go on executing it until then: a lock-taking run leaves its
    /// stack fenced until then.
    pub fence_stack_until: Option<Timestamp>,
}

/// Queues a new run of `stack`.
pub(crate) async fn trigger(
    state: &AppState,
    stack: &StackRecord,
    run_type: RunType,
    commit: Option<String>,
    command: Option<String>,
    triggered_by: &str,
) -> Result<RunRecord, ApiError> {
    let on = TriggerOn { run_type, branch: stack.branch.clone(), commit };
    trigger_on(state, stack, on, command, triggered_by).await
}

/// What a run is of: its type, the branch it is checked out from (the stack's, or a pull
/// request's head for its proposed runs) and the commit, when one is named.
#[derive(Debug, Clone)]
pub(crate) struct TriggerOn {
    pub(crate) run_type: RunType,
    pub(crate) branch: String,
    pub(crate) commit: Option<String>,
}

/// Queues a run of `stack` on `on.branch`: a newer commit of a proposed run on the same
/// branch stops the older ones.
pub(crate) async fn trigger_on(
    state: &AppState,
    stack: &StackRecord,
    on: TriggerOn,
    command: Option<String>,
    triggered_by: &str,
) -> Result<RunRecord, ApiError> {
    let TriggerOn { run_type, branch, commit } = on;
    let at = now();
    let run = RunRecord {
        id: RunId::generate(),
        stack_id: stack.id,
        pool_id: stack.pool_id,
        run_type,
        state: RunState::Queued,
        branch,
        commit_sha: commit,
        commit_message: None,
        autodeploy: stack.autodeploy,
        worker_id: None,
        prioritized: false,
        has_changes: None,
        failure: None,
        triggered_by: triggered_by.to_owned(),
        command,
        stop_requested_at: None,
        created_at: at,
        updated_at: at,
        lock_generation: None,
    };
    if run_type == RunType::Proposed
        && let Some(commit) = &run.commit_sha
    {
        for older in state.store.active_runs().await? {
            let superseded = older.stack_id == stack.id
                && older.run_type == RunType::Proposed
                && older.branch == run.branch
                && older.commit_sha.as_ref().is_some_and(|sha| sha != commit);
            if superseded {
                tracing::info!(run = %older.id, newer = %run.id, "a newer commit supersedes this proposed run");
                stop_as_it_is_now(state, older).await?;
            }
        }
    }
    // The pass starts as soon as the run can be read; the caller hears back once it is
    // on disk.
    let queued = || {
        state.events.run_changed(run.id);
        state.events.request_scheduling();
    };
    state.store.insert_run_visible_first(&run, &queued).await?;
    tracing::info!(run = %run.id, stack = %stack.name, run_type = %run_type, "run queued");
    Ok(run)
}

/// Applies `event` to the run as the domain allows. The worker is released whenever the
/// run no longer executes on it.
pub(crate) async fn apply(
    state: &AppState,
    run: &RunRecord,
    event: &RunEvent,
    details: Details,
) -> Result<RunRecord, ApiError> {
    let context = RunContext { run_type: run.run_type, autodeploy: run.autodeploy };
    let to = transition(run.state, context, event)?;
    let mut change = RunChange::new(run.id, run.state, to, now());
    if to.is_terminal() {
        crate::effects::record_end(run, to, &mut change);
    }
    change.release_worker = run.worker_id.is_some() && !to.occupies_worker();
    change.failure = details.failure.map(|message| truncate(&message));
    change.has_changes = details.has_changes;
    change.fence_stack_until =
        details.fence_stack_until.filter(|_| run.run_type.takes_stack_lock());
    // Read before the change releases the worker: its launcher's word that the execution
    // ended is what may lift the fence early.
    if change.fence_stack_until.is_some()
        && let Some(worker_id) = run.worker_id
    {
        change.fence_holder =
            state.store.get_worker(worker_id).await?.map(|worker| worker.launcher_id);
    }
    commit(state, change).await
}

/// Fails a run that has not ended, for a reason the user will read.
pub(crate) async fn fail(
    state: &AppState,
    run: &RunRecord,
    reason: &str,
) -> Result<RunRecord, ApiError> {
    fail_until(state, run, reason, None).await
}

/// Fails a run whose worker may go on executing it until `fenced_until` (its launcher
/// was lost, or it is failed under a live one): a run that holds its stack's lock leaves
/// the stack fenced until then, so the next lock-taking run cannot overlap with it.
pub(crate) async fn fail_fencing(
    state: &AppState,
    run: &RunRecord,
    reason: &str,
    fenced_until: Timestamp,
) -> Result<RunRecord, ApiError> {
    fail_until(state, run, reason, Some(fenced_until)).await
}

async fn fail_until(
    state: &AppState,
    run: &RunRecord,
    reason: &str,
    fence_stack_until: Option<Timestamp>,
) -> Result<RunRecord, ApiError> {
    tracing::warn!(run = %run.id, reason, "run failed");
    let failure = Some(reason.to_owned());
    apply(state, run, &RunEvent::Fail, Details { failure, fence_stack_until, ..Details::default() })
        .await
}

/// Stops a run: one that has not started is canceled at once; one executing gets a stop
/// request, which its launcher carries out (signal, grace period, kill) before reporting
/// it STOPPED. A plan waiting for confirmation is discarded instead.
pub(crate) async fn stop(state: &AppState, run: &RunRecord) -> Result<RunRecord, ApiError> {
    if run.state == RunState::Unconfirmed {
        return Err(ApiError::invalid(format!(
            "run {} is not executing: it waits for confirmation (discard it instead)",
            run.id
        )));
    }
    if run.state.occupies_worker() {
        let requested = state.store.request_run_stop(run.id, now()).await?;
        tracing::info!(run = %run.id, "stop requested");
        if let Some(worker) = run.worker_id
            && let Some(worker) = state.store.get_worker(worker).await?
        {
            state.events.wake_launcher(worker.launcher_id);
        }
        state.events.run_changed(run.id);
        return Ok(requested);
    }
    apply(state, run, &RunEvent::Cancel, Details::default()).await
}

/// How many times a stop is tried again on a run that changed under it.
const STOP_RETRIES: usize = 3;

/// Stops the run in whatever state it has reached: a scheduling pass may promote or
/// assign it between the read that found it and the stop, and the stop then applies to
/// the run as it is now. A run that ended meanwhile is left as it ended.
pub(crate) async fn stop_as_it_is_now(
    state: &AppState,
    mut run: RunRecord,
) -> Result<(), ApiError> {
    for _ in 0..STOP_RETRIES {
        match stop(state, &run).await {
            Ok(_) => return Ok(()),
            Err(error) if lost_race(&error) => match state.store.get_run(run.id).await? {
                Some(now) if !now.state.is_terminal() => run = now,
                _ => return Ok(()),
            },
            Err(error) => return Err(error),
        }
    }
    Err(ApiError::Internal(format!("run {} kept changing while it was being stopped", run.id)))
}

/// Takes a run that was handed to a worker but never acknowledged back to the queue.
pub(crate) async fn unassign(state: &AppState, run: &RunRecord) -> Result<RunRecord, ApiError> {
    let mut change = RunChange::new(run.id, run.state, run.state, now());
    change.release_worker = true;
    commit(state, change).await
}

async fn commit(state: &AppState, change: RunChange) -> Result<RunRecord, ApiError> {
    let updated = state.store.change_run(&change).await?;
    if change.from != change.to {
        tracing::info!(run = %updated.id, from = %change.from, to = %change.to, "run state changed");
    }
    state.events.run_changed(updated.id);
    if !change.effects.is_empty() || !change.release_blobs.is_empty() {
        // Recorded with the change; carried out by the effects loop, which the scheduler
        // waits for where it matters (`effects::hold_back`).
        state.events.wake_effects();
    }
    if change.release_worker || change.to.is_terminal() || change.to.wants_worker() {
        state.events.request_scheduling();
    }
    Ok(updated)
}

/// Whether a store error only says that someone else changed the run first.
pub(crate) fn lost_race(error: &ApiError) -> bool {
    matches!(error, ApiError::Store(StoreError::StateConflict { .. }))
}

fn truncate(message: &str) -> String {
    if message.len() <= MAX_FAILURE_LENGTH {
        return message.to_owned();
    }
    let mut end = MAX_FAILURE_LENGTH;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &message[..end])
}

/// How long ago `at` was, for messages.
pub(crate) fn ago(at: Timestamp) -> String {
    humantime::format_duration(std::time::Duration::from_secs(now().since(at).as_secs()))
        .to_string()
}
