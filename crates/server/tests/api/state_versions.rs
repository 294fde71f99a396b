//! Managed state versions over the REST API, with their runs driven through the agent
//! plane as a launcher would: the server keeps the newest N, a rollback is a new version
//! that hands the next run the old blob with the run that sealed it, and what the blobs
//! directory holds follows what the versions name.

use std::path::Path;

use gantry_testkit::{GitRepository, KeyKind, ScriptedLauncher};
use reqwest::StatusCode;
use serde_json::{Value, json};

use super::{Api, assert_error};

/// A stack `db` whose state Gantry manages, on a pool whose one worker the test drives.
pub(super) struct ManagedStack {
    pub(super) api: Api,
    pub(super) launcher: ScriptedLauncher,
    pub(super) stack_id: String,
    _repositories: tempfile::TempDir,
}

impl ManagedStack {
    /// A server keeping `kept` versions per stack (its default when `None`).
    pub(super) async fn start(kept: Option<&str>) -> Self {
        let data = std::sync::Arc::new(tempfile::tempdir().unwrap());
        let settings: Vec<(&str, &str)> =
            kept.map(|kept| ("GANTRY_SERVER_STATE_VERSIONS", kept)).into_iter().collect();
        let server = gantry_testkit::TestServer::start_in(data, &settings).await;
        let http = server.http();
        let api = Api { server, http };
        let (key, token) = api.create_pool("p", KeyKind::P256).await;
        let launcher =
            ScriptedLauncher::connect(&api.server, &token.pool_id, &key.key_pem, json!({})).await;
        let repositories = tempfile::tempdir().unwrap();
        let repository = GitRepository::create(&repositories.path().join("db"), &[("main.tf", "")]);
        let body = json!({"name": "db", "repository": repository.url(), "pool": "p", "managed_state": true});
        let (status, stack) = api.post("/stacks", body).await;
        assert_eq!(status, StatusCode::CREATED, "{stack}");
        let stack_id = stack["id"].as_str().unwrap().to_owned();
        Self { api, launcher, stack_id, _repositories: repositories }
    }

    pub(super) async fn trigger_task(&self) -> String {
        let task = json!({"type": "TASK", "command": "terraform apply -auto-approve"});
        let (status, run) = self.api.post("/stacks/db/runs", task).await;
        assert_eq!(status, StatusCode::CREATED, "{run}");
        run["id"].as_str().unwrap().to_owned()
    }

    /// A task that stores `state` as the stack's next version; returns the task's id.
    pub(super) async fn store_state(&self, state: &str) -> String {
        let run = self.trigger_task().await;
        self.launcher.perform_storing_state(&run, state.as_bytes()).await;
        run
    }

    async fn versions(&self) -> Value {
        let (status, list) = self.api.get("/stacks/db/state/versions").await;
        assert_eq!(status, StatusCode::OK, "{list}");
        list
    }

    /// `[version, run, rollback_of]` of each kept version, newest first.
    async fn summary(&self) -> Vec<(u64, String, Option<u64>)> {
        let list = self.versions().await;
        list["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|version| {
                (
                    version["version"].as_u64().unwrap(),
                    version["run_id"].as_str().unwrap().to_owned(),
                    version["rollback_of"].as_u64(),
                )
            })
            .collect()
    }

    async fn rollback(&self, to: u64) -> (StatusCode, Value) {
        self.api.post("/stacks/db/state/rollback", json!({"to": to})).await
    }

    /// Whether a blob with exactly these bytes is in the server's blob directory.
    fn blob_stored(&self, bytes: &str) -> bool {
        self.blobs_holding(bytes) > 0
    }

    /// How many blobs in the server's blob directory hold exactly these bytes.
    fn blobs_holding(&self, bytes: &str) -> usize {
        fn walk(dir: &Path, bytes: &[u8]) -> usize {
            std::fs::read_dir(dir)
                .into_iter()
                .flatten()
                .flatten()
                .map(|entry| {
                    let path = entry.path();
                    if path.is_dir() {
                        walk(&path, bytes)
                    } else {
                        usize::from(std::fs::read(&path).unwrap() == bytes)
                    }
                })
                .sum()
        }
        walk(&self.api.server.data_dir.path().join("blobs"), bytes.as_bytes())
    }
}

