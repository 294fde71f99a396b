//! Fuzz tests of the agent plane's handlers: a launcher, or anyone who reaches the port,
//! sends any body (arbitrary bytes, arbitrary JSON keyed like the wire types, mutations of
//! a valid request) to any route, for its own run or any other, with its session, a
//! forged one or none. The answer is a success (a mutation may still be a valid request)
//! or a 4xx with the JSON error body: never a 5xx, a panic or a hang.
//!
//! One server serves all cases, called through `router()` without TLS. Its launcher holds
//! a run it acknowledged, so that run-scoped requests reach the handlers' run logic.

use std::sync::OnceLock;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use base64::Engine;
use gantry_crypto::{PoolPrivateKey, generate_pool_key, session_message};
use gantry_testkit::fuzz::{self, HANG_LIMIT};
use proptest::prelude::*;
use serde_json::{Value, json};
use tokio::runtime::Runtime;
use tower::ServiceExt;

use crate::{Server, ServerConfig};

/// A server with one pool, one launcher session and one worker, which holds a run.
struct Plane {
    runtime: Runtime,
    router: Router,
    session_token: String,
    pool_id: String,
    run_id: String,
    worker_id: String,
    _data_dir: tempfile::TempDir,
}

fn plane() -> &'static Plane {
    static PLANE: OnceLock<Plane> = OnceLock::new();
    PLANE.get_or_init(|| {
        let runtime = fuzz::runtime();
        let data_dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig::for_tests(data_dir.path());
        // A valid poll must not hold a case for the whole of its wait.
        config.timings.poll_timeout = Duration::ZERO;
        let (router, held) = runtime.block_on(async {
            let mut server = Server::start(config).await.unwrap();
            let admin_key = server.take_initial_admin_key().unwrap();
            let state = server.app_state();
            let router = crate::router(state.clone());
            tokio::spawn(crate::scheduling::run_scheduler(state));
            let held = hold_a_run(&router, &admin_key).await;
            (router, held)
        });
        let Held { session_token, pool_id, run_id, worker_id } = held;
        Plane { runtime, router, session_token, pool_id, run_id, worker_id, _data_dir: data_dir }
    })
}

struct Held {
    session_token: String,
    pool_id: String,
    run_id: String,
    worker_id: String,
}

