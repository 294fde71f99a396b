//! Drift detection: a drift check (a proposed run a drift schedule triggered) whose plan
//! has changes marks its stack drifted — its real infrastructure no longer matches its
//! state — until a tracked run of the stack finishes; one without changes clears it. Both
//! happen as effects of the run's end (`Effect::RunEnded`), so a crash delays them and
//! loses nothing, and doing one twice does what once does.

use std::collections::HashMap;

use gantry_domain::{RunState, RunType, StackId};
use gantry_proto::api::StackDrift;
use gantry_store::{DriftRecord, RunFilter, RunRecord, StoreError};

use crate::error::ApiError;
use crate::lifecycle;
use crate::schedules;
use crate::state::{AppState, now};

/// Whether the end of `run` (to `to`) tells something about its stack's drift.
pub(crate) fn run_end_tells(run: &RunRecord, to: RunState) -> bool {
    to == RunState::Finished
        && (run.run_type == RunType::Tracked || schedules::is_drift_check(&run.triggered_by))
}

/// Marks or clears the drift of `run`'s stack as its end tells.
pub(crate) async fn after_run_ended(state: &AppState, run: &RunRecord) -> Result<(), ApiError> {
    if !run_end_tells(run, run.state) {
        return Ok(());
    }
    if run.run_type == RunType::Tracked {
        if state.store.clear_drift(run.stack_id).await? {
            tracing::info!(stack = %run.stack_id, run = %run.id, "a tracked run finished: the stack is no longer drifted");
        }
        return Ok(());
    }
    if run.has_changes != Some(true) {
        state.store.clear_drift(run.stack_id).await?;
        return Ok(());
    }
    if let Some(applied) = tracked_run_finished_since(state, run).await? {
        // The check planned against infrastructure that tracked run has changed since.
        tracing::info!(run = %run.id, tracked = %applied.id, "a drift check is outdated by a tracked run that finished after it started; ignored");
        return Ok(());
    }
    let drift = DriftRecord { stack_id: run.stack_id, run_id: run.id, detected_at: now() };
    state.store.mark_drifted(&drift).await?;
    tracing::warn!(stack = %run.stack_id, run = %run.id, "a drift check found changes made outside Gantry: the stack is drifted");
    reconcile(state, run).await
}

/// A tracked run of the stack that finished after `check` was created.
async fn tracked_run_finished_since(
    state: &AppState,
    check: &RunRecord,
) -> Result<Option<RunRecord>, ApiError> {
    let runs =
        state.store.list_runs(&RunFilter { stack_id: Some(check.stack_id), limit: 200 }).await?;
    Ok(runs.into_iter().find(|run| {
        run.run_type == RunType::Tracked
            && run.state == RunState::Finished
            && run.updated_at > check.created_at
    }))
}

/// Triggers a tracked run to bring the stack back to its code, when the check's schedule
/// asks for that: once per check, however often this is carried out.
async fn reconcile(state: &AppState, check: &RunRecord) -> Result<(), ApiError> {
    let Some(schedule_id) = schedules::schedule_of(&check.triggered_by) else { return Ok(()) };
    let schedules = state.store.list_schedules(Some(check.stack_id)).await?;
    let Some(schedule) = schedules.iter().find(|s| s.id == schedule_id && s.reconcile) else {
        return Ok(());
    };
    let Some(stack) = state.store.get_stack(check.stack_id).await? else { return Ok(()) };
    if let Err(error @ ApiError::Conflict(_)) =
        crate::api::runs::refuse_stale_secrets(state, &stack).await
    {
        tracing::warn!(stack = %stack.name, %error, "the drift is not reconciled");
        return Ok(());
    }
    let triggered_by = schedules::reconcile_trigger(schedule, check.id);
    match lifecycle::trigger(state, &stack, RunType::Tracked, None, None, &triggered_by).await {
        Ok(run) => {
            tracing::info!(stack = %stack.name, run = %run.id, check = %check.id, "a tracked run reconciles the drift");
            Ok(())
        }
        Err(ApiError::Store(StoreError::AlreadyExists { .. })) => Ok(()),
        Err(error) => Err(error),
    }
}

/// Every drifted stack's drift, for the stacks' views.
pub(crate) async fn by_stack(state: &AppState) -> Result<HashMap<StackId, StackDrift>, ApiError> {
    Ok(state
        .store
        .drifted_stacks()
        .await?
        .into_iter()
        .map(|drift| {
            (drift.stack_id, StackDrift { run_id: drift.run_id, since: drift.detected_at })
        })
        .collect())
}

#[cfg(test)]
mod tests;
