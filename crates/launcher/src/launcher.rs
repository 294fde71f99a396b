//! The launcher's main loop: connect (retrying with backoff while the server is
//! unreachable), register the worker slots, long-poll for assignments and hand each to a
//! supervisor, heartbeat, and on shutdown stop polling at once but let running runs
//! finish for a grace period before stopping them. Before the first poll, the runs a
//! dead launcher with the same work directory left are recovered (`recovery`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use gantry_domain::{RunId, WorkerId};
use gantry_proto::agent::{Assignment, Heartbeat, HeldAssignment, Job, WorkerRegistration};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::backoff::{Backoff, shown};
use crate::client::{AgentClient, ClientError};
use crate::config::LauncherConfig;
use crate::executor::Executor;
use crate::metrics::LauncherMetrics;
use crate::recovery;
use crate::run::RunContext;
use crate::run::journal;
use crate::supervisor;
use crate::workspace;

const POLL_WAIT: Duration = Duration::from_secs(30);
/// A poll that failed after being open this long was cut, not refused.
const LONG_POLL_CUT: Duration = Duration::from_secs(2);
/// On shutdown, how long runs stopped after the grace period still try to deliver their
/// reports, state and logs to a server that does not answer.
const FINAL_DELIVERY_WINDOW: Duration = Duration::from_secs(60);

/// The two stages of stopping: `graceful` stops taking work and lets runs finish for the
/// grace period; `immediate` stops running runs now.
#[derive(Debug, Clone, Default)]
pub struct Shutdown {
    pub graceful: CancellationToken,
    pub immediate: CancellationToken,
}

/// Why the launcher stopped on its own: retrying cannot help.
#[derive(Debug, thiserror::Error)]
pub enum FatalError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("cannot prepare the work directory {path}: {source}")]
    WorkDir { path: String, source: std::io::Error },
    #[error("cannot serve metrics on {address} (GANTRY_LAUNCHER_METRICS_LISTEN): {source}")]
    MetricsListen { address: std::net::SocketAddr, source: std::io::Error },
    /// The server's worker binary cannot be had or does not verify with the pinned key.
    #[error("{0}")]
    WorkerBinary(String),
}

/// What the loop and the heartbeat share.
#[derive(Debug, Default)]
struct Slots {
    worker_ids: Vec<WorkerId>,
    /// Runs executing here, with the token that stops each.
    running: HashMap<(RunId, Job), CancellationToken>,
}

type SharedSlots = Arc<Mutex<Slots>>;

fn lock(slots: &SharedSlots) -> std::sync::MutexGuard<'_, Slots> {
    slots.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs the launcher until `shutdown`. Returns an error only for what retrying cannot
/// fix (a refused proof, a reset pool).
pub async fn run(
    config: LauncherConfig,
    executor: Arc<dyn Executor>,
    shutdown: Shutdown,
) -> Result<(), FatalError> {
    let instance_dir = config.work_dir.join(config.launcher_id.to_string());
    let metrics = Arc::new(LauncherMetrics::new(config.worker_slots));
    let metrics_stop = CancellationToken::new();
    if let Some(address) = config.metrics_listen {
        let listener = gantry_metrics::MetricsListener::bind(address)
            .await
            .map_err(|source| FatalError::MetricsListen { address, source })?;
        tracing::info!(address = %listener.local_addr(), "metrics served at /metrics");
        let scraped = Arc::clone(&metrics);
        let render = move || {
            let text = scraped.render();
            async move { Ok(text) }
        };
        tokio::spawn(listener.serve(render, metrics_stop.clone()));
    }
    let _stop_metrics = metrics_stop.drop_guard();
    let context = Arc::new(RunContext {
        client: Arc::new(AgentClient::new(&config)?),
        runs_dir: instance_dir.join("runs"),
        sockets_dir: socket_dir(&instance_dir),
        scratch_dir: instance_dir.join("scratch"),
        metrics,
        worker_binaries: crate::worker_binary::WorkerBinaries::new(
            config.worker.clone(),
            &config.work_dir,
        ),
        pod_runner: None,
        config,
    });
    prepare_dirs(&context, &instance_dir)?;
    let _instance_lock = recovery::lock_instance(&instance_dir).map_err(|source| {
        FatalError::WorkDir { path: instance_dir.display().to_string(), source }
    })?;
    let result = serve(Arc::clone(&context), executor, &shutdown).await;
    workspace::remove(&instance_dir).await;
    if context.sockets_dir.starts_with(std::env::temp_dir())
        && !context.sockets_dir.starts_with(&instance_dir)
    {
        workspace::remove(&context.sockets_dir).await;
    }
    result
}

