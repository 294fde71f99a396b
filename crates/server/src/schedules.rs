//! Schedules: cron expressions that trigger a stack's tracked runs, tasks and drift
//! checks. Every server process looks for due schedules; each firing is taken once across
//! them — the run it triggers is named after the firing (`runs_one_per_schedule_firing`)
//! and the schedule moves on by compare-and-set — and firings missed while no server ran
//! are taken once, as one run, when one is back.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use gantry_domain::{RunId, RunType, ScheduleKind, Timestamp};
use gantry_proto::schedules::{CreateSchedule, Schedule as ScheduleView, ScheduleList};
use gantry_schedule::Schedule;
use gantry_store::{ScheduleRecord, StackRecord, StoreError};

use crate::access::Actor;
use crate::error::{ApiError, ApiResult, Json, PathParam};
use crate::lifecycle;
use crate::lookup;
use crate::state::{AppState, now};

/// How often each process looks for due schedules: firings are whole minutes, so a
/// firing starts at most this late.
const CHECK_INTERVAL: Duration = Duration::from_secs(5);
/// Due schedules taken per look; the rest wait for the next.
const BATCH: u32 = 100;
/// Schedules one stack may have.
const MAX_PER_STACK: usize = 20;
/// The longest command a task schedule may run.
const MAX_COMMAND_LENGTH: usize = 4096;
/// `next_fire_at` of a schedule that will not fire again.
const NEVER: Timestamp = Timestamp::from_unix_millis(i64::MAX);

/// What a drift check's run is triggered by starts with this.
const DRIFT_PREFIX: &str = "schedule:drift:";

/// Whether a run was triggered by a drift schedule: the scheduler puts it last.
pub(crate) fn is_drift_check(triggered_by: &str) -> bool {
    triggered_by.starts_with(DRIFT_PREFIX)
}

pub(crate) async fn run_schedules(state: AppState) {
    loop {
        if let Err(error) = fire_due(&state, now()).await {
            if let ApiError::Store(error) = &error {
                state.database.observe(error);
            }
            tracing::warn!(%error, "firing due schedules failed; retrying on the next look");
        }
        tokio::select! {
            () = tokio::time::sleep(CHECK_INTERVAL) => {}
            () = state.shutdown.cancelled() => return,
        }
    }
}

/// Takes the firings due at `now`; how many this process took. A firing that fails stays
/// due, for the next look, without holding up the others.
pub(crate) async fn fire_due(state: &AppState, now: Timestamp) -> Result<usize, ApiError> {
    let mut taken = 0;
    for schedule in state.store.due_schedules(now, BATCH).await? {
        match fire(state, &schedule, now).await {
            Ok(true) => taken += 1,
            Ok(false) => {}
            Err(error) => {
                tracing::warn!(schedule = %schedule.id, stack = %schedule.stack_id, %error, "a schedule's firing failed; it stays due");
            }
        }
    }
    Ok(taken)
}

/// Triggers the run of the firing at `schedule.next_fire_at` (of every firing missed
/// until `now`, which are one) and moves the schedule on to its first firing after `now`.
async fn fire(
    state: &AppState,
    schedule: &ScheduleRecord,
    now: Timestamp,
) -> Result<bool, ApiError> {
    let firing = schedule.next_fire_at;
    let next = Schedule::parse(&schedule.cron, &schedule.time_zone)
        .ok()
        .and_then(|parsed| parsed.next_after(now))
        .unwrap_or(NEVER);
    let outcome = match state.store.get_stack(schedule.stack_id).await? {
        Some(stack) => trigger(state, schedule, &stack, firing).await?,
        None => "not triggered: the stack is gone".to_owned(),
    };
    let taken = state.store.advance_schedule(&schedule.id, firing, next, &outcome).await?;
    if taken {
        tracing::info!(schedule = %schedule.id, stack = %schedule.stack_id, %outcome, "schedule fired");
    }
    Ok(taken)
}

