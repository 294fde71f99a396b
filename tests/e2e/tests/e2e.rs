//! End-to-end: the real `gantry server`, `gantry-launcher` (with the real
//! `gantry-worker` and `terraform`) and `gantry` CLI as separate processes on loopback.
//! The binaries come from the workspace's target directory: `cargo build --workspace
//! --bins` first (the README's test command does).

mod browser;
mod docker;
mod harness;
mod hostile;
mod launcher_options;
mod logs;
mod master_key;
mod outages;
mod pod_protocol;
mod replicas;
mod schedules;
mod scheduling;
mod sealed_secrets;
mod secrets;
mod webhooks;

use std::time::Duration;

use base64::Engine;
use gantry_testkit::{GitRepository, KeyKind, OpensslKey};
use harness::{
    Cluster, Gantry, Launcher, ServerProcess, base64_of, id, line_after, processes_running,
    slow_config, state_has_resource, states,
};
use serde_json::Value;

/// A configuration whose state lives in a file outside the run's workspace (the path
/// comes from the stack's environment), so tests can see what was really applied.
const STATEFUL_CONFIG: &str = r#"
terraform {
  backend "local" {}
}

resource "terraform_data" "example" {
  input = "created by gantry"
}

output "message" {
  value = terraform_data.example.output
}

output "secret" {
  value     = "s3cr3t-marker-7f3a9c"
  sensitive = true
}
"#;

#[test]
fn a_tracked_run_through_a_pool_made_with_openssl_rsa_4096() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let key = OpensslKey::generate(work.path(), "pool", KeyKind::Rsa4096);
    let token = cluster.gantry.create_pool("rsa", &key);
    let _launcher = Launcher::start(
        &cluster,
        &token,
        &base64_of(&key.key_pem),
        &[("GANTRY_METADATA_zone", "e2e")],
    );
    let worker = cluster.gantry.wait_for(Duration::from_secs(30), || {
        let workers = cluster.gantry.json(&["worker", "list", "--pool", "rsa"]);
        workers["workers"].as_array().and_then(|w| w.first()).cloned()
    });
    assert_eq!(worker["status"], "IDLE");
    assert_eq!(worker["metadata"]["zone"], "e2e");

    let state_file = work.path().join("state/terraform.tfstate");
    let repository =
        GitRepository::create(&work.path().join("repo"), &[("infra/main.tf", STATEFUL_CONFIG)]);
    cluster.gantry.create_stack("app", &repository, "rsa", &state_file, &[]);

    // A proposed run plans and finishes without applying.
    let proposed = cluster.gantry.trigger("app", &["--proposed"]);
    let proposed = cluster.gantry.wait_for_state(&proposed, &["FINISHED", "FAILED"]);
    assert_eq!(proposed["state"], "FINISHED", "{proposed}");
    assert_eq!(
        states(&proposed),
        ["QUEUED", "READY", "PREPARING", "INITIALIZING", "PLANNING", "FINISHED"]
    );
    assert_eq!(proposed["has_changes"], true);
    let log = cluster.gantry.log(&proposed);
    assert!(log.contains("Plan: 1 to add"), "{log}");
    assert!(!log.contains("Apply complete"), "{log}");
    assert!(!state_has_resource(&state_file), "a proposed run creates nothing");

    // A tracked run waits for confirmation with the plan in its log, then applies.
    let tracked = cluster.gantry.trigger("app", &[]);
    let tracked = cluster.gantry.wait_for_state(&tracked, &["UNCONFIRMED", "FAILED"]);
    assert_eq!(tracked["state"], "UNCONFIRMED", "{tracked}");
    assert_eq!(tracked["commit"].as_str(), Some(repository.head().as_str()));
    let log = cluster.gantry.log(&tracked);
    assert!(
        log.contains("terraform_data.example will be created") && log.contains("Plan: 1 to add"),
        "{log}"
    );
    assert!(!state_has_resource(&state_file));
    let idle = cluster.gantry.json(&["worker", "list"]);
    assert_eq!(
        idle["workers"][0]["status"], "IDLE",
        "a run waiting for confirmation frees its worker"
    );

    cluster.gantry.ok(&["run", "confirm", id(&tracked)]);
    let finished = cluster.gantry.wait_for_state(&tracked, &["FINISHED", "FAILED"]);
    assert_eq!(finished["state"], "FINISHED", "{finished}");
    assert_eq!(
        states(&finished),
        [
            "QUEUED",
            "READY",
            "PREPARING",
            "INITIALIZING",
            "PLANNING",
            "UNCONFIRMED",
            "CONFIRMED",
            "APPLYING",
            "FINISHED"
        ]
    );
    let outputs = finished["outputs"].as_array().unwrap();
    let message = outputs.iter().find(|o| o["name"] == "message").unwrap();
    assert_eq!(message["value"], "created by gantry");
    let secret = outputs.iter().find(|o| o["name"] == "secret").unwrap();
    assert_eq!(secret["sensitive"], true);
    assert!(secret["value"].is_null());
    let log = cluster.gantry.log(&finished);
    assert!(log.contains("Apply complete! Resources: 1 added"), "{log}");
    assert!(state_has_resource(&state_file), "the confirmed plan was applied");

    // Nothing the server keeps holds the sensitive value.
    cluster.server.assert_nothing_contains(gantry_testkit::MARKER_OUTPUT);

    // With the resource in place, the next tracked run has nothing to do.
    let again = cluster.gantry.trigger("app", &[]);
    let again = cluster.gantry.wait_for_state(&again, &["FINISHED", "FAILED", "UNCONFIRMED"]);
    assert_eq!(again["state"], "FINISHED");
    assert_eq!(again["has_changes"], false);
    assert_eq!(states(&again).last().map(String::as_str), Some("FINISHED"));
    assert!(!states(&again).contains(&"APPLYING".to_owned()));
}

