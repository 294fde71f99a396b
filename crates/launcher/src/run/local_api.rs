//! The local API a run's worker calls over the run's unix socket: it fetches its job,
//! streams its output into the run log, and reports progress, each report relayed to the
//! server only after the log before it is on the server. Every request must carry the
//! run's capability; the socket's directory is private to the launcher's user.

use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gantry_crypto::hash_secret;
use gantry_domain::RunId;
use gantry_proto::agent::{Assignment, Directive, RunReport};
use gantry_proto::api::{ErrorBody, ErrorResponse};
use gantry_proto::local::{SensitiveOutput, WorkerDirective, WorkerJob, WorkerLog, WorkerReport};
use tokio::net::UnixListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::RunContext;
use super::sealed;
use super::state::ManagedState;
use crate::client::AgentClient;
use crate::delivery::{Delivery, PendingReport};
use crate::logs::LogRelay;
use crate::metrics::{LauncherMetrics, PhaseClock};

/// The largest log post taken. The worker posts at most 256 KiB of text, at most six
/// times that once escaped as JSON; a larger post is answered 413, and the worker sends
/// it again in halves.
const LOG_BODY_LIMIT: usize = 2 * 1024 * 1024;

/// What the run has concluded, as far as reports tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conclusion {
    /// The run ended here.
    Ended,
    /// The plan waits for confirmation: its workspace must be stored.
    UploadWorkspace,
}

/// One run's endpoint.
#[derive(Debug)]
pub(crate) struct RunEndpoint {
    pub(crate) run_id: RunId,
    pub(crate) job: WorkerJob,
    capability_hash: String,
    client: Arc<AgentClient>,
    logs: LogRelay,
    /// Watched: a sidecar learns from it that the worker has nothing left to say.
    conclusion: watch::Sender<Option<Conclusion>>,
    pub(crate) managed_state: Option<ManagedState>,
    metrics: Arc<LauncherMetrics>,
    phases: PhaseClock,
    /// Where sensitive output values go, sealed, when the run shares them.
    pub(crate) sensitive_outputs: Option<SensitiveOutputsUpload>,
    /// Held while a report is relayed.
    relaying: tokio::sync::Mutex<()>,
    /// The run's journal, on a launcher that keeps one: a final report is written to it
    /// before it is sent, for a launcher started again to send it if this one dies.
    pub(crate) journal: std::sync::OnceLock<Arc<super::journal::RunJournal>>,
}

/// A run whose stack shares its sensitive outputs, on a launcher that uploads them.
#[derive(Debug)]
pub(crate) struct SensitiveOutputsUpload {
    pub(crate) context: Arc<RunContext>,
    pub(crate) assignment: Assignment,
}

impl RunEndpoint {
    pub(crate) fn new(
        job: WorkerJob,
        capability: &str,
        client: Arc<AgentClient>,
        logs: LogRelay,
        managed_state: Option<ManagedState>,
        metrics: Arc<LauncherMetrics>,
    ) -> Self {
        Self {
            run_id: job.run_id,
            job,
            capability_hash: hash_secret(capability),
            client,
            logs,
            conclusion: watch::channel(None).0,
            managed_state,
            metrics,
            phases: PhaseClock::default(),
            sensitive_outputs: None,
            relaying: tokio::sync::Mutex::new(()),
            journal: std::sync::OnceLock::new(),
        }
    }

    /// Seals and uploads the values the worker sent with its outputs report. Values sent
    /// for a run that does not share them are dropped. A failed upload is said in the log
    /// and does not fail the run: its dependents fail with the reason instead.
    async fn store_sensitive_outputs(&self, outputs: &[SensitiveOutput]) {
        let Some(upload) = &self.sensitive_outputs else {
            tracing::warn!(run = %self.run_id, "the worker sent sensitive output values this run does not share: dropped");
            return;
        };
        match sealed::store_sensitive_outputs(&upload.context, &upload.assignment, outputs).await {
            Ok(()) => self.logs.append(&format!(
                "Stored {} sensitive output(s), sealed to the pool key, for the stacks that depend on this one\n",
                outputs.len()
            )),
            Err(problem) => self.logs.append(&format!(
                "\nWarning: the sensitive outputs could not be stored for the stacks that depend on this one: {problem}\n"
            )),
        }
    }

