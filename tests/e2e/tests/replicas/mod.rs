//! Several `gantry server` replicas on one PostgreSQL database, behind a TCP load
//! balancer, as a deployment runs them: runs executed exactly once with complete logs
//! whichever replica serves whom, and launchers carrying on through the survivor when a
//! replica is killed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_testkit::{GitRepository, KeyKind, OpensslKey};
use serde_json::Value;

use crate::harness::{Gantry, Launcher, PoolAccess, ServerProcess, base64_of, free_port};

/// A configuration with nothing to create: a task's `init` takes a fraction of a second.
const EMPTY_CONFIG: &str = "terraform {\n  backend \"local\" {}\n}\n";

/// Forwards each TCP connection to the next live replica, in turn: what a TCP (TLS
/// passthrough) load balancer in front of the replicas does.
struct LoadBalancer {
    address: SocketAddr,
    /// Replicas the balancer no longer sends to (killed).
    down: Arc<Mutex<Vec<SocketAddr>>>,
    /// Connections forwarded to each replica.
    forwarded: Arc<Mutex<BTreeMap<SocketAddr, usize>>>,
    stop: Arc<AtomicBool>,
}

impl LoadBalancer {
    fn start(backends: Vec<SocketAddr>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let down: Arc<Mutex<Vec<SocketAddr>>> = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let forwarded = Arc::new(Mutex::new(BTreeMap::new()));
        let (balancer_down, balancer_stop) = (Arc::clone(&down), Arc::clone(&stop));
        let counts = Arc::clone(&forwarded);
        std::thread::spawn(move || {
            let runtime =
                tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let next = AtomicUsize::new(0);
                while !balancer_stop.load(Ordering::Relaxed) {
                    let accepted =
                        tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
                    let Ok(Ok((mut client, _))) = accepted else { continue };
                    let start = next.fetch_add(1, Ordering::Relaxed);
                    let live: Vec<SocketAddr> = {
                        let down = balancer_down.lock().unwrap();
                        backends.iter().filter(|b| !down.contains(*b)).copied().collect()
                    };
                    let counts = Arc::clone(&counts);
                    tokio::spawn(async move {
                        for attempt in 0..live.len() {
                            let backend = live[(start + attempt) % live.len()];
                            if let Ok(mut server) = tokio::net::TcpStream::connect(backend).await {
                                *counts.lock().unwrap().entry(backend).or_insert(0) += 1;
                                let _ =
                                    tokio::io::copy_bidirectional(&mut client, &mut server).await;
                                return;
                            }
                        }
                    });
                }
            });
        });
        Self { address, down, forwarded, stop }
    }

    fn forwarded_to(&self, backend: SocketAddr) -> usize {
        self.forwarded.lock().unwrap().get(&backend).copied().unwrap_or(0)
    }

    fn url(&self) -> String {
        format!("https://{}", self.address)
    }

    /// Stops sending new connections to `backend`, as a health check would.
    fn mark_down(&self, backend: SocketAddr) {
        self.down.lock().unwrap().push(backend);
    }
}

impl Drop for LoadBalancer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Replicas sharing a database and a blob directory; launchers reach them through one
/// balancer, the CLI each directly (`clis[i]` talks to replica `i`).
struct Replicas {
    servers: Vec<Option<ServerProcess>>,
    addresses: Vec<SocketAddr>,
    balancer: LoadBalancer,
    clis: Vec<Gantry>,
    dir: tempfile::TempDir,
}

