//! One run on this launcher, from assignment to cleanup: acknowledge, prepare the
//! workspace, start the worker and its local API, relay output, enforce the run and log
//! timeouts, and make sure the server learns how the run ended even when the worker
//! could not say it.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use gantry_domain::validation::validate_secret_value;
use gantry_proto::agent::{Acknowledge, Assignment, Job, RunReport};
use gantry_proto::local::WorkerJob;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::client::{AgentClient, ClientError};
use crate::config::LauncherConfig;
use crate::executor::{Executor, RunningWorker, WorkerExit, WorkerLaunch};
use crate::logs::LogRelay;
use crate::metrics::Stage;
use crate::passed_env;
use crate::policy::JudgedCommit;
use crate::run::local_api::{self, Conclusion, RunEndpoint, SensitiveOutputsUpload};
use crate::run::sealed;
use crate::run::state::{ManagedState, ProjectFiles, bring_in_state};
use crate::run::{
    Ending, Interruption, RunContext, WorkerEnd, mask_sealed_inputs, report_ending, report_failure,
    silence_message, start_log, timeout_message,
};
use crate::workspace;

/// How long a stopped worker may take to exit before it is killed.
const TERMINATE_GRACE: Duration = Duration::from_secs(10);
const PLAN_FILE: &str = "gantry.tfplan";

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
    let (logs, upload_task) = start_log(&context, &assignment, assignment.log_next_seq);
    let workspace = context.workspace(run_id);
    // The run timeout counts from the acknowledgement: a checkout that hangs on an
    // unresponsive git host is part of the run.
    let deadline = Instant::now() + context.config.limits.run_timeout;
    let ending = match prepare_run(&context, &assignment, &workspace, &logs, &stop, deadline).await
    {
        Some(prepared) => {
            execute(&context, &*executor, &assignment, &workspace, prepared, &logs, &stop, deadline)
                .await
        }
        None => Ending::Ended,
    };
    logs.finish(upload_task).await;
    workspace::remove(&workspace).await;
    tracing::info!(run = %run_id, ?ending, "run left this launcher");
    ending
}

