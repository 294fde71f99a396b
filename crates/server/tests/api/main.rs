//! The server over real HTTPS on loopback: the REST API's contract, the agent plane's
//! session proof, and every kind of bad input leaving the store unchanged.

mod fail;
mod http_limits;
mod liveness;
mod queue;
mod state_versions;
mod ui;
mod webhooks;

use base64::Engine;
use gantry_crypto::{PoolPrivateKey, PoolToken, session_message};
use gantry_testkit::{KeyKind, MotoServer, OpensslKey, ScriptedLauncher, TestServer};
use reqwest::StatusCode;
use serde_json::{Value, json};

struct Api {
    server: TestServer,
    http: reqwest::Client,
}

impl Api {
    async fn start() -> Self {
        let server = TestServer::start().await;
        let http = server.http();
        Self { server, http }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = self
            .http
            .request(method, format!("{}/api/v1{path}", self.server.url))
            .bearer_auth(&self.server.admin_key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, None).await
    }

    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn agent(&self, path: &str, body: Value, token: Option<&str>) -> (StatusCode, Value) {
        let mut request = self.http.post(format!("{}/agent/v1{path}", self.server.url)).json(&body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Everything the store holds that users can see, to prove a refused request changed nothing.
    async fn snapshot(&self) -> Value {
        json!([self.get("/pools").await.1, self.get("/stacks").await.1, self.get("/runs").await.1])
    }

    async fn create_pool(&self, name: &str, kind: KeyKind) -> (OpensslKey, PoolToken) {
        let dir = tempfile::tempdir().unwrap();
        let key = OpensslKey::generate(dir.path(), name, kind);
        let (status, body) = self.post("/pools", json!({"name": name, "csr": key.csr_pem})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let token = PoolToken::decode(body["token"].as_str().unwrap()).unwrap();
        (key, token)
    }
}

impl Api {
    /// Opens a launcher session with the pool's key and registers one worker carrying
    /// `metadata`, as a launcher would; returns the session token and the worker's id.
    async fn register_worker(
        &self,
        key: &OpensslKey,
        token: &PoolToken,
        metadata: Value,
    ) -> (String, String) {
        let launcher =
            ScriptedLauncher::connect(&self.server, &token.pool_id, &key.key_pem, metadata).await;
        (launcher.session, launcher.worker)
    }
}

fn assert_error(
    status: StatusCode,
    body: &Value,
    expected_status: StatusCode,
    code: &str,
    message_part: &str,
) {
    assert_eq!(status, expected_status, "{body}");
    assert_eq!(body["error"]["code"], code, "{body}");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains(message_part), "{message:?} should mention {message_part:?}");
}

#[tokio::test]
async fn the_first_start_creates_one_admin_key_and_later_starts_none() {
    let server = TestServer::start().await;
    assert!(server.admin_key.starts_with("gak_"));
    let data_dir = std::sync::Arc::clone(&server.data_dir);
    let key = server.admin_key.clone();
    server.stop().await;
    let again = TestServer::start_in(data_dir, &[]).await;
    assert_eq!(again.admin_key, "", "the key is shown only once");
    let response = again
        .http()
        .get(format!("{}/api/v1/pools", again.url))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK, "the first key still works");
    let database = std::fs::read(again.data_dir.path().join("gantry.db")).unwrap();
    let text = String::from_utf8_lossy(&database);
    assert!(!text.contains(&key[4..]), "only the key's hash is stored");
}

#[tokio::test]
async fn the_api_requires_a_valid_key_and_answers_errors_in_json() {
    let api = Api::start().await;
    let url = format!("{}/api/v1/pools", api.server.url);
    let missing = api.http.get(&url).send().await.unwrap();
    let status = missing.status();
    assert_error(
        status,
        &missing.json().await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "Authorization: Bearer",
    );
    let wrong = api.http.get(&url).bearer_auth("gak_wrong").send().await.unwrap();
    let status = wrong.status();
    assert_error(
        status,
        &wrong.json().await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        "not valid",
    );

    let (status, body) = api.get("/nothing/here").await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "no_route", "/api/v1/nothing/here");
    let (status, body) = api.call(reqwest::Method::DELETE, "/pools", None).await;
    assert_error(status, &body, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "DELETE");

