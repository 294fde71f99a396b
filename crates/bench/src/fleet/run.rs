//! The fleet benchmark, phase by phase: start the server process, create a pool and its
//! stacks, connect the fleet and read the server's memory once it idles in long-poll,
//! time dispatch one run at a time, then push many runs through at once, and finally
//! check that every run ran exactly once and ended FINISHED.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::{StreamExt, TryStreamExt, stream};
use gantry_cli::client::ApiClient;
use gantry_crypto::{PoolToken, generate_pool_key};
use gantry_domain::{LauncherId, RunId, RunState, RunType};
use gantry_launcher::LauncherConfig;
use gantry_proto::api::{CreatePool, CreateStack, TriggerRun};
use gantry_testkit::{GitRepository, NO_CHANGES_CONFIG};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::cpu::{own_cpu_time, process_cpu_time};
use super::launcher::{Ledger, Records, SimulatedLauncher};
use super::limits::raise_open_file_limit;
use super::server_process::{ServerProcess, gantry_binary};
use super::summary::{FleetMeasures, LatencySummary, PhaseCpu};

const POOL: &str = "fleet";
/// Sessions opened at once while the fleet connects: a thousand TLS handshakes and
/// signatures at the same instant would only measure the connect timeout.
const CONNECT_CONCURRENCY: usize = 32;
/// After the last launcher sent its first poll: time for the server to park every poll.
const SETTLE: Duration = Duration::from_secs(3);
/// Runs before the latency phase that are not timed: first queries, first connections of
/// the store's reader pool.
const WARM_UP_RUNS: usize = 10;
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// The throughput phase fails if no run finishes for this long.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
const CHECK_CONCURRENCY: usize = 8;

/// Runs triggered, each with the instant just before its trigger request was sent.
type Triggered = Vec<(RunId, Instant)>;

/// The fleet's shape and the work to push through it.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub launchers: usize,
    /// Worker slots per launcher.
    pub slots: usize,
    /// Runs timed one at a time, the fleet otherwise idle.
    pub latency_runs: usize,
    /// Runs triggered as fast as the API takes them.
    pub throughput_runs: usize,
    /// Stacks the runs are spread over.
    pub stacks: usize,
    /// Tasks triggering runs concurrently in the throughput phase: a closed loop, so
    /// they must be enough to keep the server busy, or the measure is their latency.
    pub triggering_tasks: usize,
    /// Keep the server's data directory and log afterwards (to read its database or
    /// its statement log).
    pub keep_server_data: bool,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            launchers: 100,
            slots: 10,
            latency_runs: 500,
            throughput_runs: 2000,
            stacks: 10,
            triggering_tasks: 32,
            keep_server_data: false,
        }
    }
}

impl FleetOptions {
    /// A real launcher has 1 to 64 slots; every count must be at least one.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.launchers >= 1, "--launchers must be at least 1");
        anyhow::ensure!(
            (1..=64).contains(&self.slots),
            "--slots must be from 1 to 64, as GANTRY_LAUNCHER_WORKER_SLOTS"
        );
        anyhow::ensure!(self.latency_runs >= 1, "--latency-runs must be at least 1");
        anyhow::ensure!(self.throughput_runs >= 1, "--throughput-runs must be at least 1");
        anyhow::ensure!(self.stacks >= 1, "--stacks must be at least 1");
        anyhow::ensure!(self.triggering_tasks >= 1, "--triggering-tasks must be at least 1");
        Ok(())
    }
}

/// Runs the fleet benchmark against a fresh `gantry server` process. The server's data
/// directory and log are kept (and named on stderr) when it fails or when asked.
pub async fn fleet(options: &FleetOptions) -> anyhow::Result<FleetMeasures> {
    options.validate()?;
    raise_open_file_limit(options.launchers)?;
    gantry_testkit::install_crypto_provider();
    let binary = gantry_binary()?;
    let dir = tempfile::tempdir()?;
    let server = ServerProcess::start(&binary, &dir.path().join("server")).await?;
    let log = server.log.clone();
    progress(format_args!("server pid {} listening on {}", server.pid(), server.url));
    let measured = measure(options, &binary, dir.path(), &server).await;
    let stopped = server.stop().await;
    if measured.is_err() || options.keep_server_data {
        let kept = dir.keep();
        progress(format_args!(
            "the server's data is kept in {}, its log in {}",
            kept.display(),
            log.display()
        ));
    }
    let measures = measured?;
    stopped?;
    Ok(measures)
}

