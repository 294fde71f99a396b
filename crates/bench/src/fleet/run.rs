//! The fleet benchmark, phase by phase: start the database and the server processes,
//! create a pool and its stacks, connect the fleet and read the servers' memory once it
//! idles in long-poll, time dispatch one run at a time, then push many runs through at
//! once, and finally check that every run ran exactly once and ended FINISHED.

use std::collections::HashSet;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
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
use super::database::{DatabaseStats, FleetDatabase, PostgresCluster};
use super::launcher::{Ledger, Records, SimulatedLauncher};
use super::limits::raise_open_file_limit;
use super::server_process::{ServerProcess, Storage, gantry_binary};
use super::summary::{FleetMeasures, LatencySummary, PhaseCpu, ReplicaPaths};

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

/// A triggered run.
#[derive(Debug, Clone, Copy)]
struct Trigger {
    run_id: RunId,
    /// Just before its trigger request was sent.
    sent: Instant,
    /// The replica the trigger was sent to.
    replica: usize,
}

/// The fleet's shape and the work to push through it.
#[derive(Debug, Clone)]
pub struct FleetOptions {
    /// The servers' store.
    pub database: FleetDatabase,
    /// Server processes sharing the database (more than one needs PostgreSQL).
    pub replicas: usize,
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
    /// Load `pg_stat_statements` into the PostgreSQL cluster and time its WAL flushes,
    /// to report each phase's statements and flush times (PostgreSQL only).
    pub database_stats: bool,
}

impl Default for FleetOptions {
    fn default() -> Self {
        Self {
            database: FleetDatabase::Sqlite,
            replicas: 1,
            launchers: 100,
            slots: 10,
            latency_runs: 500,
            throughput_runs: 2000,
            stacks: 10,
            triggering_tasks: 32,
            keep_server_data: false,
            database_stats: false,
        }
    }
}

