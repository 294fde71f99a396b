//! The local API a run's worker calls over the run's unix socket: it fetches its job,
//! streams its output into the run log, and reports progress, each report relayed to the
//! server only after the log before it is on the server. Every request must carry the
//! run's capability; the socket's directory is private to the launcher's user.

use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use gantry_crypto::hash_secret;
use gantry_domain::RunId;
use gantry_proto::agent::{Directive, RunReport};
use gantry_proto::api::{ErrorBody, ErrorResponse};
use gantry_proto::local::{WorkerDirective, WorkerJob, WorkerLog, WorkerReport};
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, shown};
use crate::client::AgentClient;
use crate::logs::LogRelay;

/// What the run has concluded, as far as reports tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Conclusion {
    /// The run ended; the workspace can go.
    Ended,
    /// The run waits for confirmation; the workspace must be kept.
    RetainWorkspace,
}

/// One run's endpoint.
#[derive(Debug)]
pub(crate) struct RunEndpoint {
    pub(crate) run_id: RunId,
    pub(crate) job: WorkerJob,
    capability_hash: String,
    client: Arc<AgentClient>,
    logs: LogRelay,
    conclusion: Mutex<Option<Conclusion>>,
}

impl RunEndpoint {
    pub(crate) fn new(
        job: WorkerJob,
        capability: &str,
        client: Arc<AgentClient>,
        logs: LogRelay,
    ) -> Self {
        Self {
            run_id: job.run_id,
            job,
            capability_hash: hash_secret(capability),
            client,
            logs,
            conclusion: Mutex::new(None),
        }
    }

    pub(crate) fn conclusion(&self) -> Option<Conclusion> {
        *self.conclusion.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Relays a report once the log before it is uploaded, retrying while the server is
    /// unreachable; records whether it concluded the run.
    pub(crate) async fn report(&self, report: RunReport) -> Directive {
        self.logs.flush().await;
        let mut backoff = Backoff::new(Duration::from_secs(30));
        let directive = loop {
            match self.client.report(self.run_id, report.clone()).await {
                Ok(directive) => break directive,
                Err(error) if error.is_transient() => {
                    let delay = backoff.delay();
                    tracing::warn!(run = %self.run_id, %error, "report failed; retrying in {}", shown(delay));
                    tokio::time::sleep(delay).await;
                }
                Err(error) => {
                    // The server no longer wants this run here: stop it.
                    tracing::warn!(run = %self.run_id, %error, "the server refused a report; stopping the run");
                    break Directive::Finish;
                }
            }
        };
        let conclusion = match directive {
            Directive::RetainWorkspace => Some(Conclusion::RetainWorkspace),
            Directive::Finish => Some(Conclusion::Ended),
            Directive::Apply | Directive::Continue => None,
        };
        if let Some(conclusion) = conclusion {
            *self.conclusion.lock().unwrap_or_else(PoisonError::into_inner) = Some(conclusion);
        }
        directive
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

async fn job(State(endpoint): State<Arc<RunEndpoint>>) -> axum::Json<WorkerJob> {
    axum::Json(endpoint.job.clone())
}

async fn log(
    State(endpoint): State<Arc<RunEndpoint>>,
    axum::Json(log): axum::Json<WorkerLog>,
) -> StatusCode {
    endpoint.logs.append(&log.text);
    StatusCode::NO_CONTENT
}

async fn report(
    State(endpoint): State<Arc<RunEndpoint>>,
    axum::Json(report): axum::Json<WorkerReport>,
) -> axum::Json<WorkerDirective> {
    let directive = endpoint.report(report.report).await;
    axum::Json(WorkerDirective { directive })
}

/// Serves the endpoint on `socket_path` until `stop` is cancelled.
pub(crate) async fn serve(
    socket_path: &Path,
    endpoint: Arc<RunEndpoint>,
    stop: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<()>> {
    let listener = UnixListener::bind(socket_path)?;
    let router = Router::new()
        .route("/v1/job", get(job))
        .route("/v1/logs", post(log))
        .route("/v1/reports", post(report))
        .layer(from_fn_with_state(Arc::clone(&endpoint), require_capability))
        .with_state(endpoint);
    Ok(tokio::spawn(async move {
        let served =
            axum::serve(listener, router).with_graceful_shutdown(stop.cancelled_owned()).await;
        if let Err(error) = served {
            tracing::warn!(%error, "the worker's local API stopped");
        }
    }))
}
