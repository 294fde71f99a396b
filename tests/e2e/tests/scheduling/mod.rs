//! End-to-end scheduling and pool management, with the real binaries: draining and
//! cycling, liveness after a launcher is killed, stopping an apply, tasks, stack
//! dependencies, priorities and the queue, and the server's shared pool.

use std::path::Path;
use std::time::Duration;

use gantry_domain::Timestamp;
use gantry_testkit::GitRepository;
use serde_json::Value;

use crate::harness::{
    Cluster, Launcher, free_port, http_get, id, left_of_run, processes_running, slow_config, states,
};
use crate::launcher_options::{PRINT_ENCODED, assert_masked_in_every_form, forms_of};

/// Outputs only: plans and applies in about a second.
const QUICK_CONFIG: &str = r#"
terraform {
  backend "local" {}
}

output "greeting" {
  value = "hello"
}
"#;

/// An autodeploy stack on `pool` (or the shared pool when `None`) whose configuration is
/// `main_tf`; its state lives in `work`, outside any run's workspace.
fn autodeploy_stack(
    cluster: &Cluster,
    work: &Path,
    name: &str,
    pool: Option<&str>,
    main_tf: &str,
) -> GitRepository {
    autodeploy_stack_with(cluster, work, name, pool, main_tf, &[])
}

/// [`autodeploy_stack`] with extra `gantry stack create` flags.
fn autodeploy_stack_with(
    cluster: &Cluster,
    work: &Path,
    name: &str,
    pool: Option<&str>,
    main_tf: &str,
    extra: &[&str],
) -> GitRepository {
    let repository =
        GitRepository::create(&work.join(format!("{name}-repo")), &[("infra/main.tf", main_tf)]);
    let state = work.join(format!("{name}.tfstate"));
    let flags = [&["--autodeploy"], extra].concat();
    cluster.gantry.create_stack_in(name, &repository, pool, &state, &flags);
    repository
}

fn run_show(cluster: &Cluster, run: &Value) -> Value {
    cluster.gantry.json(&["run", "show", id(run)])
}

fn workers(cluster: &Cluster, pool: &str) -> Vec<Value> {
    cluster.gantry.json(&["worker", "list", "--pool", pool])["workers"].as_array().unwrap().clone()
}

fn worker(cluster: &Cluster, worker_id: &str) -> Option<Value> {
    let all = cluster.gantry.json(&["worker", "list"]);
    all["workers"].as_array().unwrap().iter().find(|w| w["id"] == worker_id).cloned()
}

/// Waits until the run's apply is under way; returns the run.
fn wait_until_applying(cluster: &Cluster, run: &Value) -> Value {
    let run = cluster.gantry.wait_for_state(run, &["APPLYING", "FINISHED", "FAILED"]);
    assert_eq!(run["state"], "APPLYING", "{run}");
    run
}

/// Waits until the scheduler looked at the run and says why it waits.
fn waiting_reason(cluster: &Cluster, run: &Value) -> String {
    cluster.gantry.wait_for(Duration::from_secs(30), || {
        let run = run_show(cluster, run);
        run["waiting_reason"].as_str().map(str::to_owned)
    })
}

#[test]
fn a_drained_worker_finishes_its_run_and_takes_nothing_new_until_undrained() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let pool = cluster.private_pool(work.path(), "p");
    let _launcher = Launcher::of(&cluster, &pool, &[]);
    autodeploy_stack(&cluster, work.path(), "slow", Some("p"), &slow_config("3.25"));
    autodeploy_stack(&cluster, work.path(), "quick", Some("p"), QUICK_CONFIG);

    let busy = wait_until_applying(&cluster, &cluster.gantry.trigger("slow", &[]));
    let worker_id = busy["worker_id"].as_str().unwrap().to_owned();
    cluster.gantry.ok(&["worker", "drain", &worker_id]);
    let drained = worker(&cluster, &worker_id).unwrap();
    assert_eq!((&drained["status"], &drained["busy"]), (&"DRAINED".into(), &true.into()));

    let waiting = cluster.gantry.trigger("quick", &[]);
    let finished = cluster.gantry.wait_for_state(&busy, &["FINISHED", "FAILED"]);
    assert_eq!(finished["state"], "FINISHED", "a drained worker finishes its run: {finished}");
    let reason = waiting_reason(&cluster, &waiting);
    assert_eq!(reason, "waiting for a worker: every worker of pool p is drained");
    // Long enough for a dispatch that should not happen to have happened.
    std::thread::sleep(Duration::from_secs(2));
    let still = run_show(&cluster, &waiting);
    assert!(["QUEUED", "READY"].contains(&still["state"].as_str().unwrap()), "{still}");
    let idle = worker(&cluster, &worker_id).unwrap();
    assert_eq!((&idle["status"], &idle["busy"]), (&"DRAINED".into(), &false.into()));

    cluster.gantry.ok(&["worker", "undrain", &worker_id]);
    let done = cluster.gantry.wait_for_state(&waiting, &["FINISHED", "FAILED"]);
    assert_eq!(done["state"], "FINISHED", "{done}");
}

