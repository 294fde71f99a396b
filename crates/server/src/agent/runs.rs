//! What launchers say about the runs they execute: acknowledgements, reports (each one a
//! state-machine event, accepted again without effect when retried) and log chunks.

use axum::extract::State;
use gantry_domain::{RunEvent, RunState};
use gantry_proto::agent::{
    Acknowledge, Directive, Job, LogsAccepted, ReportRequest, ReportResponse, RunReport, UploadLogs,
};
use gantry_store::{CommitAuthorRecord, OutputRecord, RunRecord, StoreError};

use crate::auth::AgentSession;
use crate::error::{ApiError, ApiResult, Json, PathParam};
use crate::lifecycle::{self, Details};
use crate::lookup;
use crate::state::{AppState, now};

const MAX_CHUNKS: usize = 1000;
const MAX_OUTPUTS: usize = 1000;
/// Of a commit author's name, and of their email.
const MAX_AUTHOR_CHARS: usize = 500;

pub(super) async fn acknowledge(
    State(state): State<AppState>,
    session: AgentSession,
    PathParam(key): PathParam<String>,
    Json(request): Json<Acknowledge>,
) -> ApiResult<Json<serde_json::Value>> {
    let (run, held_here) = lookup::launcher_run(&state, &session, &key).await?;
    if !held_here || run.worker_id != Some(request.worker_id) {
        return Err(ApiError::NotAssigned(format!(
            "run {} is no longer assigned to worker {} (it is {})",
            run.id, request.worker_id, run.state
        )));
    }
    let already = matches!(
        (request.job, run.state),
        (Job::Plan, RunState::Preparing) | (Job::Apply, RunState::Applying)
    );
    if !already {
        lifecycle::apply(&state, &run, &RunEvent::Acknowledge, Details::default()).await?;
    }
    Ok(Json(serde_json::json!({})))
}

pub(super) async fn report(
    State(state): State<AppState>,
    session: AgentSession,
    PathParam(key): PathParam<String>,
    Json(request): Json<ReportRequest>,
) -> ApiResult<Json<ReportResponse>> {
    let (run, held_here) = lookup::launcher_run(&state, &session, &key).await?;
    if run.state.is_terminal() && ends_execution(&request.report) {
        lift_fence_of_ended_execution(&state, &session, &run).await?;
    }
    let directive = if let Some(directive) = already_reported(&run, &request.report) {
        directive
    } else if run.state.is_terminal() {
        // Stopped, discarded or failed meanwhile: whatever the worker does, it must stop.
        Directive::Finish
    } else if !held_here {
        return Err(ApiError::NotAssigned(format!(
            "run {} is not executing on this launcher",
            run.id
        )));
    } else {
        apply_report(&state, &run, request.report).await?
    };
    Ok(Json(ReportResponse { directive }))
}

/// A report its launcher sends only once the run's worker is done with the tool.
fn ends_execution(report: &RunReport) -> bool {
    matches!(
        report,
        RunReport::Applied | RunReport::Performed | RunReport::Stopped | RunReport::Failed { .. }
    )
}

/// The launcher that was executing `run` when the server ended it (its heartbeats
/// stopped, or left the run out) now reports that the execution ended: its worker no
/// longer runs the tool, so the fence the run left on its stack has done its work.
async fn lift_fence_of_ended_execution(
    state: &AppState,
    session: &AgentSession,
    run: &RunRecord,
) -> Result<(), ApiError> {
    let lifted = state.store.lift_lock_fence_of_run(run.id, session.launcher_id, now()).await?;
    if let Some(fence) = lifted {
        tracing::info!(
            run = %run.id,
            stack = %fence.stack_id,
            launcher = %session.launcher_id,
            "the launcher that executed the run reports its end: the stack's fence is lifted before its time"
        );
        state.events.request_scheduling();
    }
    Ok(())
}

/// The answer to a report the server already applied (a retry after a lost response).
fn already_reported(run: &RunRecord, report: &RunReport) -> Option<Directive> {
    match (report, run.state) {
        (RunReport::PhaseStarted { phase }, state) if phase.state() == state => {
            Some(Directive::Continue)
        }
        (RunReport::Planned { .. }, RunState::Unconfirmed) => Some(Directive::Finish),
        (RunReport::Planned { .. }, RunState::Applying) => Some(Directive::Apply),
        (RunReport::WorkspaceStored { .. }, RunState::Unconfirmed) => Some(Directive::Finish),
        (RunReport::Planned { .. } | RunReport::Applied, RunState::Finished) => {
            Some(Directive::Finish)
        }
        (RunReport::Failed { .. }, RunState::Failed) => Some(Directive::Finish),
        (RunReport::Performed, RunState::Finished) => Some(Directive::Finish),
        (RunReport::Stopped, RunState::Stopped | RunState::Failed) => Some(Directive::Finish),
        _ => None,
    }
}

