//! A scripted stand-in for the Gantry REST API over real TLS (a CA made with
//! gantry-crypto), until the real server exists: fixed pools, stacks and runs, and live
//! log streams that drop the connection, replay a chunk, or stall at UNCONFIRMED, so
//! that the client's reconnection and the CLI's exit statuses can be tested for real.

// Handlers return `Response` as their error: boxing it would only add noise to a fake.
#![allow(unreachable_pub, dead_code, clippy::result_large_err)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use gantry_domain::{
    PoolId, RunId, RunState, RunType, StackId, Timestamp, Tool, WorkerId, WorkerStatus,
};
use gantry_proto::api::{
    CreatePool, CreateStack, ErrorBody, ErrorResponse, Health, LogChunk, LogPage, Pool,
    PoolCertificate, PoolCreated, PoolKind, PoolList, Run, RunList, Stack, StackList, StateChange,
    StreamEnd, TriggerRun, Worker, WorkerList,
};
use serde::Deserialize;

pub const API_KEY: &str = "gak_test_key";
pub const TOKEN: &str = "eyJ0ZXN0Ijp0cnVlfQ";
/// Chunks per page of `/logs`, small so that the CLI has to page.
pub const PAGE_SIZE: usize = 2;

pub const POOL_ID: PoolId = PoolId::from_u128(1);
pub const STACK_WEB: StackId = StackId::from_u128(20);
/// Streams three chunks, drops the connection, then resumes (replaying one chunk) to
/// FINISHED.
pub const RUN_FINISHES: RunId = RunId::from_u128(100);
/// Fails while planning.
pub const RUN_FAILS: RunId = RunId::from_u128(101);
/// Stops at UNCONFIRMED and keeps the stream open; its last chunk is only in `/logs`.
pub const RUN_WAITS: RunId = RunId::from_u128(102);

pub fn log_texts(run: RunId) -> Vec<&'static str> {
    match run {
        RUN_FINISHES => vec![
            "\u{1b}[0m\u{1b}[1mInitializing the backend...\u{1b}[0m\n",
            "Terraform has been successfully initialized!\n",
            "Plan: \u{1b}[32m1 to add\u{1b}[0m, 0 to change, 0 to destroy.\n",
            "terraform_data.x: Creating...\n",
            "\u{1b}[0m\u{1b}[1m\u{1b}[32mApply complete! Resources: 1 added.\u{1b}[0m\n",
        ],
        RUN_FAILS => vec!["\u{1b}[31mError:\u{1b}[0m Unsupported argument\n"],
        RUN_WAITS => vec![
            "Terraform has been successfully initialized!\n",
            "Plan: 1 to add, 0 to change, 0 to destroy.\n",
            "Waiting for confirmation.\n",
        ],
        _ => Vec::new(),
    }
}

const T0: i64 = 1_767_323_045_000;

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_unix_millis(T0 + seconds * 1_000)
}

pub fn pool() -> Pool {
    Pool {
        id: POOL_ID,
        name: "build".to_owned(),
        kind: PoolKind::Private,
        description: String::new(),
        labels: vec!["linux".to_owned()],
        certificate_fingerprint: Some("sha256:0123abcd".to_owned()),
        key_algorithm: Some("EC P-256".to_owned()),
        workers: 1,
        busy_workers: 0,
        drained_workers: 0,
        pending_runs: 0,
        used_by: vec!["web".to_owned()],
        created_at: at(0),
    }
}

fn worker() -> Worker {
    Worker {
        id: WorkerId::from_u128(7),
        pool_id: POOL_ID,
        status: WorkerStatus::Idle,
        busy: false,
        drained: false,
        current_run_id: None,
        metadata: BTreeMap::from([("rack".to_owned(), "r1".to_owned())]),
        launcher_version: "0.1.0".to_owned(),
        hostname: "vm-1".to_owned(),
        created_at: at(0),
        last_seen_at: at(1),
    }
}