async fn measure(
    options: &FleetOptions,
    binary: &Path,
    dir: &Path,
    server: &ServerProcess,
) -> anyhow::Result<FleetMeasures> {
    let client = ApiClient::builder(server.url.clone())
        .api_key(server.admin_key.clone())
        .trust_ca_pem(server.ca_pem.clone())
        .build()?;
    let config = create_pool(&client, server, binary, dir).await?;
    let stacks = create_stacks(&client, dir, options.stacks).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before_kib = server.rss_kib()?;

    let ledger = Arc::new(Ledger::default());
    let stop = CancellationToken::new();
    // Whatever fails from here on, the launchers stop with it rather than poll a server
    // that is being shut down.
    let _stop_launchers = stop.clone().drop_guard();
    let launchers = connect_fleet(options, &config, &ledger, &stop).await?;
    tokio::time::sleep(SETTLE).await;
    let rss_idle_fleet_kib = server.rss_kib()?;
    check_fleet_idle(&client, options).await?;

    let result = run_phases(options, &client, &stacks, &ledger, server.pid()).await;
    let rss_end_kib = server.rss_kib()?;
    stop.cancel();
    for launcher in launchers {
        let _ = launcher.await;
    }
    let phases = result?;
    let errors = std::mem::take(&mut ledger.records().errors);
    anyhow::ensure!(
        errors.is_empty(),
        "{} errors at the simulated launchers, the first: {}",
        errors.len(),
        errors.join("; ").chars().take(2000).collect::<String>()
    );
    Ok(FleetMeasures {
        launchers: options.launchers,
        slots: options.slots,
        stacks: options.stacks,
        triggering_tasks: options.triggering_tasks,
        idle_latency: phases.idle_latency,
        loaded_latency: phases.throughput.loaded_latency,
        throughput_runs: options.throughput_runs,
        throughput_elapsed: phases.throughput.elapsed,
        triggering_elapsed: phases.throughput.triggering_elapsed,
        latency_cpu: phases.latency_cpu,
        throughput_cpu: phases.throughput_cpu,
        rss_before_kib,
        rss_idle_fleet_kib,
        rss_end_kib,
        polls: ledger.polls.load(Ordering::Relaxed),
        polls_with_assignments: ledger.polls_with_assignments.load(Ordering::Relaxed),
        repeated_deliveries: ledger.repeated_deliveries.load(Ordering::Relaxed),
        stale_deliveries: ledger.stale_deliveries.load(Ordering::Relaxed),
        heartbeats: ledger.heartbeats.load(Ordering::Relaxed),
        total_runs: phases.total_runs,
    })
}

/// What the timed phases found.
#[derive(Debug)]
struct Phases {
    idle_latency: LatencySummary,
    latency_cpu: PhaseCpu,
    throughput: Throughput,
    throughput_cpu: PhaseCpu,
    /// Every run triggered, warm-up included.
    total_runs: usize,
}

/// CPU time of the server and of this process, and the clock, at one instant.
#[derive(Debug, Clone, Copy)]
struct CpuSample {
    at: Instant,
    server: Duration,
    load_generator: Duration,
}

impl CpuSample {
    fn now(server_pid: i32) -> anyhow::Result<Self> {
        Ok(Self {
            at: Instant::now(),
            server: process_cpu_time(server_pid)?,
            load_generator: own_cpu_time()?,
        })
    }

    fn since(self, earlier: Self) -> PhaseCpu {
        PhaseCpu {
            wall: self.at.saturating_duration_since(earlier.at),
            server: self.server.saturating_sub(earlier.server),
            load_generator: self.load_generator.saturating_sub(earlier.load_generator),
        }
    }
}