#[test]
fn an_autodeploy_stack_on_a_p256_pool_applies_without_confirmation() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let key = OpensslKey::generate(work.path(), "pool", KeyKind::P256);
    let token = cluster.gantry.create_pool("ec", &key);
    // Raw PEM is accepted as well as base64.
    let _launcher = Launcher::start(&cluster, &token, &key.key_pem, &[]);
    let state_file = work.path().join("state/terraform.tfstate");
    let repository =
        GitRepository::create(&work.path().join("repo"), &[("infra/main.tf", STATEFUL_CONFIG)]);
    cluster.gantry.create_stack("auto", &repository, "ec", &state_file, &["--autodeploy"]);
    let run = cluster.gantry.trigger("auto", &[]);
    let run = cluster.gantry.wait_for_state(&run, &["FINISHED", "FAILED", "UNCONFIRMED"]);
    assert_eq!(run["state"], "FINISHED", "{run}");
    assert_eq!(
        states(&run),
        ["QUEUED", "READY", "PREPARING", "INITIALIZING", "PLANNING", "APPLYING", "FINISHED"]
    );
    assert!(state_has_resource(&state_file));
}

#[test]
fn a_failing_plan_fails_the_run_with_the_reason_in_the_log() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let key = OpensslKey::generate(work.path(), "pool", KeyKind::P256);
    let token = cluster.gantry.create_pool("p", &key);
    let _launcher = Launcher::start(&cluster, &token, &base64_of(&key.key_pem), &[]);
    let repository = GitRepository::create(
        &work.path().join("repo"),
        &[("infra/main.tf", "resource \"terraform_data\" \"x\" {\n  input = var.missing\n}\n")],
    );
    cluster.gantry.create_stack(
        "broken",
        &repository,
        "p",
        &work.path().join("state.tfstate"),
        &[],
    );
    let run = cluster.gantry.trigger("broken", &[]);
    let run = cluster.gantry.wait_for_state(&run, &["FINISHED", "FAILED", "UNCONFIRMED"]);
    assert_eq!(run["state"], "FAILED");
    assert!(run["failure"].as_str().unwrap().contains("plan failed"), "{run}");
    let log = cluster.gantry.log(&run);
    assert!(log.contains("Reference to undeclared input variable"), "{log}");
    let worker = cluster.gantry.json(&["worker", "list"]);
    assert_eq!(worker["workers"][0]["status"], "IDLE", "a failed run frees its worker");
}

