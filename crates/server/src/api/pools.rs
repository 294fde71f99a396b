//! Pools: creation from a CSR (the token is returned once), listing, details, reset,
//! drain and undrain, cycling, and the queue of runs waiting for their workers.

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use gantry_crypto::PoolToken;
use gantry_domain::{PoolId, PoolKind, RunState, validate_name};
use gantry_proto::api::{
    CreatePool, Drained, Pool, PoolCreated, PoolList, Queue, QueueEntry, ResetPool,
};
use gantry_store::PoolRecord;

use crate::access::{Actor, visible};
use crate::error::{ApiError, ApiResult, Json, PathParam};
use crate::events::ClusterSignal;
use crate::state::{AppState, now};
use crate::views::RunViews;
use crate::{lifecycle, lookup, views};

pub(super) async fn create(
    State(state): State<AppState>,
    Json(request): Json<CreatePool>,
) -> ApiResult<(StatusCode, Json<PoolCreated>)> {
    Ok((StatusCode::CREATED, Json(create_pool(&state, request).await?)))
}

/// Creates a private pool from its owner's CSR, for the API and the UI: the answer holds
/// the token, which is shown this once and never stored.
pub(crate) async fn create_pool(
    state: &AppState,
    request: CreatePool,
) -> Result<PoolCreated, ApiError> {
    validate_name("pool", &request.name).map_err(|e| ApiError::invalid(e.to_string()))?;
    if request.name == crate::shared_pool::NAME {
        return Err(ApiError::invalid(format!(
            "{:?} is the server's own pool: choose another name",
            crate::shared_pool::NAME
        )));
    }
    if state.store.find_pool_by_name(&request.name).await?.is_some() {
        return Err(ApiError::Store(gantry_store::StoreError::AlreadyExists {
            kind: "pool",
            name: request.name,
        }));
    }
    let id = PoolId::generate();
    let issued =
        state.ca.issue_pool_certificate(&request.csr, &id.to_string()).map_err(ApiError::Csr)?;
    let at = now();
    let record = PoolRecord {
        id,
        name: request.name,
        kind: PoolKind::Private,
        description: request.description,
        labels: request.labels,
        certificate_pem: Some(issued.certificate.pem().to_owned()),
        certificate_fingerprint: Some(issued.certificate.fingerprint().to_owned()),
        key_algorithm: Some(issued.key_algorithm.to_string()),
        cycle_requested_at: None,
        created_at: at,
        updated_at: at,
    };
    state.store.insert_pool(&record).await?;
    tracing::info!(pool = %record.id, name = %record.name, key = %issued.key_algorithm, "pool created");
    let token = PoolToken::new(
        state.public_url.clone(),
        state.token_server_ca.clone(),
        id.to_string(),
        issued.certificate.pem().to_owned(),
    );
    let pool = views::pool(&record, &[], &[], &[]);
    Ok(PoolCreated { pool, token: token.encode() })
}

/// A new certificate from a new CSR: every launcher of the pool must restart with the
/// new token and key. Sessions opened with the old certificate end now; runs that were
/// executing on the pool's launchers fail, runs handed to them go back to the queue.
pub(super) async fn reset(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
    Json(request): Json<ResetPool>,
) -> ApiResult<Json<PoolCreated>> {
    let pool = lookup::pool(&state, &key).await?;
    if pool.kind != PoolKind::Private {
        return Err(ApiError::invalid(format!(
            "pool {} is run by the server itself: it has no certificate to reset",
            pool.name
        )));
    }
    let issued = state
        .ca
        .issue_pool_certificate(&request.csr, &pool.id.to_string())
        .map_err(ApiError::Csr)?;
    let record = state
        .store
        .reset_pool_certificate(
            pool.id,
            issued.certificate.pem(),
            issued.certificate.fingerprint(),
            &issued.key_algorithm.to_string(),
            now(),
        )
        .await?;
    // The old certificate's sessions end now, not when a cached validation goes stale.
    state.sessions.forget_pool(pool.id);
    state.events.tell_cluster(ClusterSignal::PoolSessions(pool.id));
    let workers = state.store.list_workers(Some(pool.id)).await?;
    for worker in &workers {
        let Some(run) = worker.current_run_id else { continue };
        let Some(run) = state.store.get_run(run).await? else { continue };
        if run.worker_id != Some(worker.id) || run.state.is_terminal() {
            continue;
        }
        let outcome = if run.state.wants_worker() {
            lifecycle::unassign(&state, &run).await
        } else {
            lifecycle::fail(
                &state,
                &run,
                "the pool was reset while the run executed: its launcher lost its certificate",
            )
            .await
        };
        if let Err(error) = outcome
            && !lifecycle::lost_race(&error)
        {
            return Err(error);
        }
    }
    let ids: Vec<_> = workers.iter().map(|worker| worker.id).collect();
    state.store.delete_workers(&ids).await?;
    state.events.pool_workers_changed(pool.id);
    // Their long-polls wake, find their sessions gone, and the launchers learn of the reset.
    for worker in &workers {
        state.events.wake_launcher(worker.launcher_id);
    }
    state.events.request_scheduling();
    tracing::warn!(pool = %record.name, key = %issued.key_algorithm, workers = ids.len(), "pool reset: its launchers must restart with the new token");
    let token = PoolToken::new(
        state.public_url.clone(),
        state.token_server_ca.clone(),
        pool.id.to_string(),
        issued.certificate.pem().to_owned(),
    );
    let stacks = state.store.list_stacks().await?;
    Ok(Json(PoolCreated { pool: views::pool(&record, &[], &[], &stacks), token: token.encode() }))
}