impl Replicas {
    /// `None` when no PostgreSQL cluster is available outside CI (the reason is printed).
    fn start(count: usize) -> Option<Self> {
        let database = tokio::runtime::Runtime::new()
            .unwrap()
            .block_on(gantry_test_postgres::fresh_database())?;
        let dir = tempfile::tempdir().unwrap();
        let addresses: Vec<SocketAddr> =
            (0..count).map(|_| format!("127.0.0.1:{}", free_port()).parse().unwrap()).collect();
        let balancer = LoadBalancer::start(addresses.clone());
        let blobs = dir.path().join("blobs").display().to_string();
        let public_url = balancer.url();
        // Replicas share the key that seals the server's secrets, as they share the
        // database.
        let master_key = gantry_crypto::MasterKey::generate().to_base64();
        let mut servers = Vec::new();
        for (index, address) in addresses.iter().enumerate() {
            let settings = [
                ("GANTRY_SERVER_DATABASE", database.as_str()),
                ("GANTRY_SERVER_BLOB_STORE", blobs.as_str()),
                ("GANTRY_SERVER_PUBLIC_URL", public_url.as_str()),
                ("GANTRY_SERVER_MASTER_KEY", master_key.as_str()),
                // The replicas' own launchers would run runs too: keep every run on the
                // pool under test.
                ("GANTRY_SERVER_SHARED_WORKERS", "0"),
                // Logs move to the blob store a second after their run ends: the tests
                // read them back from there.
                ("GANTRY_SERVER_LOG_ARCHIVE_AFTER", "1s"),
            ];
            let data_dir = dir.path().join(format!("replica-{index}"));
            servers.push(Some(ServerProcess::start_with(
                &data_dir,
                &address.to_string(),
                &settings,
            )));
        }
        let first = servers[0].as_ref().unwrap();
        let key = first.admin_key.clone().expect("the first replica creates the admin key");
        assert!(
            servers[1..].iter().all(|server| server.as_ref().unwrap().admin_key.is_none()),
            "replicas share the admin keys: only the first start makes one"
        );
        let clis = addresses
            .iter()
            .map(|address| {
                Gantry::for_server_with_key(first, &key).at(&format!("https://{address}"))
            })
            .collect();
        Some(Self { servers, addresses, balancer, clis, dir })
    }

    fn private_pool(&self, name: &str) -> PoolAccess {
        let key = OpensslKey::generate(self.dir.path(), name, KeyKind::P256);
        let token = self.clis[0].create_pool(name, &key);
        PoolAccess { token, key: base64_of(&key.key_pem) }
    }

    /// A stack whose runs are tasks writing into `work`.
    fn stack(&self, name: &str, pool: &str) {
        let repository = GitRepository::create(
            &self.dir.path().join(format!("{name}-repo")),
            &[("infra/main.tf", EMPTY_CONFIG)],
        );
        let state = self.dir.path().join(format!("{name}.tfstate"));
        self.clis[1 % self.clis.len()].create_stack_in(name, &repository, Some(pool), &state, &[]);
    }

    /// Kills replica `index` at once (SIGKILL) and takes it out of the balancer.
    fn kill(&mut self, index: usize) {
        self.balancer.mark_down(self.addresses[index]);
        self.servers[index].take().unwrap().kill();
        self.clis.remove(index);
    }
}

/// A task whose command records that it ran, then prints `lines` numbered lines.
fn numbered_task(marker: &str, record: &Path, lines: u32) -> String {
    format!(
        "echo {marker} >> {record} && i=1; while [ $i -le {lines} ]; do echo {marker}-line-$i; i=$((i+1)); done",
        record = record.display()
    )
}

/// Every numbered line of the task, once and in order.
fn assert_complete_log(log: &str, marker: &str, lines: u32) {
    let printed: Vec<&str> =
        log.lines().filter(|line| line.starts_with(&format!("{marker}-line-"))).collect();
    let expected: Vec<String> = (1..=lines).map(|i| format!("{marker}-line-{i}")).collect();
    assert_eq!(printed, expected, "the log of {marker} is complete and in order:\n{log}");
}

