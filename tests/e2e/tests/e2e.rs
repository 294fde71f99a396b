//! End-to-end: the real `gantry server`, `gantry-launcher` (with the real
//! `gantry-worker` and `terraform`) and `gantry` CLI as separate processes on loopback.
//! The binaries come from the workspace's target directory: `cargo build --workspace
//! --bins` first (the README's test command does).

mod harness;

use std::time::Duration;

use base64::Engine;
use gantry_testkit::{GitRepository, KeyKind, OpensslKey};
use harness::{Cluster, Gantry, Launcher, ServerProcess};
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

fn base64_of(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

fn id(run: &Value) -> &str {
    run["id"].as_str().unwrap()
}

fn states(run: &Value) -> Vec<String> {
    run["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|change| change["state"].as_str().unwrap().to_owned())
        .collect()
}

fn state_has_resource(path: &std::path::Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|state| state.contains("\"terraform_data\""))
}

fn line_after(text: &str, prefix: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.trim_start().strip_prefix(prefix).map(|rest| rest.trim().to_owned()))
}

/// A configuration whose apply is silent for `seconds` (terraform prints a progress line
/// only every 10 s); the odd duration names the process for the orphan check.
fn slow_config(seconds: &str) -> String {
    format!(
        r#"
resource "terraform_data" "slow" {{
  provisioner "local-exec" {{
    command = "sleep {seconds}"
  }}
}}
"#
    )
}

fn processes_running(pattern: &str) -> Vec<String> {
    let output = std::process::Command::new("ps").args(["-eo", "args"]).output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains(pattern))
        .map(str::to_owned)
        .collect()
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
    let config = format!(
        "resource \"terraform_data\" \"item\" {{\n  count = {RESOURCES}\n  input = \"item ${{count.index}}\"\n}}\n"
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
        &format!("Plan: {RESOURCES} to add"),
        &format!("Apply complete! Resources: {RESOURCES} added"),
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