pub fn stack(name: &str) -> Stack {
    Stack {
        id: STACK_WEB,
        name: name.to_owned(),
        repository: "file:///srv/git/web.git".to_owned(),
        branch: "main".to_owned(),
        project_root: String::new(),
        pool_id: POOL_ID,
        pool_name: "build".to_owned(),
        tool: Tool::Terraform,
        runner_image: None,
        autodeploy: false,
        managed_state: false,
        share_sensitive_outputs: false,
        environment: Vec::new(),
        description: String::new(),
        labels: Vec::new(),
        trigger_paths: Vec::new(),
        created_at: at(0),
        lock_fence: None,
        drift: None,
    }
}

pub fn run(id: RunId, state: RunState) -> Run {
    let mut history = vec![StateChange { state: RunState::Queued, at: at(0) }];
    if state != RunState::Queued {
        history.push(StateChange { state, at: at(5) });
    }
    Run {
        id,
        stack_id: STACK_WEB,
        stack_name: "web".to_owned(),
        pool_id: POOL_ID,
        run_type: RunType::Tracked,
        state,
        branch: "main".to_owned(),
        commit: Some("3f2a9c1d8e7b6a5f".to_owned()),
        commit_message: Some("Add x".to_owned()),
        autodeploy: false,
        worker_id: None,
        has_changes: None,
        failure: (state == RunState::Failed)
            .then(|| "terraform plan exited with status 1".to_owned()),
        waiting_reason: None,
        history,
        outputs: Vec::new(),
        command: None,
        prioritized: false,
        stop_requested: false,
        triggered_by: "user".to_owned(),
        created_at: at(0),
        updated_at: at(5),
    }
}

fn final_state(id: RunId) -> RunState {
    match id {
        RUN_FINISHES => RunState::Finished,
        RUN_FAILS => RunState::Failed,
        _ => RunState::Unconfirmed,
    }
}

fn chunk(run: RunId, seq: u64) -> LogChunk {
    LogChunk { seq, text: log_texts(run)[seq as usize].to_owned(), at: at(seq as i64) }
}

/// What the fake saw.
#[derive(Debug, Default)]
pub struct Recorded {
    /// `from` of each stream request, per run.
    pub stream_froms: Vec<(RunId, u64)>,
    pub created_pools: Vec<CreatePool>,
    pub created_stacks: Vec<serde_json::Value>,
    pub triggered: Vec<(String, serde_json::Value)>,
}

#[derive(Clone, Default)]
struct AppState {
    recorded: Arc<Mutex<Recorded>>,
    /// What `GET /pools/{pool}/certificate` answers for every pool.
    pool_certificate: Arc<Option<PoolCertificate>>,
}

pub struct FakeApi {
    pub url: String,
    pub ca_pem: String,
    pub recorded: Arc<Mutex<Recorded>>,
    /// Every pool's certificate (issued by the fake CA) and the key that opens what the
    /// CLI seals to it.
    pub pool_certificate: PoolCertificate,
    pub pool_key_pem: String,
}

impl FakeApi {
    /// Serves on 127.0.0.1 with a certificate from a fresh CA, until the runtime ends.
    pub async fn start() -> FakeApi {
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let ca = gantry_crypto::CertificateAuthority::generate("fake gantry CA").unwrap();
        let identity = ca.issue_server_certificate(&["127.0.0.1".to_owned()]).unwrap();
        let config = axum_server::tls_rustls::RustlsConfig::from_pem(
            identity.certificate_chain_pem.into_bytes(),
            identity.private_key_pem.into_bytes(),
        )
        .await
        .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        let pool_key = gantry_crypto::generate_pool_key("fake pool").unwrap();
        let pool_id = gantry_domain::PoolId::generate();
        let issued = ca.issue_pool_certificate(&pool_key.csr_pem, &pool_id.to_string()).unwrap();
        let pool_certificate = PoolCertificate {
            pool_id,
            pool_name: "build".to_owned(),
            certificate: issued.certificate.pem().to_owned(),
            fingerprint: issued.certificate.fingerprint().to_owned(),
        };
        let state = AppState {
            pool_certificate: Arc::new(Some(pool_certificate.clone())),
            ..AppState::default()
        };
        let recorded = state.recorded.clone();
        let app = router(state);
        let server = axum_server::tls_rustls::from_tcp_rustls(listener, config).unwrap();
        tokio::spawn(async move { server.serve(app.into_make_service()).await });
        FakeApi {
            url: format!("https://{address}"),
            ca_pem: ca.certificate().pem().to_owned(),
            recorded,
            pool_certificate,
            pool_key_pem: pool_key.private_key_pem,
        }
    }

