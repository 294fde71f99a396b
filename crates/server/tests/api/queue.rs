//! The REST API of runs, the queue, pools and dependencies, beyond what the end-to-end
//! tests drive through real launchers: who may do what, and what each refusal says.

use gantry_testkit::{GitRepository, KeyKind};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Api, assert_error};

/// A pool `p` with stacks of `names` on it (their repositories live in `dir`).
async fn pool_with_stacks(api: &Api, dir: &std::path::Path, names: &[&str]) {
    api.create_pool("p", KeyKind::P256).await;
    for name in names {
        let repository = GitRepository::create(&dir.join(name), &[("main.tf", "")]);
        let body = json!({"name": name, "repository": repository.url(), "pool": "p"});
        let (status, stack) = api.post("/stacks", body).await;
        assert_eq!(status, StatusCode::CREATED, "{stack}");
    }
}

fn id(run: &Value) -> &str {
    run["id"].as_str().unwrap()
}

#[tokio::test]
async fn a_stack_without_a_pool_uses_the_shared_pool_whose_name_is_reserved() {
    let api = Api::start().await;
    let dir = tempfile::tempdir().unwrap();
    let repository = GitRepository::create(&dir.path().join("repo"), &[("main.tf", "")]);
    let (status, stack) =
        api.post("/stacks", json!({"name": "plain", "repository": repository.url()})).await;
    assert_eq!(status, StatusCode::CREATED, "{stack}");
    assert_eq!(stack["pool_name"], "shared");

    let (status, pool) = api.get("/pools/shared").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(pool["kind"], "shared");
    assert_eq!(pool["used_by"], json!(["plain"]));

    let csr = gantry_testkit::OpensslKey::generate(dir.path(), "k", KeyKind::P256).csr_pem;
    let (status, body) = api.post("/pools", json!({"name": "shared", "csr": csr})).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "the server's own pool",
    );
    let (status, body) = api.post("/pools/shared/cycle", json!({})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request", "cannot be cycled");
    let (status, body) = api.get("/pools/shared/workers").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["workers"], json!([]), "the shared pool's workers are not listed");
}