#[test]
fn a_launcher_with_the_wrong_key_or_a_garbage_token_stops_with_one_clear_line() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let key = OpensslKey::generate(work.path(), "pool", KeyKind::P256);
    let other = OpensslKey::generate(work.path(), "other", KeyKind::P256);
    let token = cluster.gantry.create_pool("p", &key);

    let wrong_key = Launcher::run_to_exit(&cluster, &token, &base64_of(&other.key_pem));
    assert_eq!(wrong_key.status, Some(64));
    assert!(
        wrong_key
            .stderr
            .contains("GANTRY_POOL_PRIVATE_KEY does not match the certificate in GANTRY_TOKEN"),
        "{}",
        wrong_key.stderr
    );
    let garbage_token = Launcher::run_to_exit(&cluster, "garbage%%", &base64_of(&key.key_pem));
    assert_eq!(garbage_token.status, Some(64));
    assert!(
        garbage_token.stderr.contains("GANTRY_TOKEN (value hidden): expected a Gantry pool token"),
        "{}",
        garbage_token.stderr
    );
    let bad_key = Launcher::run_to_exit(&cluster, &token, "bm90IGEga2V5");
    assert_eq!(bad_key.status, Some(64));
    assert!(
        bad_key.stderr.contains("GANTRY_POOL_PRIVATE_KEY (value hidden)"),
        "{}",
        bad_key.stderr
    );
    for outcome in [&wrong_key, &garbage_token, &bad_key] {
        assert_eq!(outcome.stderr.trim().lines().count(), 1, "one line: {}", outcome.stderr);
        assert!(!outcome.stderr.contains("PRIVATE KEY-----"));
    }
    let workers = cluster.gantry.json(&["worker", "list"]);
    assert!(workers["workers"].as_array().unwrap().is_empty(), "nothing registered");
}

#[test]
fn a_launcher_retries_an_unreachable_server_and_connects_when_it_comes_up() {
    let work = tempfile::tempdir().unwrap();
    let key = OpensslKey::generate(work.path(), "pool", KeyKind::P256);
    // A pool on a first server, whose port is then taken over by a second start.
    let data_dir = work.path().join("server");
    let first = ServerProcess::start_in(&data_dir, "127.0.0.1:0");
    let port = first.url.rsplit(':').next().unwrap().to_owned();
    let gantry = Gantry::for_server(&first);
    let token = gantry.create_pool("p", &key);
    drop(first);

    let mut launcher = Launcher::spawn_for(&token, &base64_of(&key.key_pem), work.path(), &[]);
    let waited = launcher.wait_for_stderr("cannot reach the server at", Duration::from_secs(20));
    let line = waited.lines().find(|line| line.contains("cannot reach the server at")).unwrap();
    assert!(line.contains(&format!("127.0.0.1:{port}")) && line.contains("retrying in"), "{line}");

    let second = ServerProcess::start_in(&data_dir, &format!("127.0.0.1:{port}"));
    let gantry = Gantry::for_server_with_key(&second, &gantry.api_key);
    gantry.wait_for(Duration::from_secs(60), || {
        let workers = gantry.json(&["worker", "list"]);
        (workers["workers"].as_array().map(Vec::len) == Some(1)).then_some(())
    });
}

#[test]
fn gantry_up_runs_the_example_and_a_second_start_reuses_its_state() {
    let work = tempfile::tempdir().unwrap();
    let first = harness::Up::start(work.path());
    let output = first.wait_for_stdout("Press Ctrl-C to stop.", Duration::from_secs(120));
    assert!(output.contains("Plan: 2 to add"), "{output}");
    assert!(output.contains("ended FINISHED"), "{output}");
    assert!(
        output.contains("output greeting = \"hello, world, from a private worker pool\""),
        "{output}"
    );
    let api_url = line_after(&output, "API ").unwrap();
    let status = first.interrupt_and_wait();
    assert_eq!(status, Some(0), "Ctrl-C stops gantry up cleanly");

    let second = harness::Up::start(work.path());
    let output = second.wait_for_stdout("Press Ctrl-C to stop.", Duration::from_secs(120));
    assert!(!output.contains("Created the pool"), "the pool is reused: {output}");
    assert!(!output.contains("Created the stack"), "the stack is reused: {output}");
    assert!(output.contains("ended FINISHED"), "{output}");
    assert_ne!(line_after(&output, "API ").unwrap(), "", "{api_url}");
    // The CLI works in that directory with no setup, through the client file.
    let runs = harness::cli_in(work.path(), &["run", "list", "--output", "json"]);
    let runs: Value = serde_json::from_str(&runs).unwrap();
    assert_eq!(runs["runs"].as_array().unwrap().len(), 2);
    assert_eq!(second.interrupt_and_wait(), Some(0));
}