#[test]
fn draining_a_pool_waits_for_its_runs_and_cycling_it_lets_launchers_finish_then_exit() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let pool = cluster.private_pool(work.path(), "p");
    let launcher = Launcher::of(&cluster, &pool, &[]);
    autodeploy_stack(&cluster, work.path(), "slow", Some("p"), &slow_config("3.5"));

    let first = wait_until_applying(&cluster, &cluster.gantry.trigger("slow", &[]));
    cluster.gantry.ok(&["pool", "drain", "p", "--wait-until-drained"]);
    let first = run_show(&cluster, &first);
    assert_eq!(first["state"], "FINISHED", "--wait-until-drained returns once runs ended");
    let pool_view = cluster.gantry.json(&["pool", "show", "p"]);
    let counts = (&pool_view["pool"]["drained_workers"], &pool_view["pool"]["busy_workers"]);
    assert_eq!(counts, (&1.into(), &0.into()), "{pool_view}");
    cluster.gantry.ok(&["pool", "undrain", "p"]);
    assert_eq!(workers(&cluster, "p")[0]["status"], "IDLE");

    let second = wait_until_applying(&cluster, &cluster.gantry.trigger("slow", &[]));
    cluster.gantry.ok(&["pool", "cycle", "p"]);
    let exited = launcher.wait_for_exit(Duration::from_secs(60));
    assert_eq!(exited.status, Some(0), "{}", exited.stderr);
    let second = run_show(&cluster, &second);
    assert_eq!(second["state"], "FINISHED", "the cycled launcher finished its run: {second}");
    assert!(exited.stderr.contains("cycl"), "the launcher says why it exits: {}", exited.stderr);
}

/// When the run entered `state`, as the server recorded it.
fn entered(run: &Value, state: &str) -> Timestamp {
    let run: gantry_proto::api::Run = serde_json::from_value(run.clone()).unwrap();
    run.history.iter().rev().find(|change| change.state.as_str() == state).unwrap().at
}

fn clock() -> Timestamp {
    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    Timestamp::from_unix_millis(i64::try_from(millis.as_millis()).unwrap())
}

#[test]
fn a_launcher_killed_mid_run_fails_its_run_fast_and_fences_its_stack_for_lease_and_grace() {
    let cluster = Cluster::start_with(&[
        ("GANTRY_SERVER_HEARTBEAT_INTERVAL", "1s"),
        ("GANTRY_SERVER_WORKER_TIMEOUT", "3s"),
        ("GANTRY_SERVER_WORKER_LEASE", "20s"),
        ("GANTRY_SERVER_WORKER_LEASE_GRACE", "4s"),
    ]);
    let work = tempfile::tempdir().unwrap();
    let pool = cluster.private_pool(work.path(), "p");
    let mut launchers = vec![
        ("a", Launcher::of(&cluster, &pool, &[("GANTRY_METADATA_name", "a")])),
        ("b", Launcher::of(&cluster, &pool, &[("GANTRY_METADATA_name", "b")])),
    ];
    autodeploy_stack(&cluster, work.path(), "slow", Some("p"), &slow_config("43.25"));
    autodeploy_stack(&cluster, work.path(), "quick", Some("p"), QUICK_CONFIG);
    cluster
        .gantry
        .wait_for(Duration::from_secs(30), || (workers(&cluster, "p").len() == 2).then_some(()));

    let run = wait_until_applying(&cluster, &cluster.gantry.trigger("slow", &[]));
    let lost_worker = run["worker_id"].as_str().unwrap().to_owned();
    let victim =
        worker(&cluster, &lost_worker).unwrap()["metadata"]["name"].as_str().unwrap().to_owned();
    let position = launchers.iter().position(|(name, _)| *name == victim).unwrap();
    let (_, killed) = launchers.remove(position);
    let killed_at = clock();
    killed.kill();
    // The stack's next apply waits in the queue from now on.
    let next = cluster.gantry.trigger("slow", &[]);

    let failed = cluster.gantry.wait_for_state(&run, &["FAILED", "FINISHED"]);
    assert_eq!(failed["state"], "FAILED", "{failed}");
    let failure = failed["failure"].as_str().unwrap();
    assert!(failure.starts_with("worker lost"), "{failure}");
    // By the server's record: the 3 s timeout and a 2 s sweep after the last heartbeat
    // (at most 1 s before the kill), well within 15 s, and long before lease + grace.
    let failed_at = entered(&failed, "FAILED");
    let noticed = failed_at.since(killed_at);
    assert!(noticed < Duration::from_secs(15), "failed {noticed:?} after the kill");
    assert!(worker(&cluster, &lost_worker).is_none(), "the lost worker is gone");
    let survivors = workers(&cluster, "p");
    assert_eq!(survivors.len(), 1);
    assert_eq!(survivors[0]["metadata"]["name"], if victim == "a" { "b" } else { "a" });
    // The orphaned worker got SIGHUP from the kernel as its launcher died and stopped.
    cluster.gantry.wait_for(Duration::from_secs(30), || {
        processes_running("sleep 43.25").is_empty().then_some(())
    });

    // The stack stays fenced until lease + grace (24 s) after the last heartbeat: its
    // next apply waits, and another stack's run goes on meanwhile.
    let shown = cluster.gantry.json(&["stack", "show", "slow"]);
    let stack: gantry_proto::api::Stack = serde_json::from_value(shown["stack"].clone()).unwrap();
    let fence = stack.lock_fence.expect("the stack is fenced");
    assert_eq!(fence.run_id.to_string(), id(&run));
    assert!(fence.until >= killed_at.plus(Duration::from_secs(24 - 1)), "{fence:?}");
    assert!(failed_at < fence.until, "the run fails before its stack is free: {fence:?}");
    let reason = waiting_reason(&cluster, &next);
    assert!(reason.contains("fenced until"), "{reason}");
    let text = cluster.gantry.ok(&["stack", "show", "slow"]);
    assert!(text.contains("Lock:") && text.contains("may still be stopping"), "{text}");
    let quick = cluster.gantry.trigger("quick", &[]);
    let quick = cluster.gantry.wait_for_state(&quick, &["FINISHED", "FAILED"]);
    assert_eq!(quick["state"], "FINISHED", "{quick}");
    assert!(entered(&quick, "PREPARING") < fence.until, "other stacks are not held back");

    let next = cluster.gantry.wait_for_state(&next, &["PLANNING", "APPLYING", "FINISHED"]);
    let started = entered(&next, "READY");
    assert!(started >= fence.until, "the next apply took the lock at {started:?}: {fence:?}");
}