#[tokio::test]
async fn tasks_need_a_command_and_only_tasks_take_one() {
    let api = Api::start().await;
    let dir = tempfile::tempdir().unwrap();
    pool_with_stacks(&api, dir.path(), &["app"]).await;

    let (status, body) = api.post("/stacks/app/runs", json!({"type": "TASK"})).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "a TASK needs a command",
    );
    let (status, body) =
        api.post("/stacks/app/runs", json!({"type": "TASK", "command": "  "})).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "a TASK needs a command",
    );
    let (status, body) =
        api.post("/stacks/app/runs", json!({"type": "PROPOSED", "command": "ls"})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request", "only a TASK");

    let (status, task) = api
        .post("/stacks/app/runs", json!({"type": "TASK", "command": "terraform state list"}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    assert_eq!((&task["type"], &task["command"]), (&json!("TASK"), &json!("terraform state list")));
}

#[tokio::test]
async fn waiting_runs_can_be_prioritized_and_stopped_and_ended_ones_cannot() {
    let api = Api::start().await;
    let dir = tempfile::tempdir().unwrap();
    pool_with_stacks(&api, dir.path(), &["app", "web"]).await;
    let (_, first) = api.post("/stacks/app/runs", json!({})).await;
    let (_, second) = api.post("/stacks/web/runs", json!({})).await;

    let (status, prioritized) =
        api.post(&format!("/runs/{}/prioritize", id(&second)), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{prioritized}");
    assert_eq!(prioritized["prioritized"], true);
    let (_, queue) = api.get("/pools/p/queue").await;
    let order: Vec<&str> =
        queue["entries"].as_array().unwrap().iter().map(|entry| id(&entry["run"])).collect();
    assert_eq!(order, [id(&second), id(&first)]);
    for entry in queue["entries"].as_array().unwrap() {
        assert_eq!(entry["in_progress"], false);
        assert_eq!(
            entry["run"]["waiting_reason"],
            "waiting for a worker: no worker of pool p is connected"
        );
    }

    // A run that has not started is canceled at once.
    let (status, stopped) = api.post(&format!("/runs/{}/stop", id(&first)), json!({})).await;
    assert_eq!(status, StatusCode::OK, "{stopped}");
    assert_eq!(stopped["state"], "CANCELED");
    assert_eq!(stopped["stop_requested"], false);

    let (status, body) = api.post(&format!("/runs/{}/prioritize", id(&first)), json!({})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request", "only a waiting run");
    let (status, body) = api.post(&format!("/runs/{}/stop", id(&first)), json!({})).await;
    assert!(status.is_client_error(), "{status} {body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("CANCELED"), "{body}");
    let (_, queue) = api.get("/pools/p/queue").await;
    assert_eq!(queue["entries"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn a_proposed_run_for_a_new_commit_supersedes_the_older_ones_of_its_branch() {
    let api = Api::start().await;
    let dir = tempfile::tempdir().unwrap();
    pool_with_stacks(&api, dir.path(), &["app"]).await;
    let commit = |c: char| c.to_string().repeat(40);
    let (_, old) =
        api.post("/stacks/app/runs", json!({"type": "PROPOSED", "commit": commit('a')})).await;
    let (_, same) =
        api.post("/stacks/app/runs", json!({"type": "PROPOSED", "commit": commit('a')})).await;
    let (_, tracked) = api.post("/stacks/app/runs", json!({"commit": commit('a')})).await;
    let (status, new) =
        api.post("/stacks/app/runs", json!({"type": "PROPOSED", "commit": commit('b')})).await;
    assert_eq!(status, StatusCode::CREATED, "{new}");

    let mut states = Vec::new();
    for run in [&old, &same, &tracked, &new] {
        states.push(api.get(&format!("/runs/{}", id(run))).await.1["state"].clone());
    }
    // Only proposed runs for another commit are superseded.
    assert_eq!(states[..2], [json!("CANCELED"), json!("CANCELED")]);
    for waiting in &states[2..] {
        assert!(*waiting == "QUEUED" || *waiting == "READY", "{states:?}");
    }
}

#[tokio::test]
async fn dependencies_are_listed_both_ways_and_cycles_and_bad_references_are_refused() {
    let api = Api::start().await;
    let dir = tempfile::tempdir().unwrap();
    pool_with_stacks(&api, dir.path(), &["network", "app", "web"]).await;
    let reference = |output: &str, variable: &str| json!({"output": output, "variable": variable});

    let (status, body) = api
        .post(
            "/stacks/app/dependencies",
            json!({"upstream": "network", "references": [reference("vpc_id", "TF_VAR_vpc_id")]}),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["upstream"][0]["upstream"], "network");
    assert_eq!(body["upstream"][0]["references"][0]["variable"], "TF_VAR_vpc_id");
    let (status, body) = api.post("/stacks/web/dependencies", json!({"upstream": "app"})).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (_, network) = api.get("/stacks/network/dependencies").await;
    assert_eq!(network["downstream"], json!(["app"]));

    let (status, body) = api.post("/stacks/network/dependencies", json!({"upstream": "web"})).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "network → web → app → network",
    );
    let (status, body) = api.post("/stacks/app/dependencies", json!({"upstream": "app"})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request", "app → app");
    let (status, body) = api
        .post(
            "/stacks/web/dependencies",
            json!({"upstream": "network", "references": [reference("a", "1BAD")]}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request", "1BAD");
    let (status, body) = api
        .post(
            "/stacks/web/dependencies",
            json!({"upstream": "network", "references": [reference("a", "X"), reference("b", "X")]}),
        )
        .await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request", "receives two outputs");
    let (status, body) = api.post("/stacks/web/dependencies", json!({"upstream": "nowhere"})).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    let (status, body) =
        api.call(reqwest::Method::DELETE, "/stacks/app/dependencies/network", None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["upstream"], json!([]));
    let (status, body) =
        api.call(reqwest::Method::DELETE, "/stacks/app/dependencies/network", None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}