    pub fn stream_froms(&self) -> Vec<(RunId, u64)> {
        self.recorded.lock().unwrap().stream_froms.clone()
    }
}

fn router(state: AppState) -> axum::Router {
    axum::Router::new()
        .route(
            "/api/v1/health",
            get(|| async { Json(Health { status: "ok".into(), version: "test".into() }) }),
        )
        .route("/api/v1/pools", get(list_pools).post(create_pool))
        .route("/api/v1/pools/{pool}", get(get_pool))
        .route("/api/v1/pools/{pool}/workers", get(pool_workers))
        .route(
            "/api/v1/pools/{pool}/certificate",
            get(|State(state): State<AppState>| async move {
                Json(state.pool_certificate.as_ref().clone().expect("a pool certificate"))
            }),
        )
        .route("/api/v1/workers", get(workers))
        .route("/api/v1/stacks", get(list_stacks).post(create_stack))
        .route("/api/v1/stacks/{stack}", get(get_stack))
        .route("/api/v1/stacks/{stack}/runs", post(trigger))
        .route("/api/v1/runs", get(list_runs))
        .route("/api/v1/runs/{id}", get(get_run))
        .route("/api/v1/runs/{id}/confirm", post(confirm))
        .route("/api/v1/runs/{id}/discard", post(discard))
        .route("/api/v1/runs/{id}/logs", get(logs))
        .route("/api/v1/runs/{id}/logs/stream", get(stream))
        .with_state(state)
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    let body = ErrorResponse { error: ErrorBody { code: code.to_owned(), message } };
    (status, Json(body)).into_response()
}

fn check_key(headers: &HeaderMap) -> Result<(), Response> {
    let expected = format!("Bearer {API_KEY}");
    match headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        Some(value) if value == expected => Ok(()),
        _ => Err(error(StatusCode::UNAUTHORIZED, "unauthorized", "invalid API key".to_owned())),
    }
}

fn run_id(text: &str) -> Result<RunId, Response> {
    let id: RunId = text
        .parse()
        .map_err(|_| error(StatusCode::NOT_FOUND, "not_found", format!("no run {text}")))?;
    if [RUN_FINISHES, RUN_FAILS, RUN_WAITS].contains(&id) {
        Ok(id)
    } else {
        Err(error(StatusCode::NOT_FOUND, "not_found", format!("no run {text}")))
    }
}

async fn list_pools(headers: HeaderMap) -> Response {
    if let Err(response) = check_key(&headers) {
        return response;
    }
    Json(PoolList { pools: vec![pool()] }).into_response()
}

async fn get_pool(headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Err(response) = check_key(&headers) {
        return response;
    }
    if name == "build" || name == POOL_ID.to_string() {
        Json(pool()).into_response()
    } else {
        error(StatusCode::NOT_FOUND, "not_found", format!("no pool named {name:?}"))
    }
}

async fn pool_workers(headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Err(response) = check_key(&headers) {
        return response;
    }
    if name == "build" || name == POOL_ID.to_string() {
        Json(WorkerList { workers: vec![worker()] }).into_response()
    } else {
        error(StatusCode::NOT_FOUND, "not_found", format!("no pool named {name:?}"))
    }
}

async fn workers(headers: HeaderMap) -> Response {
    if let Err(response) = check_key(&headers) {
        return response;
    }
    Json(WorkerList { workers: vec![worker()] }).into_response()
}