/// Sends one request; returns the status and the body as JSON (`Null` when it is not).
async fn call(
    router: &Router,
    method: Method,
    path: &str,
    token: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(method).uri(path);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let response = router.clone().oneshot(request.body(Body::from(body)).unwrap()).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

async fn call_json(router: &Router, path: &str, token: Option<&str>, body: Value) -> Value {
    let (status, answer) = call(
        router,
        Method::POST,
        path,
        token,
        Some("application/json"),
        body.to_string().into_bytes(),
    )
    .await;
    assert!(status.is_success(), "{path}: {status} {answer}");
    answer
}

/// Creates a pool and a stack, opens a launcher session, registers a worker and takes
/// and acknowledges the stack's first run, as a launcher does.
async fn hold_a_run(router: &Router, admin_key: &str) -> Held {
    let key = generate_pool_key("fuzz").unwrap();
    let pool = json!({"name": "fuzz", "csr": key.csr_pem});
    let created = call_json(router, "/api/v1/pools", Some(admin_key), pool).await;
    let pool_id = created["pool"]["id"].as_str().unwrap().to_owned();
    let stack = json!({"name": "fuzz", "repository": "https://git.invalid/r.git", "pool": "fuzz"});
    call_json(router, "/api/v1/stacks", Some(admin_key), stack).await;
    let run = call_json(router, "/api/v1/stacks/fuzz/runs", Some(admin_key), json!({})).await;
    let run_id = run["id"].as_str().unwrap().to_owned();

    let challenge = json!({"pool_id": pool_id});
    let challenge = call_json(router, "/agent/v1/session/challenge", None, challenge).await;
    let challenge = challenge["challenge"].as_str().unwrap();
    let signer = PoolPrivateKey::from_pem(&key.private_key_pem).unwrap();
    let signature = signer.sign(&session_message(challenge)).unwrap();
    let open = json!({
        "pool_id": pool_id,
        "challenge": challenge,
        "signature": base64::engine::general_purpose::STANDARD.encode(signature),
        "launcher": {"id": LAUNCHER_ID, "version": "fuzz", "hostname": "h", "protocol_version": 1},
    });
    let session = call_json(router, "/agent/v1/session", None, open).await;
    let session_token = session["session_token"].as_str().unwrap().to_owned();
    let workers = json!({"workers": [{}]});
    let workers = call_json(router, "/agent/v1/workers", Some(&session_token), workers).await;
    let worker_id = workers["worker_ids"][0].as_str().unwrap().to_owned();

    // The scheduling loop assigns the run as soon as it sees the idle worker.
    let deadline = tokio::time::Instant::now() + HANG_LIMIT;
    loop {
        let poll = json!({"wait_seconds": 0});
        let polled = call_json(router, "/agent/v1/poll", Some(&session_token), poll).await;
        if polled["assignments"].as_array().is_some_and(|list| !list.is_empty()) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the run was never assigned");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ack = json!({"worker_id": worker_id, "job": "plan"});
    call_json(router, &format!("/agent/v1/runs/{run_id}/ack"), Some(&session_token), ack).await;
    Held { session_token, pool_id, run_id, worker_id }
}

const LAUNCHER_ID: &str = "01ARZ3NDEKTSV4RRFFQ69G5FAV";
/// A run and a worker that exist nowhere.
const OTHER_ID: &str = "01BX5ZZKBKACTAV9WEVGEMMVRZ";

/// A route of the agent plane and a valid body for it.
struct Route {
    method: Method,
    /// `{run}` stands for the run the case addresses.
    path: &'static str,
    body: fn(&Plane) -> Value,
}

fn post(path: &'static str, body: fn(&Plane) -> Value) -> Route {
    Route { method: Method::POST, path, body }
}

/// A blob upload: its body is bytes, not JSON.
fn put(path: &'static str) -> Route {
    Route { method: Method::PUT, path, body: |_| json!("GNTRYENV") }
}

fn get(path: &'static str) -> Route {
    Route { method: Method::GET, path, body: |_| Value::Null }
}

fn routes() -> Vec<Route> {
    vec![
        post("/agent/v1/session/challenge", |p| json!({"pool_id": p.pool_id})),
        post("/agent/v1/session", |p| {
            // A challenge the server never issued: the proof fails, the shape does not.
            let launcher =
                json!({"id": LAUNCHER_ID, "version": "1", "hostname": "h", "protocol_version": 1});
            let (challenge, signature) = ("pool.1.nonce.tag", "c2ln");
            json!({
                "pool_id": p.pool_id, "challenge": challenge, "signature": signature,
                "launcher": launcher,
            })
        }),
        post(
            "/agent/v1/workers",
            |p| json!({"workers": [{"previous_id": p.worker_id, "metadata": {"zone": "a"}}]}),
        ),
        post("/agent/v1/workers/leave", |_| json!({"worker_ids": [OTHER_ID]})),
        post(
            "/agent/v1/poll",
            |p| json!({"wait_seconds": 0, "holding": [{"run_id": p.run_id, "job": "plan"}]}),
        ),
        post(
            "/agent/v1/heartbeat",
            |p| json!({"worker_ids": [p.worker_id], "running_run_ids": [p.run_id]}),
        ),
        post("/agent/v1/runs/{run}/ack", |p| json!({"worker_id": p.worker_id, "job": "plan"})),
        post(
            "/agent/v1/runs/{run}/reports",
            |_| json!({"report": {"kind": "commit_resolved", "sha": "0123abcd", "message": "m"}}),
        ),
        post(
            "/agent/v1/runs/{run}/reports",
            |_| json!({"report": {"kind": "phase_started", "phase": "INITIALIZING"}}),
        ),
        post(
            "/agent/v1/runs/{run}/reports",
            |_| json!({"report": {"kind": "planned", "has_changes": true}}),
        ),
        post(
            "/agent/v1/runs/{run}/reports",
            |_| json!({"report": {"kind": "workspace_stored", "sha256": "ab", "size": 10}}),
        ),
        post("/agent/v1/runs/{run}/reports", |_| {
            let output = json!({"name": "o", "value": {"a": [1]}, "sensitive": false});
            json!({"report": {"kind": "outputs", "outputs": [output]}})
        }),
        post("/agent/v1/runs/{run}/reports", |_| json!({"report": {"kind": "applied"}})),
        post("/agent/v1/runs/{run}/reports", |_| json!({"report": {"kind": "stopped"}})),
        post(
            "/agent/v1/runs/{run}/reports",
            |_| json!({"report": {"kind": "failed", "message": "boom"}}),
        ),
        post("/agent/v1/runs/{run}/logs", |_| {
            let chunks = [
                json!({"seq": 0, "text": "Initializing\n"}),
                json!({"seq": 1, "text": "\u{1b}[1mx"}),
            ];
            json!({"chunks": chunks})
        }),
        put("/agent/v1/runs/{run}/workspace"),
        put("/agent/v1/runs/{run}/state"),
        put("/agent/v1/runs/{run}/sensitive-outputs"),
        get("/agent/v1/runs/{run}/workspace"),
        get("/agent/v1/runs/{run}/state"),
        get("/agent/v1/runs/{run}/inputs/{run}"),
        get("/agent/v1/worker-binary?arch={run}"),
        get("/agent/v1/worker-binary/content?arch={run}"),
    ]
}

/// Words of the agent plane's bodies, so that arbitrary JSON often has the right keys.
const WORDS: &str = "
    pool_id challenge signature launcher id version hostname protocol_version workers
    previous_id metadata worker_ids wait_seconds holding run_id job plan apply worker_id
    running_run_ids report kind phase INITIALIZING PLANNING commit_resolved phase_started
    planned has_changes workspace_stored sha256 size outputs name value sensitive applied
    performed stopped failed message chunks seq text
    01ARZ3NDEKTSV4RRFFQ69G5FAV 01BX5ZZKBKACTAV9WEVGEMMVRZ
";

/// Which run a case addresses: the one the launcher holds, one that does not exist, or a
/// path segment that is no id at all.
fn run_key() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        4 => Just(None),
        1 => Just(Some(OTHER_ID.to_owned())),
        1 => "[A-Za-z0-9._~%-]{0,40}".prop_map(Some),
    ]
}

