//! Workers as users see them: status, current run, metadata tags, liveness.

use axum::extract::State;
use gantry_proto::api::WorkerList;

use crate::error::{ApiResult, Json, PathParam};
use crate::state::AppState;
use crate::{lookup, views};

pub(super) async fn list(State(state): State<AppState>) -> ApiResult<Json<WorkerList>> {
    let workers = state.store.list_workers(None).await?.iter().map(views::worker).collect();
    Ok(Json(WorkerList { workers }))
}

pub(super) async fn list_in_pool(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
) -> ApiResult<Json<WorkerList>> {
    let pool = lookup::pool(&state, &key).await?;
    let workers =
        state.store.list_workers(Some(pool.id)).await?.iter().map(views::worker).collect();
    Ok(Json(WorkerList { workers }))
}
