//! The long-poll: returns at once when an assignment waits for one of the launcher's
//! workers, otherwise blocks until the scheduler hands one over or the wait ends.

use std::time::Duration;

use axum::extract::State;
use gantry_domain::RunState;
use gantry_proto::agent::{Assignment, BlobRef, Job, Poll, PollResponse, StackSpec, StateVersion};

use crate::auth::AgentSession;
use crate::error::{ApiError, ApiResult, Json};
use crate::state::AppState;

pub(super) async fn poll(
    State(state): State<AppState>,
    session: AgentSession,
    Json(request): Json<Poll>,
) -> ApiResult<Json<PollResponse>> {
    let wait = Duration::from_secs(u64::from(request.wait_seconds)).min(state.timings.poll_timeout);
    let deadline = tokio::time::Instant::now() + wait;
    let signal = state.events.launcher(session.launcher_id);
    loop {
        // Register interest before looking, so that an assignment made in between wakes us.
        let notified = signal.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let assignments = pending(&state, &session).await?;
        if !assignments.is_empty() {
            return Ok(Json(PollResponse { assignments }));
        }
        tokio::select! {
            // A wake-up may also mean the session ended (a pool reset).
            () = notified => session.still_valid(&state).await?,
            () = tokio::time::sleep_until(deadline) => return Ok(Json(PollResponse::default())),
            () = state.shutdown.cancelled() => return Ok(Json(PollResponse::default())),
        }
    }
}

/// Runs handed to the launcher's workers and not yet acknowledged.
async fn pending(state: &AppState, session: &AgentSession) -> Result<Vec<Assignment>, ApiError> {
    let mut assignments = Vec::new();
    for worker in state.store.list_workers(Some(session.pool_id)).await? {
        if worker.launcher_id != session.launcher_id {
            continue;
        }
        let Some(run_id) = worker.current_run_id else { continue };
        let Some(run) = state.store.get_run(run_id).await? else { continue };
        if run.worker_id != Some(worker.id) {
            continue;
        }
        let job = match run.state {
            RunState::Ready => Job::Plan,
            RunState::Confirmed => Job::Apply,
            _ => continue,
        };
        let stack = state.store.get_stack(run.stack_id).await?.ok_or_else(|| {
            ApiError::Internal(format!("run {} belongs to a stack that does not exist", run.id))
        })?;
        assignments.push(Assignment {
            run_id: run.id,
            worker_id: worker.id,
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
                        value: Some(variable.value.clone()),
                        secret: variable.secret,
                    })
                    .collect(),
            },
            commit: run.commit_sha.clone(),
            // Appending nothing answers with the next sequence number expected.
            log_next_seq: state.store.append_logs(run.id, &[], crate::state::now()).await?,
            managed_state: stack.managed_state,
            state: match stack.managed_state {
                true => {
                    state.store.current_state_version(stack.id).await?.map(|version| StateVersion {
                        run_id: version.run_id,
                        blob: BlobRef { sha256: version.blob.sha256, size: version.blob.size },
                    })
                }
                false => None,
            },
            workspace: match job {
                Job::Apply => state
                    .store
                    .run_blob(run.id, crate::agent::WORKSPACE)
                    .await?
                    .map(|blob| BlobRef { sha256: blob.sha256, size: blob.size }),
                Job::Plan => None,
            },
        });
    }
    Ok(assignments)
}