async fn serve(
    context: Arc<RunContext>,
    executor: Arc<dyn Executor>,
    shutdown: &Shutdown,
) -> Result<(), FatalError> {
    let client = Arc::clone(&context.client);
    if !connect(&client, &shutdown.graceful).await? {
        return Ok(());
    }
    if matches!(context.config.worker, crate::worker_binary::WorkerSource::Download(_)) {
        // Before taking work: a worker that will not verify stops the launcher now.
        context.worker_binaries.current(&client).await.map_err(FatalError::WorkerBinary)?;
    }
    // Before taking work: what a dead launcher with this work directory left is finished
    // first, so no run of this one meets a worker of that one still running.
    let instance_dir = context.runs_dir.parent().unwrap_or(&context.runs_dir);
    recovery::recover(&context, &executor, instance_dir, &shutdown.graceful).await;
    let slots: SharedSlots = Arc::default();
    register(&context, &slots, &[]).await?;
    tracing::info!(
        server = %client.endpoint(),
        pool = %context.config.pool_id,
        workers = context.config.worker_slots,
        "launcher connected and waiting for runs"
    );

    let heartbeat_stop = CancellationToken::new();
    // Cancelled when the pool is cycled: take no more work, finish, exit.
    let cycle = CancellationToken::new();
    let heartbeat = tokio::spawn(heartbeat_loop(
        Arc::clone(&context),
        Arc::clone(&slots),
        heartbeat_stop.clone(),
        cycle.clone(),
    ));
    let mut runs = JoinSet::new();
    let polled = poll_loop(&context, &executor, &slots, &mut runs, shutdown, &cycle).await;

    // Runs that ended while the last poll waited are still in the set: reap them first.
    while runs.try_join_next().is_some() {}
    let running = runs.len();
    if cycle.is_cancelled() && !shutdown.graceful.is_cancelled() {
        // A cycle lets every run finish, however long it takes; a stop signal still cuts it short.
        tracing::info!(
            running,
            "the pool is being cycled: finishing the runs in progress, then exiting"
        );
        let all_done = async { while runs.join_next().await.is_some() {} };
        tokio::select! {
            () = all_done => {}
            () = shutdown.graceful.cancelled() => {}
        }
    }
    let running = runs.len();
    if running > 0 {
        let grace = humantime::format_duration(context.config.shutdown_grace);
        tracing::info!(
            running,
            "waiting up to {grace} for running runs to finish; stop again to end them now"
        );
        let all_done = async { while runs.join_next().await.is_some() {} };
        tokio::select! {
            () = all_done => {}
            () = tokio::time::sleep(context.config.shutdown_grace) => {}
            () = shutdown.immediate.cancelled() => {}
        }
        for stop in lock(&slots).running.values() {
            stop.cancel();
        }
        // The runs stopped: their reports still go to the server if it answers, but
        // the launcher does not wait past the delivery window for one that does not.
        let all_done = async { while runs.join_next().await.is_some() {} };
        let abandon = async {
            tokio::select! {
                () = tokio::time::sleep(FINAL_DELIVERY_WINDOW) => {}
                () = shutdown.immediate.cancelled() => {}
            }
            tracing::warn!("leaving with deliveries the server has not acknowledged yet");
            client.abandon_deliveries();
            std::future::pending::<()>().await;
        };
        tokio::select! {
            () = all_done => {}
            () = abandon => {}
        }
    }
    heartbeat_stop.cancel();
    let _ = heartbeat.await;
    if let Err(error) = client.close().await {
        tracing::warn!(%error, "could not deregister from the server; it will notice the launcher is gone");
    }
    polled
}

/// Opens the first session, retrying while the server is unreachable. `Ok(false)`: shut
/// down while waiting.
pub(crate) async fn connect(
    client: &AgentClient,
    shutdown: &CancellationToken,
) -> Result<bool, FatalError> {
    let mut backoff = Backoff::new(Duration::from_secs(60));
    loop {
        match client.connect().await {
            Ok(()) => return Ok(true),
            Err(error) if error.is_fatal() => return Err(error.into()),
            Err(error) => {
                let delay = backoff.delay();
                tracing::warn!("{error}; retrying in {}", shown(delay));
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return Ok(false),
                }
            }
        }
    }
}

/// Registers the launcher's slots, keeping the ids of `previous` ones.
async fn register(
    context: &RunContext,
    slots: &SharedSlots,
    previous: &[WorkerId],
) -> Result<(), ClientError> {
    let count = context.config.worker_slots as usize;
    let registrations = (0..count)
        .map(|index| WorkerRegistration {
            previous_id: previous.get(index).copied(),
            metadata: context.config.metadata.clone(),
        })
        .collect();
    let registered = context.client.register_workers(registrations).await?;
    lock(slots).worker_ids = registered.worker_ids;
    Ok(())
}

