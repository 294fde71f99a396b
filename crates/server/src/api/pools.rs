//! Pools: creation from a CSR (the token is returned once), listing, details.

use axum::extract::State;
use axum::http::StatusCode;
use gantry_crypto::PoolToken;
use gantry_domain::{PoolId, PoolKind, validate_name};
use gantry_proto::api::{CreatePool, Pool, PoolCreated, PoolList};
use gantry_store::PoolRecord;

use crate::error::{ApiError, ApiResult, Json, PathParam};
use crate::state::{AppState, now};
use crate::{lookup, views};

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
