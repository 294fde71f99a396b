//! Heartbeats: the launcher says it is alive and what it holds; the server answers with
//! what it must re-register, stop and release.

use axum::extract::State;
use gantry_proto::agent::{Heartbeat, HeartbeatResponse};
use gantry_store::RunRecord;

use crate::auth::AgentSession;
use crate::error::{ApiError, ApiResult, Json};
use crate::state::{AppState, now};

pub(super) async fn heartbeat(
    State(state): State<AppState>,
    session: AgentSession,
    Json(request): Json<Heartbeat>,
) -> ApiResult<Json<HeartbeatResponse>> {
    let touched = state.store.touch_workers(session.launcher_id, &request.worker_ids, now()).await;
    // A heartbeat this process cannot store (503: the launcher sends the next one) must
    // not count against the launcher: liveness waits until the database is back for long.
    let unknown_worker_ids = touched.inspect_err(|error| state.database.observe(error))?;

    let mut stop_run_ids = Vec::new();
    for &run_id in &request.running_run_ids {
        let running_here = match state.store.get_run_with_launcher(run_id).await? {
            Some((run, holder)) => !run.state.is_terminal() && holder == Some(session.launcher_id),
            None => false,
        };
        if !running_here {
            stop_run_ids.push(run_id);
        }
    }

    let held = state.store.launcher_runs(session.launcher_id, session.pool_id).await?;
    // Acknowledged runs only: one just handed over is not the launcher's to list yet.
    let executing: Vec<_> = held
        .iter()
        .filter(|run| run.state.occupies_worker())
        .filter_map(|run| Some((run.id, run.worker_id?)))
        .collect();
    let lost = state.unlisted_runs.heartbeat(
        session.launcher_id,
        &executing,
        &request.worker_ids,
        &request.running_run_ids,
    );
    for run in held.iter().filter(|run| lost.contains(&run.id)) {
        fail_unlisted(&state, run).await?;
    }
    for requested in super::poll::stop_requested(&held) {
        if !stop_run_ids.contains(&requested) {
            stop_run_ids.push(requested);
        }
    }
    Ok(Json(HeartbeatResponse { unknown_worker_ids, stop_run_ids, cycle: session.cycling() }))
}

/// Fails a run its launcher's heartbeats keep leaving out (`crate::reconcile`). A worker
/// left behind by a launcher that restarted may still execute it: its stack stays fenced
/// for a whole lease from now.
async fn fail_unlisted(state: &AppState, run: &RunRecord) -> Result<(), ApiError> {
    let reason = format!(
        "worker lost: its launcher no longer runs it (left out of {} heartbeats in a row)",
        crate::reconcile::MISSES_TO_FAIL
    );
    let fenced_until = now().plus(state.timings.lock_fence());
    match crate::lifecycle::fail_fencing(state, run, &reason, fenced_until).await {
        Err(error) if !crate::lifecycle::lost_race(&error) => Err(error),
        _ => Ok(()),
    }
}