impl FleetOptions {
    /// A real launcher has 1 to 64 slots; every count must be at least one; replicas
    /// share a database only on PostgreSQL.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(self.replicas >= 1, "--replicas must be at least 1");
        anyhow::ensure!(
            self.replicas == 1 || self.database == FleetDatabase::Postgres,
            "--replicas {} needs --database postgres: replicas share one database, and an \
             SQLite database belongs to one server process",
            self.replicas
        );
        anyhow::ensure!(
            !self.database_stats || self.database == FleetDatabase::Postgres,
            "--database-stats reads PostgreSQL's statistics: it needs --database postgres"
        );
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

/// Runs the fleet benchmark against fresh `gantry server` processes (and a fresh
/// PostgreSQL cluster when asked). Their data directories and logs are kept (and named
/// on stderr) when it fails or when asked.
pub async fn fleet(options: &FleetOptions) -> anyhow::Result<FleetMeasures> {
    options.validate()?;
    raise_open_file_limit(options.launchers)?;
    gantry_testkit::install_crypto_provider();
    let binary = gantry_binary()?;
    let dir = tempfile::tempdir()?;
    let postgres = match options.database {
        FleetDatabase::Sqlite => None,
        FleetDatabase::Postgres => Some(start_postgres(dir.path(), options.database_stats).await?),
    };
    let mut logs = Vec::new();
    let measured = match start_servers(options, &binary, dir.path(), postgres.as_ref(), &mut logs)
        .await
    {
        Ok(servers) => {
            let measured = measure(options, &binary, dir.path(), &servers, postgres.as_ref()).await;
            let mut stopped = Ok(());
            for server in servers {
                stopped = stopped.and(server.stop().await);
            }
            measured.and_then(|measures| stopped.map(|()| measures))
        }
        Err(error) => Err(error),
    };
    let cluster_stopped = postgres.map_or(Ok(()), PostgresCluster::stop);
    if measured.is_err() || options.keep_server_data {
        let kept = dir.keep();
        progress(format_args!(
            "the servers' data is kept in {}, their logs in {}",
            kept.display(),
            logs.iter().map(|log| log.display().to_string()).collect::<Vec<_>>().join(", ")
        ));
    }
    let measures = measured?;
    cluster_stopped?;
    Ok(measures)
}

/// A durable PostgreSQL cluster in `dir/postgres`, and a database on it.
async fn start_postgres(dir: &Path, detailed: bool) -> anyhow::Result<PostgresCluster> {
    // Running as root, the cluster runs as `postgres`, which must reach its directory
    // through this one (a temporary directory is private to its owner).
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    let cluster_dir = dir.join("postgres");
    progress(format_args!(
        "starting a durable PostgreSQL cluster in {}{}",
        cluster_dir.display(),
        if detailed { ", with pg_stat_statements and timed WAL flushes" } else { "" }
    ));
    let started = Instant::now();
    let cluster = PostgresCluster::start(&cluster_dir, detailed).await?;
    progress(format_args!(
        "PostgreSQL ready in {:.1} s: postmaster pid {}, database {}",
        started.elapsed().as_secs_f64(),
        cluster.postmaster,
        cluster.database_url
    ));
    Ok(cluster)
}

/// The replicas, one after the other: the first creates the schema and the admin key,
/// the others find them. Their logs are named in `logs` as they start.
async fn start_servers(
    options: &FleetOptions,
    binary: &Path,
    dir: &Path,
    postgres: Option<&PostgresCluster>,
    logs: &mut Vec<PathBuf>,
) -> anyhow::Result<Vec<ServerProcess>> {
    let blob_dir = dir.join("blobs");
    let storage = match postgres {
        None => Storage::Sqlite,
        Some(cluster) => {
            Storage::Postgres { database_url: &cluster.database_url, blob_dir: &blob_dir }
        }
    };
    let mut servers = Vec::with_capacity(options.replicas);
    for replica in 0..options.replicas {
        let data_dir = match options.replicas {
            1 => dir.join("server"),
            _ => dir.join(format!("server-{replica}")),
        };
        logs.push(data_dir.with_extension("log"));
        let server = ServerProcess::start(binary, &data_dir, storage, replica == 0).await?;
        progress(format_args!(
            "server{} pid {} listening on {} ({})",
            match options.replicas {
                1 => String::new(),
                _ => format!(" replica {replica}"),
            },
            server.pid(),
            server.url,
            options.database
        ));
        servers.push(server);
    }
    Ok(servers)
}

async fn measure(
    options: &FleetOptions,
    binary: &Path,
    dir: &Path,
    servers: &[ServerProcess],
    postgres: Option<&PostgresCluster>,
) -> anyhow::Result<FleetMeasures> {
    let first = &servers[0];
    let admin_key = first.admin_key.clone().context("the first server printed no admin key")?;
    // An API client for each replica, for the triggers to alternate over them.
    let clients = servers
        .iter()
        .map(|server| {
            ApiClient::builder(server.url.clone())
                .api_key(admin_key.clone())
                .trust_ca_pem(server.ca_pem.clone())
                .build()
        })
        .collect::<Result<Vec<_>, _>>()?;
    let client = &clients[0];
    let config = create_pool(client, first, binary, dir).await?;
    let stacks = create_stacks(client, dir, options.stacks).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss = || servers.iter().map(ServerProcess::rss_kib).collect::<anyhow::Result<Vec<_>>>();
    let rss_before_kib = rss()?;

    let ledger = Arc::new(Ledger::default());
    let stop = CancellationToken::new();
    // Whatever fails from here on, the launchers stop with it rather than poll a server
    // that is being shut down.
    let _stop_launchers = stop.clone().drop_guard();
    let urls: Vec<&str> = servers.iter().map(|server| server.url.as_str()).collect();
    let launchers = connect_fleet(options, &config, &urls, &ledger, &stop).await?;
    tokio::time::sleep(SETTLE).await;
    let rss_idle_fleet_kib = rss()?;
    // Every replica sees the whole fleet, wherever each launcher polls.
    for client in &clients {
        check_fleet_idle(client, options).await?;
    }

    let probes = Probes { server_pids: servers.iter().map(ServerProcess::pid).collect(), postgres };
    let result = run_phases(options, &clients, &stacks, &ledger, &probes).await;
    let rss_end_kib = rss()?;
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
        database: options.database,
        replicas: options.replicas,
        launchers: options.launchers,
        slots: options.slots,
        stacks: options.stacks,
        triggering_tasks: options.triggering_tasks,
        idle_latency: phases.idle_latency,
        loaded_latency: phases.throughput.loaded_latency,
        idle_paths: phases.idle_paths,
        loaded_paths: phases.throughput.loaded_paths,
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
        latency_database: phases.latency_database,
        throughput_database: phases.throughput_database,
    })
}