#[test]
fn a_launcher_under_full_cpu_load_keeps_its_run_with_the_default_timings() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let pool = cluster.private_pool(work.path(), "p");
    let _launcher = Launcher::of(&cluster, &pool, &[]);
    autodeploy_stack(&cluster, work.path(), "busy", Some("p"), QUICK_CONFIG);
    // Twice as many busy loops as cores, for three worker timeouts (10 s each).
    let cores = std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get);
    let command = format!(
        "for i in $(seq {}); do timeout 30 sh -c 'while :; do :; done' & done; wait",
        cores * 2
    );
    let task = cluster.gantry.json(&["run", "task", "busy", "--", &command]);
    let task = cluster.gantry.wait_for_state(&task, &["FINISHED", "FAILED"]);
    assert_eq!(task["state"], "FINISHED", "{task}");
    let performing = entered(&task, "PERFORMING");
    let finished = entered(&task, "FINISHED");
    assert!(finished.since(performing) >= Duration::from_secs(30), "the load lasted: {task}");
}

/// Two resources: the first is created at once, the second takes `seconds`.
fn half_applied_config(seconds: &str) -> String {
    format!(
        r#"
resource "terraform_data" "first" {{
  input = "made before the stop"
}}

resource "terraform_data" "second" {{
  depends_on = [terraform_data.first]
  provisioner "local-exec" {{
    command = "sleep {seconds}"
  }}
}}
"#
    )
}

#[test]
fn stopping_a_running_apply_interrupts_it_and_keeps_the_state_it_made() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let pool = cluster.private_pool(work.path(), "p");
    let _launcher = Launcher::of(&cluster, &pool, &[]);
    let repository = GitRepository::create(
        &work.path().join("repo"),
        &[("main.tf", &half_applied_config("44.25"))],
    );
    cluster.gantry.ok(&[
        "stack",
        "create",
        "--name",
        "app",
        "--repository",
        &repository.url(),
        "--pool",
        "p",
        "--autodeploy",
        "--managed-state",
    ]);

    let run = wait_until_applying(&cluster, &cluster.gantry.trigger("app", &[]));
    cluster.gantry.wait_for(Duration::from_secs(60), || {
        (!processes_running("sleep 44.25").is_empty()).then_some(())
    });
    let stopping = cluster.gantry.json(&["run", "stop", id(&run)]);
    assert_eq!(stopping["stop_requested"], true, "{stopping}");

    let stopped = cluster.gantry.wait_for_state(&run, &["STOPPED", "FAILED", "FINISHED"]);
    assert_eq!(stopped["state"], "STOPPED", "{stopped}");
    assert_eq!(states(&stopped).last().map(String::as_str), Some("STOPPED"));
    cluster.gantry.wait_for(Duration::from_secs(30), || {
        processes_running("sleep 44.25").is_empty().then_some(())
    });
    let log = cluster.gantry.log(&stopped);
    assert!(log.contains("Interrupt received"), "terraform was interrupted gracefully: {log}");
    assert!(log.contains("The run was stopped."), "{log}");
    let worker_id = run["worker_id"].as_str().unwrap();
    assert_eq!(worker(&cluster, worker_id).unwrap()["status"], "IDLE");

    // The state the stopped apply made was kept: a task lists what it holds.
    let task = cluster.gantry.json(&["run", "task", "app", "--", "terraform", "state", "list"]);
    assert_eq!(task["type"], "TASK");
    let task = cluster.gantry.wait_for_state(&task, &["FINISHED", "FAILED"]);
    assert_eq!(task["state"], "FINISHED", "{task}");
    assert_eq!(
        states(&task),
        ["QUEUED", "READY", "PREPARING", "INITIALIZING", "PERFORMING", "FINISHED"]
    );
    // The stack had no state before: whatever it lists now, the stopped run stored.
    let log = cluster.gantry.log(&task);
    let listed: Vec<&str> =
        log.lines().filter(|line| line.starts_with("terraform_data.")).collect();
    assert!(listed.contains(&"terraform_data.first"), "{log}");
}

