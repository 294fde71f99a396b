//! The REST API under `/api/v1`, for people and scripts holding an API key: each route
//! with the least role it needs and what its scope is checked against.

mod dependencies;
mod lock_fences;
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
use axum::http::Method;
use gantry_domain::access::Role;
use gantry_proto::api::Health;

use crate::access::keys;
use crate::access::routes::{self, Guarded, PUBLIC, Plane, Target, needs};
use crate::error::{ApiError, Json};
use crate::state::AppState;
use crate::{schedules, webhooks};

/// Every route of the REST API with who may call it: the router is built from this
/// table, and the authorization matrix test reads it.
pub(crate) fn routes() -> Vec<Guarded> {
    use Role::{Admin, Operator, Reader, Writer};
    use Target::{Listed, NewPool, NewStack, Pool, Run, Stack, StackAndUpstream, Unscoped, Worker};
    vec![
        Guarded::new(Method::GET, "/health", PUBLIC, health),
        Guarded::new(Method::GET, "/ready", PUBLIC, ready),
        Guarded::new(Method::GET, "/keys", needs(Admin, Unscoped), keys::list),
        Guarded::new(Method::POST, "/keys", needs(Admin, Unscoped), keys::create),
        Guarded::new(Method::DELETE, "/keys/{key}", needs(Admin, Unscoped), keys::revoke),
        Guarded::new(Method::GET, "/audit", needs(Admin, Unscoped), crate::audit::list),
        Guarded::new(Method::GET, "/webhooks", needs(Admin, Unscoped), webhooks::list),
        Guarded::new(Method::POST, "/webhooks", needs(Admin, Unscoped), webhooks::create),
        Guarded::new(
            Method::GET,
            "/webhooks/deliveries",
            needs(Admin, Unscoped),
            webhooks::deliveries,
        ),
        // The provider's name: a delivery is authenticated by its signature, not a key.
        Guarded::new(Method::POST, "/webhooks/{webhook}", PUBLIC, webhooks::receive),
        Guarded::new(
            Method::DELETE,
            "/webhooks/{webhook}",
            needs(Admin, Unscoped),
            webhooks::delete,
        ),
        Guarded::new(
            Method::GET,
            "/webhooks/{webhook}/secret",
            needs(Admin, Unscoped),
            webhooks::secret,
        ),
        Guarded::new(Method::GET, "/audit/verify", needs(Admin, Unscoped), crate::audit::verify),
        Guarded::new(Method::GET, "/pools", needs(Reader, Listed), pools::list),
        Guarded::new(Method::POST, "/pools", needs(Operator, NewPool), pools::create),
        Guarded::new(Method::GET, "/pools/{pool}", needs(Reader, Pool), pools::show),
        Guarded::new(Method::POST, "/pools/{pool}/reset", needs(Operator, Pool), pools::reset),
        Guarded::new(Method::POST, "/pools/{pool}/drain", needs(Operator, Pool), pools::drain),
        Guarded::new(Method::POST, "/pools/{pool}/undrain", needs(Operator, Pool), pools::undrain),
        Guarded::new(Method::POST, "/pools/{pool}/cycle", needs(Operator, Pool), pools::cycle),
        Guarded::new(Method::GET, "/pools/{pool}/queue", needs(Reader, Pool), pools::queue),
        Guarded::new(
            Method::GET,
            "/pools/{pool}/workers",
            needs(Reader, Pool),
            workers::list_in_pool,
        ),
        Guarded::new(
            Method::GET,
            "/pools/{pool}/certificate",
            needs(Reader, Pool),
            stack_secrets::certificate,
        ),
        Guarded::new(Method::GET, "/workers", needs(Reader, Listed), workers::list),
        Guarded::new(
            Method::POST,
            "/workers/{worker}/drain",
            needs(Operator, Worker),
            workers::drain,
        ),
        Guarded::new(
            Method::POST,
            "/workers/{worker}/undrain",
            needs(Operator, Worker),
            workers::undrain,
        ),
        Guarded::new(Method::GET, "/stacks", needs(Reader, Listed), stacks::list),
        Guarded::new(Method::POST, "/stacks", needs(Operator, NewStack), stacks::create),
        Guarded::new(Method::GET, "/stacks/{stack}", needs(Reader, Stack), stacks::show),
        Guarded::new(Method::POST, "/stacks/{stack}/runs", needs(Writer, Stack), runs::trigger),
        Guarded::new(
            Method::POST,
            "/stacks/{stack}/unfence",
            needs(Admin, Stack),
            lock_fences::unfence,
        ),
        Guarded::new(
            Method::PUT,
            "/stacks/{stack}/secrets",
            needs(Operator, Stack),
            stack_secrets::set,
        ),
        Guarded::new(
            Method::GET,
            "/stacks/{stack}/state/versions",
            needs(Reader, Stack),
            state_versions::list,
        ),
        Guarded::new(
            Method::POST,
            "/stacks/{stack}/state/rollback",
            needs(Operator, Stack),
            state_versions::rollback,
        ),
        Guarded::new(
            Method::POST,
            "/stacks/{stack}/state/adopt",
            needs(Operator, Stack),
            state_versions::adopt,
        ),
        Guarded::new(
            Method::GET,
            "/stacks/{stack}/dependencies",
            needs(Reader, Stack),
            dependencies::list,
        ),
        Guarded::new(
            Method::POST,
            "/stacks/{stack}/dependencies",
            needs(Operator, StackAndUpstream),
            dependencies::add,
        ),
        Guarded::new(
            Method::DELETE,
            "/stacks/{stack}/dependencies/{upstream}",
            needs(Operator, StackAndUpstream),
            dependencies::remove,
        ),
        Guarded::new(
            Method::GET,
            "/stacks/{stack}/schedules",
            needs(Reader, Stack),
            schedules::list,
        ),
        Guarded::new(
            Method::POST,
            "/stacks/{stack}/schedules",
            needs(Operator, Stack),
            schedules::create,
        ),
        Guarded::new(
            Method::DELETE,
            "/stacks/{stack}/schedules/{schedule}",
            needs(Operator, Stack),
            schedules::delete,
        ),
        Guarded::new(Method::GET, "/runs", needs(Reader, Listed), runs::list),
        Guarded::new(Method::GET, "/runs/{run}", needs(Reader, Run), runs::show),
        Guarded::new(Method::POST, "/runs/{run}/confirm", needs(Writer, Run), runs::confirm),
        Guarded::new(Method::POST, "/runs/{run}/discard", needs(Writer, Run), runs::discard),
        Guarded::new(Method::POST, "/runs/{run}/stop", needs(Writer, Run), runs::stop),
        Guarded::new(Method::POST, "/runs/{run}/fail", needs(Admin, Run), runs::fail),
        Guarded::new(
            Method::POST,
            "/runs/{run}/prioritize",
            needs(Operator, Run),
            runs::prioritize,
        ),
        Guarded::new(Method::GET, "/runs/{run}/logs", needs(Reader, Run), logs::page),
        Guarded::new(Method::GET, "/runs/{run}/logs/stream", needs(Reader, Run), logs::stream),
    ]
}

pub(crate) fn router(state: AppState) -> Router<AppState> {
    routes::router(&state, Plane::Api, routes())
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
