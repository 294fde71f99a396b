//! The agent-plane client: every request this launcher makes, outbound, over HTTPS. It
//! opens a session by signing the server's challenge with the pool key, and opens a new
//! one transparently when the server says the old one expired.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine;
use gantry_crypto::{PoolPrivateKey, PoolToken, session_message};
use gantry_domain::{PoolId, RunId, WorkerId};
use gantry_proto::agent::{
    Acknowledge, BlobRef, ChallengeRequest, ChallengeResponse, Directive, Heartbeat,
    HeartbeatResponse, HeldAssignment, LOCK_GENERATION_HEADER, LauncherInfo, LeaveWorkers,
    LogUpload, LogsAccepted, OpenSession, PROTOCOL_VERSION, Poll, PollResponse, RegisterWorkers,
    ReportRequest, ReportResponse, RunReport, SHA256_HEADER, STATE_RUN_HEADER, SessionOpened,
    StateStored, UploadLogs, WorkerBinary, WorkerRegistration, WorkersLeft, WorkersRegistered,
};
use gantry_proto::api::ErrorResponse;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

use crate::config::LauncherConfig;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Workspaces can be large; a transfer that makes no progress still fails eventually.
const BLOB_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// Why a request to the server failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the server at {url}: {cause}")]
    Unreachable { url: String, cause: String },
    #[error("the server refused this launcher's proof: {0}")]
    Proof(String),
    #[error(
        "pool {pool_id} was reset: GANTRY_TOKEN carries an outdated certificate; start the launcher with the token (and key) from the reset"
    )]
    PoolReset { pool_id: PoolId },
    #[error("the server answered {status} ({code}): {message}")]
    Rejected { status: u16, code: String, message: String },
    #[error("the server's answer to {path} does not parse: {cause}")]
    Protocol { path: String, cause: String },
    #[error("the downloaded {what} is damaged: its SHA-256 is {actual}, expected {expected}")]
    Damaged { what: String, expected: String, actual: String },
}

/// A downloaded blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Downloaded {
    pub sha256: String,
    pub size: u64,
    /// For a state version: the run whose apply produced it.
    pub produced_by: Option<RunId>,
}

impl ClientError {
    /// Retrying cannot help: the configuration must change.
    pub fn is_fatal(&self) -> bool {
        matches!(self, Self::Proof(_) | Self::PoolReset { .. })
    }