/// What the timed phases found.
#[derive(Debug)]
struct Phases {
    idle_latency: LatencySummary,
    idle_paths: ReplicaPaths,
    latency_cpu: PhaseCpu,
    throughput: Throughput,
    throughput_cpu: PhaseCpu,
    /// Every run triggered, warm-up included.
    total_runs: usize,
    latency_database: Option<DatabaseStats>,
    throughput_database: Option<DatabaseStats>,
}

/// The processes whose CPU time the benchmark reads.
struct Probes<'a> {
    server_pids: Vec<i32>,
    postgres: Option<&'a PostgresCluster>,
}

/// CPU time of the servers, the database and this process, and the clock, at one
/// instant.
#[derive(Debug, Clone)]
struct CpuSample {
    at: Instant,
    servers: Vec<Duration>,
    database: Option<Duration>,
    load_generator: Duration,
}

impl CpuSample {
    fn now(probes: &Probes<'_>) -> anyhow::Result<Self> {
        Ok(Self {
            at: Instant::now(),
            servers: probes
                .server_pids
                .iter()
                .map(|pid| process_cpu_time(*pid))
                .collect::<anyhow::Result<_>>()?,
            database: probes.postgres.map(PostgresCluster::cpu_time).transpose()?,
            load_generator: own_cpu_time()?,
        })
    }

    fn since(self, earlier: &Self) -> PhaseCpu {
        PhaseCpu {
            wall: self.at.saturating_duration_since(earlier.at),
            servers: self
                .servers
                .iter()
                .zip(&earlier.servers)
                .map(|(now, before)| now.saturating_sub(*before))
                .collect(),
            database: self
                .database
                .zip(earlier.database)
                .map(|(now, before)| now.saturating_sub(before)),
            load_generator: self.load_generator.saturating_sub(earlier.load_generator),
        }
    }
}

async fn run_phases(
    options: &FleetOptions,
    clients: &[ApiClient],
    stacks: &[String],
    ledger: &Arc<Ledger>,
    probes: &Probes<'_>,
) -> anyhow::Result<Phases> {
    let mut triggered = Vec::new();
    let warm_up = latency_phase(clients, stacks, ledger, WARM_UP_RUNS).await?;
    triggered.extend(warm_up.iter().map(|trigger| trigger.run_id));

    reset_statistics(probes).await?;
    let before = CpuSample::now(probes)?;
    let timed = latency_phase(clients, stacks, ledger, options.latency_runs).await?;
    let latency_cpu = CpuSample::now(probes)?.since(&before);
    let latency_database = statistics(probes).await?;
    triggered.extend(timed.iter().map(|trigger| trigger.run_id));
    let idle_latency = latencies(ledger, &timed)?;
    let idle_paths = replica_paths(ledger, &timed)?;
    progress(format_args!(
        "latency phase: {} runs one at a time in {:.1} s",
        timed.len(),
        latency_cpu.wall.as_secs_f64()
    ));

    reset_statistics(probes).await?;
    let before = CpuSample::now(probes)?;
    let throughput = throughput_phase(options, clients, stacks, ledger).await?;
    let throughput_cpu = CpuSample::now(probes)?.since(&before);
    let throughput_database = statistics(probes).await?;
    progress(format_args!(
        "throughput phase: {} runs in {:.1} s",
        throughput.runs.len(),
        throughput.elapsed.as_secs_f64()
    ));
    triggered.extend(throughput.runs.iter().map(|trigger| trigger.run_id));
    verify(&clients[0], ledger, &triggered).await?;
    Ok(Phases {
        idle_latency,
        idle_paths,
        latency_cpu,
        throughput,
        throughput_cpu,
        total_runs: triggered.len(),
        latency_database,
        throughput_database,
    })
}

async fn reset_statistics(probes: &Probes<'_>) -> anyhow::Result<()> {
    match probes.postgres {
        Some(postgres) => postgres.reset_statistics().await,
        None => Ok(()),
    }
}

