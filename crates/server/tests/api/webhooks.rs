//! Webhook deliveries against the server alone: what each answer says for the cases a
//! VCS or a stranger produces (a ping, an event for no stack, a body that is not its
//! provider's, an unknown provider), that a webhook is unique per repository however its
//! address is spelled, and that the delivery log reaches the REST API and the web UI.

use reqwest::StatusCode;
use serde_json::{Value, json};

use super::Api;
use super::ui::Browser;

const GITHUB_PING: &str = include_str!("../../../webhooks/tests/fixtures/github/ping.json");

fn signature(secret: &str, body: &[u8]) -> String {
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
    format!("sha256={}", hex::encode(aws_lc_rs::hmac::sign(&key, body).as_ref()))
}

/// A GitHub delivery of `event` with `payload`, signed with `secret`.
async fn deliver(api: &Api, event: &str, payload: &Value, secret: &str) -> (StatusCode, Value) {
    let body = serde_json::to_vec(payload).unwrap();
    let response = api
        .http
        .post(format!("{}/api/v1/webhooks/github", api.server.url))
        .header("Content-Type", "application/json")
        .header("X-GitHub-Event", event)
        .header("X-GitHub-Delivery", format!("{event}-delivery"))
        .header("X-Hub-Signature-256", signature(secret, &body))
        .body(body)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn deliveries_are_answered_for_what_they_are_and_logged_for_the_api_and_the_ui() {
    let api = Api::start().await;
    let repository = "https://github.com/Acme/Infra.git";
    let (status, created) =
        api.post("/webhooks", json!({"provider": "github", "repository": repository})).await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert_eq!(secret.len(), 43, "256 bits of base64url: {created}");
    // Another spelling of the same repository is the same repository.
    let (status, again) = api
        .post("/webhooks", json!({"provider": "github", "repository": "git@github.com:acme/infra"}))
        .await;
    assert_eq!(status, StatusCode::CONFLICT, "{again}");
    let (status, refused) =
        api.post("/webhooks", json!({"provider": "svn", "repository": repository})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{refused}");
    assert!(refused["error"]["message"].as_str().unwrap().contains("svn"), "{refused}");
    let id = created["webhook"]["id"].as_str().unwrap();
    let (status, shown) = api.get(&format!("/webhooks/{id}/secret")).await;
    assert_eq!((status, shown["secret"].as_str()), (StatusCode::OK, Some(secret.as_str())));

    // A ping, for the repository as GitHub spells it: the secret is right.
    let mut ping: Value = serde_json::from_str(GITHUB_PING).unwrap();
    ping["repository"]["clone_url"] = json!("https://github.com/acme/infra.git");
    let (status, answer) = deliver(&api, "ping", &ping, &secret).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert!(answer["outcome"].as_str().unwrap().contains("ping"), "{answer}");

    // The same body under another event name is the same delivery: the name is not signed.
    let (status, answer) = deliver(&api, "issues", &ping, &secret).await;
    assert_eq!((status, &answer["duplicate"]), (StatusCode::OK, &json!(true)), "{answer}");

    // An event the server does not act on, signed: accepted and logged with the reason.
    let mut issue = ping.clone();
    issue["action"] = json!("opened");
    let (status, answer) = deliver(&api, "issues", &issue, &secret).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert!(answer["outcome"].as_str().unwrap().starts_with("ignored: "), "{answer}");

    // A body that is not JSON: refused, naming what was expected, before any lookup.
    let response = api
        .http
        .post(format!("{}/api/v1/webhooks/github", api.server.url))
        .header("X-GitHub-Event", "push")
        .body("not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    // No such provider.
    let response = api
        .http
        .post(format!("{}/api/v1/webhooks/svn", api.server.url))
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);

    let (status, log) = api.get("/webhooks/deliveries").await;
    assert_eq!(status, StatusCode::OK, "{log}");
    let events: Vec<&str> = log["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["issues", "ping"], "{log}");

    let mut browser = Browser::new(&api);
    browser.sign_in(&api.server.admin_key).await;
    let (status, page) = browser.get("/ui/webhooks").await;
    assert_eq!(status, StatusCode::OK);
    for expected in [repository, "/api/v1/webhooks/github", "ping-delivery", "issues-delivery"] {
        assert!(page.contains(expected), "{expected} is not on the page:\n{page}");
    }

    let (status, deleted) =
        api.call(reqwest::Method::DELETE, &format!("/webhooks/{id}"), None).await;
    assert_eq!(status, StatusCode::OK, "{deleted}");
    // Its deliveries are no longer verified by anything: nothing is done.
    let (status, answer) = deliver(&api, "ping", &ping, &secret).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert!(answer["outcome"].as_str().unwrap().contains("no github webhook"), "{answer}");
}
