//! The run path's second phase: the worker at work. It is handed to its host (this
//! launcher's executor, or a run Pod's worker container) with the run's local API served
//! on its socket, its output relayed and the run's time limits enforced, until it is gone.

use std::path::Path;
use std::sync::Arc;

use gantry_proto::agent::Assignment;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::journal::RunJournal;
use super::local_api::{self, RunEndpoint, SensitiveOutputsUpload};
use super::prepare::Prepared;
use super::{Interruption, RunContext, WorkerEnd, report_failure};
use crate::executor::{
    Executor, ExecutorError, RunningWorker, TERMINATE_GRACE, WorkerExit, WorkerLaunch,
};
use crate::logs::LogRelay;

/// The worker as a process or a container of this launcher, through its executor: see
/// [`serve_worker`] for what it returns.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn execute(
    context: &Arc<RunContext>,
    executor: &dyn Executor,
    assignment: &Assignment,
    workspace: &Path,
    prepared: Prepared,
    logs: &LogRelay,
    stop: &CancellationToken,
    deadline: Instant,
    journal: &Arc<RunJournal>,
) -> Option<(Arc<RunEndpoint>, WorkerEnd)> {
    let run_id = assignment.run_id;
    let worker_binary = match context.worker_binaries.current(&context.client).await {
        Ok(binary) => binary,
        Err(message) => {
            logs.append(&format!("\n{message}\n"));
            report_failure(context, logs, run_id, message).await;
            return None;
        }
    };
    let capability = gantry_crypto::random_secret("gwc_");
    let socket_path = context.sockets_dir.join(format!("{run_id}.sock"));
    let _ = tokio::fs::remove_file(&socket_path).await;
    let launch = WorkerLaunch {
        worker_binary,
        run_id,
        worker_id: assignment.worker_id,
        run_type: assignment.run_type,
        workspace: workspace.to_path_buf(),
        socket_path: socket_path.clone(),
        capability: capability.clone(),
        capability_on_input: context.worker_binaries.is_local(),
        runner_image: assignment.stack.runner_image.clone(),
    };
    let run_worker = async |endpoint: &RunEndpoint| {
        let _ = endpoint.journal.set(Arc::clone(journal));
        let (output_sender, mut output) = mpsc::unbounded_channel();
        match executor.start(&launch, output_sender).await {
            Ok(mut worker) => {
                if let Some(handle) = worker.handle() {
                    // Written while the worker goes on: its start is not held up.
                    drop(journal.worker_started(handle));
                }
                let (exit, interruption) =
                    watch(context, worker.as_mut(), logs, &mut output, stop, deadline).await;
                while let Ok(line) = output.try_recv() {
                    logs.append(&line);
                }
                let unexplained = match exit {
                    Ok(exit) => {
                        format!("The worker exited with {exit} before reporting how the run ended")
                    }
                    Err(error) => format!("The worker was lost: {error}"),
                };
                Some(WorkerEnd { interruption, unexplained })
            }
            Err(error) => {
                let message = format!("Cannot start the worker: {error}");
                logs.append(&format!("\n{message}\n"));
                report_failure(context, logs, run_id, message).await;
                None
            }
        }
    };
    serve_worker(context, assignment, prepared, logs, &socket_path, &capability, run_worker).await
}

/// The worker-facing part of a run, whoever hosts the worker: serves its local API on
/// `socket_path` while `run_worker` lets it run. Returns the endpoint the worker reported
/// through and how it ended, for the run to be concluded; `None` when the run ended here
/// and the server was told why (`run_worker` returns `None` when the worker could not
/// start and that failure was reported).
pub(crate) async fn serve_worker(
    context: &Arc<RunContext>,
    assignment: &Assignment,
    prepared: Prepared,
    logs: &LogRelay,
    socket_path: &Path,
    capability: &str,
    run_worker: impl AsyncFnOnce(&RunEndpoint) -> Option<WorkerEnd>,
) -> Option<(Arc<RunEndpoint>, WorkerEnd)> {
    let run_id = assignment.run_id;
    let shares_outputs = prepared.job.collect_sensitive_outputs;
    let mut endpoint = RunEndpoint::new(
        prepared.job,
        capability,
        Arc::clone(&context.client),
        logs.clone(),
        prepared.managed_state,
        Arc::clone(&context.metrics),
    );
    if shares_outputs {
        endpoint.sensitive_outputs = Some(SensitiveOutputsUpload {
            context: Arc::clone(context),
            assignment: assignment.clone(),
        });
    }
    let endpoint = Arc::new(endpoint);
    let api_stop = CancellationToken::new();
    let api = match local_api::serve(socket_path, Arc::clone(&endpoint), api_stop.clone()).await {
        Ok(api) => api,
        Err(error) => {
            let message =
                format!("Cannot open the worker's socket {}: {error}", socket_path.display());
            report_failure(context, logs, run_id, message).await;
            return None;
        }
    };
    let ended = run_worker(&endpoint).await;
    api_stop.cancel();
    let _ = api.await;
    endpoint.end_phase();
    let _ = tokio::fs::remove_file(socket_path).await;
    ended.map(|end| (endpoint, end))
}

type Watched = (Result<WorkerExit, ExecutorError>, Option<Interruption>);

/// Waits for the worker while relaying what it prints and enforcing the time limits.
async fn watch(
    context: &RunContext,
    worker: &mut dyn RunningWorker,
    logs: &LogRelay,
    output: &mut mpsc::UnboundedReceiver<String>,
    stop: &CancellationToken,
    deadline: Instant,
) -> Watched {
    let limits = &context.config.limits;
    let mut output_open = true;
    loop {
        let silence_deadline = logs.last_activity() + limits.logs_timeout;
        let interruption = tokio::select! {
            exit = worker.wait() => return (exit, None),
            line = output.recv(), if output_open => {
                match line {
                    Some(line) => logs.append(&line),
                    None => output_open = false,
                }
                continue;
            }
            () = tokio::time::sleep_until(deadline) => Interruption::RunTimeout,
            () = tokio::time::sleep_until(silence_deadline) => {
                if logs.last_activity() + limits.logs_timeout > Instant::now() {
                    continue;
                }
                Interruption::LogsTimeout
            }
            () = stop.cancelled() => Interruption::Stopped,
        };
        return (worker.terminate(TERMINATE_GRACE).await, Some(interruption));
    }
}
