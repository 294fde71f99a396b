//! Outages fail nothing: a server down for longer than the worker timeout, or its
//! PostgreSQL database down for five minutes, while a run executes. The launcher keeps
//! the run going, holds its log and its final report (and state) until the server takes
//! them, and the server's liveness sweep waits a full worker timeout after it has its
//! database again, so the run ends as it would have, with its whole log. A launcher
//! killed while its final report waits for the server leaves it, journaled, to the next.

use std::path::Path;
use std::time::{Duration, Instant};

use gantry_testkit::{GitRepository, KeyKind, OpensslKey};
use serde_json::Value;

use crate::harness::{
    Gantry, Launcher, PoolAccess, ServerProcess, base64_of, free_port, id, left_of_run,
    processes_running, states,
};

/// A configuration with nothing to create: a task's `init` takes a fraction of a second.
const EMPTY_CONFIG: &str = "terraform {\n  backend \"local\" {}\n}\n";

/// A pool of a fresh P-256 key made in `dir`, and a launcher of it.
fn pool_and_launcher(gantry: &Gantry, dir: &Path) -> Launcher {
    let key = OpensslKey::generate(dir, "p", KeyKind::P256);
    let token = gantry.create_pool("p", &key);
    Launcher::connect(&PoolAccess { token, key: base64_of(&key.key_pem) }, &[])
}

/// Waits until the run's log has a line that is exactly `line`.
fn wait_for_log_line(gantry: &Gantry, run: &Value, line: &str) {
    gantry.wait_for(Duration::from_secs(120), || {
        gantry.log(run).lines().any(|printed| printed.trim_end() == line).then_some(())
    });
}

/// The run's numbered ticks as its log shows them, in order (`tick-7` at the end of a
/// line, after what terraform puts before a provisioner's output).
fn ticks(log: &str) -> Vec<String> {
    log.lines()
        .filter_map(|line| {
            let tick = &line[line.rfind("tick-")?..];
            tick["tick-".len()..].bytes().all(|b| b.is_ascii_digit()).then(|| tick.to_owned())
        })
        .collect()
}

fn numbered_ticks(count: usize) -> Vec<String> {
    (1..=count).map(|index| format!("tick-{index}")).collect()
}

#[test]
fn a_task_outlives_a_server_down_for_longer_than_the_worker_timeout_with_its_whole_log() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let listen = format!("127.0.0.1:{}", free_port());
    let settings = [
        ("GANTRY_SERVER_HEARTBEAT_INTERVAL", "3s"),
        ("GANTRY_SERVER_WORKER_TIMEOUT", "6s"),
        // The worker's lease outlasts the outage: it lets its task go on.
        ("GANTRY_SERVER_WORKER_LEASE", "2m"),
    ];
    let server = ServerProcess::start_with(&data, &listen, &settings);
    let gantry = Gantry::for_server(&server);
    let mut launcher = pool_and_launcher(&gantry, dir.path());
    let repository =
        GitRepository::create(&dir.path().join("repo"), &[("infra/main.tf", EMPTY_CONFIG)]);
    gantry.create_stack_at("app", &repository.url(), Some("p"), &[]);

    // Marked, so that the wait below never sees another test's ticking process.
    let command = "for i in $(seq 1 30); do echo tick-$i; sleep 0.5; done # outlives-the-server";
    let task = gantry.json(&["run", "task", "app", "--", command]);
    wait_for_log_line(&gantry, &task, "tick-3");
    server.kill();
    let killed_at = Instant::now();
    // The task ends while the server is away: its last output and its report wait.
    gantry.wait_for(Duration::from_secs(60), || {
        processes_running("# outlives-the-server").is_empty().then_some(())
    });
    assert!(killed_at.elapsed() < Duration::from_secs(20), "the task ended during the outage");
    launcher.wait_for_stderr("log upload failed", Duration::from_secs(10));
    // Down for more than three worker timeouts.
    std::thread::sleep(Duration::from_secs(20).saturating_sub(killed_at.elapsed()));
    let _server = ServerProcess::start_with(&data, &listen, &settings);

    let ended =
        gantry.wait_for_state_within(&task, &["FINISHED", "FAILED"], Duration::from_secs(90));
    let log = gantry.log(&ended);
    assert_eq!(ended["state"], "FINISHED", "{ended}\n{log}");
    assert_eq!(ticks(&log), numbered_ticks(30), "every line once, in order:\n{log}");
    let workers = gantry.json(&["worker", "list", "--pool", "p"]);
    assert_eq!(workers["workers"][0]["status"], "IDLE", "{workers}");
}

/// An apply that prints a numbered tick every 5 s for `ticks` ticks.
fn ticking_config(ticks: usize) -> String {
    format!(
        r#"
resource "terraform_data" "slow" {{
  provisioner "local-exec" {{
    command = "for i in $(seq 1 {ticks}); do echo tick-$i; sleep 5; done"
  }}
}}

output "id" {{
  value = terraform_data.slow.id
}}
"#
    )
}

