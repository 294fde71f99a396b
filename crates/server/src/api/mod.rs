//! The REST API under `/api/v1`, for people and scripts holding an admin API key.

mod dependencies;
pub(crate) mod logs;
pub(crate) mod pools;
pub(crate) mod runs;
mod stack_secrets;
pub(crate) mod stacks;
pub(crate) mod state_versions;
pub(crate) mod workers;

use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post, put};
use gantry_proto::api::Health;

use crate::auth::require_admin;
use crate::error::{ApiError, Json};
use crate::state::AppState;

pub(crate) fn router(state: AppState) -> Router<AppState> {
    let admin = Router::new()
        .route("/pools", get(pools::list).post(pools::create))
        .route("/pools/{pool}", get(pools::show))
        .route("/pools/{pool}/reset", post(pools::reset))
        .route("/pools/{pool}/drain", post(pools::drain))
        .route("/pools/{pool}/undrain", post(pools::undrain))
        .route("/pools/{pool}/cycle", post(pools::cycle))
        .route("/pools/{pool}/queue", get(pools::queue))
        .route("/pools/{pool}/workers", get(workers::list_in_pool))
        .route("/pools/{pool}/certificate", get(stack_secrets::certificate))
        .route("/workers", get(workers::list))
        .route("/workers/{worker}/drain", post(workers::drain))
        .route("/workers/{worker}/undrain", post(workers::undrain))
        .route("/stacks", get(stacks::list).post(stacks::create))
        .route("/stacks/{stack}", get(stacks::show))
        .route("/stacks/{stack}/runs", post(runs::trigger))
        .route("/stacks/{stack}/secrets", put(stack_secrets::set))
        .route("/stacks/{stack}/state/versions", get(state_versions::list))
        .route("/stacks/{stack}/state/rollback", post(state_versions::rollback))
        .route("/stacks/{stack}/dependencies", get(dependencies::list).post(dependencies::add))
        .route(
            "/stacks/{stack}/dependencies/{upstream}",
            axum::routing::delete(dependencies::remove),
        )
        .route("/runs", get(runs::list))
        .route("/runs/{run}", get(runs::show))
        .route("/runs/{run}/confirm", post(runs::confirm))
        .route("/runs/{run}/discard", post(runs::discard))
        .route("/runs/{run}/stop", post(runs::stop))
        .route("/runs/{run}/prioritize", post(runs::prioritize))
        .route("/runs/{run}/logs", get(logs::page))
        .route("/runs/{run}/logs/stream", get(logs::stream))
        .route_layer(from_fn_with_state(state, require_admin));
    Router::new().route("/health", get(health)).route("/ready", get(ready)).merge(admin)
}

/// How long readiness waits for the database: under the kubelet's default probe timeout
/// (1 s), so that a failing probe gets an answer that names the cause.
const READY_TIMEOUT: Duration = Duration::from_millis(800);

/// The process is up: for liveness probes, which must not restart a replica because its
/// database is away.
async fn health() -> Json<Health> {
    status("ok")
}

/// The replica can serve: its database answers. For readiness probes and load balancers,
/// which then send requests to the replicas that can.
async fn ready(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    match tokio::time::timeout(READY_TIMEOUT, state.store.ping()).await {
        Ok(answered) => answered.map(|()| status("ready")).map_err(ApiError::from),
        Err(_) => Err(ApiError::Unavailable(format!(
            "the database did not answer within {} ms",
            READY_TIMEOUT.as_millis()
        ))),
    }
}

fn status(status: &str) -> Json<Health> {
    Json(Health { status: status.to_owned(), version: env!("CARGO_PKG_VERSION").to_owned() })
}
