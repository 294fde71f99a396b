//! Simulated launchers: the launcher's own agent-plane client (`AgentClient`: session
//! proof, one HTTPS connection, the same requests and timeouts), its slots registered,
//! a heartbeat every 10 s and one long-poll always open, but runs that do nothing: an
//! assignment is acknowledged, reports `INITIALIZING`, `PLANNING`, then a plan without
//! changes, and the server answers `finish`. No git, no Terraform, no worker process.
//!
//! Every delivery, execution and finish goes into a shared [`Ledger`], from which the
//! benchmark reads its latencies and checks that every run ran exactly once.
//!
//! Each simulated launcher talks to one server replica, named explicitly rather than
//! read from the pool token (which carries one URL): the benchmark spreads the fleet
//! over the replicas, as a load balancer would.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use gantry_domain::{Phase, RunId, WorkerId};
use gantry_launcher::{AgentClient, ClientError, LauncherConfig};
use gantry_proto::agent::{
    Acknowledge, Assignment, Directive, Heartbeat, HeldAssignment, Job, PollResponse, RunReport,
    WorkerRegistration,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// What a real launcher asks for (`gantry_launcher`'s `POLL_WAIT`).
const POLL_WAIT: Duration = Duration::from_secs(30);
const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(10);
/// After a failed poll: the error is recorded (and fails the benchmark), but the
/// launcher keeps polling so that the rest of the measurement still completes.
const POLL_RETRY: Duration = Duration::from_millis(500);

/// What happened to the runs, as the simulated launchers saw it.
#[derive(Debug, Default)]
pub(crate) struct Ledger {
    // A std mutex: held only to record or read entries, never across an await.
    records: Mutex<Records>,
    /// Woken whenever a run finishes.
    finished_signal: Notify,
    /// Poll answers, empty ones included.
    pub(crate) polls: AtomicU64,
    pub(crate) polls_with_assignments: AtomicU64,
    /// Assignments answered again while the launcher was executing them (before the ack
    /// landed): skipped, as a real launcher does.
    pub(crate) repeated_deliveries: AtomicU64,
    /// Assignments delivered after the run had already ended (the poll read the run
    /// before it was acknowledged and answered later): the ack is refused and the
    /// launcher drops them, as a real launcher does.
    pub(crate) stale_deliveries: AtomicU64,
    pub(crate) heartbeats: AtomicU64,
}

#[derive(Debug, Default)]
pub(crate) struct Records {
    /// When a launcher first received each run.
    pub(crate) received: HashMap<RunId, Instant>,
    /// The replica whose long-poll first delivered each run.
    pub(crate) received_from: HashMap<RunId, usize>,
    /// Every worker each run was delivered to: more than one is a double dispatch.
    pub(crate) delivered_to: HashMap<RunId, HashSet<WorkerId>>,
    /// How many times each run was executed: its acknowledgement accepted, then reported
    /// on.
    pub(crate) executions: HashMap<RunId, u32>,
    /// When the launcher received each run's `finish`.
    pub(crate) finished: HashMap<RunId, Instant>,
    /// Anything that went wrong; the benchmark fails if this is not empty.
    pub(crate) errors: Vec<String>,
}

impl Ledger {
    pub(crate) fn records(&self) -> MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn error(&self, error: String) {
        self.records().errors.push(error);
    }

    /// Waits until `done` holds over the records, re-checking after each finished run or
    /// every `recheck` at the latest. `false`: it did not hold within `timeout`.
    pub(crate) async fn wait_until(
        &self,
        timeout: Duration,
        recheck: Duration,
        done: impl Fn(&Records) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let finished = self.finished_signal.notified();
            tokio::pin!(finished);
            // Registered before looking, so that a finish in between is not missed.
            finished.as_mut().enable();
            if done(&self.records()) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::select! {
                () = finished => {}
                () = tokio::time::sleep(recheck) => {}
                () = tokio::time::sleep_until(deadline) => {}
            }
        }
    }
}

