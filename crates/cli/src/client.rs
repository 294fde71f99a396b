//! `ApiClient`: a typed async client of Gantry's REST API, one method per endpoint, for
//! the CLI, `gantry up` and end-to-end tests. It also follows a run's live log stream
//! (server-sent events), reconnecting where it left off when the connection drops.

use std::error::Error as _;
use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use eventsource_stream::{EventStreamError, Eventsource};
use futures_util::{Stream, StreamExt};
use gantry_domain::{RunId, WorkerId};
use gantry_proto::api::{
    AddDependency, AdoptState, CreatePool, CreateStack, Dependencies, Drained, ErrorResponse,
    FailRun, Health, LogChunk, LogPage, Pool, PoolCertificate, PoolCreated, PoolList, Queue,
    ResetPool, RollbackState, Run, RunList, SetStackSecrets, Stack, StackList, StateVersion,
    StateVersionList, StreamEnd, TriggerRun, WorkerList,
};
use gantry_proto::audit::{AuditList, AuditVerified};
use gantry_proto::keys::{ApiKey, CreateKey, KeyCreated, KeyList};
use gantry_proto::schedules::{CreateSchedule, Schedule, ScheduleList};
use gantry_proto::webhooks::{
    CreateWebhook, CreatedWebhook, DeliveryList, Webhook, WebhookList, WebhookSecret,
};
use reqwest::header::{ACCEPT, AUTHORIZATION, HeaderValue};
use reqwest::{Method, StatusCode, Url};
use serde::Serialize;
use serde::de::DeserializeOwned;

const USER_AGENT: &str = concat!("gantry-cli/", env!("CARGO_PKG_VERSION"));

/// Why a call to the API failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{url:?} is not a valid API URL: expected an http:// or https:// URL with a host")]
    InvalidUrl { url: String },
    #[error("the API key contains characters that cannot be sent in an HTTP header")]
    InvalidApiKey,
    #[error("the CA certificate is not usable: {reason}")]
    InvalidCaCertificate { reason: String },
    #[error("cannot set up the HTTP client: {0}")]
    Setup(#[source] reqwest::Error),
    /// No HTTP answer: refused, unresolvable, timed out, or cut before the answer ended.
    #[error("cannot reach the Gantry API at {url}: {cause}")]
    Unreachable { url: String, cause: String },
    /// The TLS handshake failed; `untrusted_certificate` when the server's certificate
    /// chain does not lead to a trusted root (or does not name the host).
    #[error("the TLS connection to {url} failed: {cause}")]
    Tls { url: String, cause: String, untrusted_certificate: bool },
    /// The server answered with an error status.
    #[error("{message}")]
    Api { status: u16, code: String, message: String },
    /// The server answered, but not with what this client expected.
    #[error("the answer to {request} is not what this client understands: {source}")]
    Decode {
        request: String,
        #[source]
        source: serde_json::Error,
    },
    /// The live log stream is not a valid event stream.
    #[error("the event stream of {request} is malformed: {reason}")]
    InvalidStream { request: String, reason: String },
}

impl ClientError {
    /// Whether trying again later may succeed: the server may be restarting.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Unreachable { .. } => true,
            Self::Api { status, .. } => matches!(status, 502..=504),
            Self::InvalidUrl { .. }
            | Self::InvalidApiKey
            | Self::InvalidCaCertificate { .. }
            | Self::Setup(_)
            | Self::Tls { .. }
            | Self::Decode { .. }
            | Self::InvalidStream { .. } => false,
        }
    }
}

/// Configures an [`ApiClient`].
pub struct ApiClientBuilder {
    base_url: String,
    api_key: Option<String>,
    ca_pems: Vec<Vec<u8>>,
    request_timeout: Duration,
    connect_timeout: Duration,
    read_timeout: Duration,
}

impl fmt::Debug for ApiClientBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiClientBuilder")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "(hidden)"))
            .field("ca_pems", &self.ca_pems.len())
            .finish_non_exhaustive()
    }
}

impl ApiClientBuilder {
    /// The `Authorization: Bearer` key of admin endpoints. Without one, only
    /// [`ApiClient::health`] succeeds.
    pub fn api_key(mut self, api_key: impl Into<String>) -> Self {
        self.api_key = Some(api_key.into());
        self
    }