    /// The worker is gone: a phase it did not end is over.
    pub(crate) fn end_phase(&self) {
        self.phases.end(&self.metrics);
    }

    pub(crate) fn conclusion(&self) -> Option<Conclusion> {
        *self.conclusion.borrow()
    }

    /// Returns once no report is on its way to the server: a report the worker made
    /// before it went away (its lease ran out while the server was unreachable, or it
    /// was killed) is still relayed, and what it concludes counts.
    pub(crate) async fn settled(&self) {
        drop(self.relaying.lock().await);
    }

    /// Returns once a report has concluded the run.
    pub(crate) async fn concluded(&self) {
        let mut conclusion = self.conclusion.subscribe();
        // The sender lives as long as `self`: waiting cannot fail.
        let _ = conclusion.wait_for(Option::is_some).await;
    }

    /// Relays a report once the log before it is uploaded, kept until the server
    /// acknowledges it (see `delivery`); records whether it concluded the run. Reports
    /// are relayed one at a time, in the order they came.
    pub(crate) async fn report(&self, report: RunReport) -> Directive {
        let _relaying = self.relaying.lock().await;
        let report = self.secure_state(report).await;
        self.phases.observe(&self.metrics, &report);
        // What the worker and the state's storage said may quote a masked value.
        let report = self.logs.masked_report(report);
        // Journaled before the log's flush, which waits for the server: a launcher killed
        // while the server is away leaves the report to the next one (`recovery`).
        if let Some(journal) = self.journal.get()
            && super::journal::ends_the_run(&report)
        {
            journal.final_report(&report);
        }
        self.logs.flush().await;
        let pending = PendingReport { run_id: self.run_id, report: report.clone() };
        let directive = match pending.deliver(&self.client).await {
            Delivery::Acknowledged(directive) => {
                self.metrics.relayed(&report, Some(directive));
                directive
            }
            // The server no longer wants this run here, or the launcher is leaving: the
            // worker stops either way.
            Delivery::Refused(_) | Delivery::Abandoned(_) => Directive::Finish,
        };
        let conclusion = match directive {
            Directive::UploadWorkspace => Some(Conclusion::UploadWorkspace),
            Directive::Finish => Some(Conclusion::Ended),
            Directive::Apply | Directive::Continue => None,
        };
        if let Some(conclusion) = conclusion {
            self.conclusion.send_replace(Some(conclusion));
        }
        directive
    }
}

impl RunEndpoint {
    /// Before relaying how an apply ended, stores the state it left: an `Applied` whose
    /// state could not be stored becomes a failure that says where the state is kept.
    async fn secure_state(&self, report: RunReport) -> RunReport {
        let Some(managed) = &self.managed_state else { return report };
        // A task's command may change the state as much as an apply does (`import`, `rm`).
        if matches!(
            report,
            RunReport::PhaseStarted {
                phase: gantry_domain::Phase::Applying | gantry_domain::Phase::Performing
            }
        ) {
            managed.applying.store(true, std::sync::atomic::Ordering::SeqCst);
            return report;
        }
        if !matches!(report, RunReport::Applied | RunReport::Performed | RunReport::Failed { .. }) {
            return report;
        }
        match (managed.store_after_apply().await, report) {
            (Some(Ok(true)), report) => {
                match managed.take_orphan_notice() {
                    Some(notice) => self.logs.append(&notice),
                    None => {
                        self.logs.append("\nThe new state is stored, encrypted to the pool key.\n")
                    }
                }
                report
            }
            (Some(Err(problem)), RunReport::Applied) => {
                self.logs.append(&format!("\n{problem}\n"));
                RunReport::Failed { message: format!("The apply succeeded but {problem}") }
            }
            (Some(Err(problem)), RunReport::Performed) => {
                self.logs.append(&format!("\n{problem}\n"));
                RunReport::Failed { message: format!("The command succeeded but {problem}") }
            }
            (Some(Err(problem)), RunReport::Failed { message }) => {
                self.logs.append(&format!("\n{problem}\n"));
                RunReport::Failed { message: format!("{message}; besides, {problem}") }
            }
            (_, report) => report,
        }
    }
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    let body =
        ErrorResponse { error: ErrorBody { code: code.to_owned(), message: message.to_owned() } };
    (status, axum::Json(body)).into_response()
}

