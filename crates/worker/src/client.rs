//! The HTTP/1.1 client for the launcher's local API on its unix socket.
//!
//! Plain hyper over `tokio::net::UnixStream` rather than reqwest: the worker needs no
//! TLS, no proxy, no DNS, no redirects and no connection pool, and it must build as a
//! static binary for busybox images, so the smallest client that speaks HTTP/1.1 over a
//! unix stream is the right one. Each request opens its own connection: connecting to
//! a local socket costs microseconds, and no connection state can go stale between a
//! report and the next one, however long the launcher takes to answer.
//!
//! No request has a timeout: the launcher owns every run deadline and stops the worker
//! when one passes (an answer to `Planned` may legitimately wait for a confirmation).

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use gantry_proto::agent::Directive;
use gantry_proto::api::ErrorResponse;
use gantry_proto::local::{WorkerDirective, WorkerJob, WorkerLog, WorkerReport};
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;

use crate::{Config, WorkerError};

const JOB: Endpoint = Endpoint { method: Method::GET, path: "/v1/job", request: "GET /v1/job" };
const LOGS: Endpoint =
    Endpoint { method: Method::POST, path: "/v1/logs", request: "POST /v1/logs" };
const LEASE: Endpoint =
    Endpoint { method: Method::GET, path: "/v1/lease", request: "GET /v1/lease" };
const REPORTS: Endpoint =
    Endpoint { method: Method::POST, path: "/v1/reports", request: "POST /v1/reports" };

fn socket_not_ready(error: &std::io::Error) -> bool {
    matches!(error.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused)
}

/// The longest piece of a non-JSON error body quoted in an error message.
const MAX_QUOTED_BODY: usize = 200;

struct Endpoint {
    method: Method,
    path: &'static str,
    /// How messages name the request.
    request: &'static str,
}

/// Talks to the launcher; cheap to clone so the log pump can own one.
#[derive(Debug, Clone)]
pub(crate) struct LauncherClient {
    socket_path: Arc<Path>,
    authorization: HeaderValue,
    socket_wait: std::time::Duration,
}

impl LauncherClient {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            socket_path: Arc::from(config.socket_path.as_path()),
            authorization: config.authorization.clone(),
            socket_wait: config.socket_wait,
        }
    }

    /// A client of the launcher listening on `socket_path`, for tests.
    #[cfg(test)]
    pub(crate) fn for_socket(socket_path: &Path) -> Self {
        Self {
            socket_path: Arc::from(socket_path),
            authorization: HeaderValue::from_static("Bearer capability"),
            socket_wait: std::time::Duration::from_secs(5),
        }
    }

    /// The first request waits up to `socket_wait` for the socket: in a Kubernetes run
    /// Pod the worker container may start while the launcher sidecar still binds it.
    pub(crate) async fn job(&self) -> Result<WorkerJob, WorkerError> {
        let started = std::time::Instant::now();
        let answer = loop {
            match self.exchange(&JOB, None).await {
                Err(WorkerError::Connect { source, .. })
                    if socket_not_ready(&source) && started.elapsed() < self.socket_wait =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                answer => break answer?,
            }
        };
        parse(&JOB, &answer)
    }

    pub(crate) async fn log(&self, text: String) -> Result<(), WorkerError> {
        self.exchange(&LOGS, Some(to_json(&WorkerLog { text }))).await?;
        Ok(())
    }

    pub(crate) async fn lease(&self) -> Result<gantry_proto::lease::WorkerLease, WorkerError> {
        let answer = self.exchange(&LEASE, None).await?;
        parse(&LEASE, &answer)
    }

    pub(crate) async fn report(&self, report: WorkerReport) -> Result<Directive, WorkerError> {
        let answer = self.exchange(&REPORTS, Some(to_json(&report))).await?;
        let answer: WorkerDirective = parse(&REPORTS, &answer)?;
        Ok(answer.directive)
    }

    /// Sends one request on a fresh connection and returns the body of a 2xx answer.
    async fn exchange(
        &self,
        endpoint: &Endpoint,
        body: Option<Bytes>,
    ) -> Result<Bytes, WorkerError> {
        let stream = UnixStream::connect(&*self.socket_path).await.map_err(|source| {
            WorkerError::Connect { path: self.socket_path.to_path_buf(), source }
        })?;
        let failed = |source| WorkerError::Exchange { request: endpoint.request, source };
        let (mut sender, connection) =
            hyper::client::conn::http1::handshake(TokioIo::new(stream)).await.map_err(failed)?;
        // The connection's own errors also fail `send_request`, which reports them.
        tokio::spawn(async move {
            let _ = connection.await;
        });

        let mut request = Request::new(Full::new(body.clone().unwrap_or_default()));
        *request.method_mut() = endpoint.method.clone();
        *request.uri_mut() = Uri::from_static(endpoint.path);
        let headers = request.headers_mut();
        headers.insert(header::HOST, HeaderValue::from_static("localhost"));
        headers.insert(header::AUTHORIZATION, self.authorization.clone());
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        if body.is_some() {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }

        let response = sender.send_request(request).await.map_err(failed)?;
        let status = response.status();
        let answer = response.into_body().collect().await.map_err(failed)?.to_bytes();
        if status.is_success() {
            Ok(answer)
        } else {
            Err(WorkerError::Refused {
                request: endpoint.request,
                status,
                message: error_message(status, &answer),
            })
        }
    }
}