    /// Trusts the CA certificates of this PEM text in addition to the system's roots
    /// (the server CA that `gantry up` writes, for example).
    pub fn trust_ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca_pems.push(pem.into());
        self
    }

    /// The limit for one request and its answer (not for the live log stream). Default
    /// 60 s.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// The limit for opening a connection. Default 10 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// The longest silence accepted while reading an answer: a live log stream that
    /// stays silent longer is considered dropped and reopened. Default 90 s (servers send
    /// keep-alive comments more often).
    pub fn read_timeout(mut self, timeout: Duration) -> Self {
        self.read_timeout = timeout;
        self
    }

    pub fn build(self) -> Result<ApiClient, ClientError> {
        let invalid_url = || ClientError::InvalidUrl { url: self.base_url.clone() };
        let mut base = Url::parse(self.base_url.trim()).map_err(|_| invalid_url())?;
        if !matches!(base.scheme(), "http" | "https")
            || base.host_str().is_none()
            || base.cannot_be_a_base()
        {
            return Err(invalid_url());
        }
        base.set_query(None);
        base.set_fragment(None);

        let authorization = match &self.api_key {
            Some(key) => {
                let mut value = HeaderValue::from_str(&format!("Bearer {}", key.trim()))
                    .map_err(|_| ClientError::InvalidApiKey)?;
                // Keeps the key out of Debug output and out of HTTP/2 header compression
                // tables.
                value.set_sensitive(true);
                Some(value)
            }
            None => None,
        };

        let mut roots = Vec::new();
        for pem in &self.ca_pems {
            let certificates = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| ClientError::InvalidCaCertificate { reason: e.to_string() })?;
            if certificates.is_empty() {
                return Err(ClientError::InvalidCaCertificate {
                    reason: "no PEM CERTIFICATE block in it".to_owned(),
                });
            }
            roots.extend(certificates);
        }

        let http = reqwest::Client::builder()
            .user_agent(USER_AGENT)
            .tls_certs_merge(roots)
            .connect_timeout(self.connect_timeout)
            .read_timeout(self.read_timeout)
            .build()
            .map_err(|e| match find_tls_error(&e) {
                Some(tls) => ClientError::InvalidCaCertificate { reason: tls.to_string() },
                None => ClientError::Setup(e),
            })?;
        let display_url = self.base_url.trim().trim_end_matches('/').to_owned();
        Ok(ApiClient {
            http,
            base,
            display_url,
            authorization,
            request_timeout: self.request_timeout,
        })
    }
}

/// A client of the REST API under `/api/v1`. Cheap to clone: clones share connections.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: Url,
    display_url: String,
    authorization: Option<HeaderValue>,
    request_timeout: Duration,
}

impl fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base.as_str())
            .field("authorized", &self.authorization.is_some())
            .finish_non_exhaustive()
    }
}

impl ApiClient {
    /// A builder for the API at `base_url` (such as `https://127.0.0.1:8443`; a path
    /// prefix is kept: `https://example.com/gantry` serves `/gantry/api/v1/...`).
    pub fn builder(base_url: impl Into<String>) -> ApiClientBuilder {
        ApiClientBuilder {
            base_url: base_url.into(),
            api_key: None,
            ca_pems: Vec::new(),
            request_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(90),
        }
    }

    /// The API URL as it was given, for messages.
    pub fn base_url(&self) -> &str {
        &self.display_url
    }

