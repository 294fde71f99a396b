//! Starting and stopping the server: open the store, load the CA, create the first admin
//! key, bind (all before anything is served, so a bad setting fails fast), then serve
//! until the shutdown signal, letting requests drain for a bounded time.

use std::future::Future;
use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::http::header::{AUTHORIZATION, COOKIE, SET_COOKIE};
use axum::response::IntoResponse;
use axum_server::accept::{TcpConfigAcceptor, TcpKeepaliveConfig, TcpSocketConfig};
use axum_server::tls_rustls::{RustlsAcceptor, RustlsConfig};
use gantry_crypto::ChallengeSigner;
use gantry_store::{BlobStore, ObjectBlobStore, PostgresStore, SqliteStore, Store, StoreError};
use tokio_util::sync::CancellationToken;
use tower_http::sensitive_headers::{
    SetSensitiveRequestHeadersLayer, SetSensitiveResponseHeadersLayer,
};
use tower_http::trace::TraceLayer;

use crate::config::{Database, ServerConfig, TlsSource};
use crate::error::ApiError;
use crate::events::Events;
use crate::state::{AppState, Shared, now};
use crate::{agent, api, bootstrap, cluster, effects, liveness, log_archive, pki, scheduling, ui};

const CHALLENGE_KEY_SECRET: &str = "session-challenge-key";
/// Its own key, so that a UI cookie can never pass for a launcher challenge.
const UI_SESSION_KEY_SECRET: &str = "ui-session-key";
/// The server's CA certificate, written into the data directory at every start.
pub const CA_FILE: &str = "server-ca.pem";
/// How long in-flight requests may finish after the shutdown signal.
const DRAIN_DEADLINE: Duration = Duration::from_secs(10);

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir { path: String, source: std::io::Error },
    #[error("cannot read the worker binary {path} or its signature: {source}")]
    WorkerBinary { path: String, source: std::io::Error },
    #[error("cannot open the database: {0}")]
    Store(#[from] StoreError),
    /// The message names the directory or the bucket and its endpoint.
    #[error("{0}")]
    Blobs(StoreError),
    #[error("cannot listen on {address}: {source}")]
    Listen { address: SocketAddr, source: std::io::Error },
    #[error("TLS: {0}")]
    Tls(String),
    #[error("certificate authority: {0}")]
    Crypto(gantry_crypto::Error),
    #[error("{0}")]
    Internal(String),
    /// The message names the setting to provide; it never holds the key.
    #[error("{0}")]
    MasterKey(String),
}

/// The REST API, the agent plane and the web UI, with their shared layers.
pub fn router(state: AppState) -> Router {
    Router::new()
        .nest("/api/v1", api::router(state.clone()))
        .nest("/agent/v1", agent::router())
        .nest("/ui", ui::router(&state))
        .route("/", axum::routing::get(|| async { axum::response::Redirect::to("/ui") }))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::extract::DefaultBodyLimit::max(crate::http_limits::BODY_LIMIT))
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::http_limits::guard))
        .layer(TraceLayer::new_for_http())
        .layer(SetSensitiveRequestHeadersLayer::new([AUTHORIZATION, COOKIE]))
        .layer(SetSensitiveResponseHeadersLayer::new([SET_COOKIE]))
        .with_state(state)
}

async fn no_route(request: Request) -> impl IntoResponse {
    ApiError::NoRoute {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
    }
}

async fn method_not_allowed(request: Request) -> impl IntoResponse {
    ApiError::MethodNotAllowed {
        method: request.method().to_string(),
        path: request.uri().path().to_owned(),
    }
}

/// A server that has opened its store and bound its port, ready to serve.
#[derive(Debug)]
pub struct Server {
    state: AppState,
    listener: TcpListener,
    metrics_listener: Option<gantry_metrics::MetricsListener>,
    tls: Arc<rustls::ServerConfig>,
    local_addr: SocketAddr,
    initial_admin_key: Option<String>,
    generated_master_key: Option<std::path::PathBuf>,
    shared_pool: crate::shared_pool::SharedPool,
    config: ServerConfig,
}

