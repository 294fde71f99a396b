//! Heartbeats: the launcher says it is alive and what it holds; the server answers with
//! what it must re-register, stop and release.

use axum::extract::State;
use gantry_proto::agent::{Heartbeat, HeartbeatResponse};

use crate::auth::AgentSession;
use crate::error::{ApiResult, Json};
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
    for run_id in request.running_run_ids {
        let running_here = match state.store.get_run_with_launcher(run_id).await? {
            Some((run, holder)) => !run.state.is_terminal() && holder == Some(session.launcher_id),
            None => false,
        };
        if !running_here {
            stop_run_ids.push(run_id);
        }
    }

    let held = state.store.launcher_runs(session.launcher_id, session.pool_id).await?;
    for requested in super::poll::stop_requested(&held) {
        if !stop_run_ids.contains(&requested) {
            stop_run_ids.push(requested);
        }
    }
    Ok(Json(HeartbeatResponse { unknown_worker_ids, stop_run_ids, cycle: session.cycling() }))
}