#[test]
fn a_launcher_started_again_recovers_the_apply_its_killed_instance_left() {
    // The server fails a dead launcher's run a worker timeout after its last heartbeat:
    // long enough here for the launcher started again to report first.
    let cluster = Cluster::start_with(&[
        ("GANTRY_SERVER_HEARTBEAT_INTERVAL", "1s"),
        ("GANTRY_SERVER_WORKER_TIMEOUT", "40s"),
        ("GANTRY_SERVER_WORKER_LEASE", "6s"),
        ("GANTRY_SERVER_WORKER_LEASE_GRACE", "20s"),
    ]);
    let work = tempfile::tempdir().unwrap();
    let pool = cluster.private_pool(work.path(), "p");
    let launcher_dir = work.path().join("launcher");
    let start = || pool.start_launcher(&launcher_dir, &[]);
    let first = start();
    let repository = GitRepository::create(
        &work.path().join("repo"),
        &[("main.tf", &half_applied_config("45.75"))],
    );
    let url = repository.url();
    let create = ["--name", "app", "--repository", &url, "--pool", "p", "--autodeploy"];
    cluster.gantry.ok(&[&["stack", "create", "--managed-state"], &create[..]].concat());
    let run = wait_until_applying(&cluster, &cluster.gantry.trigger("app", &[]));
    cluster.gantry.wait_for(Duration::from_secs(60), || {
        (!processes_running("sleep 45.75").is_empty()).then_some(())
    });

    first.kill();
    // The worker got SIGHUP from the kernel as its launcher died: it interrupted the
    // apply, whose state stays in the workspace.
    cluster.gantry.wait_for(Duration::from_secs(30), || {
        processes_running("sleep 45.75").is_empty().then_some(())
    });
    let _second = start();
    let ended = cluster.gantry.wait_for_state(&run, &["FAILED", "FINISHED"]);
    let failure = ended["failure"].as_str().unwrap_or_default();
    assert!(
        failure.contains(
            "died while the run was executing; the state the run left was recovered and stored"
        ),
        "{ended}\n{}",
        cluster.gantry.log(&run)
    );
    let versions = cluster.gantry.json(&["stack", "state", "list", "app"]);
    let current = &versions["versions"][0];
    assert_eq!((&current["run_id"], &current["current"]), (&run["id"], &Value::Bool(true)));
    let left = left_of_run(&launcher_dir, &run);
    assert!(left.is_empty(), "nothing of the run is left in the work directory: {left:?}");

    // The next run starts from the recovered state: the first resource is in it.
    let task = cluster.gantry.json(&["run", "task", "app", "--", "terraform", "state", "list"]);
    let task = cluster.gantry.wait_for_state(&task, &["FINISHED", "FAILED"]);
    assert_eq!(task["state"], "FINISHED", "{task}");
    let log = cluster.gantry.log(&task);
    assert!(log.lines().any(|line| line == "terraform_data.first"), "{log}");
}

#[test]
fn a_launcher_started_again_after_its_run_was_failed_keeps_the_state_as_an_orphaned_version() {
    let cluster = Cluster::start_with(&[
        ("GANTRY_SERVER_HEARTBEAT_INTERVAL", "1s"),
        ("GANTRY_SERVER_WORKER_TIMEOUT", "3s"),
        ("GANTRY_SERVER_WORKER_LEASE", "2s"),
        ("GANTRY_SERVER_WORKER_LEASE_GRACE", "1s"),
    ]);
    let work = tempfile::tempdir().unwrap();
    let pool = cluster.private_pool(work.path(), "p");
    let launcher_dir = work.path().join("launcher");
    let start = || pool.start_launcher(&launcher_dir, &[]);
    let first = start();
    let repository = GitRepository::create(
        &work.path().join("repo"),
        &[("main.tf", &half_applied_config("46.25"))],
    );
    let url = repository.url();
    let create = ["--name", "app", "--repository", &url, "--pool", "p", "--autodeploy"];
    cluster.gantry.ok(&[&["stack", "create", "--managed-state"], &create[..]].concat());
    let run = wait_until_applying(&cluster, &cluster.gantry.trigger("app", &[]));
    cluster.gantry.wait_for(Duration::from_secs(60), || {
        (!processes_running("sleep 46.25").is_empty()).then_some(())
    });

    first.kill();
    // The server fails the run before any launcher comes back, and the stack's lock
    // passes on: the state the interrupted apply left is the launcher's to hand in.
    let failed = cluster.gantry.wait_for_state(&run, &["FAILED"]);
    assert!(failed["failure"].as_str().unwrap().starts_with("worker lost"), "{failed}");
    let mut second = start();
    second
        .wait_for_stderr("recovered the run the launcher that died left", Duration::from_secs(60));
    let log = cluster.gantry.log(&run);
    let versions = cluster.gantry.json(&["stack", "state", "list", "app"]);
    let kept = &versions["versions"][0];
    assert_eq!(kept["run_id"], run["id"], "{versions}\nthe run's log:\n{log}");
    assert_eq!((&kept["orphaned"], &kept["current"]), (&Value::Bool(true), &Value::Bool(false)));
    let left = left_of_run(&launcher_dir, &run);
    assert!(left.is_empty(), "nothing of the run is left in the work directory: {left:?}");
}

