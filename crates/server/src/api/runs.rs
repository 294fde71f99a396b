//! Runs: trigger, list, details, confirm, discard, stop, fail, prioritize.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use gantry_domain::{RunContext, RunEvent, RunState, transition};
use gantry_proto::api::{self, FailRun, Run, RunList, TriggerRun};
use gantry_store::{RunFilter, RunRecord, StackRecord};
use serde::Deserialize;

use crate::access::{Actor, visible};
use crate::error::{ApiError, ApiResult, Json, PathParam, QueryParams};
use crate::lifecycle::{self, Details};
use crate::lookup;
use crate::state::{AppState, now};
use crate::views::{self, RunViews};

pub(super) async fn trigger(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    PathParam(key): PathParam<String>,
    Json(request): Json<TriggerRun>,
) -> ApiResult<(StatusCode, Json<Run>)> {
    let stack = lookup::stack(&state, &key).await?;
    // The pool's name for the answer is read while the run is queued, not after it.
    let queued = trigger_run(&state, &stack, request, &actor.key_name);
    let (run, pool) =
        tokio::try_join!(queued, async { Ok(state.store.get_pool(stack.pool_id).await?) })?;
    Ok((StatusCode::CREATED, Json(views::queued_run(&run, stack, pool))))
}

/// Refuses a run whose stack's secrets would not open on its pool (sealed before a
/// pool reset): the user learns at once which values to give again.
pub(crate) async fn refuse_stale_secrets(
    state: &AppState,
    stack: &StackRecord,
) -> Result<(), ApiError> {
    let Some(pool) = state.store.get_pool(stack.pool_id).await? else { return Ok(()) };
    let certificate = crate::stack_secrets::pool_certificate(&pool)?;
    let stale = crate::stack_secrets::stale_secrets(stack, &certificate);
    if stale.is_empty() {
        return Ok(());
    }
    Err(ApiError::Conflict(crate::stack_secrets::stale_message(&stack.name, &pool.name, &stale)))
}

/// Queues a run of the stack after checking the request, for the API and the UI.
pub(crate) async fn trigger_run(
    state: &AppState,
    stack: &StackRecord,
    request: TriggerRun,
    triggered_by: &str,
) -> Result<RunRecord, ApiError> {
    if let Some(commit) = &request.commit
        && !(commit.len() >= 7
            && commit.len() <= 64
            && commit.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(ApiError::invalid(format!(
            "commit {commit:?} is not valid: expected a hexadecimal commit SHA"
        )));
    }
    refuse_stale_secrets(state, stack).await?;
    let command = match (request.run_type, request.command) {
        (gantry_domain::RunType::Task, Some(command)) if !command.trim().is_empty() => {
            Some(command)
        }
        (gantry_domain::RunType::Task, _) => {
            return Err(ApiError::invalid(
                "a TASK needs a command: the command to run in the stack's project root",
            ));
        }
        (_, Some(_)) => return Err(ApiError::invalid("only a TASK takes a command")),
        (_, None) => None,
    };
    lifecycle::trigger(state, stack, request.run_type, request.commit, command, triggered_by).await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct ListQuery {
    stack: Option<String>,
    limit: Option<u32>,
}

/// The newest runs, of those the key reaches: a scoped key may see fewer than `limit`.
pub(super) async fn list(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    QueryParams(query): QueryParams<ListQuery>,
) -> ApiResult<Json<RunList>> {
    let reach = actor.reach(&state).await?;
    let stack_id = match &query.stack {
        Some(key) => {
            let id = lookup::stack(&state, key).await?.id;
            if reach.as_ref().is_some_and(|reach| !reach.stack(id)) {
                return Err(ApiError::not_found("stack", key));
            }
            Some(id)
        }
        None => None,
    };
    let limit = query.limit.unwrap_or(50).clamp(1, 500);
    let runs = recent_runs(&state, RunFilter { stack_id, limit }).await?;
    let runs = visible(runs, reach.as_ref(), |reach, run| reach.stack(run.stack_id));
    Ok(Json(RunList { runs }))
}

/// The newest runs, of one stack or all, for the API and the UI.
pub(crate) async fn recent_runs(state: &AppState, filter: RunFilter) -> Result<Vec<Run>, ApiError> {
    let records = state.store.list_runs(&filter).await?;
    let views = RunViews::load(state).await?;
    let mut runs = Vec::with_capacity(records.len());
    for record in &records {
        runs.push(views.run(state, record).await?);
    }
    Ok(runs)
}

pub(super) async fn show(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
) -> ApiResult<Json<Run>> {
    let run = lookup::run(&state, &key).await?;
    Ok(Json(views::run(&state, &run).await?))
}

pub(super) async fn confirm(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
) -> ApiResult<Json<Run>> {
    let run = act_on_run(&state, &key, RunAction::Confirm).await?;
    Ok(Json(views::run(&state, &run).await?))
}

pub(super) async fn discard(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
) -> ApiResult<Json<Run>> {
    let run = act_on_run(&state, &key, RunAction::Discard).await?;
    Ok(Json(views::run(&state, &run).await?))
}

pub(super) async fn stop(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
) -> ApiResult<Json<Run>> {
    let run = act_on_run(&state, &key, RunAction::Stop).await?;
    Ok(Json(views::run(&state, &run).await?))
}

/// Longest reason an administrator may give; the failure message keeps it whole.
const MAX_FAIL_REASON: usize = 1024;

/// Ends a run stuck in any state as FAILED, for an administrator: its worker and its
/// stack's lock are freed at once, without waiting for a launcher that may never report
/// again, and the failure's consequences (skipped downstream runs, the next queued run)
/// follow as for any other failure.
pub(super) async fn fail(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    PathParam(key): PathParam<String>,
    Json(request): Json<FailRun>,
) -> ApiResult<Json<Run>> {
    let reason = request.reason.trim();
    if reason.is_empty() {
        return Err(ApiError::invalid("reason is empty: say why the run is failed"));
    }
    if reason.len() > MAX_FAIL_REASON {
        return Err(ApiError::invalid(format!(
            "reason is {} bytes long: expected at most {MAX_FAIL_REASON}",
            reason.len()
        )));
    }
    let run = lookup::run(&state, &key).await?;
    if run.state.is_terminal() {
        return Err(ApiError::Conflict(format!(
            "run {} has already ended ({}): only a run that has not ended can be failed",
            run.id, run.state
        )));
    }
    let message = format!("failed by administrator {:?}: {reason}", actor.key_name);
    let failed = if run.state.occupies_worker() {
        // Its worker may go on until its launcher stops it, or, with its launcher gone,
        // until its lease runs out: the stack stays fenced for as long (`gantry stack
        // unfence` lifts it for one who knows the machine stopped).
        let fenced_until = now().plus(state.timings.lock_fence());
        lifecycle::fail_fencing(&state, &run, &message, fenced_until).await?
    } else {
        lifecycle::fail(&state, &run, &message).await?
    };
    // A launcher still alive hears at once that its run is over and stops it.
    if let Some(worker) = run.worker_id
        && let Some(worker) = state.store.get_worker(worker).await?
    {
        state.events.wake_launcher(worker.launcher_id);
    }
    Ok(Json(views::run(&state, &failed).await?))
}

/// What a user may do to a run once it exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RunAction {
    /// Apply the plan it waits with.
    Confirm,
    /// Drop it before it executes, or drop its plan. A run already handed to a worker but
    /// not yet started is taken back: its launcher's acknowledgement will be refused.
    Discard,
    /// Canceled if it has not started, otherwise its launcher stops it.
    Stop,
}

