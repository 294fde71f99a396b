//! Stacks: what to run (repository, branch, project root, tool), where (pool), and with
//! which environment.

use std::collections::HashSet;

use axum::Extension;
use axum::extract::State;
use axum::http::StatusCode;
use gantry_domain::validation::{
    validate_branch, validate_environment_name, validate_project_root, validate_repository,
};
use gantry_domain::{EnvironmentVariable, StackId, validate_name};
use gantry_proto::api::{CreateStack, Stack, StackList};
use gantry_store::StackRecord;

use crate::access::{Actor, visible};
use crate::error::{ApiError, ApiResult, Json, PathParam};
use crate::state::{AppState, now};
use crate::{lookup, views};

pub(super) async fn create(
    State(state): State<AppState>,
    Json(request): Json<CreateStack>,
) -> ApiResult<(StatusCode, Json<Stack>)> {
    let invalid = |e: &dyn std::fmt::Display| ApiError::invalid(e.to_string());
    validate_name("stack", &request.name).map_err(|e| invalid(&e))?;
    validate_repository(&request.repository).map_err(|e| invalid(&e))?;
    validate_branch(&request.branch).map_err(|e| invalid(&e))?;
    validate_project_root(&request.project_root).map_err(|e| invalid(&e))?;
    let pool = match &request.pool {
        Some(pool) => lookup::pool(&state, pool).await?,
        None => lookup::pool(&state, crate::shared_pool::NAME).await?,
    };
    let environment = stored_environment(&pool, &request.name, request.environment)?;
    let trigger_paths = trigger_paths(request.trigger_paths)?;
    let record = StackRecord {
        id: StackId::generate(),
        name: request.name,
        repository: request.repository,
        branch: request.branch,
        project_root: request
            .project_root
            .trim_start_matches("./")
            .trim_end_matches('/')
            .to_owned(),
        pool_id: pool.id,
        tool: request.tool.unwrap_or_default(),
        runner_image: request.runner_image.filter(|image| !image.trim().is_empty()),
        autodeploy: request.autodeploy,
        managed_state: request.managed_state,
        share_sensitive_outputs: request.share_sensitive_outputs,
        environment,
        description: request.description,
        labels: request.labels,
        trigger_paths,
        created_at: now(),
    };
    state.store.insert_stack(&record).await?;
    tracing::info!(stack = %record.id, name = %record.name, pool = %pool.name, "stack created");
    Ok((StatusCode::CREATED, Json(views::stack(&record, &pool.name))))
}

/// Trigger paths as the server keeps them: trimmed, each checked, no more than a stack may
/// have.
fn trigger_paths(patterns: Vec<String>) -> Result<Vec<String>, ApiError> {
    use gantry_webhooks::trigger_paths::{MAX_PATTERNS, validate};
    if patterns.len() > MAX_PATTERNS {
        return Err(ApiError::invalid(format!(
            "{} trigger paths are given: a stack may have at most {MAX_PATTERNS}",
            patterns.len()
        )));
    }
    patterns
        .into_iter()
        .map(|pattern| {
            validate(&pattern).map_err(ApiError::invalid)?;
            Ok(pattern.trim().to_owned())
        })
        .collect()
}

/// The variables as the server keeps them, secrets sealed to `pool`'s certificate for
/// `stack` (`stack_secrets::stored_variable`), after checking names and duplicates.
pub(super) fn stored_environment(
    pool: &gantry_store::PoolRecord,
    stack: &str,
    variables: Vec<gantry_proto::api::EnvironmentVariable>,
) -> Result<Vec<EnvironmentVariable>, ApiError> {
    let certificate = crate::stack_secrets::pool_certificate(pool)?;
    let mut seen = HashSet::new();
    let mut environment = Vec::new();
    for variable in variables {
        validate_environment_name(&variable.name).map_err(|e| ApiError::invalid(e.to_string()))?;
        if !seen.insert(variable.name.clone()) {
            return Err(ApiError::invalid(format!(
                "environment variable {:?} is given twice",
                variable.name
            )));
        }
        environment.push(crate::stack_secrets::stored_variable(
            pool,
            &certificate,
            stack,
            variable,
        )?);
    }
    Ok(environment)
}

pub(super) async fn list(
    State(state): State<AppState>,
    Extension(actor): Extension<Actor>,
) -> ApiResult<Json<StackList>> {
    let reach = actor.reach(&state).await?;
    let stacks =
        visible(all_stacks(&state).await?, reach.as_ref(), |reach, stack| reach.stack(stack.id));
    Ok(Json(StackList { stacks }))
}

/// Every stack with its pool's name: the API's list and the UI's.
pub(crate) async fn all_stacks(state: &AppState) -> Result<Vec<Stack>, ApiError> {
    let pools: std::collections::HashMap<_, _> =
        state.store.list_pools().await?.into_iter().map(|pool| (pool.id, pool.name)).collect();
    let mut fences = super::lock_fences::in_force(state).await?;
    let mut drifts = crate::drift::by_stack(state).await?;
    Ok(state
        .store
        .list_stacks()
        .await?
        .iter()
        .map(|stack| {
            let mut view =
                views::stack(stack, pools.get(&stack.pool_id).map(String::as_str).unwrap_or("?"));
            view.lock_fence = fences.remove(&stack.id);
            view.drift = drifts.remove(&stack.id);
            view
        })
        .collect())
}

pub(super) async fn show(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
) -> ApiResult<Json<Stack>> {
    let stack = lookup::stack(&state, &key).await?;
    Ok(Json(one_stack(&state, &stack).await?))
}

/// One stack with its pool's name.
pub(crate) async fn one_stack(state: &AppState, stack: &StackRecord) -> Result<Stack, ApiError> {
    let pool_name =
        state.store.get_pool(stack.pool_id).await?.map(|pool| pool.name).unwrap_or_default();
    let mut view = views::stack(stack, &pool_name);
    view.lock_fence = super::lock_fences::in_force(state).await?.remove(&stack.id);
    view.drift = crate::drift::by_stack(state).await?.remove(&stack.id);
    Ok(view)
}
