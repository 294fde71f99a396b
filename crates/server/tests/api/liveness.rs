//! Liveness that is fast and keeps fencing: a dead launcher's run fails within seconds,
//! but its stack's next lock-taking run starts only lease + grace after the launcher's
//! last heartbeat; a run its live launcher keeps leaving out of its heartbeats fails too.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use gantry_domain::{RunState, Timestamp};
use gantry_proto::api::{Run, Stack};
use gantry_testkit::{ScriptedLauncher, TestServer};
use serde_json::{Value, json};

use super::Api;
use super::fail::{pool_with_stack, trigger_task, waiting_reason};

fn id(run: &Value) -> &str {
    run["id"].as_str().unwrap()
}

fn clock() -> Timestamp {
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis();
    Timestamp::from_unix_millis(i64::try_from(millis).unwrap())
}

async fn run(api: &Api, run: &str) -> Run {
    serde_json::from_value(api.get(&format!("/runs/{run}")).await.1).unwrap()
}

/// Waits until the run is in `state`; returns it.
async fn wait_for(api: &Api, id: &str, state: RunState, within: Duration) -> Run {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let shown = run(api, id).await;
        if shown.state == state {
            return shown;
        }
        assert!(tokio::time::Instant::now() < deadline, "run {id} stayed {}", shown.state);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn entered(run: &Run, state: RunState) -> Timestamp {
    run.history.iter().find(|change| change.state == state).map(|change| change.at).unwrap()
}

fn heartbeat(launcher: &ScriptedLauncher, running: &[&str]) -> Value {
    json!({"worker_ids": [launcher.worker], "running_run_ids": running})
}

#[tokio::test]
async fn a_dead_launchers_run_fails_fast_and_its_stack_stays_fenced_for_lease_and_grace() {
    let settings = [
        ("GANTRY_SERVER_HEARTBEAT_INTERVAL", "1s"),
        ("GANTRY_SERVER_WORKER_TIMEOUT", "2s"),
        ("GANTRY_SERVER_WORKER_LEASE", "4s"),
        ("GANTRY_SERVER_WORKER_LEASE_GRACE", "3s"),
    ];
    let server = TestServer::start_in(Arc::new(tempfile::tempdir().unwrap()), &settings).await;
    let api = Api { http: server.http(), server };
    let (launcher, _dir) = pool_with_stack(&api).await;

    let stuck = trigger_task(&api).await;
    launcher.take(id(&stuck), "plan").await;
    launcher.call("/heartbeat", heartbeat(&launcher, &[id(&stuck)])).await;
    launcher.report(id(&stuck), json!({"kind": "phase_started", "phase": "PERFORMING"})).await;
    let next = trigger_task(&api).await;
    let last_heartbeat = clock();
    launcher.call("/heartbeat", heartbeat(&launcher, &[id(&stuck)])).await;
    // The launcher dies: it never heartbeats again.

    let failed = wait_for(&api, id(&stuck), RunState::Failed, Duration::from_secs(30)).await;
    let failure = failed.failure.clone().unwrap();
    assert!(failure.starts_with("worker lost: the launcher on h stopped"), "{failure}");
    let failed_at = entered(&failed, RunState::Failed);
    // The timeout (2 s), then at most a sweep interval (2 s), with room for a slow machine.
    let noticed = failed_at.since(last_heartbeat);
    assert!(noticed >= Duration::from_secs(2), "failed {noticed:?} after the last heartbeat");
    assert!(noticed < Duration::from_secs(8), "failed {noticed:?} after the last heartbeat");

    // The stack stays fenced until lease + grace (7 s) after that heartbeat, by the
    // server's own record of it.
    let stack: Stack = serde_json::from_value(api.get("/stacks/app").await.1).unwrap();
    let fence = stack.lock_fence.expect("the stack is fenced");
    assert_eq!(fence.run_id.to_string(), id(&stuck));
    assert!(fence.until >= last_heartbeat.plus(Duration::from_secs(7)), "{fence:?}");
    assert!(fence.until > failed_at, "the run failed before its stack was free: {fence:?}");
    let reason = waiting_reason(&api, id(&next)).await;
    assert!(reason.contains("fenced until"), "{reason}");
    assert!(reason.contains("may still be stopping"), "{reason}");

    // Then the next task takes the lock (and waits for a worker, the only one being gone).
    let promoted = wait_for(&api, id(&next), RunState::Ready, Duration::from_secs(30)).await;
    let promoted_at = entered(&promoted, RunState::Ready);
    assert!(promoted_at >= fence.until, "promoted at {promoted_at:?}, fenced until {fence:?}");
    let (_, workers) = api.get("/workers").await;
    assert_eq!(workers["workers"], json!([]), "the dead launcher's worker is removed");
    let stack: Stack = serde_json::from_value(api.get("/stacks/app").await.1).unwrap();
    assert_eq!(stack.lock_fence, None, "a fence that has passed is not shown");
}

#[tokio::test]
async fn a_run_its_live_launcher_leaves_out_of_two_heartbeats_in_a_row_fails_fenced() {
    let api = Api::start().await;
    let (launcher, _dir) = pool_with_stack(&api).await;
    let lost = trigger_task(&api).await;
    launcher.take(id(&lost), "plan").await;
    launcher.report(id(&lost), json!({"kind": "phase_started", "phase": "PERFORMING"})).await;

    // Listed, then left out once (a heartbeat built before the run started may arrive
    // after), then listed again: nothing happens.
    for running in [&[id(&lost)][..], &[], &[id(&lost)], &[]] {
        launcher.call("/heartbeat", heartbeat(&launcher, running)).await;
        assert_eq!(run(&api, id(&lost)).await.state, RunState::Performing);
    }
    // Left out a second time in a row: the launcher no longer runs it.
    let before = clock();
    launcher.call("/heartbeat", heartbeat(&launcher, &[])).await;
    let failed = run(&api, id(&lost)).await;
    assert_eq!(failed.state, RunState::Failed);
    let failure = failed.failure.unwrap();
    assert!(failure.contains("its launcher no longer runs it"), "{failure}");
    // A worker of a launcher that restarted may still run it: the stack stays fenced
    // for a whole lease + grace (10 min 30 s by default).
    let stack: Stack = serde_json::from_value(api.get("/stacks/app").await.1).unwrap();
    let fence = stack.lock_fence.expect("the stack is fenced");
    assert_eq!(fence.run_id.to_string(), id(&lost));
    assert!(fence.until >= before.plus(Duration::from_secs(630)), "{fence:?}");
    let (_, workers) = api.get("/workers").await;
    assert_eq!(workers["workers"][0]["busy"], false, "{workers}");
}
