//! Webhooks end to end: a commit pushed to a real git repository and the provider's
//! delivery of it (its real payload layout, signed the provider's way) trigger a tracked
//! run of exactly that commit; a pull request's delivery a proposed run of its head, and
//! its closing stops the proposed runs still active. Redeliveries trigger nothing more,
//! bad signatures are refused and audited, and every delivery is in the log.

use gantry_testkit::{GitRepository, SIMPLE_CONFIG, git};
use serde_json::{Value, json};

use crate::harness::{Cluster, Launcher, id};

const GITHUB_PUSH: &str =
    include_str!("../../../../crates/webhooks/tests/fixtures/github/push.json");
const GITHUB_PULL_REQUEST: &str =
    include_str!("../../../../crates/webhooks/tests/fixtures/github/pull_request_opened.json");
const GITLAB_PUSH: &str =
    include_str!("../../../../crates/webhooks/tests/fixtures/gitlab/push.json");

/// A VCS of the test's making: it signs what it sends with the webhook's secret.
struct Vcs {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
    url: String,
    secret: String,
}

/// The server's answer to a delivery.
struct Answer {
    status: u16,
    body: Value,
}

impl Vcs {
    fn new(cluster: &Cluster, url: &str, secret: &str) -> Self {
        let ca = std::fs::read(&cluster.server.ca_file).unwrap();
        let client = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap())
            .build()
            .unwrap();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Self { runtime, client, url: url.to_owned(), secret: secret.to_owned() }
    }

    /// GitHub's `X-Hub-Signature-256` of `body` with `secret`.
    fn signature(secret: &str, body: &[u8]) -> String {
        let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret.as_bytes());
        format!("sha256={}", hex::encode(aws_lc_rs::hmac::sign(&key, body).as_ref()))
    }

    fn deliver(&self, event: &str, delivery: &str, payload: &Value) -> Answer {
        let body = serde_json::to_vec(payload).unwrap();
        self.deliver_signed(event, delivery, &body, &Self::signature(&self.secret, &body))
    }

    fn deliver_signed(&self, event: &str, delivery: &str, body: &[u8], signature: &str) -> Answer {
        let headers = [
            ("User-Agent", "GitHub-Hookshot/e2e"),
            ("X-GitHub-Event", event),
            ("X-GitHub-Delivery", delivery),
            ("X-Hub-Signature-256", signature),
        ];
        self.post(&self.url, &headers, body)
    }

    /// A delivery to `url` with these headers, as any provider sends one.
    fn post(&self, url: &str, headers: &[(&str, &str)], body: &[u8]) -> Answer {
        let mut request =
            self.client.post(url).header("Content-Type", "application/json").body(body.to_vec());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        self.runtime.block_on(async {
            let response = request.send().await.unwrap();
            let status = response.status().as_u16();
            let body = response.json().await.unwrap();
            Answer { status, body }
        })
    }
}

/// GitHub's push payload, as recorded from GitHub, of `commit` to `branch` of the
/// repository at `url`, listing `changed` as modified.
fn push_payload(url: &str, branch: &str, commit: &str, changed: &[&str]) -> Value {
    let mut payload: Value = serde_json::from_str(GITHUB_PUSH).unwrap();
    payload["ref"] = json!(format!("refs/heads/{branch}"));
    payload["after"] = json!(commit);
    payload["repository"]["clone_url"] = json!(url);
    let mut entry = payload["head_commit"].clone();
    entry["id"] = json!(commit);
    entry["added"] = json!([]);
    entry["removed"] = json!([]);
    entry["modified"] = json!(changed);
    payload["head_commit"] = entry.clone();
    payload["commits"] = json!([entry]);
    payload
}

/// GitHub's pull request payload, as recorded from GitHub, for pull request `number` of
/// `head` at `commit` into `base`, with `action`.
fn pull_request_payload(url: &str, action: &str, number: u64, head: &str, commit: &str) -> Value {
    let mut payload: Value = serde_json::from_str(GITHUB_PULL_REQUEST).unwrap();
    payload["action"] = json!(action);
    payload["number"] = json!(number);
    let pull = &mut payload["pull_request"];
    pull["number"] = json!(number);
    pull["head"]["ref"] = json!(head);
    pull["head"]["sha"] = json!(commit);
    pull["base"]["ref"] = json!("main");
    pull["base"]["repo"]["clone_url"] = json!(url);
    payload["repository"]["clone_url"] = json!(url);
    payload
}

