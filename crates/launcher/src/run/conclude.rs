//! The run path's last phase, once the worker is gone: what its reports concluded, or
//! what stopped it, decides what the server hears. The planned workspace of a plan that
//! waits for confirmation is stored, the state an interrupted apply left is secured, and
//! a run that ended without its worker saying how is reported `stopped` or `failed`.

use std::path::Path;

use gantry_proto::agent::{Assignment, RunReport};

use super::local_api::{Conclusion, RunEndpoint};
use super::{
    Interruption, RunContext, WorkerEnd, report_ending, report_failure, sealed, silence_message,
    timeout_message,
};
use crate::logs::LogRelay;

/// Once the worker is gone: what its reports concluded, or what stopped it, decides what
/// the server hears.
pub(crate) async fn conclude(
    context: &RunContext,
    assignment: &Assignment,
    workspace: &Path,
    endpoint: &RunEndpoint,
    logs: &LogRelay,
    end: WorkerEnd,
) {
    let run_id = assignment.run_id;
    // A report the worker made before it went away is still on its way: what it
    // concludes decides.
    endpoint.settled().await;
    let message = match (endpoint.conclusion(), end.interruption) {
        (Some(Conclusion::UploadWorkspace), None) => {
            store_planned_workspace(context, assignment, workspace, endpoint, logs).await;
            return;
        }
        (Some(Conclusion::Ended), None) => return,
        (_, Some(Interruption::Stopped)) => {
            logs.append("\nThe run was stopped.\n");
            if let Some(Some(Err(problem))) = secure_state(endpoint, logs).await {
                logs.append(&format!("{problem}\n"));
            }
            journal_final_report(endpoint, logs, &RunReport::Stopped);
            report_ending(context, logs, run_id, RunReport::Stopped).await;
            return;
        }
        (_, Some(Interruption::RunTimeout)) => timeout_message(context),
        (_, Some(Interruption::LogsTimeout)) => silence_message(context),
        (None, None) => end.unexplained,
    };
    let message = match secure_state(endpoint, logs).await {
        Some(Some(Err(problem))) => format!("{message}; besides, {problem}"),
        _ => message,
    };
    logs.append(&format!("\n{message}\n"));
    journal_final_report(endpoint, logs, &RunReport::Failed { message: message.clone() });
    report_failure(context, logs, run_id, message).await;
}

/// Writes the run's final report to its journal before it is sent: a launcher started
/// again after this one died sends it.
fn journal_final_report(endpoint: &RunEndpoint, logs: &LogRelay, report: &RunReport) {
    if let Some(journal) = endpoint.journal.get() {
        journal.final_report(&logs.masked_report(report.clone()));
    }
}

/// Stores the state an interrupted apply may have changed: never lose what it created.
async fn secure_state(
    endpoint: &RunEndpoint,
    logs: &LogRelay,
) -> Option<Option<Result<bool, String>>> {
    let managed = endpoint.managed_state.as_ref()?;
    let stored = managed.store_after_apply().await;
    if let Some(notice) = managed.take_orphan_notice() {
        logs.append(&notice);
    }
    Some(stored)
}

/// After a plan that waits for confirmation: pack, seal and upload the workspace, then
/// tell the server, which moves the run to UNCONFIRMED and frees this worker.
async fn store_planned_workspace(
    context: &RunContext,
    assignment: &Assignment,
    workspace: &Path,
    endpoint: &RunEndpoint,
    logs: &LogRelay,
) {
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
            journal_final_report(endpoint, logs, &RunReport::Failed { message: message.clone() });
            report_failure(context, logs, assignment.run_id, message).await;
        }
    }
}
