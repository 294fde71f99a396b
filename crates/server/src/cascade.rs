//! What one run's end means for the stacks that depend on its stack: a finished tracked
//! run triggers downstream stacks whose referenced outputs changed (or that ask to be
//! triggered always); a failed or stopped one skips the downstream runs waiting for it.
//! And what a downstream run receives: the upstream outputs it references, as
//! environment variables.

use std::collections::HashMap;

use gantry_domain::{RunEvent, RunState, RunType, StackId};
use gantry_proto::agent::{BlobRef, SealedInput};
use gantry_store::{DependencyRecord, OutputRecord, RunFilter, RunRecord, StackRecord, StoreError};

use crate::agent::SENSITIVE_OUTPUTS;

use crate::error::ApiError;
use crate::lifecycle::{self, Details};
use crate::scheduling::dependency_graph;
use crate::state::AppState;

/// Reacts to `run` having ended: the effect `Effect::RunEnded` that the run's end
/// recorded (`crate::effects`), tried again until it succeeds. Doing it again after a
/// crash does what once does: a run is triggered once per downstream stack and upstream
/// run (the store refuses a second), and only runs queued before `run` ended are skipped.
pub(crate) async fn after_run_ended(state: &AppState, run: &RunRecord) -> Result<(), ApiError> {
    match run.state {
        RunState::Finished if run.run_type == RunType::Tracked => {
            trigger_downstream(state, run).await
        }
        RunState::Failed | RunState::Stopped if run.run_type.takes_stack_lock() => {
            skip_downstream(state, run).await
        }
        _ => Ok(()),
    }
}

/// The outputs of the stack's newest finished tracked run before `before` (or the
/// newest of all), with that run.
async fn finished_outputs(
    state: &AppState,
    stack: StackId,
    before: Option<&RunRecord>,
) -> Result<Option<(RunRecord, Vec<OutputRecord>)>, ApiError> {
    let runs = state.store.list_runs(&RunFilter { stack_id: Some(stack), limit: 200 }).await?;
    let previous = runs.into_iter().find(|candidate| {
        candidate.run_type == RunType::Tracked
            && candidate.state == RunState::Finished
            && before.is_none_or(|before| {
                (candidate.created_at, candidate.id) < (before.created_at, before.id)
            })
    });
    match previous {
        Some(run) => {
            let outputs = state.store.outputs(run.id).await?;
            Ok(Some((run, outputs)))
        }
        None => Ok(None),
    }
}

