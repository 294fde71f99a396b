//! Pools: creation from a CSR (the token is returned once), listing, details.

use axum::extract::State;
use axum::http::StatusCode;
use gantry_crypto::PoolToken;
use gantry_domain::{PoolId, PoolKind, validate_name};
use gantry_proto::api::{CreatePool, Pool, PoolCreated, PoolList, ResetPool};
use gantry_store::PoolRecord;

use crate::error::{ApiError, ApiResult, Json, PathParam};
use crate::state::{AppState, now};
use crate::{lifecycle, lookup, views};

pub(super) async fn create(
    State(state): State<AppState>,
    Json(request): Json<CreatePool>,
) -> ApiResult<(StatusCode, Json<PoolCreated>)> {
    validate_name("pool", &request.name).map_err(|e| ApiError::invalid(e.to_string()))?;
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
    let pool = views::pool(&record, &[], &[]);
    Ok((StatusCode::CREATED, Json(PoolCreated { pool, token: token.encode() })))
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
    Ok(Json(PoolCreated { pool: views::pool(&record, &[], &[]), token: token.encode() }))
}

pub(super) async fn list(State(state): State<AppState>) -> ApiResult<Json<PoolList>> {
    let workers = state.store.list_workers(None).await?;
    let runs = state.store.active_runs().await?;
    let pools = state
        .store
        .list_pools()
        .await?
        .iter()
        .map(|pool| views::pool(pool, &workers, &runs))
        .collect();
    Ok(Json(PoolList { pools }))
}

pub(super) async fn show(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
) -> ApiResult<Json<Pool>> {
    let pool = lookup::pool(&state, &key).await?;
    let workers = state.store.list_workers(Some(pool.id)).await?;
    let runs = state.store.active_runs().await?;
    Ok(Json(views::pool(&pool, &workers, &runs)))
}