async fn create_pool(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<CreatePool>,
) -> Response {
    if let Err(response) = check_key(&headers) {
        return response;
    }
    if !request.csr.contains("BEGIN CERTIFICATE REQUEST") {
        return error(StatusCode::BAD_REQUEST, "invalid_request", "csr: not a PEM CSR".to_owned());
    }
    let mut created = pool();
    created.name = request.name.clone();
    created.labels = request.labels.clone();
    state.recorded.lock().unwrap().created_pools.push(request);
    (StatusCode::CREATED, Json(PoolCreated { pool: created, token: TOKEN.to_owned() }))
        .into_response()
}

async fn list_stacks(headers: HeaderMap) -> Response {
    if let Err(response) = check_key(&headers) {
        return response;
    }
    Json(StackList { stacks: vec![stack("web")] }).into_response()
}

async fn get_stack(headers: HeaderMap, Path(name): Path<String>) -> Response {
    if let Err(response) = check_key(&headers) {
        return response;
    }
    if name == "web" || name == STACK_WEB.to_string() {
        Json(stack("web")).into_response()
    } else {
        error(StatusCode::NOT_FOUND, "not_found", format!("no stack named {name:?}"))
    }
}

async fn create_stack(
    State(state): State<AppState>,
    headers: HeaderMap,
    Json(request): Json<serde_json::Value>,
) -> Response {
    if let Err(response) = check_key(&headers) {
        return response;
    }
    // The real server refuses unknown fields: so does this one.
    let parsed: CreateStack = match serde_json::from_value(request.clone()) {
        Ok(parsed) => parsed,
        Err(e) => return error(StatusCode::BAD_REQUEST, "invalid_request", e.to_string()),
    };
    state.recorded.lock().unwrap().created_stacks.push(request);
    (StatusCode::CREATED, Json(stack(&parsed.name))).into_response()
}

/// Stack `web` makes RUN_FINISHES, `broken` RUN_FAILS, `gated` RUN_WAITS.
async fn trigger(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(name): Path<String>,
    Json(request): Json<serde_json::Value>,
) -> Response {
    if let Err(response) = check_key(&headers) {
        return response;
    }
    if let Err(e) = serde_json::from_value::<TriggerRun>(request.clone()) {
        return error(StatusCode::BAD_REQUEST, "invalid_request", e.to_string());
    }
    let id = match name.as_str() {
        "web" => RUN_FINISHES,
        "broken" => RUN_FAILS,
        "gated" => RUN_WAITS,
        _ => return error(StatusCode::NOT_FOUND, "not_found", format!("no stack named {name:?}")),
    };
    state.recorded.lock().unwrap().triggered.push((name, request));
    (StatusCode::CREATED, Json(run(id, RunState::Queued))).into_response()
}

#[derive(Deserialize)]
struct RunsQuery {
    stack: Option<String>,
    limit: Option<usize>,
}

async fn list_runs(headers: HeaderMap, Query(query): Query<RunsQuery>) -> Response {
    if let Err(response) = check_key(&headers) {
        return response;
    }
    let mut runs: Vec<Run> = [RUN_WAITS, RUN_FAILS, RUN_FINISHES]
        .into_iter()
        .map(|id| run(id, final_state(id)))
        .collect();
    if let Some(stack) = query.stack
        && stack != "web"
        && stack != STACK_WEB.to_string()
    {
        runs.clear();
    }
    runs.truncate(query.limit.unwrap_or(usize::MAX));
    Json(RunList { runs }).into_response()
}

async fn get_run(headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(response) = check_key(&headers) {
        return response;
    }
    match run_id(&id) {
        Ok(id) => Json(run(id, final_state(id))).into_response(),
        Err(response) => response,
    }
}

async fn confirm(headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(response) = check_key(&headers) {
        return response;
    }
    match run_id(&id) {
        Ok(RUN_WAITS) => Json(run(RUN_WAITS, RunState::Confirmed)).into_response(),
        Ok(_) => error(
            StatusCode::CONFLICT,
            "conflict",
            "only UNCONFIRMED runs can be confirmed".to_owned(),
        ),
        Err(response) => response,
    }
}

async fn discard(headers: HeaderMap, Path(id): Path<String>) -> Response {
    if let Err(response) = check_key(&headers) {
        return response;
    }
    match run_id(&id) {
        Ok(id) => Json(run(id, RunState::Discarded)).into_response(),
        Err(response) => response,
    }
}