/// A connected simulated launcher.
#[derive(Debug)]
pub(crate) struct SimulatedLauncher {
    client: Arc<AgentClient>,
    worker_ids: Vec<WorkerId>,
    /// The index of the replica at `server_url`.
    replica: usize,
}

impl SimulatedLauncher {
    /// Opens a session with the server at `server_url` (challenge, signature with the
    /// pool key) and registers `slots` workers. `config` carries this launcher's own id;
    /// `replica` names the server in the ledger.
    pub(crate) async fn connect(
        config: &LauncherConfig,
        server_url: &str,
        replica: usize,
        slots: usize,
    ) -> anyhow::Result<Self> {
        let mut config = config.clone();
        config.token.endpoint = server_url.to_owned();
        let client = Arc::new(AgentClient::new(&config)?);
        client.connect().await?;
        let registrations = (0..slots)
            .map(|_| WorkerRegistration { previous_id: None, metadata: config.metadata.clone() })
            .collect();
        let registered = client.register_workers(registrations).await?;
        anyhow::ensure!(
            registered.worker_ids.len() == slots,
            "registering {slots} workers returned {} ids",
            registered.worker_ids.len()
        );
        Ok(Self { client, worker_ids: registered.worker_ids, replica })
    }

    /// Heart-beats and long-polls until `stop`, then closes the session (the server
    /// removes the workers). `polling` counts the launchers that started polling.
    pub(crate) fn spawn(
        self,
        ledger: Arc<Ledger>,
        stop: CancellationToken,
        polling: Arc<AtomicU64>,
    ) -> JoinHandle<()> {
        tokio::spawn(async move {
            let running: Arc<Mutex<HashSet<RunId>>> = Arc::default();
            let heartbeat = tokio::spawn(heartbeat_loop(
                Arc::clone(&self.client),
                self.worker_ids.clone(),
                Arc::clone(&running),
                Arc::clone(&ledger),
                stop.clone(),
            ));
            poll_loop(&self.client, self.replica, &running, &ledger, &stop, &polling).await;
            let _ = heartbeat.await;
            if let Err(error) = self.client.close().await {
                ledger.error(format!("closing the session failed: {error}"));
            }
        })
    }
}

fn lock(running: &Mutex<HashSet<RunId>>) -> MutexGuard<'_, HashSet<RunId>> {
    running.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One long-poll open at a time, as a real launcher: each answer's new assignments start
/// at once on their own task, and the next poll goes out immediately.
async fn poll_loop(
    client: &Arc<AgentClient>,
    replica: usize,
    running: &Arc<Mutex<HashSet<RunId>>>,
    ledger: &Arc<Ledger>,
    stop: &CancellationToken,
    polling: &AtomicU64,
) {
    polling.fetch_add(1, Ordering::SeqCst);
    loop {
        // As a real launcher: the runs executing here are not to be sent again.
        let holding = lock(running)
            .iter()
            .map(|run_id| HeldAssignment { run_id: *run_id, job: Job::Plan })
            .collect();
        let polled = tokio::select! {
            polled = client.poll(POLL_WAIT, holding) => polled,
            () = stop.cancelled() => return,
        };
        if !handle_poll(client, replica, running, ledger, polled) {
            tokio::select! {
                () = tokio::time::sleep(POLL_RETRY) => {}
                () = stop.cancelled() => return,
            }
        }
    }
}

