//! Fuzz tests of the local API a run's worker calls: the tool runs beside the worker and
//! can reach its socket, so anything may arrive there (arbitrary bytes, arbitrary JSON
//! keyed like the wire types, mutations of a valid request), with the run's capability,
//! a forged one or none. The answer is a success (a mutation may still be a valid
//! request) or a 4xx with the JSON error body: never a 5xx, a panic or a hang.
//!
//! One endpoint serves all cases, called through `router()` without the socket. What it
//! relays goes to a real server, for a run that server never assigned: refused there, as
//! for a run taken away from its launcher, so that no case waits on a retry.

use std::sync::{Arc, OnceLock};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use gantry_crypto::{PoolPrivateKey, PoolToken};
use gantry_domain::{LauncherId, Phase, RunId, RunType};
use gantry_proto::agent::{Job, LauncherInfo, PROTOCOL_VERSION, RunReport};
use gantry_proto::local::{SensitiveOutput, WorkerJob, WorkerLog, WorkerReport};
use gantry_testkit::TestServer;
use gantry_testkit::fuzz::{self, HANG_LIMIT};
use proptest::prelude::*;
use serde_json::Value;
use tokio::runtime::Runtime;
use tower::ServiceExt;

use super::{RunEndpoint, router};
use crate::client::AgentClient;
use crate::logs::{DEFAULT_LOG_BUFFER_SIZE, LogBufferBudget, LogRelay};
use crate::mask::Masker;
use crate::metrics::LauncherMetrics;

const CAPABILITY: &str = "gwc_fuzz-capability-of-the-run";

/// An endpoint of a run whose reports and log go to a real server.
struct Api {
    runtime: Runtime,
    router: Router,
    _server: TestServer,
}

fn api() -> &'static Api {
    static API: OnceLock<Api> = OnceLock::new();
    API.get_or_init(|| {
        let runtime = fuzz::runtime();
        let (router, server) = runtime.block_on(async {
            let server = TestServer::start().await;
            let pool = server.create_pool("fuzz").await;
            let token = PoolToken::decode(&pool.token).unwrap();
            let key = Arc::new(PoolPrivateKey::from_pem(&pool.private_key_pem).unwrap());
            let info = LauncherInfo {
                id: LauncherId::generate(),
                version: "fuzz".to_owned(),
                hostname: "fuzz".to_owned(),
                protocol_version: PROTOCOL_VERSION,
            };
            let client = Arc::new(AgentClient::for_pool(&token, key, info).unwrap());
            let run_id = RunId::generate();
            let budget = Arc::new(LogBufferBudget::new(DEFAULT_LOG_BUFFER_SIZE));
            let spool_dir = std::env::temp_dir();
            let (logs, _upload) = LogRelay::start(
                Arc::clone(&client),
                run_id,
                0,
                Masker::new([]),
                false,
                &spool_dir,
                budget,
            );
            let job = WorkerJob {
                run_id,
                run_type: RunType::Tracked,
                job: Job::Plan,
                tool_executable: "terraform".to_owned(),
                working_directory: "/nonexistent".to_owned(),
                environment: Vec::new(),
                plan_file: "plan".to_owned(),
                command: None,
                collect_sensitive_outputs: false,
                debug: false,
            };
            let metrics = Arc::new(LauncherMetrics::new(1));
            let endpoint = RunEndpoint::new(job, CAPABILITY, client, logs, None, metrics);
            (router(Arc::new(endpoint)), server)
        });
        Api { runtime, router, _server: server }
    })
}

/// A route of the API and a valid body for it.
struct Route {
    method: Method,
    path: &'static str,
    body: fn() -> Value,
}

fn routes() -> Vec<Route> {
    vec![
        Route { method: Method::GET, path: "/v1/job", body: || Value::Null },
        Route {
            method: Method::POST,
            path: "/v1/logs",
            body: || serde_json::to_value(WorkerLog { text: "Initializing\n".to_owned() }).unwrap(),
        },
        Route {
            method: Method::POST,
            path: "/v1/reports",
            body: || {
                let report = WorkerReport {
                    report: RunReport::PhaseStarted { phase: Phase::Planning },
                    sensitive_outputs: Vec::new(),
                };
                serde_json::to_value(report).unwrap()
            },
        },
        Route {
            method: Method::POST,
            path: "/v1/reports",
            body: || {
                let report = WorkerReport {
                    report: RunReport::Failed { message: "terraform exited with 1".to_owned() },
                    sensitive_outputs: vec![SensitiveOutput {
                        name: "password".to_owned(),
                        value: serde_json::json!("hunter2-hunter2"),
                    }],
                };
                serde_json::to_value(report).unwrap()
            },
        },
    ]
}