/// With a ten-minute lease (the default), a launcher's death fences its stack for the
/// lease and its grace: the next run cannot overlap a worker that might still run. A launcher
/// started again reports the run's end once the worker it left is gone, and that lifts
/// the fence at once: the next run does not wait out the ten minutes.
#[test]
fn a_launcher_started_again_lifts_the_fence_its_dead_instance_left_once_its_run_is_over() {
    let cluster = Cluster::start_with(&[
        ("GANTRY_SERVER_HEARTBEAT_INTERVAL", "1s"),
        ("GANTRY_SERVER_WORKER_TIMEOUT", "3s"),
        ("GANTRY_SERVER_WORKER_LEASE", "10m"),
        ("GANTRY_SERVER_WORKER_LEASE_GRACE", "30s"),
    ]);
    let work = tempfile::tempdir().unwrap();
    let pool = cluster.private_pool(work.path(), "p");
    let launcher_dir = work.path().join("launcher");
    let start = || pool.start_launcher(&launcher_dir, &[]);
    let first = start();
    let repository = GitRepository::create(&work.path().join("repo"), &[("main.tf", "")]);
    let url = repository.url();
    cluster.gantry.ok(&["stack", "create", "--name", "app", "--repository", &url, "--pool", "p"]);
    let sleeper = cluster.gantry.json(&["run", "task", "app", "--", "sleep 47.75"]);
    cluster.gantry.wait_for_state(&sleeper, &["PERFORMING"]);
    cluster.gantry.wait_for(Duration::from_secs(60), || {
        (!processes_running("sleep 47.75").is_empty()).then_some(())
    });

    first.kill();
    let failed = cluster.gantry.wait_for_state(&sleeper, &["FAILED"]);
    assert!(failed["failure"].as_str().unwrap().starts_with("worker lost"), "{failed}");
    // Fenced: queued behind the fence until someone says the worker is gone.
    let next = cluster.gantry.json(&["run", "task", "app", "--", "echo the next run"]);
    std::thread::sleep(Duration::from_secs(3));
    let waiting = cluster.gantry.json(&["run", "show", id(&next)]);
    assert_eq!(waiting["state"], "QUEUED", "the fence holds the next run: {waiting}");

    let mut second = start();
    second
        .wait_for_stderr("recovered the run the launcher that died left", Duration::from_secs(60));
    cluster
        .server
        .wait_for_stderr("the stack's fence is lifted before its time", Duration::from_secs(30));
    // Far sooner than the fence's ten and a half minutes.
    let ended = cluster.gantry.wait_for_state_within(
        &next,
        &["FINISHED", "FAILED"],
        Duration::from_secs(90),
    );
    assert_eq!(ended["state"], "FINISHED", "{ended}");
    assert!(processes_running("sleep 47.75").is_empty(), "the first run's command is gone");
}

#[test]
fn a_stack_receives_its_upstream_output_and_is_skipped_when_the_upstream_fails() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let pool = cluster.private_pool(work.path(), "p");
    let _launcher = Launcher::of(&cluster, &pool, &[("GANTRY_LAUNCHER_WORKER_SLOTS", "2")]);
    let network = autodeploy_stack(
        &cluster,
        work.path(),
        "network",
        Some("p"),
        r#"
terraform {
  backend "local" {}
}

output "vpc_id" {
  value = "vpc-0a1b2c"
}
"#,
    );
    autodeploy_stack(
        &cluster,
        work.path(),
        "app",
        Some("p"),
        r#"
terraform {
  backend "local" {}
}

variable "vpc_id" {
  type = string
}

output "placed_in" {
  value = "app in ${var.vpc_id}"
}
"#,
    );
    cluster.gantry.ok(&[
        "stack",
        "depend",
        "app",
        "--on",
        "network",
        "--reference",
        "vpc_id=TF_VAR_vpc_id",
    ]);

    // A cycle is refused, naming it.
    let refused = cluster.gantry.fails(&["stack", "depend", "network", "--on", "app"]);
    assert!(refused.contains("network → app → network"), "{refused}");

    // The upstream's tracked run finishing triggers the downstream with its output.
    let upstream = cluster.gantry.trigger("network", &[]);
    let upstream = cluster.gantry.wait_for_state(&upstream, &["FINISHED", "FAILED"]);
    assert_eq!(upstream["state"], "FINISHED", "{upstream}");
    let downstream = cluster.gantry.wait_for(Duration::from_secs(30), || {
        let runs = cluster.gantry.json(&["run", "list", "--stack", "app"]);
        runs["runs"].as_array().unwrap().first().cloned()
    });
    assert_eq!(downstream["triggered_by"], format!("dependency:{}", id(&upstream)));
    let downstream = cluster.gantry.wait_for_state(&downstream, &["FINISHED", "FAILED"]);
    assert_eq!(downstream["state"], "FINISHED", "{downstream}");
    assert_eq!(downstream["outputs"][0]["value"], "app in vpc-0a1b2c");

    // Unchanged outputs trigger nothing.
    let again = cluster.gantry.trigger("network", &[]);
    let again = cluster.gantry.wait_for_state(&again, &["FINISHED", "FAILED"]);
    assert_eq!(again["has_changes"], false);
    std::thread::sleep(Duration::from_secs(2));
    let runs = cluster.gantry.json(&["run", "list", "--stack", "app"]);
    assert_eq!(runs["runs"].as_array().unwrap().len(), 1, "{runs}");

    // A downstream run waits for its upstream's run, and is skipped when that fails.
    network.commit(
        &[("infra/main.tf", "resource \"terraform_data\" \"x\" {\n  provisioner \"local-exec\" {\n    command = \"sleep 2; exit 3\"\n  }\n}\n")],
        "A failing apply",
    );
    let failing = wait_until_applying(&cluster, &cluster.gantry.trigger("network", &[]));
    let waiting = cluster.gantry.trigger("app", &[]);
    let reason = waiting_reason(&cluster, &waiting);
    assert_eq!(
        reason,
        format!("waiting on dependency network: its run {} has not ended", id(&failing))
    );
    let failed = cluster.gantry.wait_for_state(&failing, &["FAILED", "FINISHED"]);
    assert_eq!(failed["state"], "FAILED");
    let skipped = cluster.gantry.wait_for_state(&waiting, &["SKIPPED", "FINISHED", "FAILED"]);
    assert_eq!(skipped["state"], "SKIPPED", "{skipped}");
    assert!(skipped["failure"].as_str().unwrap().contains(id(&failing)), "{skipped}");
}

