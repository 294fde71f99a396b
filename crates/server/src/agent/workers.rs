//! Worker registration: a launcher's slots join its pool, keeping their identity (and a
//! run they hold) across the launcher's sessions.

use axum::extract::State;
use gantry_domain::WorkerId;
use gantry_proto::agent::{RegisterWorkers, WorkersRegistered};
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