fn to_json(value: &impl serde::Serialize) -> Bytes {
    // Serializing these plain structs of strings, enums and JSON values cannot fail:
    // serde_json only fails on maps with non-string keys or failing `Serialize` impls.
    Bytes::from(serde_json::to_vec(value).unwrap_or_default())
}

fn parse<T: serde::de::DeserializeOwned>(
    endpoint: &Endpoint,
    answer: &[u8],
) -> Result<T, WorkerError> {
    serde_json::from_slice(answer)
        .map_err(|source| WorkerError::InvalidAnswer { request: endpoint.request, source })
}

/// The launcher's `{"error": {"message"}}`, or what can be said about another body.
fn error_message(status: StatusCode, answer: &[u8]) -> String {
    if let Ok(response) = serde_json::from_slice::<ErrorResponse>(answer) {
        return response.error.message;
    }
    let text = String::from_utf8_lossy(answer);
    let text = text.trim();
    if text.is_empty() {
        return format!("no error message with status {status}");
    }
    match text.char_indices().nth(MAX_QUOTED_BODY) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_request_waits_for_a_socket_that_appears_late() {
        let dir = tempfile::tempdir().unwrap();
        let socket_path = dir.path().join("worker.sock");
        let client = LauncherClient {
            socket_path: Arc::from(socket_path.as_path()),
            authorization: HeaderValue::from_static("Bearer capability"),
            socket_wait: std::time::Duration::from_secs(30),
        };
        let job = tokio::spawn(async move { client.job().await });
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let listener = tokio::net::UnixListener::bind(&socket_path).unwrap();
        let (mut stream, _) = listener.accept().await.unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut request = vec![0u8; 4096];
        let read = stream.read(&mut request).await.unwrap();
        assert!(String::from_utf8_lossy(&request[..read]).starts_with("GET /v1/job"));
        let body = r#"{"error":{"code":"unauthorized","message":"bad capability"}}"#;
        let answer = format!(
            "HTTP/1.1 401 Unauthorized\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        stream.write_all(answer.as_bytes()).await.unwrap();
        let error = job.await.unwrap().unwrap_err().to_string();
        assert!(error.contains("bad capability"), "the request reached the late socket: {error}");
    }

    fn check(answer: &str, expect: &str) {
        assert_eq!(error_message(StatusCode::UNAUTHORIZED, answer.as_bytes()), expect);
    }

    #[test]
    fn error_messages_come_from_the_launchers_json_or_the_raw_body() {
        check(r#"{"error":{"code":"unauthorized","message":"bad capability"}}"#, "bad capability");
        check("  plain text\n", "plain text");
        check("", "no error message with status 401 Unauthorized");
        let long = "x".repeat(MAX_QUOTED_BODY + 10);
        check(&long, &format!("{}…", "x".repeat(MAX_QUOTED_BODY)));
    }
}
