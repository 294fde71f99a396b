//! What clients seal a stack's secrets with, and secrets given again: after a pool reset,
//! resealed by `gantry stack secrets reseal`, or when the stack moves to another pool.

use axum::extract::State;
use gantry_domain::EnvironmentVariable;
use gantry_proto::api::{PoolCertificate, SetStackSecrets, Stack};

use crate::error::{ApiError, ApiResult, Json, PathParam};
use crate::state::AppState;
use crate::{lookup, stack_secrets};

/// The pool's certificate, issued by the server's authority: a client seals secrets to
/// it (and may check it against the server CA it trusts).
pub(super) async fn certificate(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
) -> ApiResult<Json<PoolCertificate>> {
    let pool = lookup::pool(&state, &key).await?;
    let certificate = stack_secrets::pool_certificate(&pool)?;
    Ok(Json(PoolCertificate {
        pool_id: pool.id,
        pool_name: pool.name,
        certificate: certificate.pem().to_owned(),
        fingerprint: certificate.fingerprint().to_owned(),
    }))
}

/// Replaces or adds secret variables, sealed to the stack's pool — or to the pool it
/// moves to, which then needs every secret variable of the stack: what was sealed to the
/// old pool's key does not open on the new pool.
pub(super) async fn set(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
    Json(request): Json<SetStackSecrets>,
) -> ApiResult<Json<Stack>> {
    let stack = lookup::stack(&state, &key).await?;
    let current =
        state.store.get_pool(stack.pool_id).await?.ok_or_else(|| {
            ApiError::Internal(format!("the pool of stack {} is gone", stack.name))
        })?;
    let target = match &request.pool {
        Some(pool) => lookup::pool(&state, pool).await?,
        None => current.clone(),
    };
    if let Some(plain) = request.secrets.iter().find(|variable| !variable.secret) {
        return Err(ApiError::invalid(format!(
            "{:?} is not marked secret: only secret variables are set here",
            plain.name
        )));
    }
    let given = super::stacks::stored_environment(&target, &stack.name, request.secrets)?;
    let moving = target.id != stack.pool_id;
    if moving {
        refuse_move(&state, &stack, &current, &target, &given).await?;
    }
    let mut environment: Vec<EnvironmentVariable> = stack
        .environment
        .iter()
        .filter(|variable| !given.iter().any(|new| new.name == variable.name))
        .cloned()
        .collect();
    let names: Vec<String> = given.iter().map(|variable| variable.name.clone()).collect();
    environment.extend(given);
    state.store.update_stack_environments(&[(stack.id, target.id, environment)]).await?;
    tracing::info!(stack = %stack.name, pool = %target.name, moved = moving, variables = ?names, "secret variables set");
    let stack = lookup::stack(&state, &stack.id.to_string()).await?;
    Ok(Json(super::stacks::one_stack(&state, &stack).await?))
}

/// Why the stack cannot move to `target` now, if it cannot: runs still going on its
/// pool, managed state sealed to its pool's key, or secret values not given again.
async fn refuse_move(
    state: &AppState,
    stack: &gantry_store::StackRecord,
    current: &gantry_store::PoolRecord,
    target: &gantry_store::PoolRecord,
    given: &[EnvironmentVariable],
) -> Result<(), ApiError> {
    let (name, from, to) = (&stack.name, &current.name, &target.name);
    if state.store.active_runs().await?.iter().any(|run| run.stack_id == stack.id) {
        return Err(ApiError::Conflict(format!(
            "stack {name} has unfinished runs on pool {from}: wait for them or stop them before moving it to pool {to}"
        )));
    }
    if state.store.current_state_version(stack.id).await?.is_some() {
        return Err(ApiError::Conflict(format!(
            "stack {name} keeps managed state sealed to pool {from}'s key, which pool {to} cannot open: it cannot move"
        )));
    }
    let missing: Vec<&str> = stack
        .environment
        .iter()
        .filter(|variable| variable.secret && !given.iter().any(|new| new.name == variable.name))
        .map(|variable| variable.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::Conflict(format!(
            "moving stack {name} to pool {to} needs the values of its secret variables {} again: they are sealed to pool {from}'s key. Give them (gantry stack move {name} --pool {to} --secret-env NAME=VALUE) or reseal them where pool {from}'s key is (gantry stack secrets reseal {name} --old-key FILE --pool {to})",
            missing.join(", ")
        )));
    }
    Ok(())
}
