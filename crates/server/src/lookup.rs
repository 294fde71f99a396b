//! Finding pools, stacks and runs from what users type: an id or a name.

use gantry_store::{PoolRecord, RunRecord, StackRecord};

use crate::auth::AgentSession;
use crate::error::ApiError;
use crate::state::AppState;

pub(crate) async fn pool(state: &AppState, key: &str) -> Result<PoolRecord, ApiError> {
    let found = match key.parse() {
        Ok(id) => state.store.get_pool(id).await?,
        Err(_) => state.store.find_pool_by_name(key).await?,
    };
    found.ok_or_else(|| ApiError::not_found("pool", key))
}

pub(crate) async fn stack(state: &AppState, key: &str) -> Result<StackRecord, ApiError> {
    let found = match key.parse() {
        Ok(id) => state.store.get_stack(id).await?,
        Err(_) => state.store.find_stack_by_name(key).await?,
    };
    found.ok_or_else(|| ApiError::not_found("stack", key))
}

pub(crate) async fn run(state: &AppState, key: &str) -> Result<RunRecord, ApiError> {
    let id = key.parse().map_err(|_| ApiError::not_found("run", key))?;
    state.store.get_run(id).await?.ok_or_else(|| ApiError::not_found("run", key))
}

/// A run asked about by a launcher: the run, and whether one of that launcher's workers
/// holds it. Runs of other pools do not exist for it.
pub(crate) async fn launcher_run(
    state: &AppState,
    session: &AgentSession,
    key: &str,
) -> Result<(RunRecord, bool), ApiError> {
    let id = key.parse().map_err(|_| ApiError::not_found("run", key))?;
    match state.store.get_run_with_launcher(id).await? {
        Some((run, holder)) if run.pool_id == session.pool_id => {
            Ok((run, holder == Some(session.launcher_id)))
        }
        _ => Err(ApiError::not_found("run", key)),
    }
}
