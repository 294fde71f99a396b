//! A stack's managed state versions: the ones the server keeps (ciphertext it cannot
//! read, the newest `GANTRY_SERVER_STATE_VERSIONS` of each stack, and every orphaned one
//! a fenced-off run stored), rolling back to an earlier one, so that a stack is never
//! left unable to run by what its own runs stored, and adopting an orphaned one.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use gantry_domain::StackId;
use gantry_proto::api::{AdoptState, RollbackState, StateVersion, StateVersionList};
use gantry_store::{StackRecord, StateVersionRecord, StoreError};

use crate::access::Actor;
use crate::error::{ApiError, ApiResult, Json, PathParam};
use crate::state::{AppState, now};
use crate::{lookup, views};

/// `GET /api/v1/stacks/{stack}/state/versions`
pub(super) async fn list(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
) -> ApiResult<Json<StateVersionList>> {
    let stack = lookup::stack(&state, &key).await?;
    Ok(Json(versions(&state, &stack).await?))
}

/// `POST /api/v1/stacks/{stack}/state/rollback`
pub(super) async fn rollback(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    PathParam(key): PathParam<String>,
    Json(request): Json<RollbackState>,
) -> ApiResult<(StatusCode, Json<StateVersion>)> {
    let stack = lookup::stack(&state, &key).await?;
    let version = rollback_state(&state, &stack, request.to, &actor.key_name).await?;
    Ok((StatusCode::CREATED, Json(views::state_version(&version, true))))
}

/// `POST /api/v1/stacks/{stack}/state/adopt`
pub(super) async fn adopt(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    PathParam(key): PathParam<String>,
    Json(request): Json<AdoptState>,
) -> ApiResult<(StatusCode, Json<StateVersion>)> {
    let stack = lookup::stack(&state, &key).await?;
    let version = adopt_state(&state, &stack, request.version, &actor.key_name).await?;
    Ok((StatusCode::CREATED, Json(views::state_version(&version, true))))
}

fn require_managed_state(stack: &StackRecord) -> Result<(), ApiError> {
    if stack.managed_state {
        return Ok(());
    }
    Err(ApiError::invalid(format!(
        "stack {} does not let Gantry manage its state: it has no state versions",
        stack.name
    )))
}

/// The stack's kept versions, newest first, for the API and the UI.
pub(crate) async fn versions(
    state: &AppState,
    stack: &StackRecord,
) -> Result<StateVersionList, ApiError> {
    require_managed_state(stack)?;
    let records = state.store.list_state_versions(stack.id).await?;
    let current = records.iter().find(|record| !record.orphaned).map(|record| record.seq);
    Ok(StateVersionList {
        stack: stack.name.clone(),
        kept: state.kept_state_versions,
        versions: records
            .iter()
            .map(|record| views::state_version(record, Some(record.seq) == current))
            .collect(),
    })
}

/// Makes version `to` the stack's current state again, as a new version, for the API and
/// the UI; `by` names who asked.
pub(crate) async fn rollback_state(
    state: &AppState,
    stack: &StackRecord,
    to: u64,
    by: &str,
) -> Result<StateVersionRecord, ApiError> {
    require_managed_state(stack)?;
    refuse_while_locked(state, stack, "rolled back", "rollback").await?;
    let kept = state.store.list_state_versions(stack.id).await?;
    if kept.iter().find(|version| !version.orphaned).is_some_and(|current| current.seq == to) {
        return Err(ApiError::invalid(format!(
            "version {to} is already the current state of stack {}",
            stack.name
        )));
    }
    // Whether a version is orphaned never changes: this read cannot go stale.
    if kept.iter().any(|version| version.seq == to && version.orphaned) {
        return Err(ApiError::invalid(format!(
            "version {to} of stack {} is orphaned (a run stored it after it lost the stack's lock): adopt it instead, with gantry stack state adopt {} {to}",
            stack.name, stack.name
        )));
    }
    let version = match state.store.rollback_state_version(stack.id, to, by, now()).await {
        Ok(version) => version,
        Err(StoreError::NotFound { kind: "state version", .. }) => {
            return Err(ApiError::Missing(missing_version(stack, to, &kept)));
        }
        Err(error) => return Err(error.into()),
    };
    tracing::info!(
        stack = %stack.name,
        version = version.seq,
        restores = to,
        run = %version.run_id,
        by,
        "managed state rolled back"
    );
    prune(state, stack.id).await;
    Ok(version)
}

