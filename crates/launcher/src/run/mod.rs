//! A run on this launcher: the context every run shares, and what every phase of the run
//! path uses (its log, masked; how its end is reported when the worker cannot say it; the
//! words of its time limits). The path's phases are `prepare`, `execute` and `conclude`,
//! each taking what the one before produced; its hosts drive them (`supervisor` with an
//! executor, the Pod's `init` and `sidecar`). `sealed`, `state` and `local_api` serve the
//! phases. Dependencies point one way: phases on what serves them, everything on this
//! context, and nothing here on a phase or a host.

pub(crate) mod conclude;
pub(crate) mod execute;
pub(crate) mod journal;
pub(crate) mod local_api;
pub(crate) mod prepare;
pub(crate) mod sealed;
pub(crate) mod state;

use std::path::PathBuf;
use std::sync::Arc;

use gantry_domain::RunId;
use gantry_proto::agent::{Assignment, RunReport};

use crate::client::AgentClient;
use crate::config::LauncherConfig;
use crate::delivery::{Delivery, PendingReport};
use crate::logs::LogRelay;
use crate::mask::Masker;
use crate::metrics::LauncherMetrics;
use crate::worker_binary::WorkerBinaries;

/// What every run on this launcher shares.
#[derive(Debug)]
pub(crate) struct RunContext {
    pub(crate) config: LauncherConfig,
    pub(crate) client: Arc<AgentClient>,
    pub(crate) runs_dir: PathBuf,
    pub(crate) sockets_dir: PathBuf,
    /// Sealed blobs on their way to or from the server.
    pub(crate) scratch_dir: PathBuf,
    pub(crate) metrics: Arc<LauncherMetrics>,
    pub(crate) worker_binaries: WorkerBinaries,
    /// In a run Pod's init: the worker container the operator made, which the run
    /// initialization policy is told of instead of what this launcher's executor runs.
    pub(crate) pod_runner: Option<crate::pod::PodRunner>,
}

impl RunContext {
    pub(crate) fn workspace(&self, run_id: RunId) -> PathBuf {
        self.runs_dir.join(run_id.to_string())
    }
}

/// How a supervised run ended on this launcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Ending {
    /// The server took the run back before it started here.
    NotOurs,
    /// The run left this launcher: it ended, or waits for confirmation with its
    /// workspace stored (encrypted) on the server.
    Ended,
}

/// Why the worker stopped before it reported how the run ended, when the launcher knows.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Interruption {
    RunTimeout,
    LogsTimeout,
    /// The server or the launcher's shutdown asked for it.
    Stopped,
}

/// How the worker's side of a run ended, as its host saw it.
#[derive(Debug)]
pub(crate) struct WorkerEnd {
    pub(crate) interruption: Option<Interruption>,
    /// The failure to report when the worker ended without a report or an interruption.
    pub(crate) unexplained: String,
}

/// Starts relaying the run's log from `first_seq`, masked as this launcher masks it.
pub(crate) fn start_log(
    context: &RunContext,
    assignment: &Assignment,
    first_seq: u64,
) -> (LogRelay, tokio::task::JoinHandle<()>) {
    LogRelay::start(
        Arc::clone(&context.client),
        assignment.run_id,
        first_seq,
        masker(&context.config, assignment),
        context.config.run_logs_on_stdout,
        &context.scratch_dir,
        Arc::clone(&context.config.log_buffer),
    )
}

/// The output a launcher (or a Pod's sidecar) that died had taken from the run's worker
/// but the server does not have (from `next_seq` on), from the run log's tail it left in
/// `context`'s scratch directory. Read before a relay of the run starts there: that one's
/// own tail replaces it.
pub(crate) fn undelivered_output(
    context: &RunContext,
    run_id: RunId,
    next_seq: u64,
) -> Vec<String> {
    match crate::logs::undelivered_tail(&context.scratch_dir, run_id) {
        Ok(chunks) => chunks
            .into_iter()
            .filter(|chunk| chunk.seq >= next_seq)
            .map(|chunk| chunk.text)
            .collect(),
        Err(error) => {
            tracing::warn!(run = %run_id, %error, "cannot read the log tail a launcher that died left: its undelivered output is lost");
            Vec::new()
        }
    }
}

/// What the run's log must never show, known before it starts: the values of
/// `GANTRY_MASK_ENVS` and the stack's secret variables. Sensitive inputs are added once
/// opened ([`mask_sealed_inputs`]).
fn masker(config: &LauncherConfig, assignment: &Assignment) -> Masker {
    let masked = config.passed_env.iter().filter(|variable| variable.masked);
    let secrets = assignment.stack.environment.iter().filter(|variable| variable.secret);
    Masker::new(
        masked
            .map(|variable| variable.value.as_str())
            .chain(secrets.filter_map(|variable| variable.value.as_deref())),
    )
}

/// Masks the run's opened sensitive inputs among `environment` in its log and reports
/// from now on: called before the worker prints anything.
pub(crate) fn mask_sealed_inputs(
    logs: &LogRelay,
    assignment: &Assignment,
    environment: &[(String, String)],
) {
    let sealed =
        |name: &String| assignment.sealed_inputs.iter().any(|input| input.variable == *name);
    logs.mask_also(
        environment.iter().filter(|(name, _)| sealed(name)).map(|(_, value)| value.as_str()),
    );
}

/// Reports a failure the worker could not report itself, after the log before it.
pub(crate) async fn report_failure(
    context: &RunContext,
    logs: &LogRelay,
    run_id: RunId,
    message: String,
) {
    report_ending(context, logs, run_id, RunReport::Failed { message }).await;
}

/// Reports how the run ended when the worker could not say it, after the log before it.
/// Kept until the server acknowledges it, however long it is unreachable: the run's
/// slot stays taken meanwhile (the server keeps its worker busy until it hears).
pub(crate) async fn report_ending(
    context: &RunContext,
    logs: &LogRelay,
    run_id: RunId,
    report: RunReport,
) {
    logs.flush().await;
    let report = logs.masked_report(report);
    let pending = PendingReport { run_id, report: report.clone() };
    if let Delivery::Acknowledged(_) = pending.deliver(&context.client).await {
        context.metrics.relayed(&report, None);
    }
}

pub(crate) fn timeout_message(context: &RunContext) -> String {
    let limit = humantime::format_duration(context.config.limits.run_timeout);
    format!(
        "The run exceeded its time limit of {limit} (GANTRY_LAUNCHER_RUN_TIMEOUT) and was stopped"
    )
}

pub(crate) fn silence_message(context: &RunContext) -> String {
    let limit = humantime::format_duration(context.config.limits.logs_timeout);
    format!("The run printed nothing for {limit} (GANTRY_LAUNCHER_LOGS_TIMEOUT) and was stopped")
}