    /// `GET /api/v1/health` (no key needed).
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.call(Method::GET, self.url(&["health"]), None::<&()>).await
    }

    /// `POST /api/v1/pools`: the answer holds the pool's token, shown only this once.
    pub async fn create_pool(&self, request: &CreatePool) -> Result<PoolCreated, ClientError> {
        self.call(Method::POST, self.url(&["pools"]), Some(request)).await
    }

    /// `POST /api/v1/pools/{pool}/reset`: a new certificate from a new CSR.
    pub async fn reset_pool(
        &self,
        pool: &str,
        request: &ResetPool,
    ) -> Result<PoolCreated, ClientError> {
        self.call(Method::POST, self.url(&["pools", pool, "reset"]), Some(request)).await
    }

    /// `GET /api/v1/pools`
    pub async fn list_pools(&self) -> Result<PoolList, ClientError> {
        self.call(Method::GET, self.url(&["pools"]), None::<&()>).await
    }

    /// `GET /api/v1/pools/{pool}`: `pool` is an id or a name.
    pub async fn get_pool(&self, pool: &str) -> Result<Pool, ClientError> {
        self.call(Method::GET, self.url(&["pools", pool]), None::<&()>).await
    }

    /// `GET /api/v1/pools/{pool}/certificate`: what a stack's secrets are sealed to.
    pub async fn pool_certificate(&self, pool: &str) -> Result<PoolCertificate, ClientError> {
        self.call(Method::GET, self.url(&["pools", pool, "certificate"]), None::<&()>).await
    }

    /// `PUT /api/v1/stacks/{stack}/secrets`: secret variables given again, sealed, maybe
    /// moving the stack to another pool.
    pub async fn set_stack_secrets(
        &self,
        stack: &str,
        request: &SetStackSecrets,
    ) -> Result<Stack, ClientError> {
        self.call(Method::PUT, self.url(&["stacks", stack, "secrets"]), Some(request)).await
    }

    /// `GET /api/v1/pools/{pool}/workers`
    pub async fn list_pool_workers(&self, pool: &str) -> Result<WorkerList, ClientError> {
        self.call(Method::GET, self.url(&["pools", pool, "workers"]), None::<&()>).await
    }

    /// `GET /api/v1/workers`: the workers of every pool.
    pub async fn list_workers(&self) -> Result<WorkerList, ClientError> {
        self.call(Method::GET, self.url(&["workers"]), None::<&()>).await
    }

    /// `POST /api/v1/stacks`
    pub async fn create_stack(&self, request: &CreateStack) -> Result<Stack, ClientError> {
        self.call(Method::POST, self.url(&["stacks"]), Some(request)).await
    }

    /// `GET /api/v1/stacks`
    pub async fn list_stacks(&self) -> Result<StackList, ClientError> {
        self.call(Method::GET, self.url(&["stacks"]), None::<&()>).await
    }

    /// `GET /api/v1/stacks/{stack}`: `stack` is an id or a name.
    pub async fn get_stack(&self, stack: &str) -> Result<Stack, ClientError> {
        self.call(Method::GET, self.url(&["stacks", stack]), None::<&()>).await
    }

    /// `POST /api/v1/stacks/{stack}/unfence`: an administrator lifts the stack's lock
    /// fence; its next tracked run or task may start at once.
    pub async fn unfence_stack(&self, stack: &str) -> Result<Stack, ClientError> {
        self.call(Method::POST, self.url(&["stacks", stack, "unfence"]), None::<&()>).await
    }

    /// `GET /api/v1/stacks/{stack}/state/versions`: the kept versions of the stack's
    /// managed state, newest (current) first.
    pub async fn state_versions(&self, stack: &str) -> Result<StateVersionList, ClientError> {
        self.call(Method::GET, self.url(&["stacks", stack, "state", "versions"]), None::<&()>).await
    }

    /// `POST /api/v1/stacks/{stack}/state/rollback`: makes version `to` current again, as
    /// a new version; returns it.
    pub async fn rollback_state(&self, stack: &str, to: u64) -> Result<StateVersion, ClientError> {
        let url = self.url(&["stacks", stack, "state", "rollback"]);
        self.call(Method::POST, url, Some(&RollbackState { to })).await
    }

    /// `POST /api/v1/stacks/{stack}/state/adopt`: makes the orphaned version `version`
    /// current, as a new version; returns it.
    pub async fn adopt_state(
        &self,
        stack: &str,
        version: u64,
    ) -> Result<StateVersion, ClientError> {
        let url = self.url(&["stacks", stack, "state", "adopt"]);
        self.call(Method::POST, url, Some(&AdoptState { version })).await
    }

    /// `POST /api/v1/stacks/{stack}/runs`
    pub async fn trigger_run(&self, stack: &str, request: &TriggerRun) -> Result<Run, ClientError> {
        self.call(Method::POST, self.url(&["stacks", stack, "runs"]), Some(request)).await
    }

    /// `GET /api/v1/runs?stack=&limit=`: newest first.
    pub async fn list_runs(
        &self,
        stack: Option<&str>,
        limit: Option<u32>,
    ) -> Result<RunList, ClientError> {
        let mut url = self.url(&["runs"]);
        {
            let mut query = url.query_pairs_mut();
            if let Some(stack) = stack {
                query.append_pair("stack", stack);
            }
            if let Some(limit) = limit {
                query.append_pair("limit", &limit.to_string());
            }
        }
        strip_empty_query(&mut url);
        self.call(Method::GET, url, None::<&()>).await
    }

    /// `GET /api/v1/runs/{id}`
    pub async fn get_run(&self, run: RunId) -> Result<Run, ClientError> {
        self.call(Method::GET, self.url(&["runs", &run.to_string()]), None::<&()>).await
    }

    /// `POST /api/v1/runs/{id}/confirm`: lets an `UNCONFIRMED` run apply.
    pub async fn confirm_run(&self, run: RunId) -> Result<Run, ClientError> {
        self.call(Method::POST, self.url(&["runs", &run.to_string(), "confirm"]), None::<&()>).await
    }

    /// `POST /api/v1/runs/{id}/discard`
    pub async fn discard_run(&self, run: RunId) -> Result<Run, ClientError> {
        self.call(Method::POST, self.url(&["runs", &run.to_string(), "discard"]), None::<&()>).await
    }

    /// `POST /api/v1/runs/{id}/stop`: canceled if it has not started, else its
    /// launcher stops it.
    pub async fn stop_run(&self, run: RunId) -> Result<Run, ClientError> {
        self.call(Method::POST, self.url(&["runs", &run.to_string(), "stop"]), None::<&()>).await
    }

    /// `POST /api/v1/runs/{id}/fail`: an administrator ends a stuck run as FAILED.
    pub async fn fail_run(&self, run: RunId, reason: &str) -> Result<Run, ClientError> {
        let request = FailRun { reason: reason.to_owned() };
        self.call(Method::POST, self.url(&["runs", &run.to_string(), "fail"]), Some(&request)).await
    }

    /// `POST /api/v1/runs/{id}/prioritize`: to the front of its pool's queue.
    pub async fn prioritize_run(&self, run: RunId) -> Result<Run, ClientError> {
        self.call(Method::POST, self.url(&["runs", &run.to_string(), "prioritize"]), None::<&()>)
            .await
    }

    /// `POST /api/v1/pools/{pool}/drain` or `/undrain`.
    pub async fn drain_pool(&self, pool: &str, drained: bool) -> Result<Drained, ClientError> {
        let action = if drained { "drain" } else { "undrain" };
        self.call(Method::POST, self.url(&["pools", pool, action]), None::<&()>).await
    }

    /// `POST /api/v1/workers/{worker}/drain` or `/undrain`.
    pub async fn drain_worker(
        &self,
        worker: WorkerId,
        drained: bool,
    ) -> Result<Drained, ClientError> {
        let action = if drained { "drain" } else { "undrain" };
        self.call(Method::POST, self.url(&["workers", &worker.to_string(), action]), None::<&()>)
            .await
    }

    /// `POST /api/v1/keys`: the answer holds the secret, this once.
    pub async fn create_key(&self, request: &CreateKey) -> Result<KeyCreated, ClientError> {
        self.call(Method::POST, self.url(&["keys"]), Some(request)).await
    }

    /// `GET /api/v1/keys`
    pub async fn list_keys(&self) -> Result<KeyList, ClientError> {
        self.call(Method::GET, self.url(&["keys"]), None::<&()>).await
    }

    /// `DELETE /api/v1/keys/{key}`: by id, or the name of an active key.
    pub async fn revoke_key(&self, key: &str) -> Result<ApiKey, ClientError> {
        self.call(Method::DELETE, self.url(&["keys", key]), None::<&()>).await
    }

    /// `POST /api/v1/webhooks`
    pub async fn create_webhook(
        &self,
        request: &CreateWebhook,
    ) -> Result<CreatedWebhook, ClientError> {
        self.call(Method::POST, self.url(&["webhooks"]), Some(request)).await
    }

    /// `GET /api/v1/webhooks`
    pub async fn list_webhooks(&self) -> Result<WebhookList, ClientError> {
        self.call(Method::GET, self.url(&["webhooks"]), None::<&()>).await
    }

    /// `GET /api/v1/webhooks/{webhook}/secret`
    pub async fn webhook_secret(&self, webhook: &str) -> Result<WebhookSecret, ClientError> {
        self.call(Method::GET, self.url(&["webhooks", webhook, "secret"]), None::<&()>).await
    }

    /// `DELETE /api/v1/webhooks/{webhook}`
    pub async fn delete_webhook(&self, webhook: &str) -> Result<Webhook, ClientError> {
        self.call(Method::DELETE, self.url(&["webhooks", webhook]), None::<&()>).await
    }

    /// `POST /api/v1/stacks/{stack}/schedules`
    pub async fn create_schedule(
        &self,
        stack: &str,
        request: &CreateSchedule,
    ) -> Result<Schedule, ClientError> {
        self.call(Method::POST, self.url(&["stacks", stack, "schedules"]), Some(request)).await
    }

    /// `GET /api/v1/stacks/{stack}/schedules`
    pub async fn list_schedules(&self, stack: &str) -> Result<ScheduleList, ClientError> {
        self.call(Method::GET, self.url(&["stacks", stack, "schedules"]), None::<&()>).await
    }

    /// `DELETE /api/v1/stacks/{stack}/schedules/{schedule}`
    pub async fn delete_schedule(
        &self,
        stack: &str,
        schedule: &str,
    ) -> Result<Schedule, ClientError> {
        let url = self.url(&["stacks", stack, "schedules", schedule]);
        self.call(Method::DELETE, url, None::<&()>).await
    }

    /// `GET /api/v1/webhooks/deliveries?limit=`: newest first.
    pub async fn list_deliveries(&self, limit: u32) -> Result<DeliveryList, ClientError> {
        let mut url = self.url(&["webhooks", "deliveries"]);
        url.query_pairs_mut().append_pair("limit", &limit.to_string());
        self.call(Method::GET, url, None::<&()>).await
    }

    /// `GET /api/v1/audit?since=&actor=`: oldest first.
    pub async fn list_audit(
        &self,
        since: Option<&str>,
        actor: Option<&str>,
    ) -> Result<AuditList, ClientError> {
        let mut url = self.url(&["audit"]);
        {
            let mut query = url.query_pairs_mut();
            if let Some(since) = since {
                query.append_pair("since", since);
            }
            if let Some(actor) = actor {
                query.append_pair("actor", actor);
            }
        }
        self.call(Method::GET, url, None::<&()>).await
    }

    /// `GET /api/v1/audit/verify`
    pub async fn verify_audit(&self) -> Result<AuditVerified, ClientError> {
        self.call(Method::GET, self.url(&["audit", "verify"]), None::<&()>).await
    }

    /// `POST /api/v1/pools/{pool}/cycle`: its launchers exit after their current runs.
    pub async fn cycle_pool(&self, pool: &str) -> Result<Pool, ClientError> {
        self.call(Method::POST, self.url(&["pools", pool, "cycle"]), None::<&()>).await
    }

    /// `GET /api/v1/pools/{pool}/queue`
    pub async fn pool_queue(&self, pool: &str) -> Result<Queue, ClientError> {
        self.call(Method::GET, self.url(&["pools", pool, "queue"]), None::<&()>).await
    }

    /// `GET /api/v1/stacks/{stack}/dependencies`
    pub async fn stack_dependencies(&self, stack: &str) -> Result<Dependencies, ClientError> {
        self.call(Method::GET, self.url(&["stacks", stack, "dependencies"]), None::<&()>).await
    }

    /// `POST /api/v1/stacks/{stack}/dependencies`
    pub async fn add_dependency(
        &self,
        stack: &str,
        request: &AddDependency,
    ) -> Result<Dependencies, ClientError> {
        self.call(Method::POST, self.url(&["stacks", stack, "dependencies"]), Some(request)).await
    }

    /// `DELETE /api/v1/stacks/{stack}/dependencies/{upstream}`
    pub async fn remove_dependency(
        &self,
        stack: &str,
        upstream: &str,
    ) -> Result<Dependencies, ClientError> {
        self.call(
            Method::DELETE,
            self.url(&["stacks", stack, "dependencies", upstream]),
            None::<&()>,
        )
        .await
    }

    /// `GET /api/v1/runs/{id}/logs?from=&limit=`: the chunks with `seq >= from`.
    pub async fn run_logs(
        &self,
        run: RunId,
        from: u64,
        limit: Option<u32>,
    ) -> Result<LogPage, ClientError> {
        let mut url = self.url(&["runs", &run.to_string(), "logs"]);
        {
            let mut query = url.query_pairs_mut();
            query.append_pair("from", &from.to_string());
            if let Some(limit) = limit {
                query.append_pair("limit", &limit.to_string());
            }
        }
        self.call(Method::GET, url, None::<&()>).await
    }

    /// `GET /api/v1/runs/{id}/logs/stream?from=`: one connection to the live stream.
    /// It ends when the server closes it, normally after [`LogStreamEvent::End`]; see
    /// [`ApiClient::follow_run`] for a stream that survives dropped connections.
    pub async fn open_log_stream(&self, run: RunId, from: u64) -> Result<LogStream, ClientError> {
        let mut url = self.url(&["runs", &run.to_string(), "logs", "stream"]);
        url.query_pairs_mut().append_pair("from", &from.to_string());
        let request_name = format!("GET {}", url.path());
        // No overall timeout: the stream lasts as long as the run. The read timeout
        // still catches a connection that went silent.
        let request = self.request(Method::GET, url).header(ACCEPT, "text/event-stream");
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.bytes().await.map_err(|e| self.transport_error(e))?;
            return Err(api_error(status, &body));
        }
        let client = self.clone();
        let events = response.bytes_stream().eventsource().filter_map(move |item| {
            let result = match item {
                Ok(event) => decode_event(&event.event, &event.data)
                    .map_err(|source| ClientError::Decode { request: request_name.clone(), source })
                    .transpose(),
                Err(EventStreamError::Transport(error)) => Some(Err(client.transport_error(error))),
                Err(EventStreamError::Utf8(error)) => Some(Err(ClientError::InvalidStream {
                    request: request_name.clone(),
                    reason: error.to_string(),
                })),
                Err(EventStreamError::Parser(error)) => Some(Err(ClientError::InvalidStream {
                    request: request_name.clone(),
                    reason: error.to_string(),
                })),
            };
            std::future::ready(result)
        });
        Ok(LogStream { inner: Box::pin(events), failed: false })
    }

    /// Follows a run's log and state from sequence number `from` until the run ends,
    /// reopening the stream where it left off when the connection drops.
    pub fn follow_run(&self, run: RunId, from: u64) -> RunFollower {
        RunFollower {
            client: self.clone(),
            run,
            next_seq: from,
            stream: None,
            connected_at: None,
            ended: false,
            failed_attempts: 0,
            policy: ReconnectPolicy::default(),
        }
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.base.clone();
        // `build` refused URLs that cannot be a base (only those have no path segments),
        // so this branch is always taken.
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(["api", "v1"]).extend(segments);
        }
        url
    }

    fn request(&self, method: Method, url: Url) -> reqwest::RequestBuilder {
        let request = self.http.request(method, url);
        match &self.authorization {
            Some(value) => request.header(AUTHORIZATION, value.clone()),
            None => request,
        }
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        url: Url,
        body: Option<&impl Serialize>,
    ) -> Result<T, ClientError> {
        let request_name = format!("{method} {}", url.path());
        let mut request = self
            .request(method, url)
            .header(ACCEPT, "application/json")
            .timeout(self.request_timeout);
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request.send().await.map_err(|e| self.transport_error(e))?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(|e| self.transport_error(e))?;
        if !status.is_success() {
            return Err(api_error(status, &bytes));
        }
        serde_json::from_slice(&bytes)
            .map_err(|source| ClientError::Decode { request: request_name, source })
    }

    fn transport_error(&self, error: reqwest::Error) -> ClientError {
        let url = self.display_url.clone();
        if let Some(tls) = find_tls_error(&error) {
            return ClientError::Tls {
                url,
                cause: tls.to_string(),
                untrusted_certificate: matches!(
                    tls,
                    rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
                ),
            };
        }
        let cause =
            if error.is_timeout() { "timed out".to_owned() } else { innermost_cause(&error) };
        ClientError::Unreachable { url, cause }
    }
}