async fn run_phases(
    options: &FleetOptions,
    client: &ApiClient,
    stacks: &[String],
    ledger: &Arc<Ledger>,
    server_pid: i32,
) -> anyhow::Result<Phases> {
    let mut triggered = Vec::new();
    let warm_up = latency_phase(client, stacks, ledger, WARM_UP_RUNS).await?;
    triggered.extend(warm_up.iter().map(|(run_id, _)| *run_id));

    let before = CpuSample::now(server_pid)?;
    let timed = latency_phase(client, stacks, ledger, options.latency_runs).await?;
    let latency_cpu = CpuSample::now(server_pid)?.since(before);
    triggered.extend(timed.iter().map(|(run_id, _)| *run_id));
    let idle_latency = latencies(ledger, &timed)?;
    progress(format_args!(
        "latency phase: {} runs one at a time in {:.1} s",
        timed.len(),
        latency_cpu.wall.as_secs_f64()
    ));

    let before = CpuSample::now(server_pid)?;
    let throughput = throughput_phase(options, client, stacks, ledger).await?;
    let throughput_cpu = CpuSample::now(server_pid)?.since(before);
    progress(format_args!(
        "throughput phase: {} runs in {:.1} s",
        throughput.runs.len(),
        throughput.elapsed.as_secs_f64()
    ));
    triggered.extend(throughput.runs.iter().map(|(run_id, _)| *run_id));
    verify(client, ledger, &triggered).await?;
    Ok(Phases {
        idle_latency,
        latency_cpu,
        throughput,
        throughput_cpu,
        total_runs: triggered.len(),
    })
}

/// A line on stderr: the benchmark takes minutes, and says where it is.
fn progress(message: std::fmt::Arguments<'_>) {
    eprintln!("gantry-bench: {message}");
}

/// The pool, and a launcher configuration for it (each simulated launcher gets its own
/// launcher id and hostname).
async fn create_pool(
    client: &ApiClient,
    server: &ServerProcess,
    binary: &Path,
    dir: &Path,
) -> anyhow::Result<LauncherConfig> {
    let generated = generate_pool_key(POOL)?;
    let created = client
        .create_pool(&CreatePool {
            name: POOL.into(),
            csr: generated.csr_pem,
            description: String::new(),
            labels: vec![],
        })
        .await?;
    let token = PoolToken::decode(&created.token)?;
    let token = PoolToken::new(
        server.url.clone(),
        Some(server.ca_pem.clone()),
        token.pool_id,
        token.certificate,
    );
    let env = [
        ("GANTRY_TOKEN", token.encode()),
        ("GANTRY_POOL_PRIVATE_KEY", generated.private_key_pem),
        // The configuration insists on an executable worker; no worker process is ever
        // started here, so any executable does.
        ("GANTRY_WORKER_BINARY", binary.display().to_string()),
        ("GANTRY_LAUNCHER_WORK_DIR", dir.join("launcher").display().to_string()),
    ]
    .into_iter()
    .map(|(name, value)| (name.to_owned(), value))
    .collect();
    Ok(LauncherConfig::from_env(&env)?)
}

/// `count` stacks of one local repository, proposed runs only.
async fn create_stacks(
    client: &ApiClient,
    dir: &Path,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let repository =
        GitRepository::create(&dir.join("repository"), &[("main.tf", NO_CHANGES_CONFIG)]);
    let mut names = Vec::with_capacity(count);
    for index in 0..count {
        let name = format!("fleet-{index}");
        // Built from JSON as the API reads it: only what this benchmark sets, every other
        // field at the API's default, however the request type grows.
        let request: CreateStack = serde_json::from_value(serde_json::json!({
            "name": name,
            "repository": repository.url(),
            "branch": "main",
            "pool": POOL,
            "autodeploy": false,
            "managed_state": false,
        }))?;
        client.create_stack(&request).await?;
        names.push(name);
    }
    Ok(names)
}