async fn apply_report(
    state: &AppState,
    run: &RunRecord,
    report: RunReport,
) -> Result<Directive, ApiError> {
    let directive = match report {
        RunReport::CommitResolved { sha, message, author } => {
            let message: String = message.chars().take(2000).collect();
            // Bounded: git bounds neither, and they are whatever the commit's author wrote.
            let author = author.map(|author| CommitAuthorRecord {
                name: author.name.chars().take(MAX_AUTHOR_CHARS).collect(),
                email: author.email.chars().take(MAX_AUTHOR_CHARS).collect(),
                authored_at: author.authored_at,
            });
            state.store.set_run_commit(run.id, &sha, &message, author.as_ref()).await?;
            state.events.run_changed(run.id);
            Directive::Continue
        }
        RunReport::PhaseStarted { phase } => {
            lifecycle::apply(state, run, &RunEvent::PhaseStarted(phase), Details::default())
                .await?;
            Directive::Continue
        }
        RunReport::Planned { has_changes } => {
            let details = Details { has_changes: Some(has_changes), ..Details::default() };
            let updated =
                lifecycle::apply(state, run, &RunEvent::Planned { has_changes }, details).await?;
            match updated.state {
                RunState::Applying => Directive::Apply,
                // A tracked plan with changes waits for its workspace, then for confirmation.
                RunState::Planning => Directive::UploadWorkspace,
                _ => Directive::Finish,
            }
        }
        RunReport::WorkspaceStored { sha256, size } => {
            let stored = state.store.run_blob(run.id, crate::agent::WORKSPACE).await?;
            if stored.as_ref().is_none_or(|blob| blob.sha256 != sha256 || blob.size != size) {
                return Err(ApiError::invalid(format!(
                    "run {} has no stored workspace with SHA-256 {sha256}: upload it first",
                    run.id
                )));
            }
            lifecycle::apply(state, run, &RunEvent::WorkspaceStored, Details::default()).await?;
            Directive::Finish
        }
        RunReport::Outputs { outputs } => {
            if outputs.len() > MAX_OUTPUTS {
                return Err(ApiError::invalid(format!(
                    "a run reports at most {MAX_OUTPUTS} outputs"
                )));
            }
            // Sensitive values are dropped here too, whatever a worker sends.
            let records: Vec<OutputRecord> = outputs
                .into_iter()
                .map(|output| OutputRecord {
                    value_json: if output.sensitive {
                        None
                    } else {
                        output.value.map(|value| value.to_string())
                    },
                    name: output.name,
                    sensitive: output.sensitive,
                })
                .collect();
            state.store.replace_outputs(run.id, &records).await?;
            state.events.run_changed(run.id);
            Directive::Continue
        }
        RunReport::Applied => {
            lifecycle::apply(state, run, &RunEvent::Applied, Details::default()).await?;
            Directive::Finish
        }
        RunReport::Performed => {
            lifecycle::apply(state, run, &RunEvent::Performed, Details::default()).await?;
            Directive::Finish
        }
        RunReport::Stopped => {
            if run.stop_requested_at.is_some() {
                lifecycle::apply(state, run, &RunEvent::Stop, Details::default()).await?;
            } else {
                lifecycle::fail(state, run, "its launcher stopped the run while shutting down")
                    .await?;
            }
            Directive::Finish
        }
        RunReport::Failed { message } => {
            lifecycle::fail(state, run, &message).await?;
            Directive::Finish
        }
    };
    Ok(directive)
}

pub(super) async fn upload_logs(
    State(state): State<AppState>,
    session: AgentSession,
    PathParam(key): PathParam<String>,
    Json(request): Json<UploadLogs>,
) -> ApiResult<Json<LogsAccepted>> {
    let (run, _) = lookup::launcher_run(&state, &session, &key).await?;
    if request.chunks.len() > MAX_CHUNKS {
        return Err(ApiError::invalid(format!("upload at most {MAX_CHUNKS} chunks at a time")));
    }
    let chunks: Vec<(u64, String)> =
        request.chunks.into_iter().map(|chunk| (chunk.seq, chunk.text)).collect();
    let next_seq =
        match state.store.append_logs(run.id, &chunks, state.max_run_log_size, now()).await {
            Ok(next) => next,
            // The launcher resends from the sequence number the server expects.
            Err(StoreError::LogGap { expected, .. }) => expected,
            Err(error) => return Err(error.into()),
        };
    state.events.run_changed(run.id);
    Ok(Json(LogsAccepted { next_seq }))
}