async fn require_capability(
    State(endpoint): State<Arc<RunEndpoint>>,
    request: Request,
    next: Next,
) -> Response {
    let presented = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match presented {
        Some(capability) if hash_secret(capability) == endpoint.capability_hash => {
            next.run(request).await
        }
        _ => refuse(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this socket belongs to another run: the capability does not match",
        ),
    }
}

/// A body that is not the request it should be, refused like every refusal of this API:
/// a 4xx with the JSON error body, not axum's plain text.
fn invalid_body(rejection: &JsonRejection) -> Response {
    let message = format!("the request body is not valid: {}", rejection.body_text());
    refuse(rejection.status(), "invalid_request", &message)
}

async fn job(State(endpoint): State<Arc<RunEndpoint>>) -> axum::Json<WorkerJob> {
    axum::Json(endpoint.job.clone())
}

async fn log(
    State(endpoint): State<Arc<RunEndpoint>>,
    log: Result<axum::Json<WorkerLog>, JsonRejection>,
) -> Response {
    let axum::Json(log) = match log {
        Ok(log) => log,
        Err(rejection) => return invalid_body(&rejection),
    };
    endpoint.logs.append(&log.text);
    StatusCode::NO_CONTENT.into_response()
}

async fn report(
    State(endpoint): State<Arc<RunEndpoint>>,
    report: Result<axum::Json<WorkerReport>, JsonRejection>,
) -> Response {
    let axum::Json(report) = match report {
        Ok(report) => report,
        Err(rejection) => return invalid_body(&rejection),
    };
    // Relayed by a task of its own: a worker that goes away (its connection closed)
    // does not take its report with it.
    let relay = tokio::spawn(async move {
        if !report.sensitive_outputs.is_empty() {
            endpoint.store_sensitive_outputs(&report.sensitive_outputs).await;
        }
        endpoint.report(report.report).await
    });
    match relay.await {
        Ok(directive) => axum::Json(WorkerDirective { directive }).into_response(),
        Err(error) => refuse(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            &format!("relaying the report failed: {error}"),
        ),
    }
}

/// The worker renews its lease here; it is what the launcher grants, not a constant.
async fn lease(
    State(endpoint): State<Arc<RunEndpoint>>,
) -> axum::Json<gantry_proto::lease::WorkerLease> {
    axum::Json(endpoint.client.worker_lease())
}

/// The API's routes, each behind the capability check.
fn router(endpoint: Arc<RunEndpoint>) -> Router {
    Router::new()
        .route("/v1/job", get(job))
        .route("/v1/logs", post(log).layer(DefaultBodyLimit::max(LOG_BODY_LIMIT)))
        .route("/v1/reports", post(report))
        .route("/v1/lease", get(lease))
        .layer(from_fn_with_state(Arc::clone(&endpoint), require_capability))
        .with_state(endpoint)
}

/// Serves the endpoint on `socket_path` until `stop` is cancelled.
pub(crate) async fn serve(
    socket_path: &Path,
    endpoint: Arc<RunEndpoint>,
    stop: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = UnixListener::bind(socket_path)?;
    let router = router(endpoint);
    Ok(tokio::spawn(async move {
        let served =
            axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await;
        if let Err(error) = served {
            tracing::warn!(%error, "the worker's local API stopped");
        }
    }))
}

#[cfg(test)]
mod fuzz_tests;
