//! Worker registration: a launcher's slots join its pool, keeping their identity (and a
//! run they hold) across the launcher's sessions; and leave it again, drained first so
//! that a shrinking launcher never loses a run.

use axum::extract::State;
use gantry_domain::WorkerId;
use gantry_proto::agent::{LeaveWorkers, RegisterWorkers, WorkersLeft, WorkersRegistered};
use gantry_store::WorkerRecord;

use crate::auth::AgentSession;
use crate::error::{ApiError, ApiResult, Json};
use crate::state::{AppState, now};

const MAX_SLOTS: usize = 256;
const MAX_TAGS: usize = 64;

pub(super) async fn register(
    State(state): State<AppState>,
    session: AgentSession,
    Json(request): Json<RegisterWorkers>,
) -> ApiResult<Json<WorkersRegistered>> {
    if request.workers.is_empty() || request.workers.len() > MAX_SLOTS {
        return Err(ApiError::invalid(format!(
            "register between 1 and {MAX_SLOTS} workers at a time"
        )));
    }
    let mut worker_ids = Vec::with_capacity(request.workers.len());
    for registration in request.workers {
        if registration.metadata.len() > MAX_TAGS {
            return Err(ApiError::invalid(format!(
                "a worker may carry at most {MAX_TAGS} metadata tags"
            )));
        }
        // A previous id is kept only if it still names a worker of this pool.
        let previous = match registration.previous_id {
            Some(id) => {
                state.store.get_worker(id).await?.filter(|worker| worker.pool_id == session.pool_id)
            }
            None => None,
        };
        let at = now();
        let record = WorkerRecord {
            id: previous.as_ref().map_or_else(WorkerId::generate, |worker| worker.id),
            pool_id: session.pool_id,
            launcher_id: session.launcher_id,
            metadata: registration.metadata,
            launcher_version: session.launcher_version.clone(),
            hostname: session.hostname.clone(),
            drained: false,
            current_run_id: None,
            created_at: at,
            last_seen_at: at,
        };
        let stored = state.store.register_worker(&record).await?;
        worker_ids.push(stored.id);
    }
    tracing::info!(launcher = %session.launcher_id, workers = worker_ids.len(), "workers registered");
    state.events.request_scheduling();
    state.events.pool_workers_changed(session.pool_id);
    Ok(Json(WorkersRegistered { worker_ids }))
}

/// Drains each of the launcher's workers named, then removes those that hold no run.
/// The drain comes first and is what the scheduler checks when it assigns, so a worker
/// seen idle here cannot be handed a run before it is removed.
pub(super) async fn leave(
    State(state): State<AppState>,
    session: AgentSession,
    Json(request): Json<LeaveWorkers>,
) -> ApiResult<Json<WorkersLeft>> {
    if request.worker_ids.len() > MAX_SLOTS {
        return Err(ApiError::invalid(format!("remove at most {MAX_SLOTS} workers at a time")));
    }
    let mut answer = WorkersLeft::default();
    for worker_id in request.worker_ids {
        let Some(worker) = state.store.get_worker(worker_id).await? else {
            answer.left.push(worker_id);
            continue;
        };
        if worker.launcher_id != session.launcher_id || worker.pool_id != session.pool_id {
            return Err(ApiError::invalid(format!(
                "worker {worker_id} does not belong to this launcher"
            )));
        }
        match state.store.set_worker_drained(worker_id, true).await? {
            Some(drained) if drained.current_run_id.is_some() => answer.busy.push(worker_id),
            _ => answer.left.push(worker_id),
        }
    }
    state.store.delete_workers(&answer.left).await?;
    if !answer.left.is_empty() || !answer.busy.is_empty() {
        state.events.pool_workers_changed(session.pool_id);
    }
    tracing::info!(launcher = %session.launcher_id, left = answer.left.len(), busy = answer.busy.len(), "workers leaving");
    Ok(Json(answer))
}