    /// The HTTP status the server answered with, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Rejected { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Retrying may help: the server was unreachable or had a passing problem.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Rejected { status, .. } => *status >= 500 || *status == 429,
            _ => false,
        }
    }

    fn code(&self) -> Option<&str> {
        match self {
            Self::Rejected { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// An HTTPS client of one server's agent plane, for one launcher.
#[derive(Debug)]
pub struct AgentClient {
    http: reqwest::Client,
    endpoint: String,
    pool_id: PoolId,
    key: Arc<PoolPrivateKey>,
    certificate_fingerprint: String,
    info: LauncherInfo,
    session: Mutex<Option<String>>,
    /// How often the server wants heartbeats, in seconds, as its last session said.
    heartbeat_interval_seconds: AtomicU64,
    /// The lease this launcher grants its workers.
    lease: crate::lease::LeaseClock,
    /// Cancelled when the launcher leaves for good: deliveries still pending stop.
    deliveries_abandoned: tokio_util::sync::CancellationToken,
}

/// The heartbeat interval until a session says otherwise.
const DEFAULT_HEARTBEAT_INTERVAL_SECONDS: u64 = 3;

impl AgentClient {
    pub fn new(config: &LauncherConfig) -> Result<Self, ClientError> {
        Self::for_pool(
            &config.token,
            Arc::clone(&config.key),
            LauncherInfo {
                id: config.launcher_id,
                version: env!("CARGO_PKG_VERSION").to_owned(),
                hostname: config.hostname.clone(),
                protocol_version: PROTOCOL_VERSION,
            },
        )
    }

    /// A client for a pool's token and key, outside a launcher process (the Kubernetes
    /// operator holds one per WorkerPool). The key must match the token's certificate.
    pub fn for_pool(
        token: &PoolToken,
        key: Arc<PoolPrivateKey>,
        info: LauncherInfo,
    ) -> Result<Self, ClientError> {
        let certificate = token.pool_certificate().map_err(|e| ClientError::Protocol {
            path: "GANTRY_TOKEN".to_owned(),
            cause: format!("its pool certificate does not load: {e}"),
        })?;
        let pool_id = token.pool_id.parse().map_err(|_| ClientError::Protocol {
            path: "GANTRY_TOKEN".to_owned(),
            cause: "its pool id is not valid".to_owned(),
        })?;
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("gantry-launcher/", env!("CARGO_PKG_VERSION")));
        if let Some(ca) = &token.server_ca {
            let certificate = reqwest::Certificate::from_pem(ca.as_bytes()).map_err(|e| {
                ClientError::Protocol {
                    path: "GANTRY_TOKEN".to_owned(),
                    cause: format!("its server CA does not load: {e}"),
                }
            })?;
            builder = builder.tls_certs_only([certificate]);
        }
        let http = builder.build().map_err(|e| ClientError::Protocol {
            path: "client".to_owned(),
            cause: e.to_string(),
        })?;
        Ok(Self {
            http,
            endpoint: token.endpoint.trim_end_matches('/').to_owned(),
            pool_id,
            key,
            certificate_fingerprint: certificate.fingerprint().to_owned(),
            info,
            session: Mutex::new(None),
            heartbeat_interval_seconds: AtomicU64::new(DEFAULT_HEARTBEAT_INTERVAL_SECONDS),
            lease: crate::lease::LeaseClock::default(),
            deliveries_abandoned: tokio_util::sync::CancellationToken::new(),
        })
    }

    /// How often to heartbeat: the server decides, since it declares a launcher lost
    /// after a few missed beats (`GANTRY_SERVER_HEARTBEAT_INTERVAL`).
    pub fn heartbeat_interval(&self) -> Duration {
        let seconds = self.heartbeat_interval_seconds.load(Ordering::Relaxed);
        Duration::from_secs(seconds.clamp(1, 300))
    }

    /// The lease a worker of this launcher holds now.
    pub(crate) fn worker_lease(&self) -> gantry_proto::lease::WorkerLease {
        self.lease.grant()
    }

    /// Cancelled once the launcher stops trying to deliver what the server has not
    /// acknowledged yet (see `delivery`).
    pub(crate) fn deliveries_abandoned(&self) -> tokio_util::sync::CancellationToken {
        self.deliveries_abandoned.clone()
    }

    /// The launcher leaves for good: reports, state and logs still pending are tried once
    /// more at most, then handed back to their callers.
    pub(crate) fn abandon_deliveries(&self) {
        self.deliveries_abandoned.cancel();
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    async fn send<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<Resp, ClientError> {
        let url = format!("{}/agent/v1{path}", self.endpoint);
        let mut request = self.http.post(&url).json(body).timeout(timeout);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| ClientError::Unreachable {
            url: self.endpoint.clone(),
            cause: describe(&e),
        })?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| ClientError::Unreachable {
            url: self.endpoint.clone(),
            cause: describe(&e),
        })?;
        if status.is_success() {
            return serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
                path: path.to_owned(),
                cause: e.to_string(),
            });
        }
        Err(self.refusal(status, &bytes))
    }

    /// The error an unsuccessful answer stands for.
    fn refusal(&self, status: reqwest::StatusCode, body: &[u8]) -> ClientError {
        let (code, message) = match serde_json::from_slice::<ErrorResponse>(body) {
            Ok(error) => (error.error.code, error.error.message),
            Err(_) => {
                ("unknown".to_owned(), String::from_utf8_lossy(body).chars().take(300).collect())
            }
        };
        match code.as_str() {
            "pool_reset" => ClientError::PoolReset { pool_id: self.pool_id },
            "invalid_proof" => ClientError::Proof(message),
            _ => ClientError::Rejected { status: status.as_u16(), code, message },
        }
    }

    fn unreachable(&self, error: &reqwest::Error) -> ClientError {
        ClientError::Unreachable { url: self.endpoint.clone(), cause: describe(error) }
    }

    /// Uploads `file` as the run's `what` blob (`workspace`, `sensitive-outputs`),
    /// announcing its SHA-256 so that the server can tell a damaged upload.
    pub async fn upload_blob(
        &self,
        run_id: RunId,
        what: &str,
        file: &Path,
        sha256: &str,
    ) -> Result<BlobRef, ClientError> {
        self.put_file(run_id, what, file, sha256, None).await
    }

    /// Uploads `file` as the run's new managed state with the lock generation of its
    /// assignment (its fencing token; none from a server that gave none): the answer
    /// says which version it became, and whether the server kept it as an orphaned one
    /// because the run no longer held its stack's lock.
    pub async fn upload_state(
        &self,
        run_id: RunId,
        file: &Path,
        sha256: &str,
        lock_generation: Option<u64>,
    ) -> Result<StateStored, ClientError> {
        let generation = lock_generation.map(|generation| (LOCK_GENERATION_HEADER, generation));
        self.put_file(run_id, "state", file, sha256, generation).await
    }

    async fn put_file<T: DeserializeOwned>(
        &self,
        run_id: RunId,
        what: &str,
        file: &Path,
        sha256: &str,
        extra_header: Option<(&'static str, u64)>,
    ) -> Result<T, ClientError> {
        let url = format!("{}/agent/v1/runs/{run_id}/{what}", self.endpoint);
        self.with_session(|token| {
            let url = url.clone();
            async move {
                let handle = tokio::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(file)
                    .await
                    .map_err(|e| ClientError::Protocol {
                        path: file.display().to_string(),
                        cause: format!("cannot read the blob to upload: {e}"),
                    })?;
                let size = handle.metadata().await.map(|meta| meta.len()).unwrap_or(0);
                let body = reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(
                    handle,
                    256 * 1024,
                ));
                let mut request = self
                    .http
                    .put(&url)
                    .bearer_auth(&token)
                    .header(SHA256_HEADER, sha256)
                    .header(reqwest::header::CONTENT_LENGTH, size);
                if let Some((name, value)) = extra_header {
                    request = request.header(name, value);
                }
                let response = request
                    .body(body)
                    .timeout(BLOB_TIMEOUT)
                    .send()
                    .await
                    .map_err(|e| self.unreachable(&e))?;
                let status = response.status();
                let bytes = response.bytes().await.map_err(|e| self.unreachable(&e))?;
                if !status.is_success() {
                    return Err(self.refusal(status, &bytes));
                }
                serde_json::from_slice(&bytes)
                    .map_err(|e| ClientError::Protocol { path: url.clone(), cause: e.to_string() })
            }
        })
        .await
    }

    /// Downloads the run's `what` blob into `destination`, checking its SHA-256 against
    /// `expected` (when given) and the server's header. `Ok(None)`: there is none.
    pub async fn download_blob(
        &self,
        run_id: RunId,
        what: &str,
        destination: &Path,
        expected: Option<&str>,
    ) -> Result<Option<Downloaded>, ClientError> {
        let url = format!("{}/agent/v1/runs/{run_id}/{what}", self.endpoint);
        self.download(url, what, destination, expected).await
    }

    /// An authenticated GET: the response when successful or 404 (the server has no such
    /// thing), the refusal otherwise.
    async fn get(
        &self,
        url: &str,
        token: &str,
        timeout: Duration,
    ) -> Result<reqwest::Response, ClientError> {
        let response = self
            .http
            .get(url)
            .bearer_auth(token)
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
            return Ok(response);
        }
        let bytes = response.bytes().await.map_err(|e| self.unreachable(&e))?;
        Err(self.refusal(status, &bytes))
    }

    /// The worker binary the server distributes for `arch`: digest, size, signature.
    pub async fn describe_worker_binary(&self, arch: &str) -> Result<WorkerBinary, ClientError> {
        let url = format!("{}/agent/v1/worker-binary?arch={arch}", self.endpoint);
        self.with_session(|token| {
            let url = url.clone();
            async move {
                let response = self.get(&url, &token, REQUEST_TIMEOUT).await?;
                let status = response.status();
                let bytes = response.bytes().await.map_err(|e| self.unreachable(&e))?;
                if !status.is_success() {
                    // The server says why it has none.
                    return Err(self.refusal(status, &bytes));
                }
                serde_json::from_slice(&bytes).map_err(|e| ClientError::Protocol {
                    path: "/worker-binary".to_owned(),
                    cause: e.to_string(),
                })
            }
        })
        .await
    }

    /// Downloads the worker binary for `arch` to `destination`, checking it has the
    /// `expected` digest. `None`: the server has none.
    pub async fn download_worker_binary(
        &self,
        arch: &str,
        destination: &Path,
        expected: &str,
    ) -> Result<Option<Downloaded>, ClientError> {
        let url = format!("{}/agent/v1/worker-binary/content?arch={arch}", self.endpoint);
        self.download(url, "worker binary", destination, Some(expected)).await
    }

    async fn download(
        &self,
        url: String,
        what: &str,
        destination: &Path,
        expected: Option<&str>,
    ) -> Result<Option<Downloaded>, ClientError> {
        use futures_util::StreamExt;
        use tokio::io::AsyncWriteExt;
        let local = |e: std::io::Error| ClientError::Protocol {
            path: destination.display().to_string(),
            cause: e.to_string(),
        };
        self.with_session(|token| {
            let url = url.clone();
            async move {
                let response = self.get(&url, &token, BLOB_TIMEOUT).await?;
                if response.status() == reqwest::StatusCode::NOT_FOUND {
                    return Ok(None);
                }
                let header = |name: &str| {
                    response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
                };
                let announced = header(SHA256_HEADER);
                let produced_by = header(STATE_RUN_HEADER).and_then(|run| run.parse().ok());
                // Scratch space is the launcher's own; should anything still be in the
                // file's place, it is replaced, never written through.
                match tokio::fs::remove_file(destination).await {
                    Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                        return Err(local(error));
                    }
                    _ => {}
                }
                let mut file = tokio::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(nix::libc::O_NOFOLLOW)
                    .open(destination)
                    .await
                    .map_err(local)?;
                let mut digest = aws_lc_rs::digest::Context::new(&aws_lc_rs::digest::SHA256);
                let mut size = 0u64;
                let mut body = response.bytes_stream();
                while let Some(chunk) = body.next().await {
                    let chunk = chunk.map_err(|e| self.unreachable(&e))?;
                    digest.update(&chunk);
                    size += chunk.len() as u64;
                    file.write_all(&chunk).await.map_err(local)?;
                }
                file.flush().await.map_err(local)?;
                let sha256 = hex::encode(digest.finish());
                for claimed in [announced.as_deref(), expected].into_iter().flatten() {
                    if !claimed.eq_ignore_ascii_case(&sha256) {
                        return Err(ClientError::Damaged {
                            what: what.to_owned(),
                            expected: claimed.to_owned(),
                            actual: sha256,
                        });
                    }
                }
                Ok(Some(Downloaded { sha256, size, produced_by }))
            }
        })
        .await
    }

    /// Proves possession of the pool key and opens a session.
    async fn open_session(&self) -> Result<String, ClientError> {
        let challenge: ChallengeResponse = self
            .send(
                "/session/challenge",
                &ChallengeRequest { pool_id: self.pool_id },
                None,
                REQUEST_TIMEOUT,
            )
            .await?;
        if challenge
            .certificate_fingerprint
            .as_deref()
            .is_some_and(|current| current != self.certificate_fingerprint)
        {
            return Err(ClientError::PoolReset { pool_id: self.pool_id });
        }
        let signature = self
            .key
            .sign(&session_message(&challenge.challenge))
            .map_err(|e| ClientError::Proof(format!("signing the challenge failed: {e}")))?;
        let request = OpenSession {
            pool_id: self.pool_id,
            challenge: challenge.challenge,
            signature: base64::engine::general_purpose::STANDARD.encode(signature),
            launcher: self.info.clone(),
        };
        let opened: SessionOpened = self.send("/session", &request, None, REQUEST_TIMEOUT).await?;
        self.heartbeat_interval_seconds.store(opened.heartbeat_interval_seconds, Ordering::Relaxed);
        if let Some(terms) = opened.worker_lease {
            self.lease.set_terms(terms);
        }
        Ok(opened.session_token)
    }

    /// Opens a session now if there is none: the first contact with the server.
    pub async fn connect(&self) -> Result<(), ClientError> {
        let mut session = self.session.lock().await;
        if session.is_none() {
            *session = Some(self.open_session().await?);
        }
        Ok(())
    }

    /// Runs `request` with the session token, opening a new session once if the server
    /// says the current one expired.
    async fn with_session<T, F, Fut>(&self, request: F) -> Result<T, ClientError>
    where
        F: Fn(String) -> Fut,
        Fut: std::future::Future<Output = Result<T, ClientError>>,
    {
        for attempt in 0..2 {
            let token = {
                let mut session = self.session.lock().await;
                match &*session {
                    Some(token) => token.clone(),
                    None => {
                        let token = self.open_session().await?;
                        *session = Some(token.clone());
                        token
                    }
                }
            };
            match request(token.clone()).await {
                Err(error) if attempt == 0 && error.code() == Some("session_expired") => {
                    let mut session = self.session.lock().await;
                    if session.as_deref() == Some(token.as_str()) {
                        *session = None;
                    }
                }
                other => return other,
            }
        }
        Err(ClientError::Proof("the server keeps rejecting new sessions".to_owned()))
    }

    /// A JSON request within a session.
    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        path: &str,
        body: &Req,
        timeout: Duration,
    ) -> Result<Resp, ClientError> {
        self.with_session(|token| async move { self.send(path, body, Some(&token), timeout).await })
            .await
    }

    pub async fn register_workers(
        &self,
        workers: Vec<WorkerRegistration>,
    ) -> Result<WorkersRegistered, ClientError> {
        let sent_at = std::time::Instant::now();
        let registered =
            self.call("/workers", &RegisterWorkers { workers }, REQUEST_TIMEOUT).await?;
        self.lease.acknowledged(sent_at);
        Ok(registered)
    }

    /// Drains the workers and removes those that hold no run (`busy` lists the others).
    pub async fn leave_workers(
        &self,
        worker_ids: Vec<WorkerId>,
    ) -> Result<WorkersLeft, ClientError> {
        self.call("/workers/leave", &LeaveWorkers { worker_ids }, REQUEST_TIMEOUT).await
    }

    /// Waits up to `wait` for work; `holding` lists the assignments executing here.
    pub async fn poll(
        &self,
        wait: Duration,
        holding: Vec<HeldAssignment>,
    ) -> Result<PollResponse, ClientError> {
        let wait_seconds = u32::try_from(wait.as_secs()).unwrap_or(u32::MAX);
        self.call("/poll", &Poll { wait_seconds, holding }, wait + REQUEST_TIMEOUT).await
    }

    pub async fn heartbeat(&self, heartbeat: &Heartbeat) -> Result<HeartbeatResponse, ClientError> {
        let sent_at = std::time::Instant::now();
        // Given up after two intervals rather than the usual request timeout: the next
        // one, perhaps on a fresh connection, goes out before the server's worker timeout.
        let timeout = (self.heartbeat_interval() * 2).min(REQUEST_TIMEOUT);
        let response: HeartbeatResponse = self.call("/heartbeat", heartbeat, timeout).await?;
        self.lease.acknowledged(sent_at);
        Ok(response)
    }

    pub async fn acknowledge(
        &self,
        run_id: RunId,
        acknowledge: &Acknowledge,
    ) -> Result<(), ClientError> {
        let _: serde_json::Value =
            self.call(&format!("/runs/{run_id}/ack"), acknowledge, REQUEST_TIMEOUT).await?;
        Ok(())
    }

    pub async fn report(&self, run_id: RunId, report: RunReport) -> Result<Directive, ClientError> {
        let response: ReportResponse = self
            .call(&format!("/runs/{run_id}/reports"), &ReportRequest { report }, REQUEST_TIMEOUT)
            .await?;
        Ok(response.directive)
    }

    pub async fn upload_logs(
        &self,
        run_id: RunId,
        chunks: Vec<LogUpload>,
    ) -> Result<u64, ClientError> {
        let accepted: LogsAccepted = self
            .call(&format!("/runs/{run_id}/logs"), &UploadLogs { chunks }, REQUEST_TIMEOUT)
            .await?;
        Ok(accepted.next_seq)
    }

    /// Ends the session; the server removes this launcher's workers.
    pub async fn close(&self) -> Result<(), ClientError> {
        if self.session.lock().await.is_none() {
            return Ok(());
        }
        let _: serde_json::Value =
            self.call("/session/close", &serde_json::json!({}), REQUEST_TIMEOUT).await?;
        *self.session.lock().await = None;
        Ok(())
    }
}

/// The innermost cause of a transport error: "connection refused", "certificate not
/// trusted", rather than reqwest's generic outer message.
fn describe(error: &reqwest::Error) -> String {
    let mut cause: &dyn std::error::Error = error;
    while let Some(source) = cause.source() {
        cause = source;
    }
    if error.is_timeout() {
        return "the request timed out".to_owned();
    }
    cause.to_string()
}
