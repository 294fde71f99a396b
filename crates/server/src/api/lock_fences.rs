//! Stack lock fences (docs/scheduling.md, "Fencing"): shown with their stacks, and lifted
//! early by an administrator who knows the fenced run's worker has stopped.

use std::collections::HashMap;

use axum::Extension;
use axum::extract::State;
use gantry_domain::StackId;
use gantry_proto::api::{Stack, StackLockFence};

use crate::access::Actor;
use crate::error::{ApiError, ApiResult, Json, PathParam};
use crate::lookup;
use crate::state::{AppState, now};

/// The stacks fenced now, with their fences.
pub(crate) async fn in_force(
    state: &AppState,
) -> Result<HashMap<StackId, StackLockFence>, ApiError> {
    Ok(state
        .store
        .lock_fences(now())
        .await?
        .into_iter()
        .map(|fence| (fence.stack_id, StackLockFence { run_id: fence.run_id, until: fence.until }))
        .collect())
}

/// Lifts the stack's fence: its next tracked run or task may start at once. For an
/// administrator who knows the fenced run's worker stopped (its machine is off, its
/// container gone); otherwise two writers may apply to the stack at once.
pub(super) async fn unfence(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
    PathParam(key): PathParam<String>,
) -> ApiResult<Json<Stack>> {
    let stack = lookup::stack(&state, &key).await?;
    let Some(lifted) = state.store.lift_lock_fence(stack.id, now()).await? else {
        return Err(ApiError::Conflict(format!("stack {} is not fenced", stack.name)));
    };
    tracing::warn!(
        stack = %stack.name,
        run = %lifted.run_id,
        by = %actor.key_name,
        "an administrator lifted the stack's lock fence"
    );
    state.events.request_scheduling();
    Ok(Json(super::stacks::one_stack(&state, &stack).await?))
}
