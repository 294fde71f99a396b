//! One run on this launcher, from assignment to cleanup: acknowledge it, then drive the
//! run path's phases in order (`run::prepare`, `run::execute` with this launcher's
//! executor, `run::conclude`), and remove the workspace. The server learns how the run
//! ended even when the worker could not say it. The run's journal follows it from the
//! acknowledgement to the removal of its workspace, for `recovery` if this launcher dies.

use std::sync::Arc;
use std::time::Duration;

use gantry_proto::agent::{Acknowledge, Assignment};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::client::{AgentClient, ClientError};
use crate::executor::Executor;
use crate::run::journal::{self, RunJournal};
use crate::run::{Ending, RunContext, conclude, execute, prepare, start_log};
use crate::workspace;

/// Supervises one assignment to its end. `stop` asks for the run to be stopped.
pub(crate) async fn supervise(
    context: Arc<RunContext>,
    executor: Arc<dyn Executor>,
    assignment: Assignment,
    stop: CancellationToken,
) -> Ending {
    let run_id = assignment.run_id;
    match acknowledge(&context.client, &assignment, &stop).await {
        Ok(true) => {}
        Ok(false) => return Ending::NotOurs,
        Err(error) => {
            tracing::warn!(run = %run_id, %error, "cannot acknowledge the assignment; leaving it to the server");
            return Ending::NotOurs;
        }
    }
    tracing::info!(run = %run_id, job = ?assignment.job, stack = %assignment.stack.name, "run started");
    let _in_progress = context.metrics.run_started();
    // Written while the run is prepared (its checkout takes far longer than the write).
    let (journal, journal_written) =
        RunJournal::begin(&journal::directory(&context.runs_dir), &assignment);
    let (logs, upload_task) = start_log(&context, &assignment, assignment.log_next_seq);
    let workspace = context.workspace(run_id);
    // The run timeout counts from the acknowledgement: a checkout that hangs on an
    // unresponsive git host is part of the run.
    let deadline = Instant::now() + context.config.limits.run_timeout;
    let prepared =
        prepare::prepare_run(&context, &assignment, &workspace, &logs, &stop, deadline).await;
    // On disk before the worker can start: a launcher started again finds the run.
    let _ = journal_written.await;
    if let Some(prepared) = prepared {
        if let Some(managed) = &prepared.managed_state {
            // Written while the worker starts: the worker's own entry follows it.
            drop(journal.prepared(managed.files.project(), managed.before.as_ref()));
        }
        let gone = execute::execute(
            &context,
            &*executor,
            &assignment,
            &workspace,
            prepared,
            &logs,
            &stop,
            deadline,
            &journal,
        )
        .await;
        if let Some((endpoint, end)) = gone {
            conclude::conclude(&context, &assignment, &workspace, &endpoint, &logs, end).await;
        }
    }
    logs.finish(upload_task).await;
    workspace::remove(&workspace).await;
    // Everything of the run is delivered and its plaintext gone: nothing left to recover.
    journal.end_now();
    tracing::info!(run = %run_id, ending = ?Ending::Ended, "run left this launcher");
    Ending::Ended
}

/// Acknowledges, retrying while the server is unreachable. `Ok(false)`: the run is no
/// longer ours.
async fn acknowledge(
    client: &AgentClient,
    assignment: &Assignment,
    stop: &CancellationToken,
) -> Result<bool, ClientError> {
    let acknowledge = Acknowledge { worker_id: assignment.worker_id, job: assignment.job };
    let mut backoff = Backoff::new(Duration::from_secs(10));
    loop {
        match client.acknowledge(assignment.run_id, &acknowledge).await {
            Ok(()) => return Ok(true),
            Err(ClientError::Rejected { status: 404 | 409, .. }) => return Ok(false),
            Err(error) if error.is_transient() => {
                tokio::select! {
                    () = tokio::time::sleep(backoff.delay()) => {}
                    () = stop.cancelled() => return Ok(false),
                }
            }
            Err(error) => return Err(error),
        }
    }
}
