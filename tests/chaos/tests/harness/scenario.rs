//! One chaos scenario: a server (SQLite) or two replicas (PostgreSQL), a pool served by a
//! process launcher and a docker launcher through the partitionable agent proxy, stacks
//! with a dependency; a load of tracked runs and tasks under seeded random faults; then
//! every fault healed, the runs left to settle, everything observed and checked.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use base64::Engine as _;
use gantry_chaos::faults::{FaultKind, Rng};
use gantry_chaos::figures::percentile;
use gantry_chaos::invariants::{
    Invariant, Observed, RunKind, RunRecord, StateVersionRecord, Tally, Violation, WorkerRecord,
    check, is_terminal,
};
use gantry_chaos::journal::parse_journal;
use gantry_chaos::script::run_script;
use gantry_testkit::{GitRepository, KeyKind, OpensslKey, runner_image};
use serde_json::Value;

use super::processes::{Cli, Program, Server, bin};
use super::proxy::{AgentProxy, Partition};

/// Numbered lines each execution prints, and the pause between them.
const LINES: u32 = 8;
const PAUSE: &str = "0.1";
/// How long the CLI keeps trying while replicas are down.
const PATIENCE: Duration = Duration::from_secs(120);
/// How long runs get to end once every fault is healed.
const SETTLE: Duration = Duration::from_secs(120);

/// Where the server keeps its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Database {
    /// One server on a SQLite file: its "replica" kills are server crashes.
    Sqlite,
    /// Two replicas on a PostgreSQL cluster of the scenario's own.
    Postgres,
}

/// What the scenario runs with.
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    pub(crate) seed: u64,
    /// Runs the load triggers (dependencies trigger more).
    pub(crate) runs: usize,
    pub(crate) faults: Vec<FaultKind>,
}

/// One injected fault.
#[derive(Debug, Clone)]
struct Fault {
    kind: FaultKind,
    target: String,
    /// When it was injected, from the scenario's start.
    at: Duration,
}

/// A run that was executing on a launcher when it was killed.
#[derive(Debug, Clone)]
struct Orphaned {
    run: String,
    killed_at: SystemTime,
}

/// What a scenario found.
pub(crate) struct Report {
    pub(crate) violations: Vec<Violation>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Executor {
    Process,
    Docker,
}

struct Launcher {
    program: Program,
    executor: Executor,
}

/// The parts faults act on.
struct World {
    servers: Vec<Server>,
    launchers: Vec<Launcher>,
    postgres: Option<gantry_test_postgres::Cluster>,
}

struct StackSpec {
    name: &'static str,
    upstream: Option<&'static str>,
}

const STACKS: [StackSpec; 4] = [
    StackSpec { name: "net", upstream: None },
    StackSpec { name: "app", upstream: Some("net") },
    StackSpec { name: "db", upstream: None },
    StackSpec { name: "jobs", upstream: None },
];

fn free_address() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn make_dir(path: &Path, mode: u32) -> PathBuf {
    std::fs::create_dir_all(path).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    path.to_path_buf()
}

fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A tracked run's configuration: every plan replaces the resource, whose provisioner
/// executes the script during the apply.
fn tracked_config(journal: &Path) -> String {
    let script = run_script(&journal.display().to_string(), LINES, PAUSE);
    format!(
        r#"variable "upstream_stamp" {{
  type    = string
  default = ""
}}

resource "terraform_data" "chaos" {{
  triggers_replace = timestamp()
  input            = var.upstream_stamp
  provisioner "local-exec" {{
    command = <<-EOT
      {script}
    EOT
  }}
}}

output "stamp" {{
  value = terraform_data.chaos.id
}}
"#
    )
}