/// Runs an autodeploy stack whose apply sleeps, on a launcher with `limits`; returns the
/// failed run and its log once the processes of the run are gone.
fn run_into_a_timeout(sleep: &str, limits: &[(&str, &str)]) -> (Value, String) {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let key = OpensslKey::generate(work.path(), "pool", KeyKind::P256);
    let token = cluster.gantry.create_pool("p", &key);
    let _launcher = Launcher::start(&cluster, &token, &base64_of(&key.key_pem), limits);
    let repository =
        GitRepository::create(&work.path().join("repo"), &[("infra/main.tf", &slow_config(sleep))]);
    cluster.gantry.create_stack(
        "slow",
        &repository,
        "p",
        &work.path().join("state.tfstate"),
        &["--autodeploy"],
    );
    let run = cluster.gantry.trigger("slow", &[]);
    let run = cluster.gantry.wait_for_state(&run, &["FINISHED", "FAILED"]);
    assert_eq!(run["state"], "FAILED", "{run}");
    cluster.gantry.wait_for(Duration::from_secs(20), || {
        processes_running(&format!("sleep {sleep}")).is_empty().then_some(())
    });
    let log = cluster.gantry.log(&run);
    (run, log)
}

#[test]
fn a_run_that_prints_nothing_for_the_logs_timeout_is_stopped_and_fails() {
    let (run, log) = run_into_a_timeout("41.25", &[("GANTRY_LAUNCHER_LOGS_TIMEOUT", "3s")]);
    let failure = run["failure"].as_str().unwrap();
    assert!(failure.contains("printed nothing for 3s (GANTRY_LAUNCHER_LOGS_TIMEOUT)"), "{failure}");
    assert!(
        log.contains("Provisioning with 'local-exec'"),
        "the log before the silence is kept: {log}"
    );
    assert!(log.contains(failure), "the reason is in the log too: {log}");
    assert!(states(&run).contains(&"APPLYING".to_owned()));
}

#[test]
fn a_run_longer_than_the_run_timeout_is_stopped_and_fails() {
    let (run, log) = run_into_a_timeout(
        "42.25",
        &[("GANTRY_LAUNCHER_RUN_TIMEOUT", "4s"), ("GANTRY_LAUNCHER_LOGS_TIMEOUT", "1h")],
    );
    let failure = run["failure"].as_str().unwrap();
    assert!(
        failure.contains("exceeded its time limit of 4s (GANTRY_LAUNCHER_RUN_TIMEOUT)"),
        "{failure}"
    );
    assert!(log.contains(failure), "{log}");
}

#[test]
fn a_discarded_plan_never_applies() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let key = OpensslKey::generate(work.path(), "pool", KeyKind::P256);
    let token = cluster.gantry.create_pool("p", &key);
    let _launcher = Launcher::start(&cluster, &token, &base64_of(&key.key_pem), &[]);
    let state_file = work.path().join("state/terraform.tfstate");
    let repository =
        GitRepository::create(&work.path().join("repo"), &[("infra/main.tf", STATEFUL_CONFIG)]);
    cluster.gantry.create_stack("app", &repository, "p", &state_file, &[]);
    let run = cluster.gantry.trigger("app", &[]);
    let run = cluster.gantry.wait_for_state(&run, &["UNCONFIRMED", "FAILED"]);
    assert_eq!(run["state"], "UNCONFIRMED");
    cluster.gantry.ok(&["run", "discard", id(&run)]);
    let run = cluster.gantry.json(&["run", "show", id(&run)]);
    assert_eq!(run["state"], "DISCARDED");
    // The lock is free again: the next tracked run plans at once.
    let next = cluster.gantry.trigger("app", &[]);
    let next = cluster.gantry.wait_for_state(&next, &["UNCONFIRMED", "FAILED"]);
    assert_eq!(next["state"], "UNCONFIRMED");
    assert!(!state_has_resource(&state_file));
    let refused = cluster.gantry.json(&["run", "show", id(&run)]);
    assert_eq!(refused["state"], "DISCARDED");
}

