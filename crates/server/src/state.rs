//! What every request handler and background task shares.

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use gantry_crypto::{CertificateAuthority, ChallengeSigner};
use gantry_domain::scheduler::WaitReason;
use gantry_domain::{RunId, Timestamp};
use gantry_store::{BlobStore, Store};
use tokio_util::sync::CancellationToken;

use crate::config::AgentTimings;
use crate::events::Events;
use crate::metrics::DispatchMetrics;

/// Shared server state; cheap to clone.
#[derive(Clone, Debug)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub store: Arc<dyn Store>,
    /// Encrypted workspaces and managed state: ciphertext only.
    pub blobs: Arc<dyn BlobStore>,
    /// The largest blob a launcher may upload.
    pub max_blob_size: u64,
    /// How many versions of each stack's managed state are kept.
    pub kept_state_versions: u32,
    /// The most of a run's log kept: its head and its tail, the middle cut.
    pub max_run_log_size: u64,
    /// How long this process has had its database without a break: the liveness
    /// sweep waits for a full worker timeout of it.
    pub(crate) database: crate::database_watch::DatabaseWatch,
    pub ca: CertificateAuthority,
    /// The CA written into pool tokens for launchers to trust.
    pub token_server_ca: Option<String>,
    /// Written into pool tokens.
    pub public_url: String,
    pub challenges: ChallengeSigner,
    /// Signs the web UI's session cookies, with a key every replica reads from the store.
    pub ui_sessions: ChallengeSigner,
    pub events: Events,
    pub dispatch_metrics: DispatchMetrics,
    /// The signed worker binary launchers may download, if there is one.
    pub(crate) worker_release: Option<crate::agent::WorkerRelease>,
    /// Launcher sessions validated in the last second.
    pub sessions: crate::session_cache::SessionCache,
    /// Why each run the last scheduling pass left waiting waits.
    pub waiting: WaitingRuns,
    pub timings: AgentTimings,
    /// Cancelled when the server shuts down: long-polls and streams end at once.
    pub shutdown: CancellationToken,
    /// Failed authentications per address and pool; the HTTP layer's bounds.
    pub(crate) http_guards: crate::http_limits::HttpGuards,
    /// What every webhook's secret is derived from.
    pub(crate) webhook_key: crate::webhooks::WebhookKey,
    /// The executing runs each launcher's last heartbeats left out.
    pub(crate) unlisted_runs: crate::reconcile::UnlistedRuns,
}

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("public_url", &self.public_url).finish_non_exhaustive()
    }
}

/// The wait reasons of the last scheduling pass: what a single run's view shows, so that
/// showing a run never costs a pass of its own.
#[derive(Debug, Default)]
pub struct WaitingRuns(Mutex<Arc<HashMap<RunId, WaitReason>>>);

impl WaitingRuns {
    pub(crate) fn replace(&self, reasons: HashMap<RunId, WaitReason>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = Arc::new(reasons);
    }

    /// Why the run waits, if the last pass saw it waiting.
    pub(crate) fn reason(&self, run_id: RunId) -> Option<WaitReason> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).get(&run_id).copied()
    }
}

/// The wall clock as the domain counts time.
pub(crate) fn now() -> Timestamp {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    Timestamp::from_unix_millis(i64::try_from(millis).unwrap_or(i64::MAX))
}