#[test]
fn runs_start_in_priority_order_and_the_queue_says_why_each_waits() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let pool = cluster.private_pool(work.path(), "p");
    for name in ["alpha", "beta", "gamma", "delta"] {
        autodeploy_stack(&cluster, work.path(), name, Some("p"), QUICK_CONFIG);
    }
    // No launcher yet: everything queues.
    let proposed = cluster.gantry.trigger("alpha", &["--proposed"]);
    let beta = cluster.gantry.trigger("beta", &[]);
    let gamma = cluster.gantry.trigger("gamma", &[]);
    let delta = cluster.gantry.trigger("delta", &[]);
    let beta_again = cluster.gantry.trigger("beta", &[]);
    cluster.gantry.ok(&["run", "prioritize", id(&delta)]);

    let reason = waiting_reason(&cluster, &beta_again);
    assert_eq!(reason, format!("waiting for run {} to end: it holds the stack's lock", id(&beta)));
    assert_eq!(
        waiting_reason(&cluster, &gamma),
        "waiting for a worker: no worker of pool p is connected"
    );
    let queue = cluster.gantry.json(&["pool", "queue", "p"]);
    let order: Vec<&str> = queue["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["run"]["id"].as_str().unwrap())
        .collect();
    // Prioritized first, then tracked runs in arrival order, then the proposed run; the
    // run behind a lock comes once the lock allows it.
    assert_eq!(order, [id(&delta), id(&beta), id(&gamma), id(&proposed), id(&beta_again)]);
    let text = cluster.gantry.ok(&["pool", "queue", "p"]);
    assert!(text.contains("holds the stack's lock"), "{text}");

    // One worker, one run at a time. Once beta's run ends, the run its lock held back
    // is a tracked run that may start, and goes before the proposed one.
    let _launcher = Launcher::of(&cluster, &pool, &[]);
    let expected = [&delta, &beta, &gamma, &beta_again, &proposed];
    let mut started = Vec::new();
    for run in expected {
        let run = cluster.gantry.wait_for_state(run, &["FINISHED", "FAILED"]);
        assert_eq!(run["state"], "FINISHED", "{run}");
        let run: gantry_proto::api::Run = serde_json::from_value(run).unwrap();
        let preparing = run.history.iter().find(|change| change.state.as_str() == "PREPARING");
        started.push((preparing.unwrap().at, run.id.to_string()));
    }
    started.sort();
    let order: Vec<&str> = started.iter().map(|(_, run)| run.as_str()).collect();
    let expected: Vec<&str> = expected.iter().map(|run| id(run)).collect();
    assert_eq!(order, expected, "runs started out of priority order");
}

#[test]
fn a_stack_without_a_pool_runs_on_the_servers_shared_pool_whose_workers_stay_hidden() {
    // The shared pool is off unless asked for, and runs its runs as users of their own,
    // which needs root; as another user the server says why its stacks wait.
    let cluster = Cluster::start_with(&[("GANTRY_SERVER_SHARED_WORKERS", "1")]);
    let root = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
    if !root {
        cluster.server.wait_for_stderr(
            "the shared pool's launcher cannot start",
            std::time::Duration::from_secs(20),
        );
        return;
    }
    let work = tempfile::tempdir().unwrap();
    autodeploy_stack(&cluster, work.path(), "plain", None, QUICK_CONFIG);
    let stack = cluster.gantry.json(&["stack", "show", "plain"]);
    assert_eq!(stack["stack"]["pool_name"], "shared");

    let run = cluster.gantry.trigger("plain", &[]);
    let run = cluster.gantry.wait_for_state(&run, &["FINISHED", "FAILED"]);
    assert_eq!(run["state"], "FINISHED", "{run}");
    assert_eq!(run["outputs"][0]["value"], "hello");

    let all = cluster.gantry.json(&["worker", "list"]);
    assert_eq!(all["workers"].as_array().unwrap().len(), 0, "{all}");
    let pools = cluster.gantry.json(&["pool", "list"]);
    let shared = pools["pools"].as_array().unwrap().iter().find(|p| p["name"] == "shared").unwrap();
    assert_eq!(shared["kind"], "shared");
    assert_eq!(shared["used_by"], serde_json::json!(["plain"]));
}

/// The value of one sample line of a metrics text.
fn sample(text: &str, series: &str) -> f64 {
    let line = text
        .lines()
        .find(|line| line.split(' ').next() == Some(series))
        .unwrap_or_else(|| panic!("no {series} in:\n{text}"));
    line.rsplit(' ').next().unwrap().parse().unwrap()
}