pub(crate) fn run(name: &str, database: Database, settings: &Settings) -> Report {
    let started = Instant::now();
    let root = tempfile::Builder::new().prefix("gantry-chaos-").tempdir().unwrap();
    let root_path = make_dir(root.path(), 0o755);
    let logs = make_dir(&root_path.join("logs"), 0o755);
    let journals = make_dir(&root_path.join("journal"), 0o777);
    eprintln!("chaos {name}: seed {}, files in {}", settings.seed, root_path.display());

    let postgres = (database == Database::Postgres).then(|| {
        gantry_test_postgres::Cluster::start(
            &root_path.join("postgres"),
            gantry_test_postgres::Durability::Throwaway,
        )
        .expect("the scenario's PostgreSQL cluster starts")
    });
    let database_url = postgres.as_ref().map(|cluster| {
        tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(gantry_test_postgres::create_database(&cluster.url()))
    });
    let replicas = if database == Database::Postgres { 2 } else { 1 };
    let addresses: Vec<SocketAddr> = (0..replicas).map(|_| free_address()).collect();
    let proxy = Arc::new(AgentProxy::start(addresses.clone()));
    let blobs = root_path.join("blobs").display().to_string();
    let master_key = gantry_crypto::MasterKey::generate().to_base64();
    let mut server_env = env(&[
        ("GANTRY_SERVER_PUBLIC_URL", &proxy.url()),
        ("GANTRY_SERVER_HEARTBEAT_INTERVAL", "1s"),
        ("GANTRY_SERVER_WORKER_TIMEOUT", "5s"),
        ("GANTRY_SERVER_WORKER_LEASE", "3s"),
        ("GANTRY_SERVER_WORKER_LEASE_GRACE", "2s"),
        ("GANTRY_SERVER_LOG_ARCHIVE_AFTER", "2s"),
        ("GANTRY_SERVER_STATE_VERSIONS", "1000"),
        ("GANTRY_SERVER_SHARED_WORKERS", "0"),
        ("GANTRY_SERVER_BLOB_STORE", &blobs),
        ("GANTRY_SERVER_MASTER_KEY", &master_key),
    ]);
    if let Some(url) = &database_url {
        server_env.push(("GANTRY_SERVER_DATABASE".into(), url.clone()));
    }
    let mut servers: Vec<Server> = addresses
        .iter()
        .enumerate()
        .map(|(index, address)| {
            let data_dir = root_path.join(format!("replica-{index}"));
            Server::new(&format!("replica-{index}"), &data_dir, *address, &server_env, &logs)
        })
        .collect();
    let admin_key = servers[0].start().expect("a first start prints the admin key");
    for server in &mut servers[1..] {
        server.start();
    }
    let cli = Arc::new(Cli::new(
        servers.iter().map(Server::url).collect(),
        &admin_key,
        &servers[0].data_dir.join("server-ca.pem"),
        &root_path,
    ));

    let key = OpensslKey::generate(&root_path, "chaos", KeyKind::P256);
    let csr = key.key_path.with_extension("csr").display().to_string();
    let pool = cli.json(&["pool", "create", "--name", "chaos", "--csr", &csr], PATIENCE).unwrap();
    let token = pool["token"].as_str().expect("the pool's token").to_owned();
    let pool_key = base64::engine::general_purpose::STANDARD.encode(&key.key_pem);

    let journal_of = |stack: &str| journals.join(format!("{stack}.journal"));
    for stack in &STACKS {
        let journal = journal_of(stack.name);
        std::fs::write(&journal, "").unwrap();
        std::fs::set_permissions(&journal, std::fs::Permissions::from_mode(0o666)).unwrap();
        let repository = GitRepository::create(
            &root_path.join("repos").join(stack.name),
            &[("infra/main.tf", &tracked_config(&journal))],
        );
        let url = repository.url();
        let create = [
            "stack",
            "create",
            "--name",
            stack.name,
            "--repository",
            &url,
            "--project-root",
            "infra",
            "--pool",
            "chaos",
            "--autodeploy",
            "--managed-state",
        ];
        cli.text(&create, PATIENCE).unwrap();
        if let Some(upstream) = stack.upstream {
            let depend = [
                "stack",
                "depend",
                stack.name,
                "--on",
                upstream,
                "--reference",
                "stamp=TF_VAR_upstream_stamp",
                "--trigger-always",
            ];
            cli.text(&depend, PATIENCE).unwrap();
        }
    }

    let worker = bin("gantry-worker");
    let image = runner_image(&worker);
    let mount = format!("{0}:{0}", journals.display());
    let launchers: Vec<Launcher> = [("process", Executor::Process), ("docker", Executor::Docker)]
        .into_iter()
        .map(|(kind, executor)| {
            let launcher_name = format!("launcher-{kind}");
            let work_dir = make_dir(&root_path.join(&launcher_name), 0o755);
            let mut settings = env(&[
                ("GANTRY_TOKEN", &token),
                ("GANTRY_POOL_PRIVATE_KEY", &pool_key),
                ("GANTRY_WORKER_BINARY", &worker.display().to_string()),
                ("GANTRY_LAUNCHER_WORK_DIR", &work_dir.display().to_string()),
                ("GANTRY_LAUNCHER_EXECUTOR", kind),
                ("GANTRY_LAUNCHER_WORKER_SLOTS", "2"),
                ("GANTRY_LAUNCHER_SHUTDOWN_GRACE", "5s"),
                ("GANTRY_METADATA_CHAOS", &launcher_name),
            ]);
            if executor == Executor::Docker {
                settings.extend(env(&[
                    ("GANTRY_DEFAULT_RUNNER_IMAGE", image),
                    ("GANTRY_WORKER_EXTRA_MOUNTS", &mount),
                ]));
            }
            let program =
                Program::new(&launcher_name, bin("gantry-launcher"), &[], &settings, &logs);
            Launcher { program, executor }
        })
        .collect();
    let world = Arc::new(Mutex::new(World { servers, launchers, postgres }));
    for launcher in &mut world.lock().unwrap().launchers {
        launcher.program.start();
    }

    // The dependent stack reads an output of its upstream: one finished run of the
    // upstream first, so that the dependent's runs have an input to read.
    let first = cli.json(&["run", "trigger", "net"], PATIENCE).unwrap();
    let first_id = first["id"].as_str().expect("a run id").to_owned();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let run = cli.json(&["run", "show", &first_id], PATIENCE).unwrap_or_default();
        if is_terminal(run_state(&run)) {
            assert_eq!(
                run_state(&run),
                "FINISHED",
                "the first run of net, before any fault: {run}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "the first run of net never ended: {run}");
        std::thread::sleep(Duration::from_millis(500));
    }

    // The load and the faults.
    let mut rng = Rng::new(settings.seed);
    let stop = Arc::new(AtomicBool::new(false));
    let injected: Arc<Mutex<Vec<Fault>>> = Arc::default();
    let orphaned: Arc<Mutex<Vec<Orphaned>>> = Arc::default();
    let kinds: Vec<FaultKind> = settings
        .faults
        .iter()
        .copied()
        .filter(|kind| *kind != FaultKind::RestartPostgres || database == Database::Postgres)
        .collect();
    let faults = {
        let (world, proxy, cli, stop) =
            (Arc::clone(&world), Arc::clone(&proxy), Arc::clone(&cli), Arc::clone(&stop));
        let (injected, orphaned) = (Arc::clone(&injected), Arc::clone(&orphaned));
        let mut rng = rng.fork();
        let root = root_path.clone();
        std::thread::spawn(move || {
            while !kinds.is_empty() && !pause(&stop, Duration::from_millis(rng.between(1500, 4000)))
            {
                let kind = *rng.pick(&kinds);
                let at = started.elapsed();
                let fault = inject(kind, &mut rng, &world, &proxy, &cli, &root, &stop, &orphaned);
                if let Some(target) = fault {
                    injected.lock().unwrap().push(Fault { kind, target, at });
                }
            }
        })
    };

    // Under a machine busy with other tests runs take longer: the load stops at its
    // budget whatever it reached, so that the suite stays within the test command's time.
    let budget = Duration::from_secs(240.max(settings.runs as u64 * 2));
    let mut triggered = 0;
    while triggered < settings.runs && started.elapsed() < budget {
        let live = list_runs(&cli, 20).iter().filter(|run| !is_terminal(run_state(run))).count();
        if live >= STACKS.len() + 2 {
            std::thread::sleep(Duration::from_millis(500));
            continue;
        }
        let stack = rng.pick(&STACKS).name;
        let created = if rng.below(2) == 0 {
            cli.json(&["run", "trigger", stack], PATIENCE)
        } else {
            let script = run_script(&journal_of(stack).display().to_string(), LINES, PAUSE);
            cli.json(&["run", "task", stack, "--", &script], PATIENCE)
        };
        if let Err(error) = created {
            eprintln!("chaos {name}: a trigger failed: {error}");
        }
        triggered += 1;
    }
    stop.store(true, Ordering::Relaxed);
    faults.join().expect("the fault thread ends");
    eprintln!(
        "chaos {name}: {triggered} runs triggered in {:?}; faults stopped, waiting for the runs to end",
        started.elapsed()
    );

    // Everything back, then the runs settle.
    proxy.set(Partition::Healed);
    {
        let mut world = world.lock().unwrap();
        if let Some(postgres) = &world.postgres {
            let _ = postgres.start_again();
        }
        for server in world.servers.iter_mut().filter(|server| !server.program.is_running()) {
            server.start();
        }
        for launcher in world.launchers.iter_mut().filter(|l| !l.program.is_running()) {
            launcher.program.start();
        }
    }
    let deadline = Instant::now() + SETTLE;
    while Instant::now() < deadline
        && list_runs(&cli, 100_000).iter().any(|run| !is_terminal(run_state(run)))
    {
        std::thread::sleep(Duration::from_secs(1));
    }

    // What the server recorded.
    let listed = list_runs(&cli, 100_000);
    let runs: Vec<RunRecord> = listed
        .iter()
        .map(|run| {
            let id = run["id"].as_str().unwrap_or_default().to_owned();
            let log = cli
                .text(&["run", "logs", &id, "--color", "never"], PATIENCE)
                .unwrap_or_else(|error| format!("(the log could not be read: {error})"));
            RunRecord {
                stack: run["stack_name"].as_str().unwrap_or_default().to_owned(),
                kind: match run["type"].as_str() {
                    Some("TASK") => RunKind::Task,
                    Some("PROPOSED") => RunKind::Proposed,
                    _ => RunKind::Tracked,
                },
                state: run_state(run).to_owned(),
                history: run["history"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .map(|change| change["state"].as_str().unwrap_or_default().to_owned())
                    .collect(),
                has_changes: run["has_changes"].as_bool(),
                log,
                id,
            }
        })
        .collect();
    let mut state_versions = BTreeMap::new();
    for stack in &STACKS {
        let list = cli.json(&["stack", "state", "list", stack.name], PATIENCE).unwrap_or_default();
        let versions = list["versions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|version| StateVersionRecord {
                version: version["version"].as_u64().unwrap_or_default(),
                run_id: version["run_id"].as_str().unwrap_or_default().to_owned(),
                orphaned: version["orphaned"].as_bool().unwrap_or(false),
            })
            .collect();
        state_versions.insert(stack.name.to_owned(), versions);
    }
    let workers = list_workers(&cli)
        .iter()
        .map(|worker| WorkerRecord {
            id: worker["id"].as_str().unwrap_or_default().to_owned(),
            busy: worker["busy"].as_bool().unwrap_or(false) || worker["status"] == "BUSY",
            current_run: worker["current_run_id"].as_str().map(str::to_owned),
        })
        .collect();

    // The launchers stop; what they leave behind is a leak.
    let server_pids: Vec<u32> = {
        let mut world = world.lock().unwrap();
        for launcher in &mut world.launchers {
            if !launcher.program.terminate(Duration::from_secs(30)) {
                eprintln!("chaos {name}: {} did not stop on SIGTERM", launcher.program.name);
            }
        }
        world.servers.iter().filter_map(|server| server.program.pid()).collect()
    };
    std::thread::sleep(Duration::from_secs(2));
    let leftover_containers = containers_under(&root_path, true);
    let leftover_processes = processes_under(&root_path, &server_pids);

    let journals = STACKS
        .iter()
        .map(|stack| {
            let text = std::fs::read_to_string(journal_of(stack.name)).unwrap_or_default();
            let entries = parse_journal(&text).unwrap_or_else(|error| {
                panic!("the journal of {} is unreadable: {error}", stack.name)
            });
            (stack.name.to_owned(), entries)
        })
        .collect();
    let observed = Observed {
        runs,
        journals,
        state_versions,
        workers,
        leftover_containers,
        leftover_processes,
    };
    let (violations, tally) = check(&observed);
    let injected = injected.lock().unwrap().clone();
    let orphaned = orphaned.lock().unwrap().clone();
    print_report(
        name,
        database,
        settings,
        started.elapsed(),
        &injected,
        &tally,
        &violations,
        &listed,
        &orphaned,
    );
    if !violations.is_empty() {
        // Keep the directory (logs of every process, journals) for the post-mortem.
        let kept = root.keep();
        eprintln!("chaos {name}: files kept in {}", kept.display());
    }
    for container in containers_under(&root_path, true) {
        let _ = Command::new("docker").args(["rm", "-f", &container]).output();
    }
    Report { violations }
}

/// Sleeps up to `duration`; true when asked to stop meanwhile.
fn pause(stop: &AtomicBool, duration: Duration) -> bool {
    let deadline = Instant::now() + duration;
    while Instant::now() < deadline {
        if stop.load(Ordering::Relaxed) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    stop.load(Ordering::Relaxed)
}

/// Injects one fault of `kind` and heals it; `None` when there was nothing to hit (no
/// worker running at that moment).
#[allow(clippy::too_many_arguments)]
fn inject(
    kind: FaultKind,
    rng: &mut Rng,
    world: &Mutex<World>,
    proxy: &AgentProxy,
    cli: &Cli,
    root: &Path,
    stop: &AtomicBool,
    orphaned: &Mutex<Vec<Orphaned>>,
) -> Option<String> {
    let hold = |rng: &mut Rng, low, high| Duration::from_millis(rng.between(low, high));
    match kind {
        FaultKind::KillReplica => {
            let index = {
                let mut world = world.lock().unwrap();
                let index = rng.below(world.servers.len() as u64) as usize;
                world.servers[index].program.kill();
                index
            };
            let _ = pause(stop, hold(rng, 1000, 5000));
            let mut world = world.lock().unwrap();
            world.servers[index].start();
            Some(world.servers[index].program.name.clone())
        }
        FaultKind::RestartPostgres => {
            world.lock().unwrap().postgres.as_ref()?.crash().expect("PostgreSQL stops");
            let down = hold(rng, 1000, 6000);
            let _ = pause(stop, down);
            world.lock().unwrap().postgres.as_ref()?.start_again().expect("PostgreSQL starts");
            Some(format!("down {down:?}"))
        }
        FaultKind::KillLauncher => {
            let index = rng.below(world.lock().unwrap().launchers.len() as u64) as usize;
            let name = world.lock().unwrap().launchers[index].program.name.clone();
            // The runs it executes, as the server sees them, for the time to failure.
            let busy: Vec<String> = list_workers_within(cli, Duration::from_secs(5))
                .iter()
                .filter(|worker| {
                    worker["metadata"]
                        .as_object()
                        .is_some_and(|tags| tags.values().any(|v| *v == name.as_str()))
                })
                .filter_map(|worker| worker["current_run_id"].as_str().map(str::to_owned))
                .collect();
            world.lock().unwrap().launchers[index].program.kill();
            let killed_at = SystemTime::now();
            orphaned
                .lock()
                .unwrap()
                .extend(busy.into_iter().map(|run| Orphaned { run, killed_at }));
            let _ = pause(stop, hold(rng, 1000, 10_000));
            world.lock().unwrap().launchers[index].program.start();
            Some(name)
        }
        FaultKind::KillWorker => {
            let launchers: Vec<u32> = world
                .lock()
                .unwrap()
                .launchers
                .iter()
                .filter(|launcher| launcher.executor == Executor::Process)
                .filter_map(|launcher| launcher.program.pid())
                .collect();
            let workers = worker_processes(&launchers);
            if workers.is_empty() {
                return None;
            }
            let pid = *rng.pick(&workers);
            super::processes::signal(pid, "KILL");
            Some(format!("gantry-worker {pid}"))
        }
        FaultKind::KillContainer => {
            let containers = containers_under(root, false);
            if containers.is_empty() {
                return None;
            }
            let container = rng.pick(&containers).clone();
            let _ = Command::new("docker").args(["kill", &container]).output();
            Some(container)
        }
        FaultKind::DropAgentConnections | FaultKind::StallAgentConnections => {
            let partition = if kind == FaultKind::DropAgentConnections {
                Partition::Dropping
            } else {
                Partition::Stalling
            };
            proxy.set(partition);
            let held = hold(rng, 1000, 8000);
            let _ = pause(stop, held);
            proxy.set(Partition::Healed);
            Some(format!("for {held:?}"))
        }
    }
}

fn run_state(run: &Value) -> &str {
    run["state"].as_str().unwrap_or("UNKNOWN")
}

/// The newest `limit` runs of every stack.
fn list_runs(cli: &Cli, limit: usize) -> Vec<Value> {
    let limit = limit.to_string();
    STACKS
        .iter()
        .flat_map(|stack| {
            let listed = cli
                .json(&["run", "list", "--stack", stack.name, "--limit", &limit], PATIENCE)
                .unwrap_or_default();
            let runs = if listed.is_array() { listed } else { listed["runs"].clone() };
            runs.as_array().cloned().unwrap_or_default()
        })
        .collect()
}

fn list_workers(cli: &Cli) -> Vec<Value> {
    list_workers_within(cli, PATIENCE)
}

fn list_workers_within(cli: &Cli, patience: Duration) -> Vec<Value> {
    let listed = cli.json(&["worker", "list"], patience).unwrap_or_default();
    let workers = if listed.is_array() { listed } else { listed["workers"].clone() };
    workers.as_array().cloned().unwrap_or_default()
}

/// `gantry-worker` processes whose parent is one of `launchers`.
fn worker_processes(launchers: &[u32]) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else { continue };
        let Some((head, rest)) = stat.rsplit_once(") ") else { continue };
        let comm = head.split_once(" (").map_or("", |(_, comm)| comm);
        let parent = rest.split_whitespace().nth(1).and_then(|ppid| ppid.parse::<u32>().ok());
        if comm == "gantry-worker" && parent.is_some_and(|parent| launchers.contains(&parent)) {
            found.push(pid);
        }
    }
    found
}