fn strip_empty_query(url: &mut Url) {
    if url.query() == Some("") {
        url.set_query(None);
    }
}

/// The error of a non-2xx answer: the API's own `{"error": ...}` body, or a description
/// of whatever else answered (a proxy's HTML page, for example).
fn api_error(status: StatusCode, body: &[u8]) -> ClientError {
    if let Ok(response) = serde_json::from_slice::<ErrorResponse>(body) {
        return ClientError::Api {
            status: status.as_u16(),
            code: response.error.code,
            message: response.error.message,
        };
    }
    let text = String::from_utf8_lossy(body);
    let excerpt: String = text.trim().chars().take(200).collect();
    let message = if excerpt.is_empty() {
        format!("the server answered {status}")
    } else {
        format!("the server answered {status}: {excerpt}")
    };
    ClientError::Api { status: status.as_u16(), code: format!("http_{}", status.as_u16()), message }
}

/// The rustls error somewhere in the chain: tokio-rustls wraps it in an `io::Error`,
/// whose `source()` skips the wrapped error, so those are unwrapped by hand.
fn find_tls_error<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    let mut current = Some(error);
    while let Some(error) = current {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        if let Some(inner) = error.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            let inner: &(dyn std::error::Error + 'static) = inner;
            if let Some(tls) = find_tls_error(inner) {
                return Some(tls);
            }
        }
        current = error.source();
    }
    None
}