/// GitLab's push payload, as recorded from GitLab, of `commit` to `branch` of the
/// repository at `url`, listing `changed` as added.
fn gitlab_push_payload(url: &str, branch: &str, commit: &str, changed: &[&str]) -> Value {
    let mut payload: Value = serde_json::from_str(GITLAB_PUSH).unwrap();
    payload["ref"] = json!(format!("refs/heads/{branch}"));
    payload["after"] = json!(commit);
    payload["checkout_sha"] = json!(commit);
    payload["project"]["git_http_url"] = json!(url);
    payload["repository"]["git_http_url"] = json!(url);
    let mut entry = payload["commits"][0].clone();
    entry["id"] = json!(commit);
    entry["added"] = json!(changed);
    entry["modified"] = json!([]);
    entry["removed"] = json!([]);
    payload["commits"] = json!([entry]);
    payload["total_commits_count"] = json!(1);
    payload
}

/// GitLab's headers of a push delivery: the secret is sent as it is.
fn gitlab_headers(token: &str) -> [(&str, &str); 3] {
    [("X-Gitlab-Event", "Push Hook"), ("Idempotency-Key", "gitlab-1"), ("X-Gitlab-Token", token)]
}

fn runs_of(cluster: &Cluster, stack: &str) -> Vec<Value> {
    cluster.gantry.json(&["run", "list", "--stack", stack])["runs"].as_array().unwrap().clone()
}

fn run_of(answer: &Answer) -> Value {
    let runs = answer.body["runs"].as_array().expect("runs in the answer");
    assert_eq!(runs.len(), 1, "{}", answer.body);
    json!({ "id": runs[0] })
}