/// Refuses a change of the stack's current state while a lock-taking run holds its
/// lock: that run started from the current state and would store its own after it, so
/// the change would be overwritten, or its saved plan made stale.
async fn refuse_while_locked(
    state: &AppState,
    stack: &StackRecord,
    done: &str,
    change: &str,
) -> Result<(), ApiError> {
    let holder = state.store.active_runs().await?.into_iter().find(|run| {
        run.stack_id == stack.id && run.run_type.takes_stack_lock() && run.state.holds_stack_lock()
    });
    match holder {
        Some(run) => Err(ApiError::Conflict(format!(
            "stack {} cannot be {done} while its {} run {} is {}: the run would store its own state over the {change}; try again once it ended",
            stack.name, run.run_type, run.id, run.state
        ))),
        None => Ok(()),
    }
}

/// Makes the orphaned version `version` the stack's current state, as a new version, for
/// the API and the UI; `by` names who asked.
pub(crate) async fn adopt_state(
    state: &AppState,
    stack: &StackRecord,
    version: u64,
    by: &str,
) -> Result<StateVersionRecord, ApiError> {
    require_managed_state(stack)?;
    refuse_while_locked(state, stack, "changed by an adoption", "adoption").await?;
    let adopted = match state.store.adopt_state_version(stack.id, version, by, now()).await {
        Ok(adopted) => adopted,
        Err(StoreError::NotFound { kind: "orphaned state version", .. }) => {
            let kept = state.store.list_state_versions(stack.id).await?;
            let orphaned: Vec<String> =
                kept.iter().filter(|kept| kept.orphaned).map(|kept| kept.seq.to_string()).collect();
            if kept.iter().any(|kept| kept.seq == version) {
                return Err(ApiError::invalid(format!(
                    "version {version} of stack {} is not orphaned: return to it with gantry stack state rollback {} --to {version}",
                    stack.name, stack.name
                )));
            }
            let message = if orphaned.is_empty() {
                format!("stack {} has no orphaned state version", stack.name)
            } else {
                format!(
                    "stack {} has no orphaned state version {version}: its orphaned versions are {}",
                    stack.name,
                    orphaned.join(", ")
                )
            };
            return Err(ApiError::Missing(message));
        }
        Err(error) => return Err(error.into()),
    };
    tracing::info!(
        stack = %stack.name,
        version = adopted.seq,
        adopts = version,
        run = %adopted.run_id,
        by,
        "orphaned managed state adopted"
    );
    prune(state, stack.id).await;
    Ok(adopted)
}

/// Why there is no version `to`, with the versions there are.
fn missing_version(stack: &StackRecord, to: u64, kept: &[StateVersionRecord]) -> String {
    match (kept.last(), kept.first()) {
        (Some(oldest), Some(newest)) => format!(
            "stack {} has no state version {to}: it keeps versions {} to {} (older ones are deleted)",
            stack.name, oldest.seq, newest.seq
        ),
        _ => format!("stack {} has no state version {to}: it has no state yet", stack.name),
    }
}

/// Deletes the stack's versions beyond the newest `kept_state_versions`, then the blobs
/// no version names any more (rollbacks share their blobs). The rows go first, with the
/// blobs' deletion recorded in the same transaction (`Effect::DeleteBlob`), which the
/// effects loop carries out: a crash in between delays it, never leaves a blob behind
/// for good nor a version whose blob is gone. A failure leaves the old versions until
/// the next one.
pub(crate) async fn prune(state: &AppState, stack_id: StackId) {
    let unnamed = match state.store.prune_state_versions(stack_id, state.kept_state_versions).await
    {
        Ok(unnamed) => unnamed,
        Err(error) => {
            tracing::warn!(stack = %stack_id, %error, "old state versions are kept until the next version");
            return;
        }
    };
    if !unnamed.is_empty() {
        state.events.wake_effects();
    }
}