/// The most specific description in an error chain ("Connection refused (os error
/// 111)"), rather than reqwest's outer "error sending request for url (...)".
fn innermost_cause(error: &reqwest::Error) -> String {
    let mut cause = error.to_string();
    let mut current = error.source();
    while let Some(error) = current {
        cause = error.to_string();
        current = error.source();
    }
    cause
}

/// One event of a run's live stream.
#[derive(Debug, Clone)]
pub enum LogStreamEvent {
    /// The next piece of the log.
    Log(LogChunk),
    /// The run changed state.
    State(Box<Run>),
    /// The run ended and every log chunk was sent; the server closes the stream.
    End(StreamEnd),
}

/// Decodes one server-sent event; events of other names are skipped (`None`) so that a
/// newer server may add some.
pub fn decode_event(name: &str, data: &str) -> Result<Option<LogStreamEvent>, serde_json::Error> {
    Ok(match name {
        "log" => Some(LogStreamEvent::Log(serde_json::from_str(data)?)),
        "state" => Some(LogStreamEvent::State(Box::new(serde_json::from_str(data)?))),
        "end" => Some(LogStreamEvent::End(serde_json::from_str(data)?)),
        _ => None,
    })
}

/// One connection to a run's live stream ([`ApiClient::open_log_stream`]). It ends after
/// its first error: the connection is unusable then.
pub struct LogStream {
    inner: Pin<Box<dyn Stream<Item = Result<LogStreamEvent, ClientError>> + Send>>,
    /// A reset HTTP/2 stream repeats its error forever; one is enough.
    failed: bool,
}