/// Everything before the worker starts: the workspace (a checkout, or the planned
/// workspace decrypted) judged by the initialization policy, the managed state and the
/// sealed inputs, bounded by the run's `deadline`, the silence limit and `stop`. `None`:
/// the run failed here, and the server was told why after the log that says it.
pub(crate) async fn prepare_run(
    context: &Arc<RunContext>,
    assignment: &Assignment,
    workspace: &Path,
    logs: &LogRelay,
    stop: &CancellationToken,
    deadline: Instant,
) -> Option<Prepared> {
    let run_id = assignment.run_id;
    // A checkout prints nothing while it waits: the silence limit bounds it too.
    let silence_deadline = Instant::now() + context.config.limits.logs_timeout;
    let preparing_since = std::time::Instant::now();
    let prepared = tokio::select! {
        prepared = tokio::time::timeout_at(deadline.min(silence_deadline), prepare(context, assignment, workspace, logs)) => {
            Some(prepared.unwrap_or_else(|_| {
                Err(if deadline <= silence_deadline { timeout_message(context) } else { silence_message(context) })
            }))
        }
        () = stop.cancelled() => None,
    };
    context.metrics.stage_took(Stage::Preparing, preparing_since);
    match prepared {
        Some(Ok(prepared)) => Some(prepared),
        Some(Err(message)) => {
            logs.append(&format!("\n{message}\n"));
            report_failure(context, logs, run_id, message).await;
            None
        }
        None => {
            // As for a running worker: the server ends the run STOPPED when a user asked
            // for it, FAILED when the launcher (or the Pod) is going away.
            logs.append("\nThe run was stopped while its workspace was prepared.\n");
            report_ending(context, logs, run_id, RunReport::Stopped).await;
            None
        }
    }
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

/// What the worker gets, and what the launcher keeps track of for the run.
pub(crate) struct Prepared {
    pub(crate) job: WorkerJob,
    pub(crate) managed_state: Option<ManagedState>,
}

/// Readies the workspace and the worker's job; an error is the failure to report.
async fn prepare(
    context: &Arc<RunContext>,
    assignment: &Assignment,
    workspace: &Path,
    logs: &LogRelay,
) -> Result<Prepared, String> {
    let stack = &assignment.stack;
    match assignment.job {
        Job::Plan => {
            let target = assignment
                .commit
                .as_deref()
                .map_or_else(|| format!("branch {}", stack.branch), |sha| format!("commit {sha}"));
            logs.append(&format!(
                "Preparing the workspace on {}: checking out {} ({target})\n",
                context.config.hostname, stack.repository
            ));
            let address = context.config.private_vcs.resolve(&stack.repository)?;
            let checkout = workspace::checkout(
                workspace,
                &address,
                &stack.branch,
                assignment.commit.as_deref(),
            )
            .await
            .map_err(|e| format!("Cannot check out {}: {e}", stack.repository))?;
            logs.append(&format!(
                "Checked out {} \"{}\"\n",
                short(&checkout.sha),
                checkout.message
            ));
            let commit = JudgedCommit {
                sha: Some(checkout.sha.clone()),
                message: Some(checkout.message.clone()),
                author: Some(checkout.author.clone()),
            };
            let report = RunReport::CommitResolved {
                sha: checkout.sha,
                message: checkout.message,
                author: Some(checkout.author),
            };
            let report = logs.masked_report(report);
            if let Err(error) = context.client.report(assignment.run_id, report).await {
                tracing::warn!(run = %assignment.run_id, %error, "cannot record the commit");
            }
            // Judged once its commit is known (the denied commit is recorded too), and
            // before anything of it runs.
            if let Some(refusal) = refused_by_policy(&context.config, assignment, &commit) {
                return Err(refusal);
            }
        }
        Job::Apply => {
            logs.append(&format!(
                "\nApplying the confirmed plan on {}: decrypting the workspace its plan stored\n",
                context.config.hostname
            ));
            // The plan's commit, as the server recorded it: no checkout to learn it from.
            let commit = JudgedCommit::recorded(assignment);
            if let Some(refusal) = refused_by_policy(&context.config, assignment, &commit) {
                return Err(refusal);
            }
            sealed::restore_workspace(context, assignment, workspace).await?;
        }
    }
    let project = workspace::project_directory(workspace, &stack.project_root)?;
    let managed_state = if assignment.managed_state {
        // Opened before any of the run's code runs: what the run later does to the tree
        // cannot redirect the launcher's reads and writes of its state.
        let files = Arc::new(ProjectFiles::open(workspace, &stack.project_root)?);
        // Both jobs start from the server's current version: a plan's stored workspace
        // carries whatever its run left in the state file, which is not to be trusted.
        let before = bring_in_state(context, assignment, &files).await?;
        logs.append(match (&assignment.state, assignment.job) {
            (Some(_), _) => "Brought in the stack's state, decrypted with the pool key\n",
            (None, Job::Plan) => {
                "The stack has no state yet: Gantry will keep the one this run creates\n"
            }
            (None, Job::Apply) => "",
        });
        // Only runs that may apply change the state.
        ManagedState::for_run(context, assignment, files, before)
    } else {
        None
    };
    let sealed_inputs = if assignment.sealed_inputs.is_empty() {
        Vec::new()
    } else {
        let opened = sealed::open_sealed_inputs(context, assignment).await?;
        mask_sealed_inputs(logs, assignment, &opened);
        logs.append(&format!(
            "Opened {} sensitive input(s) from the stacks this one depends on, with the pool key\n",
            opened.len()
        ));
        opened
    };
    refuse_unmaskable(assignment, &sealed_inputs)?;
    let job = WorkerJob {
        run_id: assignment.run_id,
        run_type: assignment.run_type,
        job: assignment.job,
        tool_executable: stack.tool.executable().to_owned(),
        working_directory: project.display().to_string(),
        // The stack's own variables, then what it reads from the stacks it depends on.
        environment: stack
            .environment
            .iter()
            .map(|variable| (variable.name.clone(), variable.value.clone().unwrap_or_default()))
            .chain(assignment.inputs.iter().cloned())
            .chain(sealed_inputs)
            .chain(passed_env::for_run(&context.config.passed_env, assignment.run_type))
            .collect(),
        plan_file: PLAN_FILE.to_owned(),
        command: assignment.command.clone(),
        collect_sensitive_outputs: context.config.sensitive_output_upload
            && stack.share_sensitive_outputs,
        debug: context.config.debug,
    };
    Ok(Prepared { job, managed_state })
}

/// Why the run initialization policy refuses the job, if it does: every `deny` message,
/// or why it could not be evaluated. Every job is judged, an apply as much as its plan:
/// the input says which one it is.
fn refused_by_policy(
    config: &LauncherConfig,
    assignment: &Assignment,
    commit: &JudgedCommit,
) -> Option<String> {
    let policy = config.initialization_policy.as_ref()?;
    let default_image = match &config.executor {
        crate::config::ExecutorKind::Docker(settings) => settings.default_image.as_deref(),
        crate::config::ExecutorKind::Process => None,
    };
    let image = assignment.stack.runner_image.as_deref().or(default_image);
    match policy.denials(&crate::policy::input(assignment, commit, image)) {
        Ok(denials) if denials.is_empty() => None,
        Ok(denials) => {
            Some(format!("The run initialization policy denied the run: {}", denials.join("; ")))
        }
        Err(error) => Some(format!("{error}: the run is not started")),
    }
}

/// Refuses a run that would receive a secret too short to be masked without masking
/// ordinary words of its log: a sensitive input among `opened`, or a stack secret stored
/// before the server refused such values. An empty value hides nothing.
fn refuse_unmaskable(assignment: &Assignment, opened: &[(String, String)]) -> Result<(), String> {
    let too_short = |name: &str, value: &str| {
        validate_secret_value(name, value).err().filter(|_| !value.is_empty())
    };
    for (name, value) in opened {
        if let Some(error) = too_short(name, value) {
            let input = assignment.sealed_inputs.iter().find(|input| input.variable == *name);
            let source = input.map_or_else(String::new, |input| {
                format!(" (output {} of stack {})", input.output, input.upstream_stack)
            });
            return Err(format!("Refused the sensitive input {name}{source}: {error}"));
        }
    }
    for variable in assignment.stack.environment.iter().filter(|variable| variable.secret) {
        let value = variable.value.as_deref().unwrap_or_default();
        if let Some(error) = too_short(&variable.name, value) {
            return Err(format!("Refused the stack's secret variable {}: {error}", variable.name));
        }
    }
    Ok(())
}

/// The worker as a process or a container of this launcher, through its executor.
#[allow(clippy::too_many_arguments)]
async fn execute(
    context: &Arc<RunContext>,
    executor: &dyn Executor,
    assignment: &Assignment,
    workspace: &Path,
    prepared: Prepared,
    logs: &LogRelay,
    stop: &CancellationToken,
    deadline: Instant,
) -> Ending {
    let run_id = assignment.run_id;
    let worker_binary = match context.worker_binaries.current(&context.client).await {
        Ok(binary) => binary,
        Err(message) => {
            logs.append(&format!("\n{message}\n"));
            report_failure(context, logs, run_id, message).await;
            return Ending::Ended;
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
        runner_image: assignment.stack.runner_image.clone(),
    };
    let run_worker = async |_: &RunEndpoint| {
        let (output_sender, mut output) = mpsc::unbounded_channel();
        match executor.start(&launch, output_sender).await {
            Ok(mut worker) => {
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
    serve_worker(
        context,
        assignment,
        workspace,
        prepared,
        logs,
        &socket_path,
        &capability,
        run_worker,
    )
    .await
}

/// The worker-facing part of a run, whoever hosts the worker: serves its local API on
/// `socket_path` while `run_worker` lets it run, then makes sure the server learns how
/// the run ended (storing the planned workspace, or the state an interrupted apply left,
/// first). `run_worker` returns `None` when the worker could not start and that failure
/// was reported.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve_worker(
    context: &Arc<RunContext>,
    assignment: &Assignment,
    workspace: &Path,
    prepared: Prepared,
    logs: &LogRelay,
    socket_path: &Path,
    capability: &str,
    run_worker: impl AsyncFnOnce(&RunEndpoint) -> Option<WorkerEnd>,
) -> Ending {
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
            return Ending::Ended;
        }
    };
    let ended = run_worker(&endpoint).await;
    api_stop.cancel();
    let _ = api.await;
    endpoint.end_phase();
    let _ = tokio::fs::remove_file(socket_path).await;
    match ended {
        Some(end) => conclude_run(context, assignment, workspace, &endpoint, logs, end).await,
        None => Ending::Ended,
    }
}

/// Once the worker is gone: what its reports concluded, or what stopped it, decides what
/// the server hears.
async fn conclude_run(
    context: &Arc<RunContext>,
    assignment: &Assignment,
    workspace: &Path,
    endpoint: &RunEndpoint,
    logs: &LogRelay,
    end: WorkerEnd,
) -> Ending {
    let run_id = assignment.run_id;
    let message = match (endpoint.conclusion(), end.interruption) {
        (Some(Conclusion::UploadWorkspace), None) => {
            return store_planned_workspace(context, assignment, workspace, endpoint, logs).await;
        }
        (Some(Conclusion::Ended), None) => return Ending::Ended,
        (_, Some(Interruption::Stopped)) => {
            logs.append("\nThe run was stopped.\n");
            if let Some(Some(Err(problem))) = secure_state(endpoint).await {
                logs.append(&format!("{problem}\n"));
            }
            report_ending(context, logs, run_id, RunReport::Stopped).await;
            return Ending::Ended;
        }
        (_, Some(Interruption::RunTimeout)) => timeout_message(context),
        (_, Some(Interruption::LogsTimeout)) => silence_message(context),
        (None, None) => end.unexplained,
    };
    let message = match secure_state(endpoint).await {
        Some(Some(Err(problem))) => format!("{message}; besides, {problem}"),
        _ => message,
    };
    logs.append(&format!("\n{message}\n"));
    report_failure(context, logs, run_id, message).await;
    Ending::Ended
}

/// Stores the state an interrupted apply may have changed: never lose what it created.
async fn secure_state(endpoint: &RunEndpoint) -> Option<Option<Result<bool, String>>> {
    let managed = endpoint.managed_state.as_ref()?;
    Some(managed.store_after_apply().await)
}

/// After a plan that waits for confirmation: pack, seal and upload the workspace, then
/// tell the server, which moves the run to UNCONFIRMED and frees this worker.
async fn store_planned_workspace(
    context: &RunContext,
    assignment: &Assignment,
    workspace: &Path,
    endpoint: &RunEndpoint,
    logs: &LogRelay,
) -> Ending {
    logs.append("\nStoring the planned workspace, encrypted to the pool key, for the apply\n");
    match sealed::store_workspace(context, assignment, workspace).await {
        Ok(blob) => {
            endpoint
                .report(RunReport::WorkspaceStored { sha256: blob.sha256, size: blob.size })
                .await;
            logs.append(&format!(
                "The plan waits for confirmation: gantry run confirm {}\n",
                assignment.run_id
            ));
        }
        Err(problem) => {
            let message = format!("Cannot store the planned workspace: {problem}");
            logs.append(&format!("{message}\n"));
            report_failure(context, logs, assignment.run_id, message).await;
        }
    }
    Ending::Ended
}

type Watched = (Result<WorkerExit, crate::executor::ExecutorError>, Option<Interruption>);

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

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}