#[test]
fn an_apply_runs_through_a_five_minute_database_outage_and_stores_its_state() {
    // The cluster under test is stopped and started again: never the shared one.
    if std::env::var_os(gantry_test_postgres::URL_VARIABLE).is_none()
        && std::env::var("CI").is_err()
    {
        eprintln!("skipped: no PostgreSQL for tests (scripts/test.sh provides it)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    {
        use std::os::unix::fs::PermissionsExt;
        // PostgreSQL may run as its own user: it passes through to its directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let postgres = gantry_test_postgres::Cluster::start(
        &dir.path().join("postgres"),
        gantry_test_postgres::Durability::Throwaway,
    )
    .expect("a PostgreSQL cluster of the test's own starts");
    let database = tokio::runtime::Runtime::new()
        .unwrap()
        .block_on(gantry_test_postgres::create_database(&postgres.url()));
    let settings = [
        ("GANTRY_SERVER_DATABASE", database.as_str()),
        ("GANTRY_SERVER_SHARED_WORKERS", "0"),
        ("GANTRY_SERVER_HEARTBEAT_INTERVAL", "2s"),
        ("GANTRY_SERVER_WORKER_TIMEOUT", "6s"),
        // A worker goes on without its server for this long: longer than the outage.
        ("GANTRY_SERVER_WORKER_LEASE", "10m"),
    ];
    let server = ServerProcess::start_with(&dir.path().join("server"), "127.0.0.1:0", &settings);
    let gantry = Gantry::for_server(&server);
    let mut launcher = pool_and_launcher(&gantry, dir.path());
    let tick_count = 66;
    let repository = GitRepository::create(
        &dir.path().join("repo"),
        &[("infra/main.tf", &ticking_config(tick_count))],
    );
    gantry.create_managed_stack("app", &repository.url(), "p", &["--autodeploy"]);

    let run = gantry.trigger("app", &[]);
    gantry.wait_for(Duration::from_secs(120), || {
        (!ticks(&gantry.log(&run)).is_empty()).then_some(())
    });
    postgres.crash().unwrap();
    let outage = Duration::from_secs(5 * 60);
    let crashed_at = Instant::now();
    launcher.wait_for_stderr("log upload failed", Duration::from_secs(60));
    server.wait_for_stderr("the liveness sweep waits", Duration::from_secs(60));
    std::thread::sleep(outage.saturating_sub(crashed_at.elapsed()));
    postgres.start_again().unwrap();

    let ended =
        gantry.wait_for_state_within(&run, &["FINISHED", "FAILED"], Duration::from_secs(180));
    let log = gantry.log(&ended);
    assert_eq!(ended["state"], "FINISHED", "{ended}\n{log}");
    assert_eq!(ticks(&log), numbered_ticks(tick_count), "every line once, in order:\n{log}");
    assert!(log.contains("The new state is stored, encrypted to the pool key."), "{log}");
    let versions = gantry.json(&["stack", "state", "list", "app"]);
    let current = &versions["versions"][0];
    assert_eq!(current["run_id"], id(&run), "{versions}");
    assert_eq!(current["current"], true, "{versions}");
}

/// The journal of `run` under the launcher's `work_dir`, once it holds the final report
/// the launcher is about to send.
fn journaled_final_report(work_dir: &Path, run: &Value) -> Option<Value> {
    left_of_run(work_dir, run)
        .into_iter()
        .filter(|path| path.ends_with(".json"))
        .filter_map(|path| serde_json::from_slice::<Value>(&std::fs::read(path).ok()?).ok())
        .map(|entry| entry["final_report"].clone())
        .find(|report| !report.is_null())
}

#[test]
fn a_launcher_killed_during_its_final_report_has_it_and_its_undelivered_log_delivered_by_the_next_one()
 {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("server");
    let listen = format!("127.0.0.1:{}", free_port());
    let settings = [
        ("GANTRY_SERVER_HEARTBEAT_INTERVAL", "2s"),
        // Long enough for the launcher started again to deliver the report before the
        // server could call the run lost.
        ("GANTRY_SERVER_WORKER_TIMEOUT", "40s"),
    ];
    let server = ServerProcess::start_with(&data, &listen, &settings);
    let gantry = Gantry::for_server(&server);
    let key = OpensslKey::generate(dir.path(), "p", KeyKind::P256);
    let pool = PoolAccess { token: gantry.create_pool("p", &key), key: base64_of(&key.key_pem) };
    let work = dir.path().join("launcher");
    let start = || pool.start_launcher(&work, &[]);
    let first = start();
    let repository =
        GitRepository::create(&dir.path().join("repo"), &[("infra/main.tf", EMPTY_CONFIG)]);
    gantry.create_stack_at("app", &repository.url(), Some("p"), &[]);

    let command = "for i in $(seq 1 6); do echo tick-$i; sleep 0.5; done # killed-in-its-report";
    let task = gantry.json(&["run", "task", "app", "--", command]);
    wait_for_log_line(&gantry, &task, "tick-1");
    // The server goes away: the task ends meanwhile and its final report cannot go out.
    server.kill();
    let report = gantry.wait_for(Duration::from_secs(60), || journaled_final_report(&work, &task));
    first.kill();

    let _server = ServerProcess::start_with(&data, &listen, &settings);
    let _second = start();
    let ended =
        gantry.wait_for_state_within(&task, &["FINISHED", "FAILED"], Duration::from_secs(120));
    let log = gantry.log(&ended);
    assert_eq!(
        ended["state"], "FINISHED",
        "the journaled report {report} was delivered:\n{ended}\n{log}"
    );
    // Ticks 2 to 6 reached the launcher while the server was away: its log tail on
    // disk holds them, and the next launcher delivers them.
    assert_eq!(ticks(&log), numbered_ticks(6), "every line once, in order:\n{log}");
    assert!(
        log.contains("had taken from the run but not yet delivered"),
        "the log says where the recovered output comes from:\n{log}"
    );
    let finals = states(&ended).iter().filter(|state| *state == "FINISHED").count();
    assert_eq!(finals, 1, "ended exactly once: {ended}");
    gantry.wait_for(Duration::from_secs(30), || left_of_run(&work, &task).is_empty().then_some(()));
}