pub(super) async fn list(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> ApiResult<Json<PoolList>> {
    let reach = actor.reach(&state).await?;
    let pools =
        visible(all_pools(&state).await?, reach.as_ref(), |reach, pool| reach.pool(pool.id));
    Ok(Json(PoolList { pools }))
}

/// Every pool with its counts: the API's list and the UI's.
pub(crate) async fn all_pools(state: &AppState) -> Result<Vec<Pool>, ApiError> {
    let workers = state.store.list_workers(None).await?;
    let runs = state.store.active_runs().await?;
    let stacks = state.store.list_stacks().await?;
    Ok(state
        .store
        .list_pools()
        .await?
        .iter()
        .map(|pool| views::pool(pool, &workers, &runs, &stacks))
        .collect())
}

pub(super) async fn show(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
) -> ApiResult<Json<Pool>> {
    let pool = lookup::pool(&state, &key).await?;
    Ok(Json(one_pool(&state, &pool).await?))
}

/// One pool with its counts.
pub(crate) async fn one_pool(state: &AppState, pool: &PoolRecord) -> Result<Pool, ApiError> {
    let workers = state.store.list_workers(Some(pool.id)).await?;
    let runs = state.store.active_runs().await?;
    let stacks = state.store.list_stacks().await?;
    Ok(views::pool(pool, &workers, &runs, &stacks))
}

/// Drains every worker of the pool: they finish their runs and take no new one.
pub(super) async fn drain(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
) -> ApiResult<Json<Drained>> {
    Ok(Json(set_drained(&state, &key, true).await?))
}

/// Undrains every worker of the pool; waiting runs are scheduled at once.
pub(super) async fn undrain(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
) -> ApiResult<Json<Drained>> {
    Ok(Json(set_drained(&state, &key, false).await?))
}

/// Drains or undrains every worker of the pool (the API's and the UI's "drain all").
pub(crate) async fn set_drained(
    state: &AppState,
    key: &str,
    drained: bool,
) -> Result<Drained, ApiError> {
    let pool = lookup::pool(state, key).await?;
    let workers = state.store.set_pool_drained(pool.id, drained).await?;
    tracing::info!(pool = %pool.name, drained, workers = workers.len(), "pool drain changed");
    if !drained {
        state.events.request_scheduling();
    }
    state.events.pool_workers_changed(pool.id);
    Ok(Drained { workers: views::visible_workers(&pool, &workers) })
}

/// Asks every launcher connected now to take no new run and exit after its current
/// ones (a supervisor restarts it, with a fresh binary): their workers are drained, and
/// launchers that connect after the request are not affected.
pub(super) async fn cycle(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
) -> ApiResult<Json<Pool>> {
    let pool = lookup::pool(&state, &key).await?;
    if pool.kind != PoolKind::Private {
        return Err(ApiError::invalid(format!(
            "pool {} is run by the server itself: it cannot be cycled",
            pool.name
        )));
    }
    let record = state.store.request_pool_cycle(pool.id, now()).await?;
    state.sessions.forget_pool(pool.id);
    state.events.tell_cluster(ClusterSignal::PoolSessions(pool.id));
    let workers = state.store.set_pool_drained(pool.id, true).await?;
    for worker in &workers {
        state.events.wake_launcher(worker.launcher_id);
    }
    state.events.pool_workers_changed(pool.id);
    tracing::info!(pool = %pool.name, workers = workers.len(), "pool cycle requested");
    let runs = state.store.active_runs().await?;
    let stacks = state.store.list_stacks().await?;
    Ok(Json(views::pool(&record, &workers, &runs, &stacks)))
}

/// The pool's queue: runs in progress first, then waiting runs in the order they will
/// get workers, each with why it waits.
pub(super) async fn queue(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
) -> ApiResult<Json<Queue>> {
    let pool = lookup::pool(&state, &key).await?;
    Ok(Json(pool_queue(&state, &pool).await?))
}

/// The queue of one pool, as the API and the UI show it.
pub(crate) async fn pool_queue(state: &AppState, pool: &PoolRecord) -> Result<Queue, ApiError> {
    let runs: Vec<_> =
        state.store.active_runs().await?.into_iter().filter(|run| run.pool_id == pool.id).collect();
    let views = RunViews::load(state).await?;
    let mut entries = Vec::new();
    let (mut in_progress, waiting): (Vec<_>, Vec<_>) = runs.iter().partition(|run| {
        run.worker_id.is_some() || run.state.occupies_worker() || run.state == RunState::Unconfirmed
    });
    in_progress.sort_by_key(|run| (run.updated_at, run.id));
    for run in in_progress {
        entries.push(QueueEntry { run: views.run(state, run).await?, in_progress: true });
    }
    let by_id: std::collections::HashMap<_, _> = waiting.iter().map(|run| (run.id, *run)).collect();
    for (run_id, _) in &views.waiting {
        if let Some(run) = by_id.get(run_id) {
            entries.push(QueueEntry { run: views.run(state, run).await?, in_progress: false });
        }
    }
    Ok(Queue { pool: pool.name.clone(), entries })
}