/// Connects every launcher (a bounded number at a time) and starts its heartbeat and
/// long-poll; returns once every launcher has started polling.
async fn connect_fleet(
    options: &FleetOptions,
    config: &LauncherConfig,
    ledger: &Arc<Ledger>,
    stop: &CancellationToken,
) -> anyhow::Result<Vec<JoinHandle<()>>> {
    let polling = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let launchers: Vec<JoinHandle<()>> = stream::iter(0..options.launchers)
        .map(|index| {
            let mut config = config.clone();
            config.launcher_id = LauncherId::generate();
            config.hostname = format!("fleet-{index}");
            let ledger = Arc::clone(ledger);
            let stop = stop.clone();
            let polling = Arc::clone(&polling);
            async move {
                let launcher = SimulatedLauncher::connect(&config, options.slots)
                    .await
                    .with_context(|| format!("launcher {index} could not connect"))?;
                anyhow::Ok(launcher.spawn(ledger, stop, polling))
            }
        })
        .buffer_unordered(CONNECT_CONCURRENCY)
        .try_collect()
        .await?;
    let all = options.launchers as u64;
    while polling.load(Ordering::SeqCst) < all {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    progress(format_args!(
        "{} launchers × {} slots connected in {:.1} s",
        options.launchers,
        options.slots,
        started.elapsed().as_secs_f64()
    ));
    Ok(launchers)
}

/// The server lists every simulated worker, none of them busy.
async fn check_fleet_idle(client: &ApiClient, options: &FleetOptions) -> anyhow::Result<()> {
    let workers = client.list_pool_workers(POOL).await?.workers;
    let expected = options.launchers * options.slots;
    anyhow::ensure!(
        workers.len() == expected,
        "the server lists {} workers in the pool, expected {expected}",
        workers.len()
    );
    let busy = workers.iter().filter(|worker| worker.busy).count();
    anyhow::ensure!(busy == 0, "{busy} workers are busy before the first run");
    Ok(())
}

async fn trigger(client: &ApiClient, stack: &str, request: &TriggerRun) -> anyhow::Result<RunId> {
    let run = client
        .trigger_run(stack, request)
        .await
        .with_context(|| format!("triggering a run of {stack} failed"))?;
    Ok(run.id)
}

/// A proposed run of the branch head (built from JSON for the same reason as the stacks).
fn proposed() -> anyhow::Result<TriggerRun> {
    Ok(serde_json::from_value(serde_json::json!({ "type": RunType::Proposed.to_string() }))?)
}

/// `runs` proposed runs one after another, each triggered once the previous one
/// finished: (run, the instant just before its trigger request was sent).
async fn latency_phase(
    client: &ApiClient,
    stacks: &[String],
    ledger: &Ledger,
    runs: usize,
) -> anyhow::Result<Triggered> {
    let request = proposed()?;
    let mut triggered = Vec::with_capacity(runs);
    for index in 0..runs {
        let sent = Instant::now();
        let run_id = trigger(client, &stacks[index % stacks.len()], &request).await?;
        triggered.push((run_id, sent));
        let finished = ledger
            .wait_until(RUN_TIMEOUT, Duration::from_millis(100), |records| {
                records.finished.contains_key(&run_id)
            })
            .await;
        anyhow::ensure!(finished, "run {run_id} did not finish within {RUN_TIMEOUT:?}");
    }
    Ok(triggered)
}

/// Trigger sent → assignment received, for each run.
fn latencies(ledger: &Ledger, runs: &[(RunId, Instant)]) -> anyhow::Result<LatencySummary> {
    let records = ledger.records();
    let samples = runs
        .iter()
        .map(|(run_id, sent)| {
            let received = records
                .received
                .get(run_id)
                .with_context(|| format!("run {run_id} was never received"))?;
            Ok(received.saturating_duration_since(*sent))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    LatencySummary::of(samples).context("no runs were timed")
}

#[derive(Debug)]
struct Throughput {
    runs: Triggered,
    elapsed: Duration,
    triggering_elapsed: Duration,
    loaded_latency: LatencySummary,
}

/// `throughput_runs` runs triggered by concurrent tasks over all stacks, timed from the
/// first trigger to the last `finish` a launcher received.
async fn throughput_phase(
    options: &FleetOptions,
    client: &ApiClient,
    stacks: &[String],
    ledger: &Ledger,
) -> anyhow::Result<Throughput> {
    let request = Arc::new(proposed()?);
    let next = Arc::new(AtomicUsize::new(0));
    let stacks: Arc<[String]> = stacks.into();
    let start = Instant::now();
    let tasks: Vec<JoinHandle<anyhow::Result<Triggered>>> = (0..options.triggering_tasks)
        .map(|_| {
            let client = client.clone();
            let next = Arc::clone(&next);
            let stacks = Arc::clone(&stacks);
            let request = Arc::clone(&request);
            let total = options.throughput_runs;
            tokio::spawn(async move {
                let mut triggered = Vec::new();
                loop {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= total {
                        return Ok(triggered);
                    }
                    let sent = Instant::now();
                    let stack = &stacks[index % stacks.len()];
                    triggered.push((trigger(&client, stack, &request).await?, sent));
                }
            })
        })
        .collect();
    let mut runs = Vec::with_capacity(options.throughput_runs);
    for task in tasks {
        runs.extend(task.await.context("a triggering task panicked")??);
    }
    let triggering_elapsed = start.elapsed();
    progress(format_args!(
        "throughput phase: {} runs triggered in {:.1} s",
        runs.len(),
        triggering_elapsed.as_secs_f64()
    ));

    let ids: HashSet<RunId> = runs.iter().map(|(run_id, _)| *run_id).collect();
    let count_finished =
        |records: &Records| ids.iter().filter(|id| records.finished.contains_key(id)).count();
    let mut finished = 0;
    loop {
        let before = finished;
        let progressed = ledger
            .wait_until(STALL_TIMEOUT, Duration::from_millis(200), |records| {
                let now = count_finished(records);
                now == ids.len() || now > before
            })
            .await;
        finished = count_finished(&ledger.records());
        if finished == ids.len() {
            break;
        }
        anyhow::ensure!(
            progressed,
            "the throughput phase stalled: {finished} of {} runs finished, none for {STALL_TIMEOUT:?}",
            ids.len()
        );
    }
    let last_finish = {
        let records = ledger.records();
        ids.iter().filter_map(|id| records.finished.get(id)).max().copied()
    }
    .context("no run finished")?;
    Ok(Throughput {
        loaded_latency: latencies(ledger, &runs)?,
        elapsed: last_finish.saturating_duration_since(start),
        triggering_elapsed,
        runs,
    })
}

/// Every triggered run was delivered to one worker only, executed once, and is FINISHED
/// according to the API; no run the benchmark did not trigger was executed.
async fn verify(client: &ApiClient, ledger: &Ledger, triggered: &[RunId]) -> anyhow::Result<()> {
    {
        let records = ledger.records();
        let expected: HashSet<RunId> = triggered.iter().copied().collect();
        anyhow::ensure!(expected.len() == triggered.len(), "the API returned a run id twice");
        for run_id in triggered {
            let workers = records.delivered_to.get(run_id).map_or(0, HashSet::len);
            anyhow::ensure!(
                workers == 1,
                "run {run_id} was delivered to {workers} different workers"
            );
            let executions = records.executions.get(run_id).copied().unwrap_or(0);
            anyhow::ensure!(executions == 1, "run {run_id} was executed {executions} times");
        }
        let executed: HashSet<RunId> = records.executions.keys().copied().collect();
        anyhow::ensure!(
            executed == expected,
            "{} distinct runs were executed, {} were triggered",
            executed.len(),
            expected.len()
        );
    }
    let not_finished: Vec<String> = stream::iter(triggered.iter().copied())
        .map(|run_id| async move {
            let run = client.get_run(run_id).await?;
            anyhow::Ok(
                (run.state != RunState::Finished).then(|| format!("{run_id} is {}", run.state)),
            )
        })
        .buffer_unordered(CHECK_CONCURRENCY)
        .try_filter_map(|wrong| async move { Ok(wrong) })
        .try_collect()
        .await?;
    anyhow::ensure!(
        not_finished.is_empty(),
        "{} runs did not end FINISHED: {}",
        not_finished.len(),
        not_finished.iter().take(10).cloned().collect::<Vec<_>>().join(", ")
    );
    Ok(())
}
