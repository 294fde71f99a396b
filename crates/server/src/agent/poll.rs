//! The long-poll: returns at once when an assignment waits for one of the launcher's
//! workers, a user asked to stop one of its runs, or its pool is being cycled; otherwise
//! blocks until one of those happens or the wait ends.

use std::time::Duration;

use axum::extract::State;
use gantry_domain::RunState;
use gantry_proto::agent::{
    Assignment, BlobRef, CommitAuthor, HeldAssignment, Job, Poll, PollResponse, StackSpec,
    StateVersion,
};
use gantry_store::{HeldRunRecord, RunRecord, WorkerRecord};

use crate::auth::AgentSession;
use crate::error::{ApiError, ApiResult, Json};
use crate::state::AppState;

pub(super) async fn poll(
    State(state): State<AppState>,
    mut session: AgentSession,
    Json(request): Json<Poll>,
) -> ApiResult<Json<PollResponse>> {
    let wait = Duration::from_secs(u64::from(request.wait_seconds)).min(state.timings.poll_timeout);
    let deadline = tokio::time::Instant::now() + wait;
    let signal = state.events.launcher(session.launcher_id);
    let mut woken = false;
    loop {
        // Register interest before looking, so that an assignment made in between wakes us.
        let notified = signal.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let mut response = match woken {
            // A wake-up may also mean the session ended (a pool reset) or the pool cycles:
            // the session is read again alongside what is pending, not before it.
            true => {
                let (refreshed, response) = tokio::try_join!(
                    session.refreshed(&state),
                    pending(&state, &session, &request.holding)
                )?;
                session = refreshed;
                response
            }
            false => pending(&state, &session, &request.holding).await?,
        };
        response.cycle = session.cycling();
        if !response.assignments.is_empty() || !response.stop_run_ids.is_empty() || response.cycle {
            for assignment in &response.assignments {
                state.dispatch_metrics.delivered(assignment.run_id);
            }
            return Ok(Json(response));
        }
        tokio::select! {
            // A wake-up may also mean the session ended (a pool reset) or the pool cycles.
            () = notified => woken = true,
            () = tokio::time::sleep_until(deadline) => return Ok(Json(PollResponse::default())),
            () = state.shutdown.cancelled() => return Ok(Json(PollResponse::default())),
        }
    }
}

/// Runs this launcher executes that a user asked to stop, among the runs it holds.
pub(super) fn stop_requested<'a>(
    held: impl IntoIterator<Item = &'a RunRecord>,
) -> Vec<gantry_domain::RunId> {
    held.into_iter()
        .filter(|run| run.stop_requested_at.is_some() && run.state.occupies_worker())
        .map(|run| run.id)
        .collect()
}

/// The workers of the session's launcher.
pub(super) async fn own_workers(
    state: &AppState,
    session: &AgentSession,
) -> Result<Vec<WorkerRecord>, ApiError> {
    let mut workers = state.store.launcher_workers(session.launcher_id).await?;
    workers.retain(|worker| worker.pool_id == session.pool_id);
    Ok(workers)
}

/// What the launcher must learn now: runs handed to its workers that it does not hold
/// yet, and stop requests. The launcher's runs are read with each assignment's stack and
/// log sequence number: one round trip to the store on the way from a wake-up to the
/// launcher. A second, its reads made concurrently, only for an apply (its workspace), a
/// stack with upstream stacks (its inputs) or managed state (its current version).
async fn pending(
    state: &AppState,
    session: &AgentSession,
    holding: &[HeldAssignment],
) -> Result<PollResponse, ApiError> {
    let held = state.store.held_runs(session.launcher_id, session.pool_id).await?;
    let mut assignments = Vec::new();
    for HeldRunRecord { run, pickup } in &held {
        let (Some(worker_id), Some(pickup)) = (run.worker_id, pickup) else { continue };
        let job = match run.state {
            RunState::Ready => Job::Plan,
            RunState::Confirmed => Job::Apply,
            _ => continue,
        };
        if holding.contains(&HeldAssignment { run_id: run.id, job }) {
            continue;
        }
        let Some(stack) = &pickup.stack else {
            return Err(ApiError::Internal(format!(
                "run {} belongs to a stack that does not exist",
                run.id
            )));
        };
        let (workspace, dependencies, state_version) = tokio::try_join!(
            async {
                Ok::<_, ApiError>(match job {
                    Job::Apply => state.store.run_blob(run.id, crate::agent::WORKSPACE).await?,
                    Job::Plan => None,
                })
            },
            async {
                Ok(match pickup.has_upstreams {
                    true => state.store.list_dependencies().await?,
                    false => Vec::new(),
                })
            },
            async {
                Ok(match stack.managed_state {
                    true => state.store.current_state_version(stack.id).await?,
                    false => None,
                })
            },
        )?;
        // Reads here only for a stack that references outputs.
        let inputs = match crate::cascade::inputs(state, stack, &dependencies).await? {
            Ok(inputs) => inputs,
            Err(missing) => {
                // The run cannot start without its inputs: it fails, naming what is missing.
                if let Err(error) = crate::lifecycle::fail(state, run, &missing).await
                    && !crate::lifecycle::lost_race(&error)
                {
                    return Err(error);
                }
                continue;
            }
        };
        let log_next_seq = pickup.next_log_seq;
        assignments.push(Assignment {
            run_id: run.id,
            worker_id,
            run_type: run.run_type,
            job,
            stack: StackSpec {
                id: stack.id,
                name: stack.name.clone(),
                repository: stack.repository.clone(),
                branch: run.branch.clone(),
                project_root: stack.project_root.clone(),
                tool: stack.tool,
                runner_image: stack.runner_image.clone(),
                environment: stack
                    .environment
                    .iter()
                    .map(|variable| gantry_proto::api::EnvironmentVariable {
                        name: variable.name.clone(),
                        // A secret travels sealed: only the pool key opens it.
                        value: (!variable.secret).then(|| variable.value.clone()),
                        secret: variable.secret,
                        sealed_value: variable.secret.then(|| variable.value.clone()),
                    })
                    .collect(),
                share_sensitive_outputs: stack.share_sensitive_outputs,
                labels: stack.labels.clone(),
            },
            commit: run.commit_sha.clone(),
            command: run.command.clone(),
            inputs: inputs.plain,
            sealed_inputs: inputs.sealed,
            log_next_seq,
            managed_state: stack.managed_state,
            state: state_version.map(|version| StateVersion {
                run_id: version.run_id,
                blob: BlobRef { sha256: version.blob.sha256, size: version.blob.size },
            }),
            workspace: workspace.map(|blob| BlobRef { sha256: blob.sha256, size: blob.size }),
            // For the launcher's initialization policy: an apply is judged on its plan's
            // commit, which it does not check out.
            commit_message: run.commit_message.clone(),
            commit_author: pickup.commit_author.as_ref().map(|author| CommitAuthor {
                name: author.name.clone(),
                email: author.email.clone(),
                authored_at: author.authored_at,
            }),
            triggered_by: Some(run.triggered_by.clone()),
            created_at: Some(run.created_at),
            updated_at: Some(run.updated_at),
            autodeploy: Some(run.autodeploy),
            lock_generation: run.lock_generation,
        });
    }
    // Whether the pool cycles comes from the session, which the caller may read anew.
    let stop_run_ids = stop_requested(held.iter().map(|held| &held.run));
    Ok(PollResponse { assignments, stop_run_ids, cycle: false })
}
