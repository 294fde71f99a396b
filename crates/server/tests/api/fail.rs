//! An administrator fails a run whose launcher will never report again: the run ends
//! FAILED with who failed it and why, and its worker and stack go to the next run.

use gantry_testkit::{GitRepository, KeyKind, ScriptedLauncher};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Api, assert_error};

fn id(run: &Value) -> &str {
    run["id"].as_str().unwrap()
}

async fn trigger_task(api: &Api) -> Value {
    let task = json!({"type": "TASK", "command": "terraform state list"});
    let (status, run) = api.post("/stacks/app/runs", task).await;
    assert_eq!(status, StatusCode::CREATED, "{run}");
    run
}

#[tokio::test]
async fn an_admin_fails_a_stuck_run_and_its_worker_and_stack_take_the_next_one() {
    let api = Api::start().await;
    let (key, token) = api.create_pool("p", KeyKind::P256).await;
    let launcher =
        ScriptedLauncher::connect(&api.server, &token.pool_id, &key.key_pem, json!({})).await;
    let dir = tempfile::tempdir().unwrap();
    let repository = GitRepository::create(&dir.path().join("app"), &[("main.tf", "")]);
    let body = json!({"name": "app", "repository": repository.url(), "pool": "p"});
    let (status, stack) = api.post("/stacks", body).await;
    assert_eq!(status, StatusCode::CREATED, "{stack}");

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

    // The worker is free and the stack unlocked: the queued task is handed out.
    launcher.take(id(&next), "plan").await;

    let (status, body) = api.post(&fail(id(&stuck)), json!({"reason": "again"})).await;
    assert_error(status, &body, StatusCode::CONFLICT, "conflict", "has already ended (FAILED)");
}