/// What the firing at `firing` triggers, said for the schedule's last outcome.
async fn trigger(
    state: &AppState,
    schedule: &ScheduleRecord,
    stack: &StackRecord,
    firing: Timestamp,
) -> Result<String, ApiError> {
    let run_type = schedule.kind.run_type();
    let prefix = triggered_by_prefix(schedule);
    let triggered_by = format!("{prefix}at {}", gantry_proto::format_timestamp(firing));
    let triggered = |run: &gantry_store::RunRecord| {
        format!("{} run {}", run_type.as_str().to_lowercase(), run.id)
    };
    let still_active = state
        .store
        .active_runs()
        .await?
        .into_iter()
        .find(|run| run.stack_id == stack.id && run.triggered_by.starts_with(&prefix));
    match still_active {
        // An earlier try of this very firing (a process that died before moving the
        // schedule on) triggered it.
        Some(run) if run.triggered_by == triggered_by => return Ok(triggered(&run)),
        // A schedule faster than its runs would otherwise pile them up in the queue.
        Some(run) => {
            return Ok(format!("skipped: run {} of an earlier firing has not ended", run.id));
        }
        None => {}
    }
    if let Err(error @ ApiError::Conflict(_)) =
        crate::api::runs::refuse_stale_secrets(state, stack).await
    {
        return Ok(format!("not triggered: {error}"));
    }
    match lifecycle::trigger(state, stack, run_type, None, schedule.command.clone(), &triggered_by)
        .await
    {
        Ok(run) => Ok(triggered(&run)),
        // Another replica took this firing at the same time.
        Err(ApiError::Store(StoreError::AlreadyExists { .. })) => {
            Ok("triggered by an earlier try of this firing".to_owned())
        }
        Err(error) => Err(error),
    }
}

/// `schedule:<kind>:<id> `: how the runs of a schedule's firings begin their
/// `triggered_by`.
fn triggered_by_prefix(schedule: &ScheduleRecord) -> String {
    format!("schedule:{}:{} ", schedule.kind, schedule.id)
}

/// What the tracked run reconciling the drift that `check` found is triggered by: one per
/// check (`runs_one_per_schedule_firing`).
pub(crate) fn reconcile_trigger(schedule: &ScheduleRecord, check: RunId) -> String {
    format!("schedule:reconcile:{} after {check}", schedule.id)
}

/// The id of the schedule whose firing triggered a run, from its `triggered_by`.
pub(crate) fn schedule_of(triggered_by: &str) -> Option<&str> {
    let (_kind, rest) = triggered_by.strip_prefix("schedule:")?.split_once(':')?;
    rest.split(' ').next().filter(|id| !id.is_empty())
}

