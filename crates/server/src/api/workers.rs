//! Workers as users see them: status, current run, metadata tags, liveness; draining
//! and undraining one. The shared pool's workers are the server's own and not listed.

use std::collections::HashMap;

use axum::Extension;
use axum::extract::State;
use gantry_domain::{PoolKind, WorkerId};
use gantry_proto::api::{Drained, WorkerList};

use crate::access::{Actor, visible};
use crate::error::{ApiError, ApiResult, Json, PathParam};
use crate::state::AppState;
use crate::{lookup, views};

pub(super) async fn list(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> ApiResult<Json<WorkerList>> {
    let reach = actor.reach(&state).await?;
    let kinds: HashMap<_, _> =
        state.store.list_pools().await?.into_iter().map(|pool| (pool.id, pool.kind)).collect();
    let workers = state
        .store
        .list_workers(None)
        .await?
        .iter()
        .filter(|worker| kinds.get(&worker.pool_id) == Some(&PoolKind::Private))
        .map(views::worker)
        .collect();
    let workers = visible(workers, reach.as_ref(), |reach, worker| reach.pool(worker.pool_id));
    Ok(Json(WorkerList { workers }))
}

pub(super) async fn list_in_pool(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
) -> ApiResult<Json<WorkerList>> {
    let pool = lookup::pool(&state, &key).await?;
    let workers = state.store.list_workers(Some(pool.id)).await?;
    Ok(Json(WorkerList { workers: views::visible_workers(&pool, &workers) }))
}

/// Drains one worker: it finishes its run and takes no new one.
pub(super) async fn drain(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
) -> ApiResult<Json<Drained>> {
    Ok(Json(set_drained(&state, &key, true).await?))
}

/// Undrains one worker; waiting runs are scheduled at once.
pub(super) async fn undrain(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
) -> ApiResult<Json<Drained>> {
    Ok(Json(set_drained(&state, &key, false).await?))
}

/// Drains or undrains one worker, for the API and the UI.
pub(crate) async fn set_drained(
    state: &AppState,
    key: &str,
    drained: bool,
) -> Result<Drained, ApiError> {
    let id: WorkerId = key.parse().map_err(|_| ApiError::not_found("worker", key))?;
    let existing =
        state.store.get_worker(id).await?.ok_or_else(|| ApiError::not_found("worker", key))?;
    let pool = lookup::pool(state, &existing.pool_id.to_string()).await?;
    if pool.kind == PoolKind::Shared {
        return Err(ApiError::not_found("worker", key));
    }
    let worker = state
        .store
        .set_worker_drained(id, drained)
        .await?
        .ok_or_else(|| ApiError::not_found("worker", key))?;
    tracing::info!(worker = %worker.id, drained, "worker drain changed");
    if !drained {
        state.events.request_scheduling();
    }
    state.events.pool_workers_changed(worker.pool_id);
    Ok(Drained { workers: vec![views::worker(&worker)] })
}