#[test]
fn server_and_launcher_metrics_count_pools_workers_runs_and_phases() {
    let cluster = Cluster::start_with(&[("GANTRY_SERVER_METRICS_LISTEN", "127.0.0.1:0")]);
    let server_metrics =
        cluster.server.metrics_url.clone().expect("the server prints its metrics URL");
    let work = tempfile::tempdir().unwrap();
    let pool = cluster.private_pool(work.path(), "p");
    autodeploy_stack(&cluster, work.path(), "app", Some("p"), QUICK_CONFIG);

    let waiting = cluster.gantry.trigger("app", &[]);
    waiting_reason(&cluster, &waiting);
    let text = http_get(&server_metrics);
    assert_eq!(sample(&text, r#"gantry_pool_runs_pending{pool="p"}"#), 1.0);
    assert_eq!(sample(&text, r#"gantry_pool_workers{pool="p"}"#), 0.0);
    assert_eq!(sample(&text, "gantry_dispatch_latency_seconds_count"), 0.0);

    let launcher_port = free_port();
    let launcher_metrics = format!("http://127.0.0.1:{launcher_port}/metrics");
    let listen = format!("127.0.0.1:{launcher_port}");
    let _launcher = Launcher::of(&cluster, &pool, &[("GANTRY_LAUNCHER_METRICS_LISTEN", &listen)]);
    let finished = cluster.gantry.wait_for_state(&waiting, &["FINISHED", "FAILED"]);
    assert_eq!(finished["state"], "FINISHED", "{finished}");

    let text = http_get(&server_metrics);
    assert_eq!(sample(&text, r#"gantry_pool_runs_pending{pool="p"}"#), 0.0);
    assert_eq!(sample(&text, r#"gantry_pool_workers{pool="p"}"#), 1.0);
    assert_eq!(sample(&text, r#"gantry_pool_workers_busy{pool="p"}"#), 0.0);
    assert_eq!(sample(&text, "gantry_dispatch_latency_seconds_count"), 1.0);
    let worker_id = workers(&cluster, "p")[0]["id"].as_str().unwrap().to_owned();
    cluster.gantry.ok(&["worker", "drain", &worker_id]);
    let text = http_get(&server_metrics);
    assert_eq!(sample(&text, r#"gantry_pool_workers_drained{pool="p"}"#), 1.0);

    let text = http_get(&launcher_metrics);
    assert_eq!(sample(&text, "gantry_launcher_runs_started_total"), 1.0);
    assert_eq!(sample(&text, "gantry_launcher_runs_finished_total"), 1.0);
    assert_eq!(sample(&text, "gantry_launcher_runs_failed_total"), 0.0);
    assert_eq!(sample(&text, "gantry_launcher_runs_in_progress"), 0.0);
    for phase in ["preparing", "initializing", "planning", "applying"] {
        let series = format!(r#"gantry_launcher_phase_duration_seconds_count{{phase="{phase}"}}"#);
        assert_eq!(sample(&text, &series), 1.0, "{phase}");
    }
}

const SHARED_SECRET: &str = "s3cr3t-crossing-marker-5d1e";

/// Outputs one sensitive value, `SHARED_SECRET`.
fn sensitive_upstream_config() -> String {
    format!(
        r#"
terraform {{
  backend "local" {{}}
}}

output "db_password" {{
  value     = "{SHARED_SECRET}"
  sensitive = true
}}
"#
    )
}

/// Reads the password from `TF_VAR_db_password` and shows what it received.
const SENSITIVE_DOWNSTREAM_CONFIG: &str = r#"
terraform {
  backend "local" {}
}

variable "db_password" {
  type      = string
  sensitive = true
}

output "password_plain" {
  value = nonsensitive(var.db_password)
}

output "password_upper" {
  value = nonsensitive(upper(var.db_password))
}
"#;

#[test]
fn a_sensitive_output_crosses_to_a_dependent_stack_sealed_and_only_when_shared() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let pool = cluster.private_pool(work.path(), "p");
    let _launcher =
        Launcher::of(&cluster, &pool, &[("GANTRY_SENSITIVE_OUTPUT_UPLOAD_ENABLED", "true")]);
    let upstream = sensitive_upstream_config();
    autodeploy_stack_with(
        &cluster,
        work.path(),
        "database",
        Some("p"),
        &upstream,
        &["--share-sensitive-outputs"],
    );
    autodeploy_stack(&cluster, work.path(), "closed", Some("p"), &upstream);
    for (downstream, upstream) in [("app", "database"), ("nosy", "closed")] {
        autodeploy_stack(&cluster, work.path(), downstream, Some("p"), SENSITIVE_DOWNSTREAM_CONFIG);
        cluster.gantry.ok(&[
            "stack",
            "depend",
            downstream,
            "--on",
            upstream,
            "--reference",
            "db_password=TF_VAR_db_password",
        ]);
    }

    // A shared sensitive output reaches the dependent run, never the server in clear.
    let run = cluster.gantry.trigger("database", &[]);
    let run = cluster.gantry.wait_for_state(&run, &["FINISHED", "FAILED"]);
    assert_eq!(run["state"], "FINISHED", "{run}");
    assert!(
        cluster.gantry.log(&run).contains("Stored 1 sensitive output(s), sealed to the pool key")
    );
    let app = cluster.gantry.wait_for(Duration::from_secs(30), || {
        cluster.gantry.json(&["run", "list", "--stack", "app"])["runs"]
            .as_array()
            .unwrap()
            .first()
            .cloned()
    });
    let app = cluster.gantry.wait_for_state(&app, &["FINISHED", "FAILED"]);
    assert_eq!(app["state"], "FINISHED", "{app}");
    // Opened on the launcher, the value is masked like a secret: in outputs, in the log,
    // and in every encoding a task prints it.
    assert_eq!(app["outputs"][0]["value"], "***", "{app}");
    assert_eq!(app["outputs"][1]["value"], SHARED_SECRET.to_uppercase());
    let log = cluster.gantry.log(&app);
    assert!(log.contains("Opened 1 sensitive input(s)"), "{log}");
    assert!(!log.contains(SHARED_SECRET), "{log}");
    let command = format!("{PRINT_ENCODED}encoded TF_VAR_db_password");
    let task = cluster.gantry.json(&["run", "task", "app", "--", &command]);
    let task = cluster.gantry.wait_for_state(&task, &["FINISHED", "FAILED"]);
    let log = cluster.gantry.log(&task);
    assert_eq!(task["state"], "FINISHED", "{task}\n{log}");
    assert_masked_in_every_form(&log, "TF_VAR_db_password", SHARED_SECRET);
    for form in forms_of(SHARED_SECRET) {
        cluster.server.assert_nothing_contains(&form);
    }

    // An output the upstream stack does not share fails the dependent run, saying why.
    let run = cluster.gantry.trigger("closed", &[]);
    assert_eq!(cluster.gantry.wait_for_state(&run, &["FINISHED", "FAILED"])["state"], "FINISHED");
    let nosy = cluster.gantry.wait_for(Duration::from_secs(30), || {
        cluster.gantry.json(&["run", "list", "--stack", "nosy"])["runs"]
            .as_array()
            .unwrap()
            .first()
            .cloned()
    });
    let nosy = cluster.gantry.wait_for_state(&nosy, &["FINISHED", "FAILED"]);
    assert_eq!(nosy["state"], "FAILED", "{nosy}");
    let failure = nosy["failure"].as_str().unwrap();
    assert!(
        failure.contains("missing input TF_VAR_db_password")
            && failure.contains("stack closed does not share its sensitive outputs"),
        "{failure}"
    );
    cluster.server.assert_nothing_contains(SHARED_SECRET);
}

#[test]
fn a_state_applied_after_the_server_failed_its_run_is_kept_orphaned_and_adopted() {
    // A short lease: the stack stays fenced after the failure for lease + grace only.
    let cluster = Cluster::start_with(&[
        ("GANTRY_SERVER_HEARTBEAT_INTERVAL", "1s"),
        ("GANTRY_SERVER_WORKER_LEASE", "3s"),
        ("GANTRY_SERVER_WORKER_LEASE_GRACE", "2s"),
    ]);
    let work = tempfile::tempdir().unwrap();
    let pool = cluster.private_pool(work.path(), "p");
    let _launcher = Launcher::of(&cluster, &pool, &[]);
    let repository = GitRepository::create(
        &work.path().join("repo"),
        &[("main.tf", &half_applied_config("43.5"))],
    );
    let url = repository.url();
    let create = ["--name", "app", "--repository", &url, "--pool", "p", "--autodeploy"];
    cluster.gantry.ok(&[&["stack", "create", "--managed-state"], &create[..]].concat());
    let run = wait_until_applying(&cluster, &cluster.gantry.trigger("app", &[]));
    cluster.gantry.wait_for(Duration::from_secs(60), || {
        (!processes_running("sleep 43.5").is_empty()).then_some(())
    });

    // The server ends the run while it applies (an administrator, here; the liveness
    // sweep does the same to a launcher it believes lost).
    cluster.gantry.ok(&["run", "fail", id(&run), "--reason", "its launcher looked lost"]);
    let failed = cluster.gantry.wait_for_state(&run, &["FAILED"]);
    assert!(failed["failure"].as_str().unwrap().contains("its launcher looked lost"), "{failed}");

    // The launcher, alive, stops the apply and stores the state it made: the run had
    // lost the stack's lock, so the state is kept as an orphaned version, not current.
    let list = cluster.gantry.wait_for(Duration::from_secs(60), || {
        let list = cluster.gantry.json(&["stack", "state", "list", "app"]);
        (!list["versions"].as_array().unwrap().is_empty()).then_some(list)
    });
    let orphan = &list["versions"][0];
    assert_eq!(
        (&orphan["version"], &orphan["orphaned"], &orphan["current"], &orphan["run_id"]),
        (&serde_json::json!(1), &serde_json::json!(true), &serde_json::json!(false), &run["id"]),
        "{list}"
    );
    let log = cluster.gantry.wait_for(Duration::from_secs(30), || {
        let log = cluster.gantry.log(&run);
        log.contains("orphaned state version 1").then_some(log)
    });
    assert!(log.contains("gantry stack state adopt app 1"), "{log}");
    let failed = cluster.gantry.json(&["run", "show", id(&run)]);
    assert_eq!(failed["state"], "FAILED", "how the run ended is unchanged: {failed}");

    // Adopted, it is the state the stack's next run starts from.
    let adopted = cluster.gantry.json(&["stack", "state", "adopt", "app", "1"]);
    assert_eq!(
        (&adopted["version"], &adopted["current"], &adopted["adopted_from"]),
        (&serde_json::json!(2), &serde_json::json!(true), &serde_json::json!(1)),
        "{adopted}"
    );
    let task = cluster.gantry.json(&["run", "task", "app", "--", "terraform", "state", "list"]);
    let task = cluster.gantry.wait_for_state(&task, &["FINISHED", "FAILED"]);
    assert_eq!(task["state"], "FINISHED", "{task}");
    let log = cluster.gantry.log(&task);
    assert!(log.lines().any(|line| line == "terraform_data.first"), "{log}");
}