/// Whose session a case presents: the launcher's (`Some("")`), a forged one or none.
fn token() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        6 => Just(Some(String::new())),
        1 => Just(None),
        1 => "gst_[A-Za-z0-9_-]{0,43}".prop_map(Some),
    ]
}

/// The body of a case, given its route's valid body.
#[derive(Debug, Clone)]
enum BodyKind {
    Valid,
    Bytes(Vec<u8>),
    Json(Value),
    /// The valid body's bytes, mutated.
    Mutated(Vec<fuzz::Mutation>),
    /// The valid body with one of its values (see [`replaced`]) replaced by a value of
    /// the same JSON type: still the right shape, so that handlers get past parsing.
    Replaced {
        at: usize,
        by: Replacement,
    },
    /// The same with a value of any type.
    Retyped {
        at: usize,
        by: Value,
    },
}

/// A replacement for a value of each JSON type.
#[derive(Debug, Clone)]
struct Replacement {
    text: String,
    number: Value,
    flag: bool,
    other: Value,
}

/// Strings and numbers at the edges of what fields hold: the ids the server knows and
/// one it does not, empty and long strings, zero and the largest and smallest integers.
fn replacement() -> impl Strategy<Value = Replacement> {
    let text = prop_oneof![
        Just(String::new()),
        Just(OTHER_ID.to_owned()),
        Just(LAUNCHER_ID.to_owned()),
        Just("x".repeat(100_000)),
        prop::sample::select(WORDS.split_whitespace().collect::<Vec<_>>()).prop_map(str::to_owned),
        any::<String>(),
    ];
    let number = prop_oneof![
        Just(json!(0)),
        Just(json!(-1)),
        Just(json!(u32::MAX)),
        Just(json!(u64::from(u32::MAX) + 1)),
        Just(json!(i64::MAX)),
        Just(json!(u64::MAX)),
        Just(json!(i64::MIN)),
        Just(json!(0.5)),
        Just(json!(1e300)),
        any::<u64>().prop_map(Value::from),
    ];
    (text, number, any::<bool>(), fuzz::json(WORDS))
        .prop_map(|(text, number, flag, other)| Replacement { text, number, flag, other })
}

fn body_kind() -> impl Strategy<Value = BodyKind> {
    prop_oneof![
        1 => Just(BodyKind::Valid),
        1 => prop::collection::vec(any::<u8>(), 0..512).prop_map(BodyKind::Bytes),
        1 => fuzz::json(WORDS).prop_map(BodyKind::Json),
        2 => prop::collection::vec(fuzz::mutation(), 1..=2).prop_map(BodyKind::Mutated),
        4 => (any::<usize>(), replacement()).prop_map(|(at, by)| BodyKind::Replaced { at, by }),
        1 => (any::<usize>(), fuzz::json(WORDS)).prop_map(|(at, by)| BodyKind::Retyped { at, by }),
    ]
}