/// Run containers of this scenario's launchers (labelled with a work directory under
/// `root`): running ones, or all with `all`.
fn containers_under(root: &Path, all: bool) -> Vec<String> {
    let mut args = vec![
        "ps",
        "--format",
        "{{.ID}} {{.Label \"dev.gantry.work-dir\"}} {{.Label \"dev.gantry.run\"}} {{.Status}}",
    ];
    if all {
        args.push("-a");
    }
    let Ok(output) = Command::new("docker").args(&args).output() else { return Vec::new() };
    let root = root.display().to_string();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.split_whitespace().nth(1).is_some_and(|dir| dir.starts_with(&root)))
        .filter_map(|line| {
            if all {
                Some(line.to_owned())
            } else {
                line.split_whitespace().next().map(str::to_owned)
            }
        })
        .collect()
}

/// Processes other than the servers and PostgreSQL whose command line or working
/// directory is under `root`: workers and scripts that outlived their launcher.
fn processes_under(root: &Path, servers: &[u32]) -> Vec<String> {
    let root = root.display().to_string();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else { continue };
        if pid == std::process::id() || servers.contains(&pid) {
            continue;
        }
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim() == "postgres" {
            continue;
        }
        let cmdline = std::fs::read(entry.path().join("cmdline"))
            .map(|bytes| String::from_utf8_lossy(&bytes).replace('\0', " "))
            .unwrap_or_default();
        let cwd = std::fs::read_link(entry.path().join("cwd"))
            .map(|path| path.display().to_string())
            .unwrap_or_default();
        if cmdline.contains(&root) || cwd.starts_with(&root) {
            found.push(format!("{pid} {} (cwd {cwd}): {}", comm.trim(), cmdline.trim()));
        }
    }
    found
}