#[tokio::test]
async fn the_newest_versions_are_kept_and_listed_newest_first() {
    let stack = ManagedStack::start(Some("3")).await;
    let list = stack.versions().await;
    assert_eq!(
        (&list["stack"], &list["kept"], &list["versions"]),
        (&json!("db"), &json!(3), &json!([]))
    );

    let mut runs = Vec::new();
    for n in 1..=4 {
        runs.push(stack.store_state(&format!("sealed state {n}")).await);
    }
    let expected: Vec<(u64, String, Option<u64>)> =
        (2..=4).rev().map(|n| (n as u64, runs[n - 1].clone(), None)).collect();
    assert_eq!(stack.summary().await, expected);
    let list = stack.versions().await;
    let newest = &list["versions"][0];
    assert_eq!(
        (&newest["current"], &list["versions"][1]["current"]),
        (&json!(true), &json!(false))
    );
    assert_eq!(newest["size"], "sealed state 4".len());
    assert_eq!(newest["sha256"], gantry_crypto::sha256_hex(b"sealed state 4"));
    assert!(newest["created_at"].as_str().unwrap().ends_with('Z'), "{newest}");
    assert!(!stack.blob_stored("sealed state 1"), "a pruned version's blob is deleted");
    assert!(stack.blob_stored("sealed state 2"));
}

#[tokio::test]
async fn a_rollback_hands_the_next_run_the_old_blob_sealed_by_its_own_run() {
    let stack = ManagedStack::start(Some("3")).await;
    let mut runs = Vec::new();
    for n in 1..=3 {
        runs.push(stack.store_state(&format!("sealed state {n}")).await);
    }
    let (status, version) = stack.rollback(1).await;
    assert_eq!(status, StatusCode::CREATED, "{version}");
    assert_eq!(
        (&version["version"], &version["current"], &version["rollback_of"]),
        (&json!(4), &json!(true), &json!(1))
    );
    assert_eq!(
        (&version["run_id"], &version["rolled_back_by"]),
        (&json!(runs[0]), &json!("admin"))
    );
    assert_eq!(version["sha256"], gantry_crypto::sha256_hex(b"sealed state 1"));
    // Version 1 itself is pruned; its blob stays, named by the rollback.
    let kept = stack.summary().await;
    assert_eq!(kept[0], (4, runs[0].clone(), Some(1)));
    assert_eq!(kept.iter().map(|version| version.0).collect::<Vec<_>>(), [4, 3, 2]);
    assert!(stack.blob_stored("sealed state 1"));

    // The next run is handed version 1's blob, with the run its envelope names.
    let next = stack.trigger_task().await;
    let polled = stack.launcher.call("/poll", json!({"wait_seconds": 5})).await;
    let assignment = &polled["assignments"][0];
    assert_eq!(assignment["run_id"], next, "{polled}");
    assert_eq!(assignment["state"]["run_id"], runs[0], "{assignment}");
    assert_eq!(assignment["state"]["blob"]["sha256"], gantry_crypto::sha256_hex(b"sealed state 1"));
    let ack = json!({"worker_id": stack.launcher.worker, "job": "plan"});
    stack.launcher.call(&format!("/runs/{next}/ack"), ack).await;
    let response = stack
        .api
        .http
        .get(format!("{}/agent/v1/runs/{next}/state", stack.api.server.url))
        .bearer_auth(&stack.launcher.session)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["x-gantry-state-run"].to_str().unwrap(), runs[0]);
    assert_eq!(response.bytes().await.unwrap(), "sealed state 1".as_bytes());

    // The run stores its state after the rollback: version 5, and version 2 goes.
    stack.launcher.report(&next, json!({"kind": "phase_started", "phase": "INITIALIZING"})).await;
    stack.launcher.report(&next, json!({"kind": "phase_started", "phase": "PERFORMING"})).await;
    let (status, _) = stack.launcher.put_blob(&next, "state", b"sealed state 5").await;
    assert_eq!(status, 201);
    stack.launcher.report(&next, json!({"kind": "performed"})).await;
    let versions: Vec<u64> = stack.summary().await.iter().map(|version| version.0).collect();
    assert_eq!(versions, [5, 4, 3]);
    assert!(!stack.blob_stored("sealed state 2"));

    // Two more versions prune the rollback: the blob it shared goes with it.
    stack.store_state("sealed state 6").await;
    assert!(stack.blob_stored("sealed state 1"), "version 4 still names it");
    stack.store_state("sealed state 7").await;
    assert!(!stack.blob_stored("sealed state 1"), "no version names it any more");
    let (status, body) = stack.rollback(4).await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found", "keeps versions 5 to 7");
}

