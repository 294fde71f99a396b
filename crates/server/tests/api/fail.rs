//! An administrator fails a run whose launcher will never report again: the run ends
//! FAILED with who failed it and why, its worker goes to the next run, and its stack
//! stays fenced (its worker may still be executing it) until an administrator who knows
//! better lifts the fence.

use gantry_testkit::{GitRepository, KeyKind, ScriptedLauncher};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Api, assert_error};

fn id(run: &Value) -> &str {
    run["id"].as_str().unwrap()
}

/// A pool with one scripted launcher, and a stack `app` on it.
pub(crate) async fn pool_with_stack(api: &Api) -> (ScriptedLauncher, tempfile::TempDir) {
    let (key, token) = api.create_pool("p", KeyKind::P256).await;
    let launcher =
        ScriptedLauncher::connect(&api.server, &token.pool_id, &key.key_pem, json!({})).await;
    let dir = tempfile::tempdir().unwrap();
    let repository = GitRepository::create(&dir.path().join("app"), &[("main.tf", "")]);
    let body = json!({"name": "app", "repository": repository.url(), "pool": "p"});
    let (status, stack) = api.post("/stacks", body).await;
    assert_eq!(status, StatusCode::CREATED, "{stack}");
    (launcher, dir)
}

/// The reason a queued run waits, once a scheduling pass has given one.
pub(crate) async fn waiting_reason(api: &Api, run: &str) -> String {
    for _ in 0..100 {
        let (_, shown) = api.get(&format!("/runs/{run}")).await;
        assert_eq!(shown["state"], "QUEUED", "{shown}");
        if let Some(reason) = shown["waiting_reason"].as_str() {
            return reason.to_owned();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("run {run} never said why it waits");
}

pub(crate) async fn trigger_task(api: &Api) -> Value {
    let task = json!({"type": "TASK", "command": "terraform state list"});
    let (status, run) = api.post("/stacks/app/runs", task).await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    run
}

#[tokio::test]
async fn an_admin_fails_a_stuck_run_and_its_worker_and_stack_take_the_next_one() {
    let api = Api::start().await;
    let (launcher, _dir) = pool_with_stack(&api).await;

    // The task starts executing, then its launcher goes silent while it holds the stack.
    let stuck = trigger_task(&api).await;
    launcher.take(id(&stuck), "plan").await;
    launcher.report(id(&stuck), json!({"kind": "phase_started", "phase": "PERFORMING"})).await;
    let next = trigger_task(&api).await;
    let (_, shown) = api.get(&format!("/runs/{}", id(&stuck))).await;
    assert_eq!(shown["state"], "PERFORMING", "{shown}");
    let (_, shown) = api.get(&format!("/runs/{}", id(&next))).await;
    assert_eq!(shown["state"], "QUEUED", "{shown}");

    let fail = |run: &str| format!("/runs/{run}/fail");
    let (status, created) = api.post("/keys", json!({"name": "ops", "role": "operator"})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let response = api
        .http
        .post(format!("{}/api/v1{}", api.server.url, fail(id(&stuck))))
        .bearer_auth(created["secret"].as_str().unwrap())
        .json(&json!({"reason": "launcher host is gone"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let (status, body) = api.post(&fail(id(&stuck)), json!({"reason": "  "})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request", "reason is empty");
    let (status, body) =
        api.post(&fail("01ARZ3NDEKTSV4RRFFQ69G5FAV"), json!({"reason": "stuck"})).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found", "01ARZ3NDEKTSV4RRFFQ69G5FAV");
    let (_, shown) = api.get(&format!("/runs/{}", id(&stuck))).await;
    assert_eq!(shown["state"], "PERFORMING", "refusals changed nothing: {shown}");

    let (status, failed) =
        api.post(&fail(id(&stuck)), json!({"reason": "launcher host is gone"})).await;
    assert_eq!(status, StatusCode::OK, "{failed}");
    assert_eq!(failed["state"], "FAILED", "{failed}");
    let failure = failed["failure"].as_str().unwrap();
    assert!(failure.contains("failed by administrator"), "{failure}");
    assert!(failure.contains("launcher host is gone"), "{failure}");

    // The worker is free, but the stack stays fenced for the failed run's lease + grace:
    // the queued task waits, saying why.
    let (_, stack) = api.get("/stacks/app").await;
    assert_eq!(stack["lock_fence"]["run_id"], id(&stuck), "{stack}");
    let until = stack["lock_fence"]["until"].as_str().unwrap().to_owned();
    let waiting = waiting_reason(&api, id(&next)).await;
    assert!(waiting.contains(&format!("fenced until {until}")), "{waiting}");
    assert!(waiting.contains(id(&stuck)), "{waiting}");
    let (_, workers) = api.get("/workers").await;
    assert_eq!(workers["workers"][0]["busy"], false, "{workers}");

    // Only an administrator lifts it; then the queued task is handed out at once.
    let unfence = format!("{}/api/v1/stacks/app/unfence", api.server.url);
    let response = api
        .http
        .post(&unfence)
        .bearer_auth(created["secret"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::FORBIDDEN);
    let (status, unfenced) = api.post("/stacks/app/unfence", json!(null)).await;
    assert_eq!(status, StatusCode::OK, "{unfenced}");
    assert!(unfenced.get("lock_fence").is_none(), "{unfenced}");
    launcher.take(id(&next), "plan").await;
    let (status, body) = api.post("/stacks/app/unfence", json!(null)).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict", "stack app is not fenced");
    let (_, audit) = api.get("/audit").await;
    let lifts: Vec<_> = audit["entries"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|entry| entry["action"] == "POST /api/v1/stacks/{stack}/unfence")
        .map(|entry| (entry["actor"].as_str().unwrap(), entry["outcome"].as_str().unwrap()))
        .collect();
    assert!(lifts.len() >= 2, "the lift and the refusal are audited: {lifts:?}");
    assert!(lifts.iter().any(|(_, outcome)| outcome.starts_with("ok")), "{lifts:?}");

    let (status, body) = api.post(&fail(id(&stuck)), json!({"reason": "again"})).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict", "has already ended (FAILED)");
}