impl Server {
    pub async fn start(config: ServerConfig) -> Result<Self, StartError> {
        create_private_dir(&config.data_dir)?;
        crate::master_key::private_files(&config)?;
        let store: Arc<dyn Store> = match &config.database {
            Database::Sqlite(path) => Arc::new(SqliteStore::open(path).await?),
            Database::Postgres(url) => Arc::new(PostgresStore::connect(url).await?),
        };
        let blobs = ObjectBlobStore::open(&config.blob_store).await.map_err(StartError::Blobs)?;
        let server = Self::start_with_store(config.clone(), store, Arc::new(blobs)).await?;
        // Public: what API clients must trust when the server issued its own certificate.
        let ca_path = config.data_dir.join(CA_FILE);
        std::fs::write(&ca_path, server.ca_certificate_pem()).map_err(|source| {
            StartError::DataDir { path: ca_path.display().to_string(), source }
        })?;
        Ok(server)
    }

    pub async fn start_with_store(
        config: ServerConfig,
        store: Arc<dyn Store>,
        blobs: Arc<dyn BlobStore>,
    ) -> Result<Self, StartError> {
        let listener = TcpListener::bind(config.listen)
            .map_err(|source| StartError::Listen { address: config.listen, source })?;
        listener
            .set_nonblocking(true)
            .map_err(|source| StartError::Listen { address: config.listen, source })?;
        let local_addr = listener
            .local_addr()
            .map_err(|source| StartError::Listen { address: config.listen, source })?;
        let public_url = config.effective_public_url(local_addr);
        let hostnames = certificate_hostnames(&config, local_addr, &public_url);
        let unlocked = crate::master_key::unlock(&config.master_key, store.as_ref()).await?;
        let secrets = &unlocked.secrets;
        let pki = pki::load(store.as_ref(), secrets, &config.tls, &hostnames, now()).await?;
        let challenge_key = secrets
            .get_or_insert(
                store.as_ref(),
                CHALLENGE_KEY_SECRET,
                &ChallengeSigner::generate_key(),
                now(),
            )
            .await?;
        let ui_session_key = secrets
            .get_or_insert(
                store.as_ref(),
                UI_SESSION_KEY_SECRET,
                &ChallengeSigner::generate_key(),
                now(),
            )
            .await?;
        let webhook_key = secrets
            .get_or_insert(
                store.as_ref(),
                crate::webhooks::WEBHOOK_KEY_SECRET,
                &ChallengeSigner::generate_key(),
                now(),
            )
            .await?;
        let metrics_listener = match config.metrics_listen {
            Some(address) => Some(
                gantry_metrics::MetricsListener::bind(address)
                    .await
                    .map_err(|source| StartError::Listen { address, source })?,
            ),
            None => None,
        };
        let initial_admin_key = bootstrap::initial_admin_key(store.as_ref(), secrets).await?;
        let shared_pool =
            crate::shared_pool::ensure(store.as_ref(), secrets, &pki.ca, now()).await?;
        crate::stack_secrets::seal_clear_values(store.as_ref()).await?;
        let worker_release =
            match crate::shared_pool::worker_binary(config.worker_binary.as_deref()) {
                Some(binary) => crate::agent::WorkerRelease::load(&binary).map_err(|source| {
                    StartError::WorkerBinary { path: binary.display().to_string(), source }
                })?,
                None => None,
            };
        let state = AppState::new(Shared {
            store,
            blobs,
            max_blob_size: config.max_blob_size,
            kept_state_versions: config.kept_state_versions,
            max_run_log_size: config.max_run_log_size,
            database: crate::database_watch::DatabaseWatch::default(),
            ca: pki.ca,
            token_server_ca: pki.token_server_ca,
            public_url,
            challenges: ChallengeSigner::new(&challenge_key),
            ui_sessions: ChallengeSigner::new(&ui_session_key),
            events: Events::default(),
            dispatch_metrics: crate::metrics::DispatchMetrics::default(),
            waiting: crate::state::WaitingRuns::default(),
            unlisted_runs: crate::reconcile::UnlistedRuns::default(),
            webhook_key: crate::webhooks::WebhookKey::new(webhook_key),
            sessions: crate::session_cache::SessionCache::default(),
            worker_release,
            timings: config.timings.clone(),
            shutdown: CancellationToken::new(),
            http_guards: crate::http_limits::HttpGuards::new(
                &config.http,
                config.timings.poll_timeout,
                config.max_blob_size,
            ),
        });
        Ok(Self {
            state,
            listener,
            metrics_listener,
            tls: pki.tls,
            local_addr,
            initial_admin_key,
            generated_master_key: unlocked.generated,
            shared_pool,
            config,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where Prometheus scrapes `/metrics`, when a metrics listener is configured.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().map(gantry_metrics::MetricsListener::local_addr)
    }

    /// The address written into pool tokens.
    pub fn public_url(&self) -> &str {
        &self.state.public_url
    }

    /// PEM of the server's CA: what clients trust when the server issued its own
    /// TLS certificate.
    pub fn ca_certificate_pem(&self) -> &str {
        self.state.ca.certificate().pem()
    }

    /// The state `router()` serves, for in-crate tests that call the router directly
    /// (`tower::ServiceExt::oneshot`, no TLS) or run a background task on it.
    #[cfg(test)]
    pub(crate) fn app_state(&self) -> AppState {
        self.state.clone()
    }

    /// The master key file this start generated (a first start with no master key set);
    /// `None` otherwise.
    pub fn generated_master_key(&self) -> Option<&std::path::Path> {
        self.generated_master_key.as_deref()
    }

    /// The admin API key created at this first start; `None` on later starts.
    pub fn take_initial_admin_key(&mut self) -> Option<String> {
        self.initial_admin_key.take()
    }

    /// Creates another admin API key, for whoever controls the server's data (a lost
    /// first key, `gantry up` on a data directory whose key file was removed).
    pub async fn issue_admin_key(&self, name: &str) -> Result<String, StartError> {
        Ok(bootstrap::issue_admin_key(self.state.store.as_ref(), name).await?)
    }

    /// Serves until `shutdown` completes, then stops background work, ends long-polls and
    /// lets in-flight requests finish for a bounded time.
    pub async fn serve(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), StartError> {
        let state = self.state.clone();
        let cluster = cluster::join(&state).await?;
        let scheduler = tokio::spawn(scheduling::run_scheduler(state.clone()));
        let sweeper = tokio::spawn(liveness::run_sweeper(state.clone()));
        let archiver = tokio::spawn(log_archive::run_archiver(state.clone()));
        let effects = tokio::spawn(effects::run_effects_loop(state.clone()));
        let schedules = tokio::spawn(crate::schedules::run_schedules(state.clone()));
        let shared_launcher = self.start_shared_launcher();
        state.events.request_scheduling();
        let metrics = self.metrics_listener.map(|listener| {
            tracing::info!(address = %listener.local_addr(), "metrics served at /metrics");
            let scraped = state.clone();
            let render = move || {
                let state = scraped.clone();
                async move { crate::metrics::render(&state).await.map_err(|e| e.to_string()) }
            };
            tokio::spawn(listener.serve(render, state.shutdown.clone()))
        });

        let handle = axum_server::Handle::new();
        // Without TCP_NODELAY, Nagle's algorithm holds a small response (an assignment
        // answering a long-poll) until the peer's delayed ACK: up to 40 ms per dispatch.
        // Keepalive notices connections of launchers that vanished without closing them.
        let socket = TcpSocketConfig::new().nodelay(true).keepalive(
            TcpKeepaliveConfig::new()
                .time(Duration::from_secs(60))
                .interval(Duration::from_secs(15)),
        );
        let http = &self.config.http;
        let acceptor = RustlsAcceptor::new(RustlsConfig::from_config(self.tls))
            .handshake_timeout(http.header_read_timeout)
            .acceptor(TcpConfigAcceptor::new(socket));
        let acceptor = crate::http_limits::GuardedAcceptor::new(
            acceptor,
            crate::http_limits::ConnectionCounts::new(http.connections_per_address),
            http.idle_timeout,
        );
        let mut server = axum_server::from_tcp(self.listener)
            .map_err(|source| StartError::Listen { address: self.local_addr, source })?
            .acceptor(acceptor)
            .handle(handle.clone())
            // HTTP/2 has no header timeout of its own: its first request is bounded here.
            .first_request_timeout(http.header_read_timeout);
        // In HTTP/1.1 this also bounds the wait for the next request on a connection.
        server.http_builder().http1().header_read_timeout(http.header_read_timeout);
        let server =
            server.serve(router(state.clone()).into_make_service_with_connect_info::<SocketAddr>());
        tracing::info!(address = %self.local_addr, url = %state.public_url, "gantry server listening");

        let stopper = {
            let state = state.clone();
            async move {
                shutdown.await;
                tracing::info!("shutting down: no new requests, in-flight ones may finish");
                state.shutdown.cancel();
                handle.graceful_shutdown(Some(DRAIN_DEADLINE));
            }
        };
        let (served, ()) = tokio::join!(server, stopper);
        state.shutdown.cancel();
        let _ = tokio::join!(scheduler, sweeper, archiver, effects, schedules);
        for task in cluster {
            let _ = task.await;
        }
        if let Some(metrics) = metrics {
            let _ = metrics.await;
        }
        if let Some(launcher) = shared_launcher {
            let _ = launcher.await;
        }
        served.map_err(|source| StartError::Listen { address: self.local_addr, source })
    }
}

impl Server {
    /// Starts the shared pool's launcher in this process, connecting to this server over
    /// loopback; `None` when disabled or when no worker binary is installed.
    fn start_shared_launcher(&self) -> Option<tokio::task::JoinHandle<()>> {
        let slots = self.config.shared_workers;
        if slots == 0 {
            return None;
        }
        let Some(binary) = crate::shared_pool::worker_binary(self.config.worker_binary.as_deref())
        else {
            tracing::warn!(
                "the shared pool has no workers: gantry-worker is not next to the server (set GANTRY_SERVER_WORKER_BINARY)"
            );
            return None;
        };
        let host = match self.local_addr.ip() {
            ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_owned(),
            ip if ip.is_unspecified() => "[::1]".to_owned(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        let url = format!("https://{host}:{}", self.local_addr.port());
        // Outside the data directory (private to the server's user): the shared pool's runs
        // run as users of their own, who must pass through to their workspaces.
        let work_dir = std::env::temp_dir().join("gantry-shared-pool");
        let config = match crate::shared_pool::launcher_config(
            &self.shared_pool,
            &url,
            self.state.token_server_ca.clone(),
            &work_dir,
            &binary,
            slots,
        ) {
            Ok(config) => config,
            Err(error) => {
                tracing::warn!(%error, "the shared pool's launcher cannot start");
                return None;
            }
        };
        // Never as the server's own user, next to its database and keys.
        let executor = match gantry_launcher::ProcessExecutor::isolated(
            config.passthrough_env.clone(),
            slots,
            config.run_uid_base,
        ) {
            Ok(executor) => std::sync::Arc::new(executor),
            Err(error) => {
                tracing::error!(%error, "the shared pool's launcher cannot start: stacks without a pool wait");
                return None;
            }
        };
        let shutdown = gantry_launcher::Shutdown {
            graceful: self.state.shutdown.child_token(),
            immediate: tokio_util::sync::CancellationToken::new(),
        };
        tracing::info!(slots, "the shared pool's launcher runs in this process");
        Some(tokio::spawn(async move {
            if let Err(error) = gantry_launcher::run(config, executor, shutdown).await {
                tracing::error!(%error, "the shared pool's launcher stopped");
            }
        }))
    }
}

/// Names the generated certificate must carry: loopback, the bound address, the public
/// URL's host and the configured extras.
fn certificate_hostnames(
    config: &ServerConfig,
    bound: SocketAddr,
    public_url: &str,
) -> Vec<String> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned(), "::1".to_owned()];
    if !bound.ip().is_unspecified() {
        names.push(bound.ip().to_string());
    }
    if let Some(host) = public_url.strip_prefix("https://").map(host_of) {
        names.push(host.to_owned());
    }
    if let TlsSource::Generated { extra_hostnames } = &config.tls {
        names.extend(extra_hostnames.iter().cloned());
    }
    names.sort();
    names.dedup();
    names
}

/// The host of `host:port`, `[v6]:port` or `host`.
fn host_of(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    authority.rsplit_once(':').map_or(authority, |(host, _)| host)
}

/// Creates the data directory 0700, or narrows an existing one to it: everything the
/// server keeps (the database, blobs, the master key when generated) sits below it, so
/// no other user of the machine reaches any of it, whatever the files' own modes.
fn create_private_dir(path: &Path) -> Result<(), StartError> {
    use std::os::unix::fs::{DirBuilderExt as _, PermissionsExt as _};
    let error = |source| StartError::DataDir { path: path.display().to_string(), source };
    std::fs::DirBuilder::new().recursive(true).mode(0o700).create(path).map_err(error)?;
    let mode = std::fs::metadata(path).map_err(error)?.permissions().mode();
    if mode & 0o077 != 0 {
        tracing::warn!(
            data_dir = %path.display(),
            "the data directory was open to other users (mode {:o}): narrowing it to 0700",
            mode & 0o777
        );
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)).map_err(error)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_are_taken_from_authorities() {
        assert_eq!(host_of("example.com:8443"), "example.com");
        assert_eq!(host_of("[::1]:8443"), "::1");
        assert_eq!(host_of("example.com"), "example.com");
    }

    #[test]
    fn the_data_directory_is_created_private_and_an_open_one_is_narrowed() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        let parent = tempfile::tempdir().unwrap();
        let fresh = parent.path().join("new/data");
        create_private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        let open = parent.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        create_private_dir(&open).unwrap();
        assert_eq!(mode(&open), 0o700);
    }
}
