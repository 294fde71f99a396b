//! Stack dependencies: "this stack depends on that one", with the upstream outputs its
//! runs read as environment variables. The graph stays acyclic: an edge that would close
//! a cycle is refused with the cycle named.

use std::collections::{HashMap, HashSet};

use axum::extract::State;
use axum::http::StatusCode;
use gantry_domain::StackId;
use gantry_domain::validation::validate_environment_name;
use gantry_proto::api::{AddDependency, Dependencies, Dependency, OutputReference};
use gantry_store::{DependencyRecord, OutputReferenceRecord, StackRecord};

use crate::error::{ApiError, ApiResult, Json, PathParam};
use crate::lookup;
use crate::scheduling::dependency_graph;
use crate::state::{AppState, now};

pub(super) async fn add(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
    Json(request): Json<AddDependency>,
) -> ApiResult<(StatusCode, Json<Dependencies>)> {
    let downstream = lookup::stack(&state, &key).await?;
    let upstream = lookup::stack(&state, &request.upstream).await?;
    let mut variables = HashSet::new();
    for reference in &request.references {
        if reference.output.trim().is_empty() {
            return Err(ApiError::invalid("an output reference needs the upstream output's name"));
        }
        validate_environment_name(&reference.variable)
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        if !variables.insert(reference.variable.clone()) {
            return Err(ApiError::invalid(format!(
                "variable {:?} receives two outputs",
                reference.variable
            )));
        }
    }
    let graph = dependency_graph(&state).await?;
    if let Some(cycle) = graph.cycle_if_added(downstream.id, upstream.id) {
        let names = stack_names(&state).await?;
        let path: Vec<&str> =
            cycle.iter().map(|id| names.get(id).map_or("?", String::as_str)).collect();
        return Err(ApiError::invalid(format!(
            "stack {} cannot depend on {}: that would close the cycle {}",
            downstream.name,
            upstream.name,
            path.join(" → ")
        )));
    }
    let record = DependencyRecord {
        downstream: downstream.id,
        upstream: upstream.id,
        references: request
            .references
            .into_iter()
            .map(|r| OutputReferenceRecord {
                output: r.output,
                variable: r.variable,
                trigger_always: r.trigger_always,
            })
            .collect(),
        created_at: now(),
    };
    state.store.put_dependency(&record).await?;
    tracing::info!(downstream = %downstream.name, upstream = %upstream.name, "stack dependency added");
    state.events.request_scheduling();
    Ok((StatusCode::CREATED, Json(view(&state, &downstream).await?)))
}

pub(super) async fn list(
    State(state): State<AppState>,
    PathParam(key): PathParam<String>,
) -> ApiResult<Json<Dependencies>> {
    let stack = lookup::stack(&state, &key).await?;
    Ok(Json(view(&state, &stack).await?))
}

pub(super) async fn remove(
    State(state): State<AppState>,
    PathParam((key, upstream)): PathParam<(String, String)>,
) -> ApiResult<Json<Dependencies>> {
    let downstream = lookup::stack(&state, &key).await?;
    let upstream_stack = lookup::stack(&state, &upstream).await?;
    if !state.store.delete_dependency(downstream.id, upstream_stack.id).await? {
        return Err(ApiError::not_found(
            "dependency",
            format!("{} on {}", downstream.name, upstream_stack.name),
        ));
    }
    state.events.request_scheduling();
    Ok(Json(view(&state, &downstream).await?))
}

async fn stack_names(state: &AppState) -> Result<HashMap<StackId, String>, ApiError> {
    Ok(state.store.list_stacks().await?.into_iter().map(|stack| (stack.id, stack.name)).collect())
}

async fn view(state: &AppState, stack: &StackRecord) -> Result<Dependencies, ApiError> {
    let names = stack_names(state).await?;
    let edges = state.store.list_dependencies().await?;
    let name = |id: &StackId| names.get(id).cloned().unwrap_or_else(|| id.to_string());
    Ok(Dependencies {
        upstream: edges
            .iter()
            .filter(|edge| edge.downstream == stack.id)
            .map(|edge| Dependency {
                upstream_id: edge.upstream,
                upstream: name(&edge.upstream),
                references: edge
                    .references
                    .iter()
                    .map(|r| OutputReference {
                        output: r.output.clone(),
                        variable: r.variable.clone(),
                        trigger_always: r.trigger_always,
                    })
                    .collect(),
            })
            .collect(),
        downstream: edges
            .iter()
            .filter(|edge| edge.upstream == stack.id)
            .map(|edge| name(&edge.downstream))
            .collect(),
    })
}