impl fmt::Debug for LogStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LogStream").finish_non_exhaustive()
    }
}

impl Stream for LogStream {
    type Item = Result<LogStreamEvent, ClientError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.failed {
            return Poll::Ready(None);
        }
        let item = self.inner.as_mut().poll_next(cx);
        if let Poll::Ready(Some(Err(_))) = &item {
            self.failed = true;
        }
        item
    }
}

/// How [`RunFollower`] retries after a dropped connection: exponential backoff from
/// `initial_delay` to `max_delay`, giving up after `max_attempts` failures in a row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReconnectPolicy {
    pub max_attempts: u32,
    pub initial_delay: Duration,
    pub max_delay: Duration,
}

impl Default for ReconnectPolicy {
    /// About a minute and a half of retries: long enough for a server restart.
    fn default() -> Self {
        Self {
            max_attempts: 20,
            initial_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(5),
        }
    }
}

impl ReconnectPolicy {
    fn delay(&self, failed_attempts: u32) -> Duration {
        let factor = 2u32.saturating_pow(failed_attempts.saturating_sub(1));
        self.initial_delay.saturating_mul(factor).min(self.max_delay)
    }
}

/// A run's log and state changes until it ends ([`ApiClient::follow_run`]). Each log
/// chunk is yielded once, in order, across reconnections.
#[derive(Debug)]
pub struct RunFollower {
    client: ApiClient,
    run: RunId,
    next_seq: u64,
    stream: Option<LogStream>,
    /// When the current connection opened: one that lived long was healthy, and its end
    /// starts a fresh series of attempts.
    connected_at: Option<Instant>,
    ended: bool,
    failed_attempts: u32,
    policy: ReconnectPolicy,
}