#[test]
fn a_network_that_keeps_failing_loses_and_duplicates_nothing() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let key = OpensslKey::generate(work.path(), "pool", KeyKind::P256);
    let token = cluster.gantry.create_pool("p", &key);
    // The launcher reaches the server only through a proxy that cuts every connection
    // every 250 ms: session opening, polls, acknowledgements, reports and log uploads
    // all fail mid-flight and are retried.
    let server_address = cluster.server.url.strip_prefix("https://").unwrap().parse().unwrap();
    let proxy = gantry_testkit::FlakyProxy::start(server_address, Duration::from_millis(250));
    let mut decoded: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.trim()).unwrap(),
    )
    .unwrap();
    decoded["endpoint"] = Value::String(format!("https://{}", proxy.address));
    let flaky_token = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .encode(serde_json::to_vec(&decoded).unwrap());
    let _launcher = Launcher::start(&cluster, &flaky_token, &base64_of(&key.key_pem), &[]);

    const RESOURCES: usize = 40;
    // The slow resource keeps the apply going for two seconds, through several cuts,
    // however fast the rest is.
    let config = format!(
        "resource \"terraform_data\" \"item\" {{\n  count = {RESOURCES}\n  input = \"item ${{count.index}}\"\n}}\n\
         resource \"terraform_data\" \"slow\" {{\n  provisioner \"local-exec\" {{\n    command = \"sleep 2\"\n  }}\n}}\n"
    );
    let repository =
        GitRepository::create(&work.path().join("repo"), &[("infra/main.tf", &config)]);
    cluster.gantry.create_stack(
        "many",
        &repository,
        "p",
        &work.path().join("state.tfstate"),
        &["--autodeploy"],
    );
    let run = cluster.gantry.trigger("many", &[]);
    let run = cluster.gantry.wait_for_state(&run, &["FINISHED", "FAILED"]);
    assert_eq!(run["state"], "FINISHED", "{run}");
    assert!(proxy.cuts() >= 3, "the network was cut {} times only", proxy.cuts());

    let chunks: Vec<Value> = cluster
        .gantry
        .ok(&["run", "logs", id(&run), "--output", "json"])
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let seqs: Vec<u64> = chunks.iter().map(|chunk| chunk["seq"].as_u64().unwrap()).collect();
    assert_eq!(
        seqs,
        (0..seqs.len() as u64).collect::<Vec<_>>(),
        "sequence numbers without gaps or repeats"
    );
    let log =
        strip_ansi(&chunks.iter().map(|chunk| chunk["text"].as_str().unwrap()).collect::<String>());
    for once in [
        "▶ Initializing",
        "▶ Planning",
        "▶ Applying",
        &format!("Plan: {} to add", RESOURCES + 1),
        &format!("Apply complete! Resources: {} added", RESOURCES + 1),
    ] {
        assert_eq!(log.matches(once).count(), 1, "{once:?} exactly once in:\n{log}");
    }
    for index in 0..RESOURCES {
        let line = format!("terraform_data.item[{index}]: Creation complete");
        assert_eq!(log.matches(&line).count(), 1, "{line:?} exactly once");
    }
    let order: Vec<usize> = ["▶ Initializing", "▶ Planning", "▶ Applying", "Apply complete!"]
        .iter()
        .map(|marker| log.find(marker).unwrap())
        .collect();
    assert!(order.windows(2).all(|pair| pair[0] < pair[1]), "phases in order");
    assert_eq!(
        states(&run),
        ["QUEUED", "READY", "PREPARING", "INITIALIZING", "PLANNING", "APPLYING", "FINISHED"]
    );
}

/// The text without ANSI escape sequences (terraform colours its output).
fn strip_ansi(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        plain.push(c);
    }
    plain
}

/// Runs a stack whose git host accepts connections and never answers, on a launcher
/// with `limits`; returns the failed run.
fn checkout_from_a_silent_git_host(limits: &[(&str, &str)]) -> Value {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let address = silent.local_addr().unwrap();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for connection in silent.incoming() {
            held.push(connection);
        }
    });
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let key = OpensslKey::generate(work.path(), "pool", KeyKind::P256);
    let token = cluster.gantry.create_pool("p", &key);
    let _launcher = Launcher::start(&cluster, &token, &base64_of(&key.key_pem), limits);
    let repository = format!("git://{address}/repo.git");
    cluster.gantry.ok(&[
        "stack",
        "create",
        "--name",
        "hung",
        "--repository",
        &repository,
        "--pool",
        "p",
    ]);
    let run = cluster.gantry.trigger("hung", &[]);
    let run = cluster.gantry.wait_for_state(&run, &["FINISHED", "FAILED"]);
    assert_eq!(run["state"], "FAILED");
    cluster.gantry.wait_for(Duration::from_secs(10), || {
        processes_running(&repository).is_empty().then_some(())
    });
    let worker = cluster.gantry.json(&["worker", "list"]);
    assert_eq!(worker["workers"][0]["status"], "IDLE");
    run
}

#[test]
fn a_checkout_that_hangs_is_bounded_by_the_run_timeout_and_the_silence_limit() {
    let run = checkout_from_a_silent_git_host(&[("GANTRY_LAUNCHER_RUN_TIMEOUT", "3s")]);
    assert!(run["failure"].as_str().unwrap().contains("exceeded its time limit of 3s"), "{run}");
    let run = checkout_from_a_silent_git_host(&[("GANTRY_LAUNCHER_LOGS_TIMEOUT", "2s")]);
    assert!(run["failure"].as_str().unwrap().contains("printed nothing for 2s"), "{run}");
}

