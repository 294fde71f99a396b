//! End to end: a drift schedule, firing on the real clock, finds infrastructure changed
//! outside Gantry (a launcher-passed variable the applied resource was made from changed),
//! marks the stack drifted, and a tracked run clears it.

use std::time::Duration;

use gantry_testkit::GitRepository;
use serde_json::Value;

use crate::harness::{Cluster, Launcher};

/// One resource made from a variable the launcher passes.
const SIZED_CONFIG: &str = r#"
terraform {
  backend "local" {}
}

variable "size" {
  type = string
}

resource "terraform_data" "disk" {
  input = var.size
}
"#;

fn launcher_passing(cluster: &Cluster, pool: &crate::harness::PoolAccess, size: &str) -> Launcher {
    Launcher::of(cluster, pool, &[("GANTRY_WHITELIST_ENVS", "TF_VAR_size"), ("TF_VAR_size", size)])
}

#[test]
fn a_drift_schedule_finds_a_change_made_outside_gantry_and_a_tracked_run_clears_it() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let pool = cluster.private_pool(work.path(), "p");
    let launcher = launcher_passing(&cluster, &pool, "10");
    let repository =
        GitRepository::create(&work.path().join("repo"), &[("infra/main.tf", SIZED_CONFIG)]);
    let state = work.path().join("state").join("app.tfstate");
    cluster.gantry.create_stack("app", &repository, "p", &state, &["--autodeploy"]);
    let applied = cluster.gantry.trigger("app", &[]);
    let applied = cluster.gantry.wait_for_state(&applied, &["FINISHED", "FAILED"]);
    assert_eq!(applied["state"], "FINISHED", "{}", cluster.gantry.log(&applied));

    // The disk is resized behind Gantry's back: the launcher now passes another size.
    launcher.stop();
    let _launcher = launcher_passing(&cluster, &pool, "20");
    let added = cluster.gantry.json(&[
        "stack",
        "schedule",
        "add",
        "app",
        "--cron",
        "* * * * *",
        "--kind",
        "drift",
        "--time-zone",
        "Europe/Berlin",
    ]);
    assert_eq!(added["kind"], "drift", "{added}");

    // The next minute's firing triggers a drift check: a proposed run whose plan has changes.
    let check = cluster.gantry.wait_for(Duration::from_secs(90), || {
        let runs = cluster.gantry.json(&["run", "list", "--stack", "app"]);
        let runs = runs["runs"].as_array().unwrap();
        runs.iter().find(|run| run["type"] == "PROPOSED").cloned()
    });
    assert!(check["triggered_by"].as_str().unwrap().starts_with("schedule:drift:"), "{check}");
    let check = cluster.gantry.wait_for_state(&check, &["FINISHED", "FAILED"]);
    assert_eq!(check["state"], "FINISHED", "{}", cluster.gantry.log(&check));
    assert_eq!(check["has_changes"], true, "{check}");
    let drift = cluster.gantry.wait_for(Duration::from_secs(30), || {
        let stack = cluster.gantry.json(&["stack", "show", "app"]);
        Some(stack["stack"]["drift"].clone()).filter(|drift| !drift.is_null())
    });
    assert_eq!(drift["run_id"], check["id"], "{drift}");
    let listed = cluster.gantry.ok(&["stack", "list"]);
    assert!(listed.lines().nth(1).is_some_and(|row| !row.contains(" - ")), "{listed}");
    let schedules = cluster.gantry.json(&["stack", "schedule", "list", "app"]);
    let outcome = schedules["schedules"][0]["last_outcome"].as_str().unwrap_or_default().to_owned();
    assert_eq!(outcome, format!("proposed run {}", check["id"].as_str().unwrap()), "{schedules}");

    // The schedule goes; a tracked run applies the new size and clears the drift.
    let id = schedules["schedules"][0]["id"].as_str().unwrap();
    cluster.gantry.ok(&["stack", "schedule", "delete", "app", id]);
    let reconciled = cluster.gantry.trigger("app", &[]);
    let reconciled = cluster.gantry.wait_for_state(&reconciled, &["FINISHED", "FAILED"]);
    assert_eq!(reconciled["state"], "FINISHED", "{}", cluster.gantry.log(&reconciled));
    cluster.gantry.wait_for(Duration::from_secs(30), || {
        let stack = cluster.gantry.json(&["stack", "show", "app"]);
        stack["stack"]["drift"].is_null().then_some(())
    });
    let state: Value = serde_json::from_str(&std::fs::read_to_string(&state).unwrap()).unwrap();
    let input = &state["resources"][0]["instances"][0]["attributes"]["input"]["value"];
    assert_eq!(input, "20", "{state}");
}