async fn trigger_downstream(state: &AppState, upstream_run: &RunRecord) -> Result<(), ApiError> {
    let current: HashMap<String, Option<String>> = state
        .store
        .outputs(upstream_run.id)
        .await?
        .into_iter()
        .map(|output| (output.name, output.value_json))
        .collect();
    let previous: HashMap<String, Option<String>> =
        finished_outputs(state, upstream_run.stack_id, Some(upstream_run))
            .await?
            .map(|(_, outputs)| {
                outputs.into_iter().map(|output| (output.name, output.value_json)).collect()
            })
            .unwrap_or_default();
    for dependency in state
        .store
        .list_dependencies()
        .await?
        .into_iter()
        .filter(|d| d.upstream == upstream_run.stack_id)
    {
        // A sensitive value is unknown here: count it as changed.
        let changed = |output: &str| match (current.get(output), previous.get(output)) {
            (Some(Some(now)), Some(Some(before))) => now != before,
            _ => true,
        };
        let trigger = dependency.references.is_empty()
            || dependency
                .references
                .iter()
                .any(|reference| reference.trigger_always || changed(&reference.output));
        if !trigger {
            tracing::info!(upstream = %upstream_run.id, downstream = %dependency.downstream, "no referenced output changed: the dependent stack is not triggered");
            continue;
        }
        let Some(stack) = state.store.get_stack(dependency.downstream).await? else { continue };
        let triggered_by = format!("dependency:{}", upstream_run.id);
        match lifecycle::trigger(state, &stack, RunType::Tracked, None, None, &triggered_by).await {
            Ok(_) => {}
            Err(ApiError::Store(StoreError::AlreadyExists { .. })) => {
                tracing::info!(upstream = %upstream_run.id, downstream = %stack.name, "the dependent stack was triggered for this run already");
            }
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

async fn skip_downstream(state: &AppState, upstream_run: &RunRecord) -> Result<(), ApiError> {
    let graph = dependency_graph(state).await?;
    let upstream_stack =
        state.store.get_stack(upstream_run.stack_id).await?.map(|s| s.name).unwrap_or_default();
    for run in state.store.active_runs().await? {
        // Queued before the upstream run ended: carried out again later, the effect
        // skips the runs it skipped the first time, and none queued since.
        let waits_for_it = run.state == RunState::Queued
            && run.run_type.takes_stack_lock()
            && run.created_at <= upstream_run.updated_at
            && graph.all_upstream(run.stack_id).contains(&upstream_run.stack_id);
        if !waits_for_it {
            continue;
        }
        let reason = format!(
            "skipped: run {} of stack {upstream_stack}, which this stack depends on, ended {}",
            upstream_run.id, upstream_run.state
        );
        let details = Details { failure: Some(reason), ..Details::default() };
        match lifecycle::apply(state, &run, &RunEvent::Skip, details).await {
            Ok(_) => {}
            Err(error) if lifecycle::lost_race(&error) => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// What a run receives from the outputs its stack references: values as environment
/// variables, and sensitive ones sealed to the pool key for its launcher to open.
#[derive(Debug, Default)]
pub(crate) struct Inputs {
    pub(crate) plain: Vec<(String, String)>,
    pub(crate) sealed: Vec<SealedInput>,
}

/// The inputs of a run of `stack`, or the first reference that cannot be resolved,
/// named with why; `dependencies` are all the stacks' (`Store::list_dependencies`), read
/// by the caller alongside the stack itself. Reads nothing more when the stack
/// references no output.
pub(crate) async fn inputs(
    state: &AppState,
    stack: &StackRecord,
    dependencies: &[DependencyRecord],
) -> Result<Result<Inputs, String>, ApiError> {
    let mut inputs = Inputs::default();
    for dependency in dependencies.iter().filter(|d| d.downstream == stack.id) {
        if dependency.references.is_empty() {
            continue;
        }
        let Some(upstream) = state.store.get_stack(dependency.upstream).await? else { continue };
        let upstream_name = &upstream.name;
        let outputs = finished_outputs(state, dependency.upstream, None).await?;
        for reference in &dependency.references {
            let found = outputs
                .as_ref()
                .and_then(|(_, outputs)| outputs.iter().find(|o| o.name == reference.output));
            let value = match found {
                None => {
                    return Ok(Err(format!(
                        "missing input {}: stack {upstream_name} has no output {:?} from a finished tracked run",
                        reference.variable, reference.output
                    )));
                }
                Some(output) if output.sensitive || output.value_json.is_none() => {
                    let Some((run, _)) = &outputs else { continue };
                    match sealed_input(state, stack, &upstream, run, &reference.output).await? {
                        Ok(blob) => {
                            inputs.sealed.push(SealedInput {
                                variable: reference.variable.clone(),
                                output: reference.output.clone(),
                                upstream_stack: upstream_name.clone(),
                                upstream_stack_id: upstream.id,
                                upstream_run_id: run.id,
                                blob,
                            });
                            continue;
                        }
                        Err(why) => {
                            return Ok(Err(format!(
                                "missing input {}: output {:?} of stack {upstream_name} is sensitive, {why}",
                                reference.variable, reference.output
                            )));
                        }
                    }
                }
                Some(output) => output.value_json.clone().unwrap_or_default(),
            };
            inputs.plain.push((reference.variable.clone(), environment_value(&value)));
        }
    }
    Ok(Ok(inputs))
}

/// Where the sealed sensitive outputs of the upstream run are, or why they cannot reach
/// a run of `stack`. Only the pool that sealed them can open them.
async fn sealed_input(
    state: &AppState,
    stack: &StackRecord,
    upstream: &StackRecord,
    upstream_run: &RunRecord,
    output: &str,
) -> Result<Result<BlobRef, String>, ApiError> {
    if !upstream.share_sensitive_outputs {
        return Ok(Err(format!(
            "and stack {} does not share its sensitive outputs (create it with --share-sensitive-outputs)",
            upstream.name
        )));
    }
    let Some(blob) = state.store.run_blob(upstream_run.id, SENSITIVE_OUTPUTS).await? else {
        return Ok(Err(format!(
            "and the launcher that ran {} (run {}) did not upload its sensitive outputs: set GANTRY_SENSITIVE_OUTPUT_UPLOAD_ENABLED=true on the launchers of its pool and run it again",
            upstream.name, upstream_run.id
        )));
    };
    if upstream_run.pool_id != stack.pool_id {
        return Ok(Err(format!(
            "sealed to the key of the pool that ran it, which stack {} (on another pool) cannot open: put both stacks on one pool, or make {output:?} not sensitive",
            stack.name
        )));
    }
    Ok(Ok(BlobRef { sha256: blob.sha256, size: blob.size }))
}

/// A stored JSON output as an environment variable.
fn environment_value(json: &str) -> String {
    serde_json::from_str(json)
        .map_or_else(|_| json.to_owned(), |value| gantry_proto::agent::environment_value(&value))
}

#[cfg(test)]
mod tests {
    use super::environment_value;

    #[test]
    fn strings_are_unquoted_and_everything_else_stays_json() {
        assert_eq!(environment_value("\"vpc-123\""), "vpc-123");
        assert_eq!(environment_value("42"), "42");
        assert_eq!(environment_value("[\"a\",\"b\"]"), "[\"a\",\"b\"]");
        assert_eq!(environment_value("{\"k\":1}"), "{\"k\":1}");
    }
}