/// A configuration holding a secret: a sensitive variable fed into a resource, and a
/// sensitive output. Terraform keeps the value in clear in its plan and state files.
const SECRET_CONFIG: &str = r#"
variable "password" {
  type      = string
  default   = "s3cr3t-marker-7f3a9c"
  sensitive = true
}

resource "terraform_data" "database" {
  input = {
    password = var.password
    engine   = "postgres"
  }
}

output "engine" {
  value = terraform_data.database.output.engine
}

output "password" {
  value     = terraform_data.database.output.password
  sensitive = true
}
"#;

/// A pool with a P-256 key, and a managed-state stack on it holding `SECRET_CONFIG`.
struct ManagedStack {
    cluster: Cluster,
    work: tempfile::TempDir,
    key: OpensslKey,
    token: String,
}

impl ManagedStack {
    fn start() -> Self {
        Self::start_with(&[])
    }

    /// With extra server settings.
    fn start_with(server_env: &[(&str, &str)]) -> Self {
        let cluster = Cluster::start_with(server_env);
        let work = tempfile::tempdir().unwrap();
        let key = OpensslKey::generate(work.path(), "pool", KeyKind::P256);
        let token = cluster.gantry.create_pool("p", &key);
        let repository =
            GitRepository::create(&work.path().join("repo"), &[("infra/main.tf", SECRET_CONFIG)]);
        cluster.gantry.create_managed_stack("db", &repository.url(), "p", &[]);
        Self { cluster, work, key, token }
    }

    fn launcher(&self) -> Launcher {
        Launcher::start(&self.cluster, &self.token, &base64_of(&self.key.key_pem), &[])
    }

    /// Triggers a tracked run and waits until its plan waits for confirmation.
    fn plan(&self) -> Value {
        let run = self.cluster.gantry.trigger("db", &[]);
        let run = self.cluster.gantry.wait_for_state(&run, &["UNCONFIRMED", "FAILED", "FINISHED"]);
        assert_eq!(run["state"], "UNCONFIRMED", "{run}");
        run
    }

    fn confirm_and_wait(&self, run: &Value) -> Value {
        self.cluster.gantry.ok(&["run", "confirm", id(run)]);
        self.cluster.gantry.wait_for_state(run, &["FINISHED", "FAILED"])
    }
}