#[derive(Deserialize)]
struct LogsQuery {
    from: Option<u64>,
    limit: Option<usize>,
}

async fn logs(
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Response {
    if let Err(response) = check_key(&headers) {
        return response;
    }
    let id = match run_id(&id) {
        Ok(id) => id,
        Err(response) => return response,
    };
    let from = query.from.unwrap_or(0);
    let total = log_texts(id).len() as u64;
    let size = query.limit.unwrap_or(usize::MAX).min(PAGE_SIZE) as u64;
    let chunks: Vec<LogChunk> = (from..total.min(from + size)).map(|seq| chunk(id, seq)).collect();
    let next_seq = chunks.last().map_or(from, |c| c.seq + 1);
    let complete = final_state(id).is_terminal() && next_seq >= total;
    Json(LogPage { chunks, next_seq, complete }).into_response()
}

fn event(name: &str, data: &impl serde::Serialize) -> String {
    format!("event: {name}\ndata: {}\n\n", serde_json::to_string(data).unwrap())
}

fn log_event(id: RunId, seq: u64) -> String {
    event("log", &chunk(id, seq))
}

fn state_event(id: RunId, state: RunState) -> String {
    event("state", &run(id, state))
}

async fn stream(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    Query(query): Query<LogsQuery>,
) -> Response {
    if let Err(response) = check_key(&headers) {
        return response;
    }
    let id = match run_id(&id) {
        Ok(id) => id,
        Err(response) => return response,
    };
    let from = query.from.unwrap_or(0);
    state.recorded.lock().unwrap().stream_froms.push((id, from));

    let mut pieces: Vec<Result<Bytes, std::io::Error>> = Vec::new();
    let mut pending_forever = false;
    match (id, from) {
        (RUN_FINISHES, 0) => {
            let text = [
                state_event(id, RunState::Planning),
                log_event(id, 0),
                log_event(id, 1),
                log_event(id, 2),
            ]
            .concat();
            // Cut in odd places, a line and an event across two writes.
            let bytes = text.into_bytes();
            for piece in bytes.chunks(37) {
                pieces.push(Ok(Bytes::copy_from_slice(piece)));
            }
            pieces.push(Ok(Bytes::from_static(b": keep-alive\n\n")));
            // The reset comes a moment later: an HTTP/2 reset discards what the client has
            // not read yet, and this script wants the client to resume from 3.
            let drop = futures_util::stream::once(async {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
                Err::<Bytes, _>(std::io::Error::other("connection dropped"))
            });
            let body = futures_util::stream::iter(pieces).chain(drop);
            return ([(header::CONTENT_TYPE, "text/event-stream")], Body::from_stream(body))
                .into_response();
        }
        (RUN_FINISHES, _) => {
            // Replays the chunk before `from`, as a confused proxy might.
            let mut text = log_event(id, from.saturating_sub(1));
            for seq in from..5 {
                if seq == 4 {
                    text.push_str(&state_event(id, RunState::Applying));
                }
                text.push_str(&log_event(id, seq));
            }
            text.push_str(&state_event(id, RunState::Finished));
            text.push_str(&event("end", &StreamEnd { state: RunState::Finished }));
            pieces.push(Ok(Bytes::from(text)));
        }
        (RUN_FAILS, _) => {
            let text = [
                log_event(id, 0),
                state_event(id, RunState::Failed),
                event("end", &StreamEnd { state: RunState::Failed }),
            ]
            .concat();
            pieces.push(Ok(Bytes::from(text)));
        }
        (_, _) => {
            let text = [log_event(id, 0), log_event(id, 1), state_event(id, RunState::Unconfirmed)]
                .concat();
            pieces.push(Ok(Bytes::from(text)));
            pending_forever = true;
        }
    }
    let body = futures_util::stream::iter(pieces);
    let body = if pending_forever {
        Body::from_stream(body.chain(futures_util::stream::pending()))
    } else {
        Body::from_stream(body)
    };
    ([(header::CONTENT_TYPE, "text/event-stream")], body).into_response()
}