impl RunAction {
    /// Whether the action is allowed on the run now: the domain's answer, so that the UI
    /// offers exactly the buttons that would succeed.
    pub(crate) fn allowed(self, run: &api::Run) -> bool {
        let context = RunContext { run_type: run.run_type, autodeploy: run.autodeploy };
        let allows = |event: &RunEvent| transition(run.state, context, event).is_ok();
        match self {
            Self::Confirm => allows(&RunEvent::Confirm),
            Self::Discard => allows(&RunEvent::Discard),
            Self::Stop => {
                !run.stop_requested
                    && run.state != RunState::Unconfirmed
                    && (run.state.occupies_worker() || allows(&RunEvent::Cancel))
            }
        }
    }
}

/// Confirms, discards or stops a run, for the API and the UI.
pub(crate) async fn act_on_run(
    state: &AppState,
    key: &str,
    action: RunAction,
) -> Result<RunRecord, ApiError> {
    let run = lookup::run(state, key).await?;
    match action {
        RunAction::Confirm => {
            lifecycle::apply(state, &run, &RunEvent::Confirm, Details::default()).await
        }
        RunAction::Discard => {
            lifecycle::apply(state, &run, &RunEvent::Discard, Details::default()).await
        }
        RunAction::Stop => lifecycle::stop(state, &run).await,
    }
}

/// Moves a run that waits for a worker to the front of its pool's queue.
pub(super) async fn prioritize(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
) -> ApiResult<Json<Run>> {
    let run = prioritize_run(&state, &key).await?;
    Ok(Json(views::run(&state, &run).await?))
}

/// Moves a waiting run to the front of its class, for the API and the UI.
pub(crate) async fn prioritize_run(state: &AppState, key: &str) -> Result<RunRecord, ApiError> {
    let run = lookup::run(state, key).await?;
    if run.state.is_terminal() || run.state.occupies_worker() {
        return Err(ApiError::invalid(format!(
            "run {} is {}: only a waiting run can be prioritized",
            run.id, run.state
        )));
    }
    let run = state.store.prioritize_run(run.id, crate::state::now()).await?;
    state.events.request_scheduling();
    state.events.run_changed(run.id);
    Ok(run)
}