#[test]
fn a_plan_made_on_one_launcher_is_applied_on_another_and_the_server_sees_only_ciphertext() {
    let stack = ManagedStack::start();
    let launcher_a = stack.launcher();
    let run = stack.plan();
    let planned_log = stack.cluster.gantry.log(&run);
    assert!(
        planned_log.contains("Storing the planned workspace, encrypted to the pool key"),
        "{planned_log}"
    );
    assert!(
        planned_log.contains("(sensitive value)"),
        "terraform redacts the secret in the plan: {planned_log}"
    );
    assert!(
        stack.cluster.server.workspace_blob(id(&run)).is_file(),
        "the workspace is stored on the server"
    );
    let workers = stack.cluster.gantry.json(&["worker", "list"]);
    assert_eq!(workers["workers"][0]["status"], "IDLE", "the worker is free while the plan waits");

    // The launcher that planned goes away; another launcher of the pool applies.
    launcher_a.stop();
    let _launcher_b = stack.launcher();
    let applied = stack.confirm_and_wait(&run);
    assert_eq!(applied["state"], "FINISHED", "{applied}");
    let log = stack.cluster.gantry.log(&applied);
    assert!(log.contains("Apply complete! Resources: 1 added"), "{log}");
    assert!(log.contains("The new state is stored, encrypted to the pool key"), "{log}");
    let engine = applied["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == "engine")
        .unwrap()
        .clone();
    assert_eq!(engine["value"], "postgres");
    assert!(
        !stack.cluster.server.workspace_blob(id(&run)).exists(),
        "the workspace goes once the run ends"
    );

    // The state Gantry keeps is the one the next run starts from.
    let again = stack.cluster.gantry.trigger("db", &[]);
    let again = stack.cluster.gantry.wait_for_state(&again, &["FINISHED", "FAILED", "UNCONFIRMED"]);
    assert_eq!(again["state"], "FINISHED", "{again}");
    assert_eq!(again["has_changes"], false, "the managed state was brought back in");

    // Neither the database nor any blob holds the secret, in clear or in base64.
    stack.cluster.server.assert_nothing_contains(gantry_testkit::MARKER_OUTPUT);
    let _ = &stack.work;
}

#[test]
fn a_server_with_an_s3_blob_store_keeps_workspaces_and_state_in_the_bucket() {
    let Some(moto) = gantry_testkit::MotoServer::start() else { return };
    let bucket = moto.create_bucket();
    let (location, endpoint) = (format!("s3://{bucket}/gantry"), moto.endpoint());
    let stack = ManagedStack::start_with(&[
        ("GANTRY_SERVER_BLOB_STORE", &location),
        ("GANTRY_SERVER_S3_ENDPOINT", &endpoint),
        ("GANTRY_SERVER_S3_ALLOW_HTTP", "true"),
        ("AWS_ACCESS_KEY_ID", gantry_testkit::MotoServer::ACCESS_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", gantry_testkit::MotoServer::SECRET_ACCESS_KEY),
    ]);
    let _launcher = stack.launcher();
    let run = stack.plan();
    // Each upload has a key of its own: `workspace.<token>`.
    let workspace = format!("gantry/runs/{}/workspace.", id(&run).to_ascii_lowercase());
    let stored = |keys: &[String]| keys.iter().any(|key| key.starts_with(&workspace));
    assert!(stored(&moto.keys(&bucket)), "{:?}", moto.keys(&bucket));
    assert!(!stack.cluster.server.data_dir.join("blobs").exists(), "nothing in the data directory");

    let applied = stack.confirm_and_wait(&run);
    assert_eq!(applied["state"], "FINISHED", "{applied}");
    let keys = moto.keys(&bucket);
    let state = format!("/state/{}.", id(&run).to_ascii_lowercase());
    assert!(
        keys.iter().any(|key| key.starts_with("gantry/stacks/") && key.contains(&state)),
        "the new state version is in the bucket: {keys:?}"
    );
    assert!(!stored(&keys), "the workspace goes once the run ends: {keys:?}");

    // The next run starts from the state kept in the bucket.
    let again = stack.cluster.gantry.trigger("db", &[]);
    let again = stack.cluster.gantry.wait_for_state(&again, &["FINISHED", "FAILED", "UNCONFIRMED"]);
    assert_eq!(again["state"], "FINISHED", "{again}");
    assert_eq!(again["has_changes"], false, "the managed state was brought back in");
    for key in moto.keys(&bucket) {
        let bytes = moto.object(&bucket, &key).unwrap();
        let marker = gantry_testkit::MARKER_OUTPUT.as_bytes();
        assert!(!bytes.windows(marker.len()).any(|w| w == marker), "{key} holds the secret");
    }
}

#[test]
fn a_stored_workspace_that_was_altered_truncated_or_swapped_is_refused() {
    let stack = ManagedStack::start();
    let _launcher = stack.launcher();
    // Plans of four stacks share one pool; three workspaces get damaged three ways.
    let repository = GitRepository::create(
        &stack.work.path().join("other"),
        &[("infra/main.tf", SECRET_CONFIG)],
    );
    let url = repository.url();
    for name in ["db2", "db3", "db4"] {
        stack.cluster.gantry.create_stack_at(name, &url, Some("p"), &[]);
    }
    let plan = |stack_name: &str| {
        let run = stack.cluster.gantry.trigger(stack_name, &[]);
        let run = stack.cluster.gantry.wait_for_state(&run, &["UNCONFIRMED", "FAILED"]);
        assert_eq!(run["state"], "UNCONFIRMED", "{run}");
        run
    };
    let flipped = plan("db");
    let truncated = plan("db2");
    let swapped = plan("db3");
    let donor = plan("db4");

    let server = &stack.cluster.server;
    let path = server.workspace_blob(id(&flipped));
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    server.record_workspace(id(&flipped), &path);

    let path = server.workspace_blob(id(&truncated));
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() - 100]).unwrap();
    server.record_workspace(id(&truncated), &path);

    // Run db3 gets the workspace of another run (of another stack), intact.
    let path = server.workspace_blob(id(&swapped));
    std::fs::copy(server.workspace_blob(id(&donor)), &path).unwrap();
    server.record_workspace(id(&swapped), &path);

    for (run, expected) in [
        (&flipped, "fails its integrity check"),
        (&truncated, "fails its integrity check"),
        (&swapped, "belongs to another run or purpose"),
    ] {
        let ended = stack.confirm_and_wait(run);
        assert_eq!(ended["state"], "FAILED", "{ended}");
        let failure = ended["failure"].as_str().unwrap();
        assert!(failure.contains(expected), "{failure}");
        let log = stack.cluster.gantry.log(&ended);
        assert!(!log.contains("Apply complete"), "{log}");
    }
}