async fn poll_loop(
    context: &Arc<RunContext>,
    executor: &Arc<dyn Executor>,
    slots: &SharedSlots,
    runs: &mut JoinSet<()>,
    shutdown: &Shutdown,
    cycle: &CancellationToken,
) -> Result<(), FatalError> {
    let mut backoff = Backoff::new(Duration::from_secs(60));
    loop {
        while runs.try_join_next().is_some() {}
        let started = tokio::time::Instant::now();
        let holding = lock(slots)
            .running
            .keys()
            .map(|(run_id, job)| HeldAssignment { run_id: *run_id, job: *job })
            .collect();
        let polled = tokio::select! {
            polled = context.client.poll(POLL_WAIT, holding) => polled,
            () = shutdown.graceful.cancelled() => return Ok(()),
            () = cycle.cancelled() => return Ok(()),
        };
        match polled {
            Ok(response) => {
                backoff.reset();
                stop_runs(slots, &response.stop_run_ids, "a user asked to stop it");
                for assignment in response.assignments {
                    start_run(context, executor, slots, runs, assignment, shutdown);
                }
                if response.cycle {
                    cycle.cancel();
                }
            }
            Err(error) if error.is_fatal() => return Err(error.into()),
            Err(error) => {
                // A poll cut after it was open a while (a proxy's idle timeout, a load
                // balancer restart) says the server is reachable: poll again soon rather
                // than backing off further.
                if started.elapsed() > LONG_POLL_CUT {
                    backoff.reset();
                }
                let delay = backoff.delay();
                tracing::warn!("{error}; polling again in {}", shown(delay));
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.graceful.cancelled() => return Ok(()),
                }
            }
        }
    }
}

fn start_run(
    context: &Arc<RunContext>,
    executor: &Arc<dyn Executor>,
    slots: &SharedSlots,
    runs: &mut JoinSet<()>,
    mut assignment: Assignment,
    shutdown: &Shutdown,
) {
    crate::stack_secrets::open_in_place(&context.config, &mut assignment);
    let key = (assignment.run_id, assignment.job);
    let stop = shutdown.immediate.child_token();
    {
        let mut slots = lock(slots);
        // A poll sent before this run started may still deliver it.
        if slots.running.contains_key(&key) {
            return;
        }
        slots.running.insert(key, stop.clone());
    }
    let context = Arc::clone(context);
    let executor = Arc::clone(executor);
    let slots = Arc::clone(slots);
    runs.spawn(async move {
        supervisor::supervise(context, executor, assignment, stop).await;
        lock(&slots).running.remove(&key);
    });
}

/// Stops the runs of these ids executing here.
fn stop_runs(slots: &SharedSlots, run_ids: &[RunId], why: &str) {
    for ((running, _), token) in &lock(slots).running {
        if run_ids.contains(running) && !token.is_cancelled() {
            tracing::info!(run = %running, "stopping the run: {why}");
            token.cancel();
        }
    }
}

async fn heartbeat_loop(
    context: Arc<RunContext>,
    slots: SharedSlots,
    stop: CancellationToken,
    cycle: CancellationToken,
) {
    // At a fixed rate, not a fixed pause after each answer: a slow answer does not push
    // the next heartbeat back (the server counts the time between them).
    let mut sent_at = tokio::time::Instant::now();
    loop {
        tokio::select! {
            () = tokio::time::sleep_until(sent_at + context.client.heartbeat_interval()) => {}
            () = stop.cancelled() => return,
        }
        sent_at = tokio::time::Instant::now();
        let heartbeat = {
            let slots = lock(&slots);
            Heartbeat {
                worker_ids: slots.worker_ids.clone(),
                running_run_ids: slots.running.keys().map(|(run_id, _)| *run_id).collect(),
            }
        };
        let response = match context.client.heartbeat(&heartbeat).await {
            Ok(response) => response,
            Err(error) => {
                tracing::warn!(%error, "heartbeat failed");
                continue;
            }
        };
        if !response.unknown_worker_ids.is_empty() {
            tracing::warn!(
                workers = response.unknown_worker_ids.len(),
                "the server forgot some workers; registering them again"
            );
            if let Err(error) = register(&context, &slots, &heartbeat.worker_ids).await {
                tracing::warn!(%error, "registering the workers again failed");
            }
        }
        stop_runs(&slots, &response.stop_run_ids, "the server ended it or a user asked to stop it");
        if response.cycle {
            cycle.cancel();
        }
    }
}

fn prepare_dirs(context: &RunContext, instance_dir: &Path) -> Result<(), FatalError> {
    use std::os::unix::fs::DirBuilderExt;
    // Runs of the process executor run as users of their own: they pass through these
    // (never list them) to their own workspace and socket. Scratch space is the launcher's.
    for (dir, mode) in [
        (instance_dir, 0o711),
        (context.runs_dir.as_path(), 0o711),
        (context.sockets_dir.as_path(), 0o711),
        (context.scratch_dir.as_path(), 0o700),
        (journal::directory(&context.runs_dir).as_path(), 0o700),
    ] {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(mode)
            .create(dir)
            .map_err(|source| FatalError::WorkDir { path: dir.display().to_string(), source })?;
    }
    Ok(())
}

/// Unix socket paths are limited to 107 bytes: a deep work directory gets its sockets
/// in a private directory under the system temporary directory instead.
pub(crate) fn socket_dir(instance_dir: &Path) -> PathBuf {
    let preferred = instance_dir.join("s");
    // "<26-character run id>.sock" must fit after the directory.
    if preferred.as_os_str().len() + 1 + 31 < 107 {
        preferred
    } else {
        let name =
            instance_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        std::env::temp_dir().join(format!("gantry-{name}"))
    }
}