/// A connection that lasted this long was not a failed attempt, even if it then dropped
/// (a read timeout during a long silent apply, for example).
const HEALTHY_CONNECTION: Duration = Duration::from_secs(30);

impl RunFollower {
    pub fn with_reconnect_policy(mut self, policy: ReconnectPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// The sequence number of the next log chunk expected.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The next event; `None` after [`LogStreamEvent::End`] or after an error, which
    /// is returned once: a permanent one at once, a transient one (the server is
    /// unreachable) when the reconnection attempts are exhausted.
    pub async fn next(&mut self) -> Option<Result<LogStreamEvent, ClientError>> {
        loop {
            if self.ended {
                return None;
            }
            let stream = match &mut self.stream {
                Some(stream) => stream,
                None => match self.client.open_log_stream(self.run, self.next_seq).await {
                    Ok(stream) => {
                        self.connected_at = Some(Instant::now());
                        self.stream.insert(stream)
                    }
                    Err(error) => {
                        if let Some(error) = self.retry_or_fail(error).await {
                            return Some(Err(error));
                        }
                        continue;
                    }
                },
            };
            match stream.next().await {
                Some(Ok(LogStreamEvent::Log(chunk))) => {
                    self.failed_attempts = 0;
                    // The server promises no duplicates across reconnections; this keeps
                    // the promise even if a server or proxy replays part of the stream.
                    if chunk.seq < self.next_seq {
                        continue;
                    }
                    self.next_seq = chunk.seq + 1;
                    return Some(Ok(LogStreamEvent::Log(chunk)));
                }
                Some(Ok(LogStreamEvent::State(run))) => {
                    self.failed_attempts = 0;
                    return Some(Ok(LogStreamEvent::State(run)));
                }
                Some(Ok(LogStreamEvent::End(end))) => {
                    self.ended = true;
                    self.stream = None;
                    return Some(Ok(LogStreamEvent::End(end)));
                }
                Some(Err(error)) => {
                    self.stream = None;
                    if let Some(error) = self.retry_or_fail(error).await {
                        return Some(Err(error));
                    }
                }
                None => {
                    self.stream = None;
                    let error = ClientError::Unreachable {
                        url: self.client.base_url().to_owned(),
                        cause: "the log stream closed before the run ended".to_owned(),
                    };
                    if let Some(error) = self.retry_or_fail(error).await {
                        return Some(Err(error));
                    }
                }
            }
        }
    }

    /// Waits before the next attempt, or gives the error back when it is permanent or
    /// the attempts are exhausted.
    async fn retry_or_fail(&mut self, error: ClientError) -> Option<ClientError> {
        if self.connected_at.take().is_some_and(|at| at.elapsed() >= HEALTHY_CONNECTION) {
            self.failed_attempts = 0;
        }
        self.failed_attempts += 1;
        if !error.is_transient() || self.failed_attempts > self.policy.max_attempts {
            self.ended = true;
            return Some(error);
        }
        tokio::time::sleep(self.policy.delay(self.failed_attempts)).await;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_joined_under_the_base_and_names_are_escaped() {
        let client = ApiClient::builder("https://example.com/gantry/").build().unwrap();
        assert_eq!(
            client.url(&["stacks", "my stack/1", "runs"]).as_str(),
            "https://example.com/gantry/api/v1/stacks/my%20stack%2F1/runs"
        );
        let client = ApiClient::builder("http://127.0.0.1:8443").build().unwrap();
        assert_eq!(client.url(&["health"]).as_str(), "http://127.0.0.1:8443/api/v1/health");
        assert_eq!(client.base_url(), "http://127.0.0.1:8443");
    }

    #[test]
    fn only_http_urls_with_a_host_are_accepted() {
        for url in ["127.0.0.1:8443", "ftp://example.com", "mailto:a@b.c", "https://", ""] {
            let error = ApiClient::builder(url).build().unwrap_err();
            assert!(matches!(error, ClientError::InvalidUrl { .. }), "{url}: {error}");
        }
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused() {
        let error = ApiClient::builder("https://127.0.0.1:8443")
            .trust_ca_pem("not a certificate")
            .build()
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "the CA certificate is not usable: no PEM CERTIFICATE block in it"
        );
    }

    #[test]
    fn the_key_is_not_in_debug_output() {
        let builder = ApiClient::builder("https://127.0.0.1:8443").api_key("gak_secret");
        assert!(!format!("{builder:?}").contains("gak_secret"));
        let client = builder.build().unwrap();
        assert!(!format!("{client:?}").contains("gak_secret"));
    }

    #[test]
    fn api_errors_carry_the_servers_message_or_describe_the_answer() {
        let body = br#"{"error": {"code": "not_found", "message": "no stack named \"web\""}}"#;
        let ClientError::Api { status, code, message } = api_error(StatusCode::NOT_FOUND, body)
        else {
            panic!("not an API error");
        };
        assert_eq!(
            (status, code.as_str(), message.as_str()),
            (404, "not_found", "no stack named \"web\"")
        );

        let error = api_error(StatusCode::BAD_GATEWAY, b"<html>bad gateway</html>");
        assert_eq!(
            error.to_string(),
            "the server answered 502 Bad Gateway: <html>bad gateway</html>"
        );
        assert!(error.is_transient());
        let error = api_error(StatusCode::UNAUTHORIZED, b"");
        assert_eq!(error.to_string(), "the server answered 401 Unauthorized");
        assert!(!error.is_transient());
    }

    #[test]
    fn stream_events_decode_by_name_and_unknown_names_are_skipped() {
        let log = decode_event(
            "log",
            r#"{"seq": 3, "text": "\u001b[1mPlan:\u001b[0m\n", "at": "2026-01-02T03:04:05.000Z"}"#,
        )
        .unwrap();
        let Some(LogStreamEvent::Log(chunk)) = log else { panic!("{log:?}") };
        assert_eq!((chunk.seq, chunk.text.as_str()), (3, "\u{1b}[1mPlan:\u{1b}[0m\n"));

        let end = decode_event("end", r#"{"state": "FINISHED"}"#).unwrap();
        assert!(matches!(
            end,
            Some(LogStreamEvent::End(StreamEnd { state: gantry_domain::RunState::Finished }))
        ));

        assert!(decode_event("message", "whatever").unwrap().is_none());
        assert!(decode_event("log", "{").is_err());
    }

    #[test]
    fn reconnection_backs_off_exponentially_up_to_a_limit() {
        let policy = ReconnectPolicy::default();
        let delays: Vec<u128> = (1..=7).map(|n| policy.delay(n).as_millis()).collect();
        assert_eq!(delays, [250, 500, 1000, 2000, 4000, 5000, 5000]);
    }
}