/// `POST /api/v1/stacks/{stack}/schedules`
pub(crate) async fn create(
    State(state): State<AppState>,
    axum::Extension(actor): axum::Extension<Actor>,
    PathParam(key): PathParam<String>,
    Json(request): Json<CreateSchedule>,
) -> ApiResult<(StatusCode, Json<ScheduleView>)> {
    let stack = lookup::stack(&state, &key).await?;
    let kind: ScheduleKind = request
        .kind
        .parse()
        .map_err(|e: gantry_domain::UnknownScheduleKind| ApiError::invalid(e.to_string()))?;
    let time_zone = request.time_zone.as_deref().unwrap_or("UTC");
    let schedule = Schedule::parse(&request.cron, time_zone)
        .map_err(|error| ApiError::invalid(format!("schedule not valid: {error}")))?;
    let command = match (kind.run_type(), request.command) {
        (RunType::Task, Some(command)) if command.trim().is_empty() => {
            return Err(ApiError::invalid("a task schedule needs a command: it is empty"));
        }
        (RunType::Task, Some(command)) if command.len() > MAX_COMMAND_LENGTH => {
            return Err(ApiError::invalid(format!(
                "a task schedule's command is {} bytes long: at most {MAX_COMMAND_LENGTH} are allowed",
                command.len()
            )));
        }
        (RunType::Task, Some(command)) => Some(command),
        (RunType::Task, None) => {
            return Err(ApiError::invalid(
                "a task schedule needs a command: the command to run in the stack's project root",
            ));
        }
        (_, Some(_)) => return Err(ApiError::invalid("only a task schedule takes a command")),
        (_, None) => None,
    };
    if request.reconcile && kind != ScheduleKind::Drift {
        return Err(ApiError::invalid(
            "only a drift schedule reconciles: reconcile asks a drift check that finds drift to trigger a tracked run",
        ));
    }
    let existing = state.store.list_schedules(Some(stack.id)).await?;
    if existing.len() >= MAX_PER_STACK {
        return Err(ApiError::Conflict(format!(
            "stack {} has {MAX_PER_STACK} schedules, the most a stack may have: delete one first",
            stack.name
        )));
    }
    let created_at = now();
    let record = ScheduleRecord {
        id: ulid::Ulid::new().to_string(),
        stack_id: stack.id,
        kind,
        cron: schedule.cron().to_owned(),
        time_zone: schedule.time_zone().to_owned(),
        command,
        reconcile: request.reconcile,
        next_fire_at: schedule.next_after(created_at).unwrap_or(NEVER),
        last_fired_at: None,
        last_outcome: None,
        created_by: actor.key_name.clone(),
        created_at,
    };
    state.store.insert_schedule(&record).await?;
    tracing::info!(stack = %stack.name, schedule = %record.id, %kind, cron = %record.cron, "schedule added");
    Ok((StatusCode::CREATED, Json(view(&stack, &record))))
}

/// `GET /api/v1/stacks/{stack}/schedules`
pub(crate) async fn list(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
) -> ApiResult<Json<ScheduleList>> {
    let stack = lookup::stack(&state, &key).await?;
    Ok(Json(ScheduleList { schedules: of_stack(&state, &stack).await? }))
}

/// A stack's schedules as the API and the UI show them.
pub(crate) async fn of_stack(
    state: &AppState,
    stack: &StackRecord,
) -> Result<Vec<ScheduleView>, ApiError> {
    let records = state.store.list_schedules(Some(stack.id)).await?;
    Ok(records.iter().map(|record| view(stack, record)).collect())
}

/// `DELETE /api/v1/stacks/{stack}/schedules/{schedule}`: the schedule deleted.
pub(crate) async fn delete(
    State(state): State<AppState>,
    PathParam((key, id)): PathParam<(String, String)>,
) -> ApiResult<Json<ScheduleView>> {
    let stack = lookup::stack(&state, &key).await?;
    let of_stack = state.store.list_schedules(Some(stack.id)).await?;
    let not_found = || ApiError::not_found("schedule", format!("{id} of stack {}", stack.name));
    let schedule = of_stack.into_iter().find(|schedule| schedule.id == id).ok_or_else(not_found)?;
    if !state.store.delete_schedule(&id).await? {
        return Err(not_found());
    }
    Ok(Json(view(&stack, &schedule)))
}

fn view(stack: &StackRecord, record: &ScheduleRecord) -> ScheduleView {
    ScheduleView {
        id: record.id.clone(),
        stack: stack.name.clone(),
        kind: record.kind.as_str().to_owned(),
        cron: record.cron.clone(),
        time_zone: record.time_zone.clone(),
        command: record.command.clone(),
        reconcile: record.reconcile,
        next_fire_at: (record.next_fire_at != NEVER).then_some(record.next_fire_at),
        last_fired_at: record.last_fired_at,
        last_outcome: record.last_outcome.clone(),
        created_by: record.created_by.clone(),
        created_at: record.created_at,
    }
}

#[cfg(test)]
pub(crate) mod tests;