#[test]
fn two_replicas_run_500_runs_on_20_workers_exactly_once() {
    let Some(replicas) = Replicas::start(2) else { return };
    let pool = replicas.private_pool("fleet");
    let launchers: Vec<Launcher> = (0..4)
        .map(|_| Launcher::connect(&pool, &[("GANTRY_LAUNCHER_WORKER_SLOTS", "5")]))
        .collect();
    let stacks: Vec<String> = (0..25).map(|i| format!("fleet-{i}")).collect();
    for stack in &stacks {
        replicas.stack(stack, "fleet");
    }
    let record = replicas.dir.path().join("executions");
    crate::harness::shared_file_for_runs(&record);
    const RUNS: usize = 500;
    const LINES: u32 = 40;
    let mut runs: Vec<(String, Value)> = Vec::new();
    for i in 0..RUNS {
        let marker = format!("run{i:03}");
        let command = numbered_task(&marker, &record, LINES);
        let stack = &stacks[i % stacks.len()];
        // Through either replica, whichever one the launcher of the worker polls.
        let cli = &replicas.clis[i % 2];
        let run = cli.json(&["run", "task", stack, "--", &command]);
        runs.push((marker, run));
    }
    let gantry = &replicas.clis[0];
    for (marker, run) in &runs {
        let run =
            gantry.wait_for_state_within(run, &["FINISHED", "FAILED"], Duration::from_secs(600));
        assert_eq!(run["state"], "FINISHED", "{marker}: {run}");
    }
    let executions = std::fs::read_to_string(&record).unwrap();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for line in executions.lines() {
        *counts.entry(line).or_default() += 1;
    }
    assert_eq!(counts.len(), RUNS, "every run executed");
    assert!(counts.values().all(|count| *count == 1), "a run executed twice: {counts:?}");
    // Every log moves out of the database into the shared blob store, and reads back
    // whole from there.
    let archived = |run: &Value| {
        let run_id = run["id"].as_str().unwrap().to_ascii_lowercase();
        std::fs::read_dir(replicas.dir.path().join("blobs/runs").join(run_id)).is_ok_and(
            |entries| {
                entries
                    .flatten()
                    .any(|entry| entry.file_name().to_string_lossy().starts_with("log-"))
            },
        )
    };
    gantry.wait_for(Duration::from_secs(120), || {
        runs.iter().all(|(_, run)| archived(run)).then_some(())
    });
    for (i, (marker, run)) in runs.iter().enumerate() {
        assert_complete_log(&replicas.clis[i % 2].log(run), marker, LINES);
    }
    for address in &replicas.addresses {
        assert!(
            replicas.balancer.forwarded_to(*address) > 0,
            "launchers reached replica {address}"
        );
    }
    drop(launchers);
}

#[test]
fn launchers_carry_on_through_the_other_replica_when_one_is_killed() {
    let Some(mut replicas) = Replicas::start(2) else { return };
    let pool = replicas.private_pool("survivors");
    let launchers: Vec<Launcher> = (0..2)
        .map(|_| Launcher::connect(&pool, &[("GANTRY_LAUNCHER_WORKER_SLOTS", "3")]))
        .collect();
    for i in 0..6 {
        replicas.stack(&format!("slow-{i}"), "survivors");
    }
    let record = replicas.dir.path().join("executions");
    crate::harness::shared_file_for_runs(&record);
    const LINES: u32 = 30;
    // Each run prints half its lines, sleeps through the kill, then prints the rest.
    let runs: Vec<(String, Value)> = (0..6)
        .map(|i| {
            let marker = format!("slow{i}");
            let command = format!(
                "echo {marker} >> {record}; i=1; while [ $i -le {LINES} ]; do echo {marker}-line-$i; \
                 if [ $i -eq {half} ]; then sleep 4; fi; i=$((i+1)); done",
                record = record.display(),
                half = LINES / 2
            );
            let run = replicas.clis[i % 2].json(&["run", "task", &format!("slow-{i}"), "--", &command]);
            (marker, run)
        })
        .collect();
    for (_, run) in &runs {
        replicas.clis[0].wait_for_state(run, &["PERFORMING"]);
    }
    for address in &replicas.addresses {
        assert!(
            replicas.balancer.forwarded_to(*address) > 0,
            "launchers reached replica {address}"
        );
    }
    replicas.kill(0);
    // Runs started before the kill finish, and new ones are taken, through replica 1.
    let after: Vec<(String, Value)> = (0..4)
        .map(|i| {
            let marker = format!("after{i}");
            let command = numbered_task(&marker, &record, LINES);
            let run = replicas.clis[0].json(&["run", "task", &format!("slow-{i}"), "--", &command]);
            (marker, run)
        })
        .collect();
    let survivor = &replicas.clis[0];
    for (marker, run) in runs.iter().chain(&after) {
        let run =
            survivor.wait_for_state_within(run, &["FINISHED", "FAILED"], Duration::from_secs(120));
        assert_eq!(run["state"], "FINISHED", "{marker}: {run}");
        assert_complete_log(&survivor.log(&run), marker, LINES);
    }
    let executions = std::fs::read_to_string(&record).unwrap();
    assert_eq!(executions.lines().count(), runs.len() + after.len(), "each ran once");
    drop(launchers);
}
