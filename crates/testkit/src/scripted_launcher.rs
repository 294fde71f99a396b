//! A launcher's side of the agent plane, spoken call by call: a session opened with the
//! pool's private key, one registered worker, and the requests a launcher makes while it
//! runs a run. For tests that need runs in given states, or blobs stored as a launcher
//! stores them, without the launcher, git and terraform that a real run needs. The
//! server cannot tell the difference: it only ever sees these requests.

use base64::Engine;
use gantry_crypto::{PoolPrivateKey, session_message, sha256_hex};
use serde_json::{Value, json};

use crate::TestServer;

/// One worker of a pool, driven by the test.
#[derive(Debug, Clone)]
pub struct ScriptedLauncher {
    url: String,
    http: reqwest::Client,
    /// The session's bearer token.
    pub session: String,
    /// The id of the one worker it registered.
    pub worker: String,
}

impl ScriptedLauncher {
    /// Opens a session for pool `pool_id` by signing the server's challenge with
    /// `private_key_pem`, as a launcher proves it holds the key, then registers one
    /// worker tagged with `metadata`.
    pub async fn connect(
        server: &TestServer,
        pool_id: &str,
        private_key_pem: &str,
        metadata: Value,
    ) -> Self {
        let key = PoolPrivateKey::from_pem(private_key_pem).expect("the pool key parses");
        let mut launcher = Self {
            url: server.url.clone(),
            http: server.http(),
            session: String::new(),
            worker: String::new(),
        };
        let challenge = launcher.post("/session/challenge", json!({"pool_id": pool_id})).await;
        let challenge = challenge["challenge"].as_str().expect("a challenge");
        let signature = base64::engine::general_purpose::STANDARD
            .encode(key.sign(&session_message(challenge)).expect("the key signs"));
        let open = json!({
            "pool_id": pool_id,
            "challenge": challenge,
            "signature": signature,
            "launcher": {"id": "01ARZ3NDEKTSV4RRFFQ69G5FAV", "version": "test", "hostname": "h", "protocol_version": 1}
        });
        let session = launcher.post("/session", open).await;
        launcher.session = session["session_token"].as_str().expect("a session token").to_owned();
        let registered =
            launcher.call("/workers", json!({"workers": [{"metadata": metadata}]})).await;
        launcher.worker = registered["worker_ids"][0].as_str().expect("a worker id").to_owned();
        launcher
    }

    /// Posts `body` to `/agent/v1{path}` with the session (once there is one); the
    /// answer must be `200 OK`.
    async fn post(&self, path: &str, body: Value) -> Value {
        let mut request = self.http.post(format!("{}/agent/v1{path}", self.url)).json(&body);
        if !self.session.is_empty() {
            request = request.bearer_auth(&self.session);
        }
        let response = request.send().await.expect("the server answers");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, reqwest::StatusCode::OK, "{path}: {body}");
        body
    }

    /// An agent-plane call that must succeed.
    pub async fn call(&self, path: &str, body: Value) -> Value {
        self.post(path, body).await
    }

    /// Takes the next assignment, which must be `run`'s `job` (`plan` or `apply`).
    pub async fn take(&self, run: &str, job: &str) {
        let polled = self.call("/poll", json!({"wait_seconds": 5})).await;
        assert_eq!(polled["assignments"][0]["run_id"], run, "{polled}");
        self.call(&format!("/runs/{run}/ack"), json!({"worker_id": self.worker, "job": job})).await;
    }

    /// Reports on `run`; returns the server's directive.
    pub async fn report(&self, run: &str, report: Value) -> Value {
        self.call(&format!("/runs/{run}/reports"), json!({"report": report})).await
    }

    pub async fn log(&self, run: &str, seq: u64, text: &str) {
        let chunks = json!({"chunks": [{"seq": seq, "text": text}]});
        self.call(&format!("/runs/{run}/logs"), chunks).await;
    }

    /// Uploads `bytes` as `run`'s blob `what` (`workspace`, `state`, ...) with their
    /// digest; returns the status and the answer.
    pub async fn put_blob(&self, run: &str, what: &str, bytes: &[u8]) -> (u16, Value) {
        let response = self
            .http
            .put(format!("{}/agent/v1/runs/{run}/{what}", self.url))
            .bearer_auth(&self.session)
            .header("x-gantry-sha256", sha256_hex(bytes))
            .body(bytes.to_vec())
            .send()
            .await
            .expect("the server answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Uploads a stand-in for a plan's sealed workspace (the server only stores
    /// ciphertext); returns the report that says it is stored.
    pub async fn store_workspace(&self, run: &str) -> Value {
        let (status, blob) = self.put_blob(run, "workspace", b"sealed workspace stand-in").await;
        assert_eq!(status, 200, "{blob}");
        json!({"kind": "workspace_stored", "sha256": blob["sha256"], "size": blob["size"]})
    }

    /// Takes `run`, a task of a stack whose state Gantry manages, and performs it to its
    /// end, storing `state` (a stand-in for the sealed state) as the state it leaves.
    pub async fn perform_storing_state(&self, run: &str, state: &[u8]) {
        self.take(run, "plan").await;
        self.report(run, json!({"kind": "phase_started", "phase": "INITIALIZING"})).await;
        self.report(run, json!({"kind": "phase_started", "phase": "PERFORMING"})).await;
        let (status, blob) = self.put_blob(run, "state", state).await;
        assert_eq!(status, 201, "{blob}");
        self.report(run, json!({"kind": "performed"})).await;
    }
}