/// Starts the new assignments of a poll's answer. `false`: the poll failed.
fn handle_poll(
    client: &Arc<AgentClient>,
    replica: usize,
    running: &Arc<Mutex<HashSet<RunId>>>,
    ledger: &Arc<Ledger>,
    polled: Result<PollResponse, ClientError>,
) -> bool {
    let received_at = Instant::now();
    let response = match polled {
        Ok(response) => response,
        Err(error) => {
            ledger.error(format!("a poll failed: {error}"));
            return false;
        }
    };
    ledger.polls.fetch_add(1, Ordering::Relaxed);
    if response.assignments.is_empty() {
        return true;
    }
    ledger.polls_with_assignments.fetch_add(1, Ordering::Relaxed);
    let mut new = Vec::new();
    {
        let mut records = ledger.records();
        for assignment in response.assignments {
            records.received.entry(assignment.run_id).or_insert(received_at);
            records.received_from.entry(assignment.run_id).or_insert(replica);
            records.delivered_to.entry(assignment.run_id).or_default().insert(assignment.worker_id);
            // A poll answers with the same assignment until its ack lands: a real
            // launcher skips the runs it already executes, so does this one.
            if lock(running).insert(assignment.run_id) {
                new.push(assignment);
            } else {
                ledger.repeated_deliveries.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    for assignment in new {
        let client = Arc::clone(client);
        let running = Arc::clone(running);
        let ledger = Arc::clone(ledger);
        tokio::spawn(async move {
            let run_id = assignment.run_id;
            match execute(&client, &assignment, &ledger).await {
                Ok(Execution::Finished) => {
                    ledger.records().finished.insert(run_id, Instant::now());
                    ledger.finished_signal.notify_waiters();
                }
                Ok(Execution::NotOurs) => {
                    ledger.stale_deliveries.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => ledger.error(format!("run {run_id}: {error}")),
            }
            lock(&running).remove(&run_id);
        });
    }
    true
}

/// How a delivered assignment ended at the launcher.
enum Execution {
    /// Executed; the server answered `finish`.
    Finished,
    /// The acknowledgement was refused: the run is no longer this worker's.
    NotOurs,
}

/// The no-op run: acknowledge, two phases, a plan without changes, which must finish it.
async fn execute(
    client: &AgentClient,
    assignment: &Assignment,
    ledger: &Ledger,
) -> anyhow::Result<Execution> {
    anyhow::ensure!(assignment.job == Job::Plan, "expected a plan job, got {:?}", assignment.job);
    let acknowledge = Acknowledge { worker_id: assignment.worker_id, job: assignment.job };
    match client.acknowledge(assignment.run_id, &acknowledge).await {
        Ok(()) => {}
        // What a real launcher's supervisor does with a refused ack: drop the run.
        Err(ClientError::Rejected { status: 404 | 409, .. }) => return Ok(Execution::NotOurs),
        Err(error) => return Err(error.into()),
    }
    *ledger.records().executions.entry(assignment.run_id).or_default() += 1;
    for phase in [Phase::Initializing, Phase::Planning] {
        let directive = client.report(assignment.run_id, RunReport::PhaseStarted { phase }).await?;
        anyhow::ensure!(
            directive == Directive::Continue,
            "{phase:?} answered {directive:?}, expected continue"
        );
    }
    let directive =
        client.report(assignment.run_id, RunReport::Planned { has_changes: false }).await?;
    anyhow::ensure!(
        directive == Directive::Finish,
        "a plan without changes answered {directive:?}, expected finish"
    );
    Ok(Execution::Finished)
}

/// Every 10 s, as a real launcher: the slots, and the runs executing now.
async fn heartbeat_loop(
    client: Arc<AgentClient>,
    worker_ids: Vec<WorkerId>,
    running: Arc<Mutex<HashSet<RunId>>>,
    ledger: Arc<Ledger>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(HEARTBEAT_INTERVAL) => {}
            () = stop.cancelled() => return,
        }
        let heartbeat = Heartbeat {
            worker_ids: worker_ids.clone(),
            running_run_ids: lock(&running).iter().copied().collect(),
        };
        match client.heartbeat(&heartbeat).await {
            Ok(response) if !response.unknown_worker_ids.is_empty() => ledger
                .error(format!("the server forgot {} workers", response.unknown_worker_ids.len())),
            Ok(_) => {
                ledger.heartbeats.fetch_add(1, Ordering::Relaxed);
            }
            Err(error) => ledger.error(format!("a heartbeat failed: {error}")),
        }
    }
}