#[test]
fn a_pool_reset_refuses_the_old_launcher_and_runs_sealed_for_the_old_key_fail_saying_so() {
    let stack = ManagedStack::start();
    let old_launcher = stack.launcher();
    // The stack gets managed state sealed for the first key, and a plan waits.
    let first = stack.plan();
    assert_eq!(stack.confirm_and_wait(&first)["state"], "FINISHED");
    let waiting = {
        let repository = GitRepository::create(
            &stack.work.path().join("waits"),
            &[("infra/main.tf", SECRET_CONFIG)],
        );
        stack.cluster.gantry.create_stack_at("waits", &repository.url(), Some("p"), &[]);
        let run = stack.cluster.gantry.trigger("waits", &[]);
        stack.cluster.gantry.wait_for_state(&run, &["UNCONFIRMED", "FAILED"])
    };
    assert_eq!(waiting["state"], "UNCONFIRMED");

    let new_key = OpensslKey::generate(stack.work.path(), "new", KeyKind::Rsa4096);
    let csr = new_key.key_path.with_extension("csr");
    let reset = stack.cluster.gantry.json(&["pool", "reset", "p", "--csr", csr.to_str().unwrap()]);
    let new_token = reset["token"].as_str().unwrap().to_owned();
    assert_eq!(reset["pool"]["key_algorithm"], "RSA-4096");

    // The old launcher is refused at once and stops, saying why.
    let exited = old_launcher.wait_for_exit(Duration::from_secs(60));
    assert_eq!(exited.status, Some(64), "{}", exited.stderr);
    assert!(exited.stderr.contains("was reset"), "{}", exited.stderr);
    // The old token no longer opens anything.
    let refused =
        Launcher::run_to_exit(&stack.cluster, &stack.token, &base64_of(&stack.key.key_pem));
    assert_eq!(refused.status, Some(64));
    assert!(refused.stderr.contains("was reset"), "{}", refused.stderr);

    let _new_launcher =
        Launcher::start(&stack.cluster, &new_token, &base64_of(&new_key.key_pem), &[]);
    let stale_plan = stack.confirm_and_wait(&waiting);
    assert_eq!(stale_plan["state"], "FAILED");
    assert!(
        stale_plan["failure"].as_str().unwrap().contains("sealed for another pool key"),
        "{stale_plan}"
    );
    let stale_state = stack.cluster.gantry.trigger("db", &[]);
    let stale_state =
        stack.cluster.gantry.wait_for_state(&stale_state, &["FAILED", "UNCONFIRMED", "FINISHED"]);
    assert_eq!(stale_state["state"], "FAILED");
    let failure = stale_state["failure"].as_str().unwrap();
    assert!(failure.contains("state was sealed for another pool key"), "{failure}");
}

#[test]
fn code_in_a_run_sees_neither_the_pool_key_nor_the_token() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let key = OpensslKey::generate(work.path(), "pool", KeyKind::P256);
    let token = cluster.gantry.create_pool("p", &key);
    let key_base64 = base64_of(&key.key_pem);
    let _launcher = Launcher::start(&cluster, &token, &key_base64, &[]);
    // The run prints its own environment, its parent's (terraform) and the worker's.
    let config = r#"
resource "terraform_data" "snoop" {
  provisioner "local-exec" {
    command = "env; echo ---; tr '\\0' '\\n' < /proc/$PPID/environ; echo ---; worker=$(awk '{print $4}' /proc/$PPID/stat); tr '\\0' '\\n' < /proc/$worker/environ; tr '\\0' ' ' < /proc/$worker/cmdline; echo; ls -la"
  }
}
"#;
    let repository = GitRepository::create(&work.path().join("repo"), &[("infra/main.tf", config)]);
    cluster.gantry.create_stack(
        "snoop",
        &repository,
        "p",
        &work.path().join("state.tfstate"),
        &["--autodeploy"],
    );
    let run = cluster.gantry.trigger("snoop", &[]);
    let run = cluster.gantry.wait_for_state(&run, &["FINISHED", "FAILED"]);
    assert_eq!(run["state"], "FINISHED", "{run}");
    let log = cluster.gantry.log(&run);
    assert!(log.contains("PATH="), "the snooping ran: {log}");
    let pem_body = key.key_pem.lines().nth(1).unwrap();
    for secret in
        [pem_body, &key_base64[..40], &token[..40], "GANTRY_POOL_PRIVATE_KEY", "GANTRY_TOKEN"]
    {
        assert!(!log.contains(secret), "the run could see {secret:?}");
    }
}