/// Words of the wire types, for arbitrary JSON that looks like a request.
const WORDS: &str = "text report sensitive_outputs type phase_started planned applied performed
    stopped failed message outputs name value sensitive has_changes phase planning applying
    initializing performing commit_resolved sha author workspace_stored sha256 size";

/// Whose capability a case presents: the run's, a forged one, none, or not a bearer.
fn authorization() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        6 => Just(Some(format!("Bearer {CAPABILITY}"))),
        1 => Just(None),
        1 => "Bearer gwc_[A-Za-z0-9_-]{0,43}".prop_map(Some),
        1 => any::<String>().prop_map(Some),
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
}

fn body_kind() -> impl Strategy<Value = BodyKind> {
    prop_oneof![
        1 => Just(BodyKind::Valid),
        1 => prop::collection::vec(any::<u8>(), 0..512).prop_map(BodyKind::Bytes),
        2 => fuzz::json(WORDS).prop_map(BodyKind::Json),
        3 => prop::collection::vec(fuzz::mutation(), 1..=2).prop_map(BodyKind::Mutated),
    ]
}

/// Sends one request; returns the status and the body as JSON (`Null` when it is not).
async fn call(
    router: &Router,
    route: &Route,
    authorization: Option<&str>,
    content_type: Option<&str>,
    body: Vec<u8>,
) -> (StatusCode, Value) {
    let mut request = Request::builder().method(route.method.clone()).uri(route.path);
    if let Some(authorization) = authorization {
        request = request.header("authorization", authorization);
    }
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    let request = request.body(Body::from(body)).unwrap();
    let response = router.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await.unwrap();
    (status, serde_json::from_slice(&bytes).unwrap_or(Value::Null))
}

proptest! {
    #![proptest_config(fuzz::config(256))]

    #[test]
    fn worker_routes_answer_any_body_with_success_or_a_json_4xx(
        route_index in 0..routes().len(),
        authorization in authorization(),
        content_type in fuzz::content_type(),
        body in body_kind(),
    ) {
        let api = api();
        let route = &routes()[route_index];
        let valid = (route.body)();
        let body = match body {
            BodyKind::Valid => valid.to_string().into_bytes(),
            BodyKind::Bytes(bytes) => bytes,
            BodyKind::Json(value) => value.to_string().into_bytes(),
            BodyKind::Mutated(mutations) => fuzz::apply(valid.to_string().as_bytes(), &mutations),
        };
        let shown = String::from_utf8_lossy(&body[..body.len().min(2000)]).into_owned();
        let what = format!("{} {} {}", route.method, route.path, shown);
        let (status, answer) = api.runtime.block_on(async {
            let call = call(&api.router, route, authorization.as_deref(), content_type, body);
            tokio::time::timeout(HANG_LIMIT, call).await.expect("the endpoint answers in time")
        });
        fuzz::answered_cleanly(status.as_u16(), &answer, &what)?;
    }
}

#[test]
fn the_mutated_bodies_start_from_valid_requests() {
    // Each route's sample is accepted as it is, so that its mutations explore near valid
    // requests; without the capability, each is refused with the JSON error body.
    let api = api();
    for route in &routes() {
        let body = (route.body)().to_string().into_bytes();
        let authorization = format!("Bearer {CAPABILITY}");
        let (status, answer) = api.runtime.block_on(call(
            &api.router,
            route,
            Some(&authorization),
            Some("application/json"),
            body.clone(),
        ));
        assert!(status.is_success(), "{}: {status} {answer}", route.path);
        let (status, answer) =
            api.runtime.block_on(call(&api.router, route, None, Some("application/json"), body));
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{}: {answer}", route.path);
        assert_eq!(answer["error"]["code"], "unauthorized", "{}: {answer}", route.path);
    }
}

#[test]
fn a_log_post_under_its_limit_is_taken_and_one_over_it_is_answered_413() {
    // The most the worker posts at a time (256 KiB of text) fits even all escaped, six
    // bytes a character; a larger body is answered 413 with the JSON error body, which the
    // worker answers by posting halves.
    let api = api();
    let route = Route { method: Method::POST, path: "/v1/logs", body: || Value::Null };
    let authorization = format!("Bearer {CAPABILITY}");
    let post = |characters: usize| {
        let body = serde_json::to_vec(&WorkerLog { text: "\u{1b}".repeat(characters) }).unwrap();
        let json = Some("application/json");
        api.runtime.block_on(call(&api.router, &route, Some(&authorization), json, body))
    };
    let (status, answer) = post(256 * 1024);
    assert!(status.is_success(), "{status} {answer}");
    let (status, answer) = post(512 * 1024);
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert!(answer["error"]["message"].is_string(), "{answer}");
}