    let health = api.http.get(format!("{}/api/v1/health", api.server.url)).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK, "health needs no key");
    let ready = api.http.get(format!("{}/api/v1/ready", api.server.url)).send().await.unwrap();
    assert_eq!(ready.status(), StatusCode::OK, "readiness needs no key");
    assert_eq!(ready.json::<Value>().await.unwrap()["status"], "ready");
}

#[tokio::test]
async fn readiness_follows_the_database_and_liveness_does_not() {
    use sqlx::Connection as _;
    let Some(url) = gantry_test_postgres::fresh_database().await else { return };
    let database = url.rsplit_once('/').unwrap().1.to_owned();
    let data = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let settings =
        [("GANTRY_SERVER_DATABASE", url.as_str()), ("GANTRY_SERVER_SHARED_WORKERS", "0")];
    let server = TestServer::start_in(data, &settings).await;
    let http = server.http();
    let probe = |path: &str| http.get(format!("{}/api/v1/{path}", server.url)).send();
    // Polls until `path` answers `status`, for up to 15 s; returns the last answer's body.
    let answers = |path: &'static str, status: StatusCode| {
        let probe = &probe;
        async move {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
            loop {
                let response = probe(path).await.unwrap();
                let answered = response.status();
                let body: Value = response.json().await.unwrap();
                if answered == status {
                    return body;
                }
                assert!(std::time::Instant::now() < deadline, "{path} still answers {body}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    answers("ready", StatusCode::OK).await;

    // The replica loses its database: no new connection is let in, and its own end.
    let maintenance = std::env::var(gantry_test_postgres::URL_VARIABLE).unwrap();
    let mut admin = sqlx::PgConnection::connect(&maintenance).await.unwrap();
    let allow = |allowed: bool| {
        sqlx::AssertSqlSafe(format!("ALTER DATABASE {database} ALLOW_CONNECTIONS {allowed}"))
    };
    sqlx::raw_sql(allow(false)).execute(&mut admin).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&database)
        .execute(&mut admin)
        .await
        .unwrap();
    let body = answers("ready", StatusCode::SERVICE_UNAVAILABLE).await;
    assert_eq!(body["error"]["code"], "unavailable", "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("database"), "{body}");
    let health = probe("health").await.unwrap();
    assert_eq!(health.status(), StatusCode::OK, "the process is up: no restart");

    // Back: the replica is ready again without a restart.
    sqlx::raw_sql(allow(true)).execute(&mut admin).await.unwrap();
    answers("ready", StatusCode::OK).await;
    server.stop().await;
}

#[tokio::test]
async fn pools_are_created_from_openssl_rsa_and_p256_csrs() {
    let api = Api::start().await;
    for (name, kind, algorithm) in
        [("rsa", KeyKind::Rsa4096, "RSA-4096"), ("ec", KeyKind::P256, "EC P-256")]
    {
        let (key, token) = api.create_pool(name, kind).await;
        assert_eq!(token.endpoint, api.server.url);
        assert_eq!(token.server_ca.as_deref(), Some(api.server.ca_pem.as_str()));
        let certificate = token.pool_certificate().unwrap();
        PoolPrivateKey::from_pem(&key.key_pem).unwrap().ensure_matches(&certificate).unwrap();
        let (status, pool) = api.get(&format!("/pools/{name}")).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(pool["key_algorithm"], algorithm);
        assert_eq!(pool["certificate_fingerprint"], certificate.fingerprint());
        assert_eq!(pool["id"], token.pool_id);
        assert_eq!(pool["workers"], 0);
    }
    let pools = api.get("/pools").await.1;
    let private: Vec<&str> = pools["pools"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|pool| pool["kind"] == "private")
        .map(|pool| pool["name"].as_str().unwrap())
        .collect();
    assert_eq!(private, ["ec", "rsa"]);
}

#[tokio::test]
async fn bad_input_is_refused_clearly_and_changes_nothing() {
    let api = Api::start().await;
    let dir = tempfile::tempdir().unwrap();
    api.create_pool("pool", KeyKind::P256).await;
    let repository =
        gantry_testkit::GitRepository::create(&dir.path().join("repo"), &[("main.tf", "")]);
    let (status, _) = api
        .post("/stacks", json!({"name": "stack", "repository": repository.url(), "pool": "pool"}))
        .await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, run) = api.post("/stacks/stack/runs", json!({})).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(run["type"], "TRACKED");
    assert_eq!(run["state"], "QUEUED");
    let run_id = run["id"].as_str().unwrap().to_owned();
    let before = api.snapshot().await;

    let valid = OpensslKey::generate(dir.path(), "valid", KeyKind::P256);
    let mut tampered = valid.csr_pem.clone().into_bytes();
    // Flip one base64 character inside the signature (near the end of the body).
    let index = tampered.len() - 40;
    tampered[index] = if tampered[index] == b'A' { b'B' } else { b'A' };
    let tampered = String::from_utf8(tampered).unwrap();

    let confirm_path = format!("/runs/{run_id}/confirm");
    let cases: Vec<(&str, Value, StatusCode, &str, &str)> = vec![
        (
            "/pools",
            json!({"name": "garbage", "csr": "not a csr"}),
            StatusCode::BAD_REQUEST,
            "invalid_csr",
            "-----BEGIN CERTIFICATE REQUEST-----",
        ),
        (
            "/pools",
            json!({"name": "tampered", "csr": tampered}),
            StatusCode::BAD_REQUEST,
            "invalid_csr",
            "",
        ),
        (
            "/pools",
            json!({"name": "pool", "csr": valid.csr_pem}),
            StatusCode::CONFLICT,
            "already_exists",
            "\"pool\"",
        ),
        (
            "/pools",
            json!({"name": "Bad Name", "csr": valid.csr_pem}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "not a valid pool name",
        ),
        (
            "/pools",
            json!({"name": "x", "csr": valid.csr_pem, "lables": []}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "unknown field `lables`",
        ),
        (
            "/stacks/nope/runs",
            json!({}),
            StatusCode::NOT_FOUND,
            "not_found",
            "stack \"nope\" does not exist",
        ),
        (
            "/stacks",
            json!({"name": "s2", "repository": repository.url(), "pool": "nope"}),
            StatusCode::NOT_FOUND,
            "not_found",
            "pool \"nope\"",
        ),
        (
            "/stacks",
            json!({"name": "s3", "repository": "not a url", "pool": "pool"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "repository \"not a url\" is not valid",
        ),
        (
            "/stacks",
            json!({"name": "s4", "repository": repository.url(), "pool": "pool", "environment": [{"name": "GANTRY_X", "value": "1"}]}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "GANTRY_",
        ),
        (
            "/stacks",
            json!({"name": "s5", "repository": repository.url(), "pool": "pool", "environment": [{"name": "TF_VAR_pin", "value": "x9z", "secret": true}]}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "the value of TF_VAR_pin is shorter than 4 characters",
        ),
        (
            "/stacks",
            json!({"name": "s6", "repository": repository.url(), "pool": "pool", "trigger_paths": ["modules/**", "../elsewhere/*"]}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "trigger path \"../elsewhere/*\" leaves the repository",
        ),
        (
            "/stacks/stack/runs",
            json!({"type": "DRIFT"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "DRIFT",
        ),
        (
            "/stacks/stack/runs",
            json!({"commit": "main"}),
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "commit \"main\"",
        ),
        (
            &confirm_path,
            json!({}),
            StatusCode::CONFLICT,
            "invalid_state",
            "only UNCONFIRMED runs can be confirmed",
        ),
        (
            "/runs/01ARZ3NDEKTSV4RRFFQ69G5FAV/confirm",
            json!({}),
            StatusCode::NOT_FOUND,
            "not_found",
            "run",
        ),
    ];
    for (path, body, expected_status, code, message) in cases {
        let (status, answer) = api.post(path, body.clone()).await;
        assert_error(status, &answer, expected_status, code, message);
        assert!(
            !answer.to_string().contains("-----BEGIN EC PRIVATE KEY"),
            "no key material in errors"
        );
        assert!(!answer.to_string().contains("x9z"), "no secret value in errors");
    }

    let malformed = api
        .http
        .post(format!("{}/api/v1/pools", api.server.url))
        .bearer_auth(&api.server.admin_key)
        .header("content-type", "application/json")
        .body("{\"name\": \"x\", ")
        .send()
        .await
        .unwrap();
    let status = malformed.status();
    assert_error(
        status,
        &malformed.json().await.unwrap(),
        StatusCode::BAD_REQUEST,
        "invalid_request",
        "the request body is not valid",
    );

    assert_eq!(api.snapshot().await, before, "refused requests changed nothing");
}

#[tokio::test]
async fn a_launcher_session_needs_the_pool_key() {
    let api = Api::start().await;
    let (key, token) = api.create_pool("pool", KeyKind::Rsa4096).await;
    let key = PoolPrivateKey::from_pem(&key.key_pem).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let stranger =
        PoolPrivateKey::from_pem(&OpensslKey::generate(dir.path(), "other", KeyKind::P256).key_pem)
            .unwrap();

    let open = |signer: &PoolPrivateKey, challenge: &str| {
        let signature = base64::engine::general_purpose::STANDARD
            .encode(signer.sign(&session_message(challenge)).unwrap());
        json!({
            "pool_id": token.pool_id,
            "challenge": challenge,
            "signature": signature,
            "launcher": {"id": "01ARZ3NDEKTSV4RRFFQ69G5FAV", "version": "test", "hostname": "h", "protocol_version": 1}
        })
    };

    let (status, challenge) =
        api.agent("/session/challenge", json!({"pool_id": token.pool_id}), None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        challenge["certificate_fingerprint"],
        token.pool_certificate().unwrap().fingerprint()
    );
    let challenge = challenge["challenge"].as_str().unwrap().to_owned();

    let (status, body) = api.agent("/session", open(&stranger, &challenge), None).await;
    assert_error(
        status,
        &body,
        StatusCode::UNAUTHORIZED,
        "invalid_proof",
        "GANTRY_POOL_PRIVATE_KEY is not this pool's key",
    );
    let (status, body) = api.agent("/session", open(&key, "pool.0.forged.challenge"), None).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "invalid_proof", "challenge");

    let (status, session) = api.agent("/session", open(&key, &challenge), None).await;
    assert_eq!(status, StatusCode::OK, "{session}");
    let session_token = session["session_token"].as_str().unwrap();
    let (status, workers) = api
        .agent("/workers", json!({"workers": [{"metadata": {"zone": "a"}}]}), Some(session_token))
        .await;
    assert_eq!(status, StatusCode::OK, "{workers}");
    let (_, listed) = api.get("/workers").await;
    assert_eq!(listed["workers"][0]["status"], "IDLE");
    assert_eq!(listed["workers"][0]["metadata"]["zone"], "a");
    // The audit log has the refused proofs and the session, never its token.
    let (_, audit) = api.get("/audit?actor=launcher:01ARZ3NDEKTSV4RRFFQ69G5FAV").await;
    let opened = &audit["entries"][0];
    assert_eq!(
        (&opened["action"], &opened["target"]),
        (&json!("launcher session opened"), &json!("pool=pool")),
        "{audit}"
    );
    assert_eq!(opened["source"], "127.0.0.1", "{audit}");
    let (_, audit) = api.get("/audit?actor=unauthenticated").await;
    let refused = audit["entries"].as_array().unwrap();
    assert_eq!(refused.len(), 2, "{audit}");
    assert!(refused.iter().all(|entry| entry["action"] == "authenticate launcher session proof"));
    let (_, audit) = api.get("/audit").await;
    assert!(!audit.to_string().contains(session_token), "{audit}");

    let (status, body) = api.agent("/poll", json!({"wait_seconds": 0}), Some("gst_forged")).await;
    assert_error(status, &body, StatusCode::UNAUTHORIZED, "session_expired", "open a new session");
    let (status, body) = api
        .agent("/session/challenge", json!({"pool_id": "01ARZ3NDEKTSV4RRFFQ69G5FAV"}), None)
        .await;
    assert_error(status, &body, StatusCode::NOT_FOUND, "not_found", "another server");
}

#[tokio::test]
async fn an_admin_supplied_certificate_is_served_and_its_ca_goes_into_tokens() {
    use gantry_testkit::openssl;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path();
    openssl(
        path,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "30",
            "-subj",
            "/CN=Admin CA",
        ],
    );
    openssl(
        path,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "tls.key",
            "-out",
            "tls.csr",
            "-subj",
            "/CN=gantry",
        ],
    );
    std::fs::write(
        path.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        path,
        &[
            "x509",
            "-req",
            "-in",
            "tls.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "tls.pem",
            "-days",
            "30",
            "-extfile",
            "ext.cnf",
        ],
    );
    let file = |name: &str| path.join(name).display().to_string();
    let server = TestServer::start_in(
        std::sync::Arc::new(tempfile::tempdir().unwrap()),
        &[
            ("GANTRY_SERVER_TLS_CERT_FILE", &file("tls.pem")),
            ("GANTRY_SERVER_TLS_KEY_FILE", &file("tls.key")),
            ("GANTRY_SERVER_TLS_CA_FILE", &file("ca.pem")),
        ],
    )
    .await;
    let admin_ca = std::fs::read_to_string(path.join("ca.pem")).unwrap();
    let http = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(admin_ca.as_bytes()).unwrap()])
        .build()
        .unwrap();
    let key = OpensslKey::generate(path, "pool", KeyKind::P256);
    let response = http
        .post(format!("{}/api/v1/pools", server.url))
        .bearer_auth(&server.admin_key)
        .json(&json!({"name": "pool", "csr": key.csr_pem}))
        .send()
        .await
        .expect("the admin's certificate is served");
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.unwrap();
    let token = PoolToken::decode(body["token"].as_str().unwrap()).unwrap();
    assert_eq!(
        token.server_ca.as_deref(),
        Some(admin_ca.as_str()),
        "launchers are told to trust the admin's CA"
    );
    // The server's own CA does not vouch for this certificate.
    assert!(server.http().get(format!("{}/api/v1/health", server.url)).send().await.is_err());
}

#[tokio::test]
async fn an_unreadable_certificate_file_stops_the_server_before_it_serves() {
    gantry_testkit::install_crypto_provider();
    let data = tempfile::tempdir().unwrap();
    let env: gantry_domain::options::Env = [
        ("GANTRY_SERVER_DATA_DIR", data.path().display().to_string()),
        ("GANTRY_SERVER_LISTEN", "127.0.0.1:0".to_owned()),
        ("GANTRY_SERVER_TLS_CERT_FILE", "/nonexistent/tls.pem".to_owned()),
        ("GANTRY_SERVER_TLS_KEY_FILE", "/nonexistent/tls.key".to_owned()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v))
    .collect();
    let config = gantry_server::ServerConfig::resolve(None, &env).unwrap();
    let error = gantry_server::Server::start(config).await.unwrap_err().to_string();
    assert!(
        error.contains("GANTRY_SERVER_TLS_CERT_FILE=/nonexistent/tls.pem: cannot read the file"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_on_a_missing_bucket_stops_before_it_serves_and_starts_once_it_exists() {
    let Some(moto) = tokio::task::spawn_blocking(MotoServer::start).await.unwrap() else {
        return;
    };
    gantry_testkit::install_crypto_provider();
    let data = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let endpoint = moto.endpoint();
    let settings = |bucket: &str| -> Vec<(String, String)> {
        [
            ("GANTRY_SERVER_DATA_DIR", data.path().display().to_string()),
            ("GANTRY_SERVER_LISTEN", "127.0.0.1:0".to_owned()),
            ("GANTRY_SERVER_BLOB_STORE", format!("s3://{bucket}/gantry")),
            ("GANTRY_SERVER_S3_ENDPOINT", endpoint.clone()),
            ("GANTRY_SERVER_S3_ALLOW_HTTP", "true".to_owned()),
            ("AWS_ACCESS_KEY_ID", MotoServer::ACCESS_KEY_ID.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", MotoServer::SECRET_ACCESS_KEY.to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    };
    let env: gantry_domain::options::Env = settings("missing-bucket").into_iter().collect();
    let config = gantry_server::ServerConfig::resolve(None, &env).unwrap();
    let error = gantry_server::Server::start(config).await.unwrap_err().to_string();
    assert!(
        error.contains(&format!(
            "bucket s3://missing-bucket/gantry at {endpoint} cannot be used, the bucket does not exist"
        )),
        "{error}"
    );
    assert!(!error.contains(MotoServer::SECRET_ACCESS_KEY), "{error}");

    let bucket = moto.create_bucket();
    let settings = settings(&bucket);
    let pairs: Vec<(&str, &str)> = settings.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let server = TestServer::start_in(std::sync::Arc::clone(&data), &pairs).await;
    let health = server.http().get(format!("{}/api/v1/health", server.url)).send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
    assert!(!data.path().join("blobs").exists(), "no blob lands in the data directory");
    assert_eq!(moto.keys(&bucket), Vec::<String>::new(), "the write check cleaned up after itself");
}
