//! Drift on a real store, through the real lifecycle and effects: a drift check with
//! changes marks its stack drifted (API, metric) until a tracked run finishes, one without
//! clears it, an outdated check is ignored, and a reconciling schedule triggers one
//! tracked run per check however often the effect is carried out.

use axum::http::{Method, StatusCode};
use gantry_domain::{RunEvent, RunState, RunType};
use gantry_store::{RunChange, RunRecord};
use serde_json::{Value, json};

use crate::ServerConfig;
use crate::effects::carry_out_due;
use crate::lifecycle::{self, Details};
use crate::schedules::fire_due;
use crate::schedules::tests::Replica;
use crate::state::now;

/// Takes `run` to PLANNING as its launcher would have, then ends the plan through the
/// lifecycle, with or without changes.
async fn plan(server: &Replica, run: &RunRecord, has_changes: bool) -> RunRecord {
    let planning = RunChange::new(run.id, run.state, RunState::Planning, now());
    let planning = server.state.store.change_run(&planning).await.unwrap();
    let details = Details { has_changes: Some(has_changes), ..Details::default() };
    lifecycle::apply(&server.state, &planning, &RunEvent::Planned { has_changes }, details)
        .await
        .unwrap()
}

/// Ends a tracked run as applied.
async fn apply(server: &Replica, run: &RunRecord) -> RunRecord {
    let applying = RunChange::new(run.id, run.state, RunState::Applying, now());
    let applying = server.state.store.change_run(&applying).await.unwrap();
    lifecycle::apply(&server.state, &applying, &RunEvent::Applied, Details::default())
        .await
        .unwrap()
}

/// Fires the drift schedule `schedule` at its next firing and returns the check it
/// triggered.
async fn check(server: &Replica, schedule: &gantry_store::ScheduleRecord) -> RunRecord {
    let before: Vec<_> = server.runs_of("app").await.iter().map(|run| run.id).collect();
    let due = server.reread(schedule).await.next_fire_at;
    assert_eq!(fire_due(&server.state, due).await.unwrap(), 1);
    let new = server.runs_of("app").await.into_iter().find(|run| !before.contains(&run.id));
    let check = new.expect("the firing triggered a run");
    assert!(crate::schedules::is_drift_check(&check.triggered_by), "{}", check.triggered_by);
    check
}

async fn drift_of(server: &Replica) -> Value {
    let (status, stack) = server.call(Method::GET, "/stacks/app", Value::Null).await;
    assert_eq!(status, StatusCode::OK);
    stack["drift"].clone()
}

async fn drifted_metric(server: &Replica) -> String {
    let text = crate::metrics::render(&server.state).await.unwrap();
    text.lines().find(|line| line.starts_with("gantry_stacks_drifted ")).unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drift_check_with_changes_marks_its_stack_drifted_until_a_tracked_run_finishes() {
    let data = tempfile::tempdir().unwrap();
    let server = Replica::start(ServerConfig::for_tests(data.path()), None).await;
    server.stacks(&["app"]).await;
    let schedule = server.schedule("app", json!({"kind": "drift", "cron": "*/10 * * * *"})).await;

    let first = check(&server, &schedule).await;
    assert_eq!(first.run_type, RunType::Proposed);
    let ended = plan(&server, &first, true).await;
    assert_eq!((ended.state, ended.has_changes), (RunState::Finished, Some(true)));
    assert_eq!(drift_of(&server).await, Value::Null, "marked by the run's effect, not before");
    carry_out_due(&server.state).await.unwrap();
    let drift = drift_of(&server).await;
    assert_eq!(drift["run_id"], first.id.to_string(), "{drift}");
    assert_eq!(drifted_metric(&server).await, "gantry_stacks_drifted 1");
    let (_, listed) = server.call(Method::GET, "/stacks", Value::Null).await;
    assert_eq!(listed["stacks"][0]["drift"], drift);

    // A later check still finds it: drifted since the first.
    let second = check(&server, &schedule).await;
    plan(&server, &second, true).await;
    carry_out_due(&server.state).await.unwrap();
    let again = drift_of(&server).await;
    assert_eq!(
        (&again["since"], &again["run_id"]),
        (&drift["since"], &json!(second.id.to_string()))
    );

    // A tracked run that finishes brings the infrastructure back to the code.
    tracked_run_applied(&server).await;
    assert_eq!(drift_of(&server).await, Value::Null);
    assert_eq!(drifted_metric(&server).await, "gantry_stacks_drifted 0");
}

/// A tracked run of `app` that applies, and the effects of its end carried out.
async fn tracked_run_applied(server: &Replica) {
    let stack = server.state.store.find_stack_by_name("app").await.unwrap().unwrap();
    let tracked = lifecycle::trigger(&server.state, &stack, RunType::Tracked, None, None, "test")
        .await
        .unwrap();
    apply(server, &tracked).await;
    carry_out_due(&server.state).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_check_without_changes_clears_the_drift_and_an_outdated_one_is_ignored() {
    let data = tempfile::tempdir().unwrap();
    let server = Replica::start(ServerConfig::for_tests(data.path()), None).await;
    server.stacks(&["app"]).await;
    let schedule = server.schedule("app", json!({"kind": "drift", "cron": "0 * * * *"})).await;
    let drifted = check(&server, &schedule).await;
    plan(&server, &drifted, true).await;
    carry_out_due(&server.state).await.unwrap();
    assert_ne!(drift_of(&server).await, Value::Null);

    let clean = check(&server, &schedule).await;
    plan(&server, &clean, false).await;
    carry_out_due(&server.state).await.unwrap();
    assert_eq!(drift_of(&server).await, Value::Null, "the infrastructure matches again");

    // A check that planned before a tracked run applied, and ended after it: outdated.
    let outdated = check(&server, &schedule).await;
    tracked_run_applied(&server).await;
    plan(&server, &outdated, true).await;
    carry_out_due(&server.state).await.unwrap();
    assert_eq!(drift_of(&server).await, Value::Null);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconciling_schedule_triggers_one_tracked_run_per_check_that_finds_drift() {
    let data = tempfile::tempdir().unwrap();
    let server = Replica::start(ServerConfig::for_tests(data.path()), None).await;
    server.stacks(&["app"]).await;
    let request = json!({"kind": "drift", "cron": "@hourly", "reconcile": true});
    let schedule = server.schedule("app", request).await;
    assert!(schedule.reconcile);
    let drifted = check(&server, &schedule).await;
    plan(&server, &drifted, true).await;
    carry_out_due(&server.state).await.unwrap();
    // Carried out again, as after a crash before the effect was deleted.
    crate::drift::after_run_ended(
        &server.state,
        &server.state.store.get_run(drifted.id).await.unwrap().unwrap(),
    )
    .await
    .unwrap();
    let tracked: Vec<RunRecord> = server
        .runs_of("app")
        .await
        .into_iter()
        .filter(|r| r.run_type == RunType::Tracked)
        .collect();
    assert_eq!(tracked.len(), 1, "{tracked:?}");
    assert_eq!(
        tracked[0].triggered_by,
        format!("schedule:reconcile:{} after {}", schedule.id, drifted.id)
    );

    let (status, body) = server
        .call(
            Method::POST,
            "/stacks/app/schedules",
            json!({"kind": "tracked", "cron": "@daily", "reconcile": true}),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("only a drift schedule"), "{body}");
}