/// `body` with its `at`-th value (modulo their number, counted depth first from the
/// whole body) replaced by what `by` makes of it.
fn replaced(mut body: Value, at: usize, by: impl FnOnce(&Value) -> Value) -> Value {
    fn count(value: &Value) -> usize {
        1 + match value {
            Value::Array(items) => items.iter().map(count).sum(),
            Value::Object(fields) => fields.values().map(count).sum(),
            _ => 0,
        }
    }
    /// The `at`-th value of `value` (0: itself), or how many values it holds.
    fn find(value: &mut Value, at: usize) -> Result<&mut Value, usize> {
        if at == 0 {
            return Ok(value);
        }
        let mut seen = 1;
        let children: Vec<&mut Value> = match value {
            Value::Array(items) => items.iter_mut().collect(),
            Value::Object(fields) => fields.values_mut().collect(),
            _ => Vec::new(),
        };
        for child in children {
            match find(child, at - seen) {
                Ok(found) => return Ok(found),
                Err(counted) => seen += counted,
            }
        }
        Err(seen)
    }
    let at = at % count(&body);
    let target = find(&mut body, at).expect("`at` is below the count");
    *target = by(target);
    body
}

/// A value of the same JSON type as `old`.
fn same_type(old: &Value, by: Replacement) -> Value {
    match old {
        Value::String(_) => Value::String(by.text),
        Value::Number(_) => by.number,
        Value::Bool(_) => Value::Bool(by.flag),
        _ => by.other,
    }
}

proptest! {
    #![proptest_config(fuzz::config(384))]

    #[test]
    fn agent_routes_answer_any_body_with_success_or_a_json_4xx(
        route_index in 0..routes().len(),
        run in run_key(),
        token in token(),
        content_type in fuzz::content_type(),
        body in body_kind(),
    ) {
        let plane = plane();
        let route = &routes()[route_index];
        let run = run.unwrap_or_else(|| plane.run_id.clone());
        let path = route.path.replace("{run}", &run);
        let valid = (route.body)(plane);
        let body = match body {
            BodyKind::Valid => valid.to_string().into_bytes(),
            BodyKind::Bytes(bytes) => bytes,
            BodyKind::Json(value) => value.to_string().into_bytes(),
            BodyKind::Mutated(mutations) => fuzz::apply(valid.to_string().as_bytes(), &mutations),
            BodyKind::Replaced { at, by } => {
                replaced(valid, at, |old| same_type(old, by)).to_string().into_bytes()
            }
            BodyKind::Retyped { at, by } => replaced(valid, at, |_| by).to_string().into_bytes(),
        };
        let token = token.map(|token| match token.is_empty() {
            true => plane.session_token.clone(),
            false => token,
        });
        let shown = String::from_utf8_lossy(&body[..body.len().min(2000)]).into_owned();
        let what = format!("{} {} {}", route.method, path, shown);
        let method = route.method.clone();
        let (status, answer) = plane.runtime.block_on(async {
            let call = call(&plane.router, method, &path, token.as_deref(), content_type, body);
            tokio::time::timeout(HANG_LIMIT, call).await.expect("the server answers in time")
        });
        fuzz::answered_cleanly(status.as_u16(), &answer, &what)?;
    }

    /// Log uploads with the launcher's own run, whatever their sequence numbers and text.
    #[test]
    fn log_uploads_answer_with_success_or_a_json_4xx(
        chunks in prop::collection::vec((any::<u64>(), any::<String>()), 0..4),
    ) {
        let plane = plane();
        let chunks: Vec<Value> =
            chunks.iter().map(|(seq, text)| json!({"seq": seq, "text": text})).collect();
        let path = format!("/agent/v1/runs/{}/logs", plane.run_id);
        let body = json!({"chunks": chunks}).to_string().into_bytes();
        let token = Some(plane.session_token.as_str());
        let (status, answer) = plane.runtime.block_on(
            call(&plane.router, Method::POST, &path, token, Some("application/json"), body),
        );
        fuzz::answered_cleanly(status.as_u16(), &answer, "log upload")?;
    }
}

#[test]
fn the_mutated_bodies_start_from_valid_requests() {
    // Each route's sample is accepted as it is (or refused for a reason other than its
    // shape), so that its mutations explore near valid requests.
    let plane = plane();
    for route in routes().iter().filter(|route| route.method == Method::POST) {
        let path = route.path.replace("{run}", &plane.run_id);
        let body = (route.body)(plane).to_string().into_bytes();
        let token = Some(plane.session_token.as_str());
        let (status, answer) = plane.runtime.block_on(call(
            &plane.router,
            route.method.clone(),
            &path,
            token,
            Some("application/json"),
            body,
        ));
        let refused_for_its_shape = answer["error"]["message"]
            .as_str()
            .is_some_and(|message| message.contains("the request body is not valid"));
        assert!(!refused_for_its_shape, "{path}: {status} {answer}");
    }
}