async fn statistics(probes: &Probes<'_>) -> anyhow::Result<Option<DatabaseStats>> {
    match probes.postgres {
        Some(postgres) => Ok(Some(postgres.statistics().await?)),
        None => Ok(None),
    }
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

/// Connects every launcher (a bounded number at a time; launcher i to the replica at
/// `urls[i % urls.len()]`) and starts its heartbeat and long-poll; returns once every
/// launcher has started polling.
async fn connect_fleet(
    options: &FleetOptions,
    config: &LauncherConfig,
    urls: &[&str],
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
            let replica = index % urls.len();
            let url = urls[replica];
            async move {
                let launcher = SimulatedLauncher::connect(&config, url, replica, options.slots)
                    .await
                    .with_context(|| format!("launcher {index} could not connect to {url}"))?;
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
/// finished, on the replicas in turn.
async fn latency_phase(
    clients: &[ApiClient],
    stacks: &[String],
    ledger: &Ledger,
    runs: usize,
) -> anyhow::Result<Vec<Trigger>> {
    let request = proposed()?;
    let mut triggered = Vec::with_capacity(runs);
    for index in 0..runs {
        let replica = index % clients.len();
        let sent = Instant::now();
        let run_id = trigger(&clients[replica], &stacks[index % stacks.len()], &request).await?;
        triggered.push(Trigger { run_id, sent, replica });
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
fn latencies(ledger: &Ledger, runs: &[Trigger]) -> anyhow::Result<LatencySummary> {
    LatencySummary::of(samples(&ledger.records(), runs.iter())?).context("no runs were timed")
}

fn samples<'a>(
    records: &Records,
    runs: impl Iterator<Item = &'a Trigger>,
) -> anyhow::Result<Vec<Duration>> {
    runs.map(|trigger| {
        let received = records
            .received
            .get(&trigger.run_id)
            .with_context(|| format!("run {} was never received", trigger.run_id))?;
        Ok(received.saturating_duration_since(trigger.sent))
    })
    .collect()
}

/// The latencies of the runs delivered by the replica they were triggered on, and of
/// those delivered by another (the cross-replica path: a notification through the
/// database woke the other replica's long-poll).
fn replica_paths(ledger: &Ledger, runs: &[Trigger]) -> anyhow::Result<ReplicaPaths> {
    let records = ledger.records();
    let on_trigger_replica =
        |trigger: &Trigger| records.received_from.get(&trigger.run_id) == Some(&trigger.replica);
    let (same, cross): (Vec<&Trigger>, Vec<&Trigger>) =
        runs.iter().partition(|trigger| on_trigger_replica(trigger));
    Ok(ReplicaPaths {
        same_replica: LatencySummary::of(samples(&records, same.into_iter())?),
        cross_replica: LatencySummary::of(samples(&records, cross.into_iter())?),
    })
}

#[derive(Debug)]
struct Throughput {
    runs: Vec<Trigger>,
    elapsed: Duration,
    triggering_elapsed: Duration,
    loaded_latency: LatencySummary,
    loaded_paths: ReplicaPaths,
}

/// `throughput_runs` runs triggered by concurrent tasks over all stacks and, in turn,
/// all replicas, timed from the first trigger to the last `finish` a launcher received.
async fn throughput_phase(
    options: &FleetOptions,
    clients: &[ApiClient],
    stacks: &[String],
    ledger: &Ledger,
) -> anyhow::Result<Throughput> {
    let request = Arc::new(proposed()?);
    let next = Arc::new(AtomicUsize::new(0));
    let stacks: Arc<[String]> = stacks.into();
    let start = Instant::now();
    let tasks: Vec<JoinHandle<anyhow::Result<Vec<Trigger>>>> = (0..options.triggering_tasks)
        .map(|_| {
            let clients = clients.to_vec();
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
                    let replica = index % clients.len();
                    let sent = Instant::now();
                    let stack = &stacks[index % stacks.len()];
                    let run_id = trigger(&clients[replica], stack, &request).await?;
                    triggered.push(Trigger { run_id, sent, replica });
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

    let ids: HashSet<RunId> = runs.iter().map(|trigger| trigger.run_id).collect();
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
        loaded_paths: replica_paths(ledger, &runs)?,
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