#[tokio::test]
async fn a_rollback_is_refused_while_a_run_holds_the_stack_and_where_it_cannot_be() {
    let stack = ManagedStack::start(None).await;
    let (status, body) = stack.rollback(1).await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "not_found",
        "stack db has no state version 1: it has no state yet",
    );
    stack.store_state("sealed state 1").await;
    stack.store_state("sealed state 2").await;

    let holder = stack.trigger_task().await;
    stack.launcher.take(&holder, "plan").await;
    let (status, body) = stack.rollback(1).await;
    let reason =
        format!("while its TASK run {holder} is PREPARING: the run would store its own state");
    assert_error(status, &body, StatusCode::CONFLICT, "conflict", &reason);
    stack
        .launcher
        .report(&holder, json!({"kind": "failed", "message": "stopped by the test"}))
        .await;
    let (status, body) = stack.rollback(1).await;
    assert_eq!(status, StatusCode::CREATED, "once the run ended: {body}");

    let cases = [
        (
            json!({"to": 3}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "version 3 is already the current state of stack db",
        ),
        (
            json!({"to": 9}),
            StatusCode::NOT_FOUND,
            "not_found",
            "stack db has no state version 9: it keeps versions 1 to 3",
        ),
        (
            json!({"to": 1, "force": true}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "unknown field `force`",
        ),
        (
            json!({"to": "one"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the request body is not valid",
        ),
    ];
    for (body, status_expected, code, message) in cases {
        let (status, answer) = stack.api.post("/stacks/db/state/rollback", body).await;
        assert_error(status, &answer, status_expected, code, message);
    }
    let (status, body) = stack.api.post("/stacks/nope/state/rollback", json!({"to": 1})).await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "not_found",
        "stack \"nope\" does not exist",
    );
    assert_eq!(stack.summary().await.len(), 3, "refused rollbacks add no version");

    let repository =
        GitRepository::create(&stack._repositories.path().join("app"), &[("main.tf", "")]);
    let body = json!({"name": "app", "repository": repository.url(), "pool": "p"});
    assert_eq!(stack.api.post("/stacks", body).await.0, StatusCode::CREATED);
    let unmanaged = "stack app does not let Gantry manage its state";
    let (status, body) = stack.api.get("/stacks/app/state/versions").await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request", unmanaged);
    let (status, body) = stack.api.post("/stacks/app/state/rollback", json!({"to": 1})).await;
    assert_error(status, &body, StatusCode::BAD_REQUEST, "invalid_request", unmanaged);
}

impl ManagedStack {
    /// Uploads `bytes` as `run`'s state with `generation` as its lock generation header.
    async fn put_state_with_generation(
        &self,
        run: &str,
        bytes: &[u8],
        generation: &str,
    ) -> (StatusCode, Value) {
        let response = self
            .api
            .http
            .put(format!("{}/agent/v1/runs/{run}/state", self.api.server.url))
            .bearer_auth(&self.launcher.session)
            .header("x-gantry-sha256", gantry_crypto::sha256_hex(bytes))
            .header("x-gantry-lock-generation", generation)
            .body(bytes.to_vec())
            .send()
            .await
            .unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// `[version, current, orphaned]` of each kept version, newest first.
    async fn marks(&self) -> Vec<(u64, bool, bool)> {
        let list = self.versions().await;
        list["versions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|version| {
                (
                    version["version"].as_u64().unwrap(),
                    version["current"].as_bool().unwrap(),
                    version["orphaned"].as_bool().unwrap(),
                )
            })
            .collect()
    }
}

#[tokio::test]
async fn a_fenced_off_runs_state_is_kept_orphaned_never_pruned_and_adopted() {
    let stack = ManagedStack::start(Some("2")).await;
    stack.store_state("sealed state 1").await;

    // The next task is given the lock under the stack's second generation.
    let run = stack.trigger_task().await;
    let polled = stack.launcher.call("/poll", json!({"wait_seconds": 5})).await;
    let assignment = &polled["assignments"][0];
    assert_eq!((&assignment["run_id"], &assignment["lock_generation"]), (&json!(run), &json!(2)));
    let ack = json!({"worker_id": stack.launcher.worker, "job": "plan"});
    stack.launcher.call(&format!("/runs/{run}/ack"), ack).await;
    stack.launcher.report(&run, json!({"kind": "phase_started", "phase": "PERFORMING"})).await;

    // A generation the lock no longer has: kept, but not current.
    let (status, stored) = stack.put_state_with_generation(&run, b"sealed state 2", "1").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{stored}");
    assert_eq!((&stored["version"], &stored["orphaned"]), (&json!(2), &json!(true)));
    let (status, body) = stack.put_state_with_generation(&run, b"sealed state 2", "two").await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "x-gantry-lock-generation",
    );

    // The run ended before its state arrived: the state, with the run's own generation,
    // is kept as an orphaned version.
    stack.launcher.report(&run, json!({"kind": "failed", "message": "interrupted"})).await;
    let (status, stored) = stack.put_state_with_generation(&run, b"sealed state 3", "2").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{stored}");
    assert_eq!(
        stored,
        json!({"sha256": gantry_crypto::sha256_hex(b"sealed state 3"), "size": 14, "version": 3, "orphaned": true})
    );
    let (status, again) = stack.launcher.put_blob(&run, "state", b"sealed state 3").await;
    assert_eq!((status, &again["version"]), (202, &json!(3)), "a retry is the same version");
    assert_eq!(stack.marks().await, [(3, false, true), (2, false, true), (1, true, false)]);

    // Pruning to the newest two keeps every orphaned version and its blob.
    stack.store_state("sealed state 4").await;
    stack.store_state("sealed state 5").await;
    assert_eq!(
        stack.marks().await,
        [(5, true, false), (4, false, false), (3, false, true), (2, false, true)]
    );
    assert!(!stack.blob_stored("sealed state 1"));
    assert!(stack.blob_stored("sealed state 2") && stack.blob_stored("sealed state 3"));

    // An orphaned version is adopted, not rolled back to, and only an orphaned one.
    let (status, body) = stack.rollback(3).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "version 3 of stack db is orphaned (a run stored it after it lost the stack's lock): adopt it instead, with gantry stack state adopt db 3",
    );
    let adopt =
        |version: u64| stack.api.post("/stacks/db/state/adopt", json!({"version": version}));
    let (status, body) = adopt(4).await;
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "version 4 of stack db is not orphaned",
    );
    let (status, body) = adopt(9).await;
    assert_error(
        status,
        &body,
        StatusCode::NOT_FOUND,
        "not_found",
        "stack db has no orphaned state version 9: its orphaned versions are 3, 2",
    );
    let (status, adopted) = adopt(3).await;
    assert_eq!(status, StatusCode::CREATED, "{adopted}");
    assert_eq!(
        (&adopted["version"], &adopted["current"], &adopted["orphaned"], &adopted["run_id"]),
        (&json!(6), &json!(true), &json!(false), &json!(run))
    );
    assert_eq!((&adopted["adopted_from"], &adopted["adopted_by"]), (&json!(3), &json!("admin")));
    assert_eq!(adopted["rollback_of"], Value::Null);
    assert_eq!(
        stack.marks().await,
        [(6, true, false), (5, false, false), (3, false, true), (2, false, true)]
    );
    let (_, audit) = stack.api.get("/audit").await;
    assert!(
        audit["entries"].as_array().unwrap().iter().any(|entry| {
            entry["action"] == "POST /api/v1/stacks/{stack}/state/adopt"
                && entry["outcome"] == "ok 201"
        }),
        "{audit}"
    );

    // The next run starts from the adopted state, sealed by the run that produced it.
    let next = stack.trigger_task().await;
    let polled = stack.launcher.call("/poll", json!({"wait_seconds": 5})).await;
    let assignment = &polled["assignments"][0];
    assert_eq!(assignment["run_id"], next, "{polled}");
    assert_eq!(assignment["lock_generation"], 5, "{assignment}");
    assert_eq!(assignment["state"]["run_id"], run, "{assignment}");
    assert_eq!(assignment["state"]["blob"]["sha256"], gantry_crypto::sha256_hex(b"sealed state 3"));
    // An adoption, like a rollback, waits for the run holding the lock.
    let (status, body) = adopt(2).await;
    assert_error(
        status,
        &body,
        StatusCode::CONFLICT,
        "conflict",
        "cannot be changed by an adoption while",
    );

    // The server fails that run (its launcher looked lost) while it goes on applying:
    // what it then stores is kept as an orphaned version too.
    let ack = json!({"worker_id": stack.launcher.worker, "job": "plan"});
    stack.launcher.call(&format!("/runs/{next}/ack"), ack).await;
    stack.launcher.report(&next, json!({"kind": "phase_started", "phase": "PERFORMING"})).await;
    let (status, failed) =
        stack.api.post(&format!("/runs/{next}/fail"), json!({"reason": "launcher lost"})).await;
    assert_eq!(status, StatusCode::OK, "{failed}");
    let (status, stored) = stack.put_state_with_generation(&next, b"sealed state 7", "5").await;
    assert_eq!(
        (status, &stored["version"], &stored["orphaned"]),
        (StatusCode::ACCEPTED, &json!(7), &json!(true))
    );
    assert_eq!(stack.marks().await[..2], [(7, false, true), (6, true, false)]);
}

