//! The run path's first phase: everything before the worker starts. The workspace (a
//! checkout, or the planned workspace decrypted) judged by the initialization policy, the
//! managed state brought in, the sealed inputs opened, and the worker's job, bounded by
//! the run's deadline, the silence limit and a stop.

use std::path::Path;
use std::sync::Arc;

use gantry_domain::validation::validate_secret_value;
use gantry_proto::agent::{Assignment, Job, RunReport};
use gantry_proto::local::WorkerJob;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::sealed;
use super::state::{ManagedState, ProjectFiles, bring_in_state};
use super::{
    RunContext, mask_sealed_inputs, report_ending, report_failure, silence_message, timeout_message,
};
use crate::delivery::PendingReport;
use crate::logs::LogRelay;
use crate::metrics::Stage;
use crate::passed_env;
use crate::policy::JudgedCommit;
use crate::workspace;

const PLAN_FILE: &str = "gantry.tfplan";

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
    crate::stack_secrets::refuse_unopened(&context.config, assignment)?;
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
            // Part of the run's record: kept until the server takes it, as every report
            // is, so that a database outage or a server restart does not lose it; bounded
            // like the rest of the preparation. A refusal or abandonment is logged there.
            let report = logs.masked_report(report);
            PendingReport { run_id: assignment.run_id, report }.deliver(&context.client).await;
            // Judged once its commit is known (the denied commit is recorded too), and
            // before anything of it runs.
            if let Some(refusal) = refused_by_policy(context, assignment, &commit).await {
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
            if let Some(refusal) = refused_by_policy(context, assignment, &commit).await {
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
async fn refused_by_policy(
    context: &RunContext,
    assignment: &Assignment,
    commit: &JudgedCommit,
) -> Option<String> {
    let config = &context.config;
    let policy = config.initialization_policy.as_ref()?;
    // The process executor's worker runs the tool its PATH, the launcher's, finds; a
    // container's comes with its image, which nothing runs before the policy allows it:
    // its label says which version it carries. A Pod's init sees neither: the operator
    // says which image the worker container runs, and the pool what that image carries.
    let tool = assignment.stack.tool;
    let (image, tool_version) = match (&context.pod_runner, &config.executor) {
        (Some(runner), _) => (runner.image.as_deref(), runner.tool_version.clone()),
        (None, crate::config::ExecutorKind::Docker(settings)) => {
            let image =
                assignment.stack.runner_image.as_deref().or(settings.default_image.as_deref());
            let version = match image {
                Some(image) => crate::policy::image_tool_version(tool, image).await,
                None => None,
            };
            (image, version)
        }
        (None, crate::config::ExecutorKind::Process) => {
            let path = std::env::var_os("PATH");
            (
                assignment.stack.runner_image.as_deref(),
                crate::policy::local_tool_version(tool, path.as_deref()).await,
            )
        }
    };
    let input = crate::policy::input(assignment, commit, image, tool_version.as_deref());
    match policy.denials(&input) {
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

fn short(sha: &str) -> &str {
    &sha[..sha.len().min(12)]
}