#[test]
fn pushes_and_pull_requests_delivered_by_a_signed_webhook_trigger_runs_of_their_commits() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let pool = cluster.private_pool(work.path(), "p");
    let _launcher = Launcher::of(&cluster, &pool, &[]);
    // A pool no launcher serves: its runs wait, so a pull request's closing finds them.
    cluster.private_pool(work.path(), "idle");
    let repository = GitRepository::create(
        &work.path().join("repo"),
        &[("infra/main.tf", SIMPLE_CONFIG), ("docs/README", "docs\n")],
    );
    let url = repository.url();
    cluster.gantry.create_stack_at("app", &url, Some("p"), &["--autodeploy"]);
    cluster.gantry.create_stack_at("waiting", &url, Some("idle"), &[]);

    let created =
        cluster.gantry.json(&["webhook", "create", "--provider", "github", "--repository", &url]);
    let secret = created["secret"].as_str().unwrap();
    let payload_url = created["webhook"]["url"].as_str().unwrap();
    assert!(payload_url.ends_with("/api/v1/webhooks/github"), "{created}");
    let vcs = Vcs::new(&cluster, payload_url, secret);

    // A push touching the project root: a tracked run of that commit on each stack.
    let pushed = repository.commit(&[("infra/extra.tf", "locals { x = 1 }\n")], "grow");
    let payload = push_payload(&url, "main", &pushed, &["infra/extra.tf"]);
    let answer = vcs.deliver("push", "delivery-1", &payload);
    assert_eq!(answer.status, 200, "{}", answer.body);
    let triggered: Vec<Value> = answer.body["runs"].as_array().unwrap().clone();
    assert_eq!(triggered.len(), 2, "{}", answer.body);
    let app_run = runs_of(&cluster, "app").remove(0);
    assert!(triggered.contains(&app_run["id"]), "{}", answer.body);
    let finished = cluster.gantry.wait_for_state(&app_run, &["FINISHED", "FAILED"]);
    assert_eq!(finished["state"], "FINISHED", "{finished}");
    assert_eq!(finished["type"], "TRACKED", "{finished}");
    assert_eq!(finished["commit"], json!(pushed), "the run checked out the pushed commit");

    // The same delivery again (the VCS retries, or someone redelivers it): its first
    // answer, and no run more.
    let again = vcs.deliver("push", "delivery-1", &payload);
    assert_eq!((again.status, &again.body["duplicate"]), (200, &json!(true)), "{}", again.body);
    assert_eq!(again.body["runs"], answer.body["runs"]);
    // A captured delivery replayed under an id of the attacker's choosing (the id header
    // is not signed) is the same delivery: no run of that old commit again.
    let replayed = vcs.deliver("push", "replayed-under-a-new-id", &payload);
    assert_eq!(replayed.body["duplicate"], json!(true), "{}", replayed.body);
    assert_eq!(replayed.body["delivery_id"], "delivery-1", "{}", replayed.body);
    assert_eq!(runs_of(&cluster, "app").len(), 1);

    // Signed with another secret, or not at all: refused, audited, nothing triggered.
    let forged = serde_json::to_vec(&push_payload(&url, "main", &pushed, &["infra/x"])).unwrap();
    let refused = vcs.deliver_signed("push", "forged", &forged, &Vcs::signature("guess", &forged));
    assert_eq!(refused.status, 401, "{}", refused.body);
    let message = refused.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("does not match"), "{message}");
    assert!(!message.contains(secret), "the refusal names no secret: {message}");
    let unsigned = vcs.deliver_signed("push", "unsigned", &forged, "");
    assert_eq!(unsigned.status, 401, "{}", unsigned.body);
    let audit = cluster.gantry.ok(&["audit", "list"]);
    assert!(audit.contains("authenticate webhook delivery signature"), "{audit}");
    assert_eq!(runs_of(&cluster, "app").len(), 1);

    // A push outside the project root: accepted, nothing triggered, the reason logged.
    let docs = repository.commit(&[("docs/README", "more docs\n")], "docs");
    let outside =
        vcs.deliver("push", "delivery-2", &push_payload(&url, "main", &docs, &["docs/README"]));
    assert_eq!(outside.status, 202, "{}", outside.body);
    let outcome = outside.body["outcome"].as_str().unwrap();
    assert!(outcome.contains("nothing under its project root \"infra\" changed"), "{outcome}");
    assert_eq!(runs_of(&cluster, "app").len(), 1);

    // A repository without a webhook: nothing can verify the delivery, nothing is done.
    let stranger = "https://github.com/someone/else.git";
    let unknown = vcs.deliver("push", "delivery-x", &push_payload(stranger, "main", &docs, &[]));
    assert_eq!(unknown.status, 202, "{}", unknown.body);
    let outcome = unknown.body["outcome"].as_str().unwrap();
    assert!(outcome.contains("no github webhook is registered"), "{outcome}");

    // GitLab's way: its own payload layout, and the secret as a token.
    let gitlab =
        cluster.gantry.json(&["webhook", "create", "--provider", "gitlab", "--repository", &url]);
    let (token, gitlab_url) =
        (gitlab["secret"].as_str().unwrap(), gitlab["webhook"]["url"].as_str().unwrap());
    let from_gitlab = repository.commit(&[("infra/gitlab.tf", "locals { z = 3 }\n")], "gitlab");
    let body =
        serde_json::to_vec(&gitlab_push_payload(&url, "main", &from_gitlab, &["infra/gitlab.tf"]))
            .unwrap();
    let wrong = vcs.post(gitlab_url, &gitlab_headers("not-the-token"), &body);
    assert_eq!(wrong.status, 401, "{}", wrong.body);
    let pushed_on_gitlab = vcs.post(gitlab_url, &gitlab_headers(token), &body);
    assert_eq!(pushed_on_gitlab.status, 200, "{}", pushed_on_gitlab.body);
    let gitlab_run = runs_of(&cluster, "app").remove(0);
    let finished = cluster.gantry.wait_for_state(&gitlab_run, &["FINISHED", "FAILED"]);
    assert_eq!(
        (&finished["state"], &finished["commit"]),
        (&json!("FINISHED"), &json!(from_gitlab))
    );

    // A pull request from a branch: a proposed run of its head commit, from that branch.
    git(&repository.path, &["checkout", "--quiet", "-b", "feature"]);
    let head = repository.commit(&[("infra/feature.tf", "locals { y = 2 }\n")], "feature");
    git(&repository.path, &["checkout", "--quiet", "main"]);
    let opened = vcs.deliver(
        "pull_request",
        "delivery-3",
        &pull_request_payload(&url, "opened", 7, "feature", &head),
    );
    assert_eq!(opened.status, 200, "{}", opened.body);
    let proposed = runs_of(&cluster, "app").remove(0);
    assert_eq!((&proposed["type"], &proposed["branch"]), (&json!("PROPOSED"), &json!("feature")));
    let planned = cluster.gantry.wait_for_state(&proposed, &["FINISHED", "FAILED"]);
    assert_eq!(planned["state"], "FINISHED", "{planned}");
    assert_eq!(planned["commit"], json!(head), "{planned}");
    assert!(planned["triggered_by"].as_str().unwrap().ends_with("pull request #7"), "{planned}");

    // Closing it stops its proposed runs that have not ended: the waiting stack's.
    let waiting = runs_of(&cluster, "waiting").remove(0);
    assert_eq!(waiting["type"], "PROPOSED", "{waiting}");
    let closed = vcs.deliver(
        "pull_request",
        "delivery-4",
        &pull_request_payload(&url, "closed", 7, "feature", &head),
    );
    assert_eq!(closed.status, 200, "{}", closed.body);
    assert_eq!(run_of(&closed)["id"], waiting["id"], "{}", closed.body);
    // It had not started: stopping it cancels it.
    let stopped =
        cluster.gantry.wait_for_state(&waiting, &["CANCELED", "STOPPED", "FAILED", "FINISHED"]);
    assert_eq!(stopped["state"], "CANCELED", "{stopped}");

    // The log: every signed delivery once, newest first, with what it did.
    let log = cluster.gantry.json(&["webhook", "deliveries"]);
    let ids: Vec<&str> = log["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|delivery| delivery["delivery_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["delivery-4", "delivery-3", "gitlab-1", "delivery-2", "delivery-1"], "{log}");
    let table = cluster.gantry.ok(&["webhook", "deliveries"]);
    assert!(table.contains(id(&app_run)), "{table}");

    // A stack whose trigger paths name a shared module: a push there triggers it alone.
    let modules = ["--project-root", "infra", "--trigger-path", "modules/**"];
    cluster.gantry.ok(&[
        &["stack", "create", "--name", "uses-modules", "--repository", &url, "--pool", "idle"][..],
        &modules[..],
    ]
    .concat());
    let module = repository.commit(&[("modules/net/main.tf", "locals { m = 1 }\n")], "module");
    let paths = ["modules/net/main.tf"];
    let shared = vcs.deliver("push", "delivery-5", &push_payload(&url, "main", &module, &paths));
    assert_eq!(shared.status, 200, "{}", shared.body);
    let triggered = runs_of(&cluster, "uses-modules");
    assert_eq!(triggered.len(), 1, "{}", shared.body);
    assert_eq!(run_of(&shared)["id"], triggered[0]["id"], "{}", shared.body);
    let outcome = shared.body["outcome"].as_str().unwrap();
    assert!(outcome.contains("app: nothing under its project root \"infra\" changed"), "{outcome}");

    // A push to a branch no stack tracks: accepted, nothing triggered, the reason logged.
    let untracked = push_payload(&url, "experiment", &module, &["infra/main.tf"]);
    let ignored = vcs.deliver("push", "delivery-6", &untracked);
    assert_eq!(ignored.status, 202, "{}", ignored.body);
    let outcome = ignored.body["outcome"].as_str().unwrap();
    assert!(outcome.contains("no stack tracks branch \"experiment\""), "{outcome}");
    assert_eq!(runs_of(&cluster, "uses-modules").len(), 1);

    // Guessing signatures from one address: refused (429) once it failed too often, before
    // anything is verified; the admins behind that address keep their API keys.
    let limited = (0..40)
        .map(|attempt| {
            let delivery = format!("guess-{attempt}");
            vcs.deliver_signed("push", &delivery, &forged, &Vcs::signature(&delivery, &forged))
        })
        .find(|answer| answer.status != 401)
        .expect("guessing is limited");
    assert_eq!(limited.status, 429, "{}", limited.body);
    cluster.gantry.ok(&["webhook", "list"]);

    // Neither secret is anywhere in the server's data: they are derived, not stored.
    cluster.server.assert_nothing_contains(secret);
    cluster.server.assert_nothing_contains(token);
}