/// A launcher that recovers a run seals the state it left again, into other bytes, and
/// uploads it as the same run: every version keeps its own bytes. A retry of the same
/// bytes is the same version, and its copy goes; a damaged upload removes only itself.
#[tokio::test]
async fn uploads_never_write_over_a_blob_a_version_names() {
    let stack = ManagedStack::start(None).await;
    stack.store_state("sealed state 1").await;
    let run = stack.trigger_task().await;
    stack.launcher.call("/poll", json!({"wait_seconds": 5})).await;
    let ack = json!({"worker_id": stack.launcher.worker, "job": "plan"});
    stack.launcher.call(&format!("/runs/{run}/ack"), ack).await;
    stack.launcher.report(&run, json!({"kind": "phase_started", "phase": "PERFORMING"})).await;

    let (status, stored) = stack.put_state_with_generation(&run, b"sealed once", "2").await;
    assert_eq!((status, &stored["version"]), (StatusCode::CREATED, &json!(2)), "{stored}");
    let (status, stored) = stack.put_state_with_generation(&run, b"sealed once", "2").await;
    assert_eq!((status, &stored["version"]), (StatusCode::OK, &json!(2)), "a retry: {stored}");
    let (status, stored) = stack.put_state_with_generation(&run, b"sealed again", "2").await;
    assert_eq!((status, &stored["version"]), (StatusCode::CREATED, &json!(3)), "{stored}");

    let damaged = stack
        .api
        .http
        .put(format!("{}/agent/v1/runs/{run}/state", stack.api.server.url))
        .bearer_auth(&stack.launcher.session)
        .header("x-gantry-sha256", gantry_crypto::sha256_hex(b"sealed again"))
        .header("x-gantry-lock-generation", "2")
        .body(b"damaged on the way".to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(damaged.status(), StatusCode::BAD_REQUEST);

    for bytes in ["sealed state 1", "sealed again", "damaged on the way"] {
        let expected = usize::from(bytes != "damaged on the way");
        assert_eq!(stack.blobs_holding(bytes), expected, "blobs holding {bytes:?}");
    }
    // The retry's copy is removed by the effects loop.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while stack.blobs_holding("sealed once") != 1 {
        assert!(std::time::Instant::now() < deadline, "the retry's copy stays");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let versions = stack.versions().await;
    let shas: Vec<&str> = versions["versions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|version| version["sha256"].as_str().unwrap())
        .collect();
    let expected = ["sealed again", "sealed once", "sealed state 1"]
        .map(|bytes| gantry_crypto::sha256_hex(bytes.as_bytes()));
    assert_eq!(shas, expected, "{versions}");
}

#[tokio::test]
async fn a_run_that_ended_without_applying_stores_no_state() {
    let stack = ManagedStack::start(None).await;
    let run = stack.trigger_task().await;
    stack.launcher.take(&run, "plan").await;
    stack.launcher.report(&run, json!({"kind": "failed", "message": "no checkout"})).await;
    let (status, body) = stack.launcher.put_blob(&run, "state", b"sealed state").await;
    let status = StatusCode::from_u16(status).unwrap();
    assert_error(
        status,
        &body,
        StatusCode::BAD_REQUEST,
        "invalid_request",
        &format!("run {run} cannot store state: it ended (FAILED) without applying"),
    );
    assert_eq!(stack.marks().await, []);
}
