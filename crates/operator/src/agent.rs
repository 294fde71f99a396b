//! One WorkerPool's presence on the server: a launcher session opened with the pool key,
//! the workers registered under it, the runs it holds (one Pod each), and the loops that
//! long-poll for assignments and heartbeat.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use gantry_domain::{LauncherId, RunId, WorkerId};
use gantry_launcher::{AgentClient, ClientError};
use gantry_proto::agent::{HeldAssignment, Job, LauncherInfo, LogUpload, PROTOCOL_VERSION};
use tokio::sync::{Mutex, watch};
use tokio_util::sync::CancellationToken;

use crate::crd::WorkerPool;
use crate::credentials::{CredentialProblem, PoolCredentials};

/// A run the pool executes in a Pod.
#[derive(Debug, Clone)]
pub struct HeldRun {
    pub job: Job,
    pub worker_id: WorkerId,
    pub pod_name: String,
    /// The last reason a pending Pod gave, already written into the run log.
    pub noted: Option<String>,
    pub since: Instant,
}

#[derive(Debug, Default)]
pub struct AgentState {
    /// Registered workers: server id → Worker resource name.
    pub workers: BTreeMap<WorkerId, String>,
    pub runs: HashMap<RunId, HeldRun>,
}

/// The session and what it holds.
pub struct PoolAgent {
    pub client: AgentClient,
    pub launcher_id: LauncherId,
    pub credentials: PoolCredentials,
    pub state: Mutex<AgentState>,
    /// The WorkerPool as last reconciled: run Pods are built from it.
    pub pool: watch::Sender<Arc<WorkerPool>>,
    pub stop: CancellationToken,
}

impl std::fmt::Debug for PoolAgent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolAgent").field("launcher_id", &self.launcher_id).finish_non_exhaustive()
    }
}

impl PoolAgent {
    /// Opens a session for the pool; a refused key or an outdated token is a credential
    /// problem, an unreachable server too (the condition says which).
    pub async fn connect(
        pool: Arc<WorkerPool>,
        credentials: PoolCredentials,
        launcher_id: LauncherId,
        hostname: &str,
    ) -> Result<Self, CredentialProblem> {
        let info = LauncherInfo {
            id: launcher_id,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            hostname: hostname.to_owned(),
            protocol_version: PROTOCOL_VERSION,
        };
        let client = AgentClient::for_pool(&credentials.token, Arc::clone(&credentials.key), info)
            .map_err(|e| CredentialProblem { reason: "InvalidToken", message: e.to_string() })?;
        client.connect().await.map_err(|error| session_problem(&credentials, &error))?;
        let (pool, _) = watch::channel(pool);
        Ok(Self {
            client,
            launcher_id,
            credentials,
            state: Mutex::new(AgentState::default()),
            pool,
            stop: CancellationToken::new(),
        })
    }

    /// What the poll tells the server this launcher executes already.
    pub async fn holding(&self) -> Vec<HeldAssignment> {
        let state = self.state.lock().await;
        state
            .runs
            .iter()
            .map(|(run_id, run)| HeldAssignment { run_id: *run_id, job: run.job })
            .collect()
    }

    /// Writes a line into the run log at the position the server expects next. Only
    /// while the run's own containers do not write (they have not started).
    pub async fn note(&self, run_id: RunId, line: &str) -> Result<(), ClientError> {
        let next = self.client.upload_logs(run_id, Vec::new()).await?;
        self.client
            .upload_logs(run_id, vec![LogUpload { seq: next, text: format!("{line}\n") }])
            .await
            .map(drop)
    }
}

fn session_problem(credentials: &PoolCredentials, error: &ClientError) -> CredentialProblem {
    let pool = &credentials.token.pool_id;
    match error {
        ClientError::Proof(_) => CredentialProblem {
            reason: "KeyRefused",
            message: format!("the server refused the private key of pool {pool}: {error}"),
        },
        ClientError::PoolReset { .. } => CredentialProblem {
            reason: "TokenOutdated",
            message: format!(
                "pool {pool} was reset: the token Secret holds an outdated certificate ({error})"
            ),
        },
        ClientError::Rejected { status: 404, .. } => CredentialProblem {
            reason: "PoolNotFound",
            message: format!("the server does not know pool {pool}: {error}"),
        },
        _ => CredentialProblem {
            reason: "ServerUnreachable",
            message: format!("cannot open a session for pool {pool}: {error}"),
        },
    }
}

/// How long a poll waits on the server before asking again.
pub const POLL_WAIT: Duration = Duration::from_secs(30);