#[allow(clippy::too_many_arguments)]
fn print_report(
    name: &str,
    database: Database,
    settings: &Settings,
    took: Duration,
    injected: &[Fault],
    tally: &Tally,
    violations: &[Violation],
    listed: &[Value],
    orphaned: &[Orphaned],
) {
    let mut by_kind: BTreeMap<&str, usize> = BTreeMap::new();
    for fault in injected {
        *by_kind.entry(fault.kind.name()).or_default() += 1;
    }
    let enabled: Vec<&str> = settings.faults.iter().map(|kind| kind.name()).collect();
    let mut report = format!(
        "\n=== chaos {name} ({database:?}, seed {}) in {took:.0?}\n\
         faults enabled: {}\nfaults injected: {} {by_kind:?}\n\
         runs: {} {:?}\nexecutions journaled: {} ({} in no run's log)\nnumbered log lines read back: {}\n\
         state versions: {} ({} orphaned)\n",
        settings.seed,
        enabled.join(","),
        injected.len(),
        tally.runs,
        tally.runs_by_state,
        tally.executions_journaled,
        tally.executions_unattributed,
        tally.numbered_log_lines,
        tally.state_versions,
        tally.orphaned_state_versions,
    );
    // Time from a launcher's kill to the server failing the runs it executed, from the
    // FAILED entry of each run's history.
    let mut latencies = Vec::new();
    let mut other_ends: BTreeMap<String, usize> = BTreeMap::new();
    for orphan in orphaned {
        let Some(run) = listed.iter().find(|run| run["id"] == orphan.run.as_str()) else {
            continue;
        };
        let failed_at = run["history"].as_array().into_iter().flatten().find_map(|change| {
            (change["state"] == "FAILED").then(|| change["at"].as_str()).flatten()
        });
        match failed_at.and_then(parse_rfc3339) {
            Some(at) => latencies.push(at.duration_since(orphan.killed_at).unwrap_or_default()),
            None => *other_ends.entry(run_state(run).to_owned()).or_default() += 1,
        }
    }
    report.push_str(&format!(
        "runs executing on a killed launcher: {} failed (p50 {:?}, p99 {:?} after the kill), others ended {other_ends:?}\n",
        latencies.len(),
        percentile(&latencies, 50),
        percentile(&latencies, 99),
    ));
    let mut failures: BTreeMap<String, usize> = BTreeMap::new();
    for run in listed {
        if let Some(failure) = run["failure"].as_str() {
            // Ids and durations differ between runs: keep the words.
            let words: String = failure
                .split_whitespace()
                .filter(|word| !word.chars().any(|c| c.is_ascii_digit()))
                .take(12)
                .collect::<Vec<_>>()
                .join(" ");
            *failures.entry(words).or_default() += 1;
        }
    }
    for (failure, count) in &failures {
        report.push_str(&format!("  failed {count}×: {failure}\n"));
    }
    let dependency_runs = listed
        .iter()
        .filter(|run| run["triggered_by"].as_str().is_some_and(|by| by.starts_with("dependency")))
        .count();
    report.push_str(&format!("runs triggered by a dependency: {dependency_runs}\n"));
    for invariant in Invariant::ALL {
        let count = violations.iter().filter(|v| v.invariant == invariant).count();
        let verdict = if count == 0 { "held".to_owned() } else { format!("VIOLATED {count}×") };
        report.push_str(&format!("  {verdict:>14}  {}\n", invariant.describe()));
    }
    for violation in violations {
        report.push_str(&format!("  - {violation}\n"));
    }
    if !violations.is_empty() {
        report.push_str("faults, in order:\n");
        for fault in injected {
            report.push_str(&format!("  {:>8.1?}  {}  {}\n", fault.at, fault.kind, fault.target));
        }
        let faults: Vec<&str> = settings.faults.iter().map(|kind| kind.name()).collect();
        report.push_str(&format!(
            "replay: GANTRY_CHAOS_SEED={} GANTRY_CHAOS_RUNS={} GANTRY_CHAOS_FAULTS={} cargo nextest run -p gantry-chaos -E 'test(/{name}/)'\n",
            settings.seed,
            settings.runs,
            if faults.is_empty() { "none".to_owned() } else { faults.join(",") },
        ));
    }
    eprintln!("{report}");
}

/// `2026-12-02T17:39:39.123Z` as a point in time.
fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let parsed =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    let nanos = u64::try_from(parsed.unix_timestamp_nanos()).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(nanos))
}
