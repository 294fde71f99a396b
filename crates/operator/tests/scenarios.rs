//! Reconciler scenarios: a real Gantry server on loopback, and the Kubernetes API played
//! by `tower_test`'s mock, step by step: every request's method, path and body is
//! asserted before it is answered.

use std::sync::Arc;

use gantry_operator::config::OperatorConfig;
use gantry_operator::crd::{WorkerPool, WorkerPoolSpec};
use gantry_operator::reconcile::{Context, reconcile, start_run};
use gantry_testkit::TestServer;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::SecretKeySelector;
use kube::api::ObjectMeta;
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{Handle, SendResponse};

type ApiHandle = Handle<Request<Body>, Response<Body>>;

const NS: &str = "runners";
const POOL: &str = "wp";

/// A pool on a real server, and the WorkerPool that names its credentials.
struct World {
    server: TestServer,
    token: String,
    private_key_pem: String,
    pool_name: String,
}

impl World {
    async fn start() -> Self {
        let server = TestServer::start().await;
        let created = server.create_pool("k8s").await;
        Self {
            token: created.token,
            private_key_pem: created.private_key_pem,
            pool_name: "k8s".to_owned(),
            server,
        }
    }

    async fn api(&self, method: Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .server
            .http()
            .request(method, format!("{}/api/v1/{path}", self.server.url))
            .bearer_auth(&self.server.admin_key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{path}: {status} {text}");
        serde_json::from_str(&text).unwrap_or(Value::Null)
    }

    async fn server_workers(&self) -> Vec<Value> {
        let answer =
            self.api(Method::GET, &format!("pools/{}/workers", self.pool_name), None).await;
        answer["workers"].as_array().cloned().unwrap_or_default()
    }
}

fn worker_pool(pool_size: i32) -> WorkerPool {
    let mut pool = WorkerPool::new(
        POOL,
        WorkerPoolSpec {
            pool_size,
            token: Some(SecretKeySelector {
                name: "pool".into(),
                key: "token".into(),
                optional: None,
            }),
            private_key: Some(SecretKeySelector {
                name: "pool".into(),
                key: "key".into(),
                optional: None,
            }),
            registration: None,
            pod: Default::default(),
            successful_pods_history_limit: None,
            failed_pods_history_limit: None,
            successful_pods_ttl_seconds: None,
            failed_pods_ttl_seconds: None,
            pending_pod_timeout_seconds: None,
        },
    );
    pool.metadata = ObjectMeta {
        name: Some(POOL.into()),
        namespace: Some(NS.into()),
        uid: Some("uid-wp".into()),
        generation: Some(1),
        ..ObjectMeta::default()
    };
    pool
}

fn context(kube: kube::Client) -> Arc<Context> {
    let env = [
        ("GANTRY_OPERATOR_LAUNCHER_IMAGE", "registry.example.com/gantry/gantry:0.1.0"),
        ("HOSTNAME", "operator-0"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    Arc::new(Context::new(kube, OperatorConfig::from_env(&env).unwrap(), false))
}

fn mock() -> (kube::Client, ApiHandle) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (kube::Client::new(service, NS), handle)
}

/// The next request: its method and path (query included) must be these.
async fn expect(
    handle: &mut ApiHandle,
    method: Method,
    path: &str,
) -> (Value, SendResponse<Response<Body>>) {
    let (request, respond) =
        tokio::time::timeout(std::time::Duration::from_secs(30), handle.next_request())
            .await
            .unwrap_or_else(|_| panic!("no request came; expected {method} {path}"))
            .expect("the client is alive");
    let actual_path =
        request.uri().path_and_query().map(|p| p.as_str().to_owned()).unwrap_or_default();
    assert_eq!(
        (request.method().clone(), actual_path.split('?').next().unwrap().to_owned()),
        (method, path.to_owned()),
        "full request: {actual_path}"
    );
    let bytes = request.into_body().collect_bytes().await.unwrap();
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
    (body, respond)
}

fn reply(respond: SendResponse<Response<Body>>, status: StatusCode, body: &Value) {
    respond.send_response(
        Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(body).unwrap()))
            .unwrap(),
    );
}

fn not_found(respond: SendResponse<Response<Body>>) {
    reply(
        respond,
        StatusCode::NOT_FOUND,
        &json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found" }),
    );
}

/// The WorkerPool as the API server answers a status patch.
fn pool_object() -> Value {
    serde_json::to_value(worker_pool(0)).unwrap()
}

fn worker_object(name: &str) -> Value {
    json!({
        "apiVersion": "workers.gantry.dev/v1beta1", "kind": "Worker",
        "metadata": { "name": name, "namespace": NS },
        "spec": { "poolName": POOL, "identitySecretName": format!("{name}-identity") },
    })
}

fn list(kind: &str, api_version: &str, items: Vec<Value>) -> Value {
    json!({ "apiVersion": api_version, "kind": kind, "metadata": { "resourceVersion": "1" }, "items": items })
}

/// Answers a create with the object as sent, given a uid.
fn created(respond: SendResponse<Response<Body>>, mut body: Value) -> Value {
    body["metadata"]["uid"] = json!(format!("uid-{}", body["metadata"]["name"].as_str().unwrap()));
    reply(respond, StatusCode::CREATED, &body);
    body
}

const WORKERS: &str = "/apis/workers.gantry.dev/v1beta1/namespaces/runners/workers";
const PODS: &str = "/api/v1/namespaces/runners/pods";
const SECRETS: &str = "/api/v1/namespaces/runners/secrets";
const POOL_STATUS: &str =
    "/apis/workers.gantry.dev/v1beta1/namespaces/runners/workerpools/wp/status";
const BUDGET: &str = "/apis/policy/v1/namespaces/runners/poddisruptionbudgets";

/// The credential Secret reads every pass starts with.
async fn serve_credentials(handle: &mut ApiHandle, world: &World) {
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": { "name": "pool", "namespace": NS },
        "data": {
            "token": base64(&world.token),
            "key": base64(&world.private_key_pem),
        },
    });
    for _ in 0..2 {
        let (_, respond) = expect(handle, Method::GET, &format!("{SECRETS}/pool")).await;
        reply(respond, StatusCode::OK, &secret);
    }
}

fn base64(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Serves the listings and the existing disruption budget.
async fn serve_listings(handle: &mut ApiHandle, workers: &[Value], pods: &[Value]) {
    let (_, respond) = expect(handle, Method::GET, WORKERS).await;
    reply(
        respond,
        StatusCode::OK,
        &list("WorkerList", "workers.gantry.dev/v1beta1", workers.to_vec()),
    );
    let (_, respond) = expect(handle, Method::GET, PODS).await;
    reply(respond, StatusCode::OK, &list("PodList", "v1", pods.to_vec()));
    let (_, respond) = expect(handle, Method::GET, &format!("{BUDGET}/wp-runs")).await;
    reply(
        respond,
        StatusCode::OK,
        &json!({ "apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": { "name": "wp-runs" } }),
    );
}

/// A pool on a real server whose WorkerPool has had its first pass: `spec.poolSize`
/// workers registered, their Worker objects as the API server holds them.
struct Scene {
    world: World,
    handle: ApiHandle,
    ctx: Arc<Context>,
    pool: Arc<WorkerPool>,
    workers: Vec<Value>,
}

impl Scene {
    async fn start(pool: WorkerPool) -> Self {
        let world = World::start().await;
        let (kube, mut handle) = mock();
        let ctx = context(kube);
        let pool = Arc::new(pool);
        let size = usize::try_from(pool.spec.pool_size).unwrap();
        let pass = tokio::spawn(reconcile(Arc::clone(&pool), Arc::clone(&ctx)));
        let workers = scale_up(&mut handle, &world, size).await;
        pass.await.unwrap().unwrap();
        Self { world, handle, ctx, pool, workers }
    }
}

/// One pass that registers `count` workers from none; returns their Worker objects.
async fn scale_up(handle: &mut ApiHandle, world: &World, count: usize) -> Vec<Value> {
    serve_credentials(handle, world).await;
    serve_listings(handle, &[], &[]).await;
    let mut workers = Vec::new();
    for _ in 0..count {
        let (body, respond) = expect(handle, Method::POST, WORKERS).await;
        assert_eq!(body["spec"]["poolName"], POOL);
        assert_eq!(body["metadata"]["labels"]["workers.gantry.dev/workerpool"], POOL);
        assert_eq!(body["metadata"]["ownerReferences"][0]["kind"], "WorkerPool");
        let worker = created(respond, body);
        let (secret, respond) = expect(handle, Method::POST, SECRETS).await;
        assert_eq!(
            secret["metadata"]["name"],
            format!("{}-identity", worker["metadata"]["name"].as_str().unwrap())
        );
        assert_eq!(secret["metadata"]["ownerReferences"][0]["kind"], "Worker");
        assert!(secret["data"]["identity.pk8"].is_string());
        created(respond, secret);
        workers.push(worker);
    }
    for worker in &mut workers {
        let name = worker["metadata"]["name"].as_str().unwrap().to_owned();
        let (patch, respond) =
            expect(handle, Method::PATCH, &format!("{WORKERS}/{name}/status")).await;
        assert_eq!(patch["status"]["registered"], true);
        assert_eq!(patch["status"]["state"], "IDLE");
        worker["status"] = patch["status"].clone();
        reply(respond, StatusCode::OK, worker);
    }
    let (patch, respond) = expect(handle, Method::PATCH, POOL_STATUS).await;
    assert_eq!(patch["status"]["desiredPoolSize"], count);
    assert_eq!(patch["status"]["actualPoolSize"], count);
    assert_eq!(patch["status"]["conditions"][0]["status"], "True");
    reply(respond, StatusCode::OK, &pool_object());
    workers
}

#[tokio::test]
async fn scale_up_registers_workers_with_identities_and_reports_the_size() {
    let Scene { world, handle: _, ctx: _, pool: _, workers } = Scene::start(worker_pool(2)).await;
    let names: Vec<String> = workers
        .iter()
        .map(|worker| worker["metadata"]["name"].as_str().unwrap().to_owned())
        .collect();

    let on_server = world.server_workers().await;
    assert_eq!(on_server.len(), 2, "{on_server:?}");
    for (worker, name) in on_server.iter().zip(&names) {
        let fingerprint = worker["metadata"]["identity"].as_str().unwrap_or_default();
        assert_eq!(fingerprint.len(), 64, "{worker}");
        let id = worker["id"].as_str().unwrap().to_ascii_lowercase();
        assert!(names.iter().any(|name| name.ends_with(&id)), "{name} vs {id}");
    }
}

#[tokio::test]
async fn a_missing_secret_sets_a_condition_and_an_event_and_no_workers() {
    let world = World::start().await;
    let (kube, mut handle) = mock();
    let ctx = context(kube);
    let pass = tokio::spawn(reconcile(Arc::new(worker_pool(3)), Arc::clone(&ctx)));
    let (_, respond) = expect(&mut handle, Method::GET, &format!("{SECRETS}/pool")).await;
    not_found(respond);
    let (patch, respond) = expect(&mut handle, Method::PATCH, POOL_STATUS).await;
    let condition = &patch["status"]["conditions"][0];
    assert_eq!(condition["type"], "Ready");
    assert_eq!(condition["status"], "False");
    assert_eq!(condition["reason"], "SecretNotFound");
    assert!(
        condition["message"].as_str().unwrap().contains("Secret pool, which does not exist"),
        "{condition}"
    );
    assert_eq!(patch["status"]["actualPoolSize"], 0);
    assert_eq!(patch["status"]["desiredPoolSize"], 3);
    reply(respond, StatusCode::OK, &pool_object());
    let (event, respond) =
        expect(&mut handle, Method::POST, "/apis/events.k8s.io/v1/namespaces/runners/events").await;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "SecretNotFound");
    assert_eq!(event["regarding"]["kind"], "WorkerPool");
    assert_eq!(event["regarding"]["name"], POOL);
    created(respond, event);
    pass.await.unwrap().unwrap();
    assert!(world.server_workers().await.is_empty());
}

#[tokio::test]
async fn a_key_that_is_not_the_pools_is_named_and_registers_nothing() {
    let mut world = World::start().await;
    world.private_key_pem = gantry_crypto::generate_pool_key("other").unwrap().private_key_pem;
    let (kube, mut handle) = mock();
    let ctx = context(kube);
    let pass = tokio::spawn(reconcile(Arc::new(worker_pool(1)), Arc::clone(&ctx)));
    serve_credentials(&mut handle, &world).await;
    let (patch, respond) = expect(&mut handle, Method::PATCH, POOL_STATUS).await;
    assert_eq!(patch["status"]["conditions"][0]["reason"], "KeyMismatch");
    let message = patch["status"]["conditions"][0]["message"].as_str().unwrap().to_owned();
    assert!(!message.contains("PRIVATE KEY"), "no key material in {message}");
    reply(respond, StatusCode::OK, &pool_object());
    let (event, respond) =
        expect(&mut handle, Method::POST, "/apis/events.k8s.io/v1/namespaces/runners/events").await;
    assert_eq!(event["reason"], "KeyMismatch");
    created(respond, event);
    pass.await.unwrap().unwrap();
    assert!(world.server_workers().await.is_empty());
}

/// A stack on the pool and a run queued on it; the server assigns it to a worker.
async fn queue_run(world: &World) -> String {
    world
        .api(
            Method::POST,
            "stacks",
            Some(json!({
                "name": "infra", "repository": "https://git.example.com/infra.git",
                "pool": world.pool_name, "runner_image": "registry.example.com/runner:1",
            })),
        )
        .await;
    let run =
        world.api(Method::POST, "stacks/infra/runs", Some(json!({ "type": "TRACKED" }))).await;
    run["id"].as_str().or_else(|| run["run"]["id"].as_str()).unwrap().to_owned()
}

#[tokio::test]
async fn an_assignment_becomes_one_pod_and_scale_down_keeps_the_busy_worker_until_idle() {
    let Scene { world, mut handle, ctx, pool, workers } = Scene::start(worker_pool(3)).await;

    // Assignment → Secret and Pod, exactly as built, owned so they go away together.
    let run_id = queue_run(&world).await;
    let agent = ctx.agent(&pool).await.expect("the pool has a session");
    let assignment = next_assignment(&agent).await;
    assert_eq!(assignment.run_id.to_string(), run_id);
    let pod = serve_start_run(&mut handle, &ctx, &pool, &agent, assignment).await;
    let pod_name = pod["metadata"]["name"].as_str().unwrap().to_owned();
    let busy_worker =
        pod["metadata"]["labels"]["workers.gantry.dev/worker"].as_str().unwrap().to_owned();

    // Scale to zero while the run executes: the idle workers leave, the busy one drains.
    let mut running_pod = pod.clone();
    running_pod["status"] = json!({ "phase": "Running" });
    let pass = tokio::spawn(reconcile(Arc::new(worker_pool(0)), Arc::clone(&ctx)));
    serve_credentials(&mut handle, &world).await;
    serve_listings(&mut handle, &workers, std::slice::from_ref(&running_pod)).await;
    // Idle ones first, then the busy one: all three are marked draining.
    let mut drained = Vec::new();
    for _ in 0..3 {
        let (patch, respond) = expect_any_worker_patch(&mut handle).await;
        assert_eq!(patch.1["spec"]["draining"], true);
        reply(respond, StatusCode::OK, &worker_object(&patch.0));
        drained.push(patch.0);
    }
    assert_eq!(drained.last().unwrap(), &busy_worker, "the busy worker is the last to be drained");
    let mut deleted = Vec::new();
    for _ in 0..2 {
        let (name, respond) = expect_worker_delete(&mut handle).await;
        deleted.push(name);
        reply(
            respond,
            StatusCode::OK,
            &json!({ "apiVersion": "v1", "kind": "Status", "status": "Success" }),
        );
    }
    assert!(!deleted.contains(&busy_worker), "the busy worker stays: {deleted:?}");
    let (patch, respond) =
        expect(&mut handle, Method::PATCH, &format!("{WORKERS}/{busy_worker}/status")).await;
    assert_eq!(patch["status"]["state"], "DRAINED");
    assert_eq!(patch["status"]["currentRunId"], run_id.as_str());
    reply(respond, StatusCode::OK, &worker_object(&busy_worker));
    let (patch, respond) = expect(&mut handle, Method::PATCH, POOL_STATUS).await;
    assert_eq!(patch["status"]["actualPoolSize"], 1);
    assert_eq!(patch["status"]["busyWorkers"], 1);
    reply(respond, StatusCode::OK, &pool_object());
    pass.await.unwrap().unwrap();
    assert_eq!(world.server_workers().await.len(), 1, "the busy worker is still on the server");

    // The run ends (its sidecar reports) and its Pod succeeds: the Pod and its Secret
    // are cleaned up (history limit 0) and the last worker leaves.
    agent
        .client
        .report(
            run_id.parse().unwrap(),
            gantry_proto::agent::RunReport::Failed { message: "ended for the test".into() },
        )
        .await
        .unwrap();
    let mut finished_pod = pod.clone();
    finished_pod["status"] = json!({ "phase": "Succeeded" });
    let remaining: Vec<Value> = workers
        .iter()
        .filter(|worker| worker["metadata"]["name"] == busy_worker.as_str())
        .map(|worker| {
            let mut worker = worker.clone();
            worker["spec"]["draining"] = json!(true);
            worker
        })
        .collect();
    let pass = tokio::spawn(reconcile(Arc::new(worker_pool(0)), Arc::clone(&ctx)));
    serve_credentials(&mut handle, &world).await;
    serve_listings(&mut handle, &remaining, std::slice::from_ref(&finished_pod)).await;
    let (_, respond) = expect(&mut handle, Method::DELETE, &format!("{SECRETS}/{pod_name}")).await;
    reply(
        respond,
        StatusCode::OK,
        &json!({ "apiVersion": "v1", "kind": "Status", "status": "Success" }),
    );
    let (_, respond) = expect(&mut handle, Method::DELETE, &format!("{PODS}/{pod_name}")).await;
    reply(respond, StatusCode::OK, &finished_pod);
    let (_, respond) =
        expect(&mut handle, Method::DELETE, &format!("{WORKERS}/{busy_worker}")).await;
    reply(
        respond,
        StatusCode::OK,
        &json!({ "apiVersion": "v1", "kind": "Status", "status": "Success" }),
    );
    let (patch, respond) = expect(&mut handle, Method::PATCH, POOL_STATUS).await;
    assert_eq!(patch["status"]["actualPoolSize"], 0);
    reply(respond, StatusCode::OK, &pool_object());
    pass.await.unwrap().unwrap();
    assert!(world.server_workers().await.is_empty());
}

/// Serves `start_run` of the assignment: the Secret, then the Pod, which must be exactly
/// what the builder makes (plus its owner and job annotation), then the Secret's owner.
async fn serve_start_run(
    handle: &mut ApiHandle,
    ctx: &Arc<Context>,
    pool: &WorkerPool,
    agent: &Arc<gantry_operator::agent::PoolAgent>,
    assignment: gantry_proto::agent::Assignment,
) -> Value {
    let run_id = assignment.run_id.to_string();
    let worker_name = agent.state.lock().await.workers[&assignment.worker_id].clone();
    let launcher_id = agent.launcher_id.to_string();
    let built = gantry_operator::pod::build_run_pod(
        &ctx.config.pod,
        &gantry_operator::pod::RunPodRequest {
            pool,
            worker_name: &worker_name,
            assignment: &assignment,
            launcher_id: &launcher_id,
            capability: "not part of the pod",
        },
    )
    .unwrap();
    let mut expected = serde_json::to_value(&built.pod).unwrap();
    expected["metadata"]["ownerReferences"] =
        json!([kube::Resource::controller_owner_ref(pool, &()).unwrap()]);
    expected["metadata"]["annotations"]["workers.gantry.dev/job"] = json!("plan");
    let ctx_for_run = Arc::clone(ctx);
    let agent_for_run = Arc::clone(agent);
    let starting =
        tokio::spawn(async move { start_run(&ctx_for_run, &agent_for_run, assignment).await });
    let (secret, respond) = expect(handle, Method::POST, SECRETS).await;
    let pod_name = secret["metadata"]["name"].as_str().unwrap().to_owned();
    let run_spec: Value =
        serde_json::from_str(secret["stringData"]["assignment.json"].as_str().unwrap()).unwrap();
    assert_eq!(run_spec["run_id"], run_id.as_str());
    created(respond, secret);
    let (pod, respond) = expect(handle, Method::POST, PODS).await;
    assert_eq!(pod, expected, "the Pod created is exactly the one built");
    assert_eq!(pod["metadata"]["name"], pod_name.as_str());
    assert_eq!(pod["metadata"]["labels"]["workers.gantry.dev/run-id"], run_id.as_str());
    assert_eq!(pod["metadata"]["annotations"]["workers.gantry.dev/job"], "plan");
    assert_eq!(pod["metadata"]["ownerReferences"][0]["kind"], "WorkerPool");
    assert_eq!(pod["spec"]["restartPolicy"], "Never");
    let names = |containers: &Value| -> Vec<String> {
        containers.as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().into()).collect()
    };
    assert_eq!(names(&pod["spec"]["containers"]), ["worker"]);
    assert_eq!(names(&pod["spec"]["initContainers"]), ["init", "launcher-sidecar"]);
    assert_eq!(pod["spec"]["containers"][0]["image"], "registry.example.com/runner:1");
    let worker_env = pod["spec"]["containers"][0]["env"].to_string();
    assert!(!worker_env.contains("GANTRY_POOL_PRIVATE_KEY"), "{worker_env}");
    let pod = created(respond, pod);
    let (owner_patch, respond) =
        expect(handle, Method::PATCH, &format!("{SECRETS}/{pod_name}")).await;
    assert_eq!(owner_patch["metadata"]["ownerReferences"][0]["kind"], "Pod");
    reply(
        respond,
        StatusCode::OK,
        &json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": pod_name } }),
    );
    starting.await.unwrap().unwrap();
    pod
}

#[tokio::test]
async fn a_stop_requested_by_a_user_deletes_the_run_pod() {
    let Scene { world, mut handle, ctx, pool, workers: _ } = Scene::start(worker_pool(1)).await;
    let run_id = queue_run(&world).await;
    let agent = ctx.agent(&pool).await.unwrap();
    let assignment = next_assignment(&agent).await;
    let pod = serve_start_run(&mut handle, &ctx, &pool, &agent, assignment).await;
    let pod_name = pod["metadata"]["name"].as_str().unwrap().to_owned();

    world.api(Method::POST, &format!("runs/{run_id}/stop"), Some(json!({}))).await;
    let held = agent.holding().await;
    assert_eq!(held.len(), 1, "the run is held while its pod runs");
    let answer = agent.client.poll(std::time::Duration::from_secs(5), held).await.unwrap();
    assert_eq!(answer.stop_run_ids.iter().map(ToString::to_string).collect::<Vec<_>>(), [run_id]);
    let stopping = {
        let (ctx, agent) = (Arc::clone(&ctx), Arc::clone(&agent));
        let run = answer.stop_run_ids[0];
        tokio::spawn(async move { gantry_operator::reconcile::stop_run(&ctx, &agent, run).await })
    };
    let (_, respond) = expect(&mut handle, Method::DELETE, &format!("{PODS}/{pod_name}")).await;
    reply(respond, StatusCode::OK, &pod);
    stopping.await.unwrap().unwrap();
}

async fn next_assignment(
    agent: &gantry_operator::agent::PoolAgent,
) -> gantry_proto::agent::Assignment {
    loop {
        let answer =
            agent.client.poll(std::time::Duration::from_secs(5), Vec::new()).await.unwrap();
        if let Some(assignment) = answer.assignments.into_iter().next() {
            return assignment;
        }
    }
}

#[tokio::test]
async fn a_pod_that_cannot_be_scheduled_says_why_in_the_run_log_then_fails_the_run() {
    let mut spec = worker_pool(1);
    spec.spec.pending_pod_timeout_seconds = Some(1);
    let Scene { world, mut handle, ctx, pool, workers } = Scene::start(spec).await;
    let run_id = queue_run(&world).await;
    let agent = ctx.agent(&pool).await.unwrap();
    let assignment = next_assignment(&agent).await;
    let acknowledge =
        gantry_proto::agent::Acknowledge { worker_id: assignment.worker_id, job: assignment.job };
    agent.client.acknowledge(assignment.run_id, &acknowledge).await.unwrap();
    let worker_name = workers[0]["metadata"]["name"].as_str().unwrap();
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "stuck", "namespace": NS,
            "labels": {
                "workers.gantry.dev/workerpool": POOL,
                "workers.gantry.dev/worker": worker_name,
                "workers.gantry.dev/run-id": run_id,
            },
            "annotations": { "workers.gantry.dev/job": "plan" },
        },
        "status": {
            "phase": "Pending",
            "conditions": [{ "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                             "message": "0/3 nodes are available: 3 Insufficient memory." }],
        },
    });
    let mut listed = workers.clone();
    listed[0]["status"]["state"] = json!("BUSY");
    listed[0]["status"]["currentRunId"] = json!(run_id);
    listed[0]["status"]["podName"] = json!("stuck");

    // First pass: the reason goes into the run log, the worker is busy.
    let pass = tokio::spawn(reconcile(Arc::clone(&pool), Arc::clone(&ctx)));
    serve_credentials(&mut handle, &world).await;
    serve_listings(&mut handle, &listed, std::slice::from_ref(&pod)).await;
    let (patch, respond) = expect(&mut handle, Method::PATCH, POOL_STATUS).await;
    assert_eq!(patch["status"]["busyWorkers"], 1);
    reply(respond, StatusCode::OK, &pool_object());
    pass.await.unwrap().unwrap();
    let log = world.api(Method::GET, &format!("runs/{run_id}/logs"), None).await.to_string();
    assert!(log.contains("The run pod cannot be scheduled (Unschedulable): 0/3 nodes are available: 3 Insufficient memory."), "{log}");

    // After the pool's pending timeout: the run fails with the reason, the Pod goes.
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    let pass = tokio::spawn(reconcile(Arc::clone(&pool), Arc::clone(&ctx)));
    serve_credentials(&mut handle, &world).await;
    serve_listings(&mut handle, &listed, std::slice::from_ref(&pod)).await;
    let (_, respond) = expect(&mut handle, Method::DELETE, &format!("{PODS}/stuck")).await;
    reply(respond, StatusCode::OK, &pod);
    let (patch, respond) =
        expect(&mut handle, Method::PATCH, &format!("{WORKERS}/{worker_name}/status")).await;
    assert_eq!(patch["status"]["state"], "IDLE");
    reply(respond, StatusCode::OK, &worker_object(worker_name));
    let (patch, respond) = expect(&mut handle, Method::PATCH, POOL_STATUS).await;
    assert_eq!(patch["status"]["busyWorkers"], 0);
    reply(respond, StatusCode::OK, &pool_object());
    pass.await.unwrap().unwrap();
    let run = world.api(Method::GET, &format!("runs/{run_id}"), None).await;
    assert_eq!(run["state"], "FAILED", "{run}");
    assert!(run.to_string().contains("did not start within 1s"), "{run}");
}

#[tokio::test]
async fn a_worker_image_that_cannot_be_pulled_is_told_to_the_sidecar_through_the_secret() {
    let Scene { world, mut handle, ctx, pool, workers } = Scene::start(worker_pool(1)).await;
    let run_id = queue_run(&world).await;
    let agent = ctx.agent(&pool).await.unwrap();
    let assignment = next_assignment(&agent).await;
    let mut pod = serve_start_run(&mut handle, &ctx, &pool, &agent, assignment).await;
    let pod_name = pod["metadata"]["name"].as_str().unwrap().to_owned();
    pod["status"] = json!({
        "phase": "Pending",
        "conditions": [{ "type": "PodScheduled", "status": "True" }],
        "initContainerStatuses": [
            { "name": "init", "ready": false, "restartCount": 0, "image": "l", "imageID": "",
              "state": { "terminated": { "exitCode": 0 } } },
            { "name": "launcher-sidecar", "ready": true, "restartCount": 0, "image": "l", "imageID": "",
              "state": { "running": {} } },
        ],
        "containerStatuses": [{ "name": "worker", "ready": false, "restartCount": 0, "image": "r", "imageID": "",
            "state": { "waiting": { "reason": "ImagePullBackOff", "message": "Back-off pulling image \"registry.example.com/runner:1\"" } } }],
    });
    let mut listed = workers.clone();
    listed[0]["status"]["state"] = json!("BUSY");
    listed[0]["status"]["currentRunId"] = json!(run_id);
    listed[0]["status"]["podName"] = json!(pod_name);

    let pass = tokio::spawn(reconcile(Arc::clone(&pool), Arc::clone(&ctx)));
    serve_credentials(&mut handle, &world).await;
    serve_listings(&mut handle, &listed, std::slice::from_ref(&pod)).await;
    let (patch, respond) =
        expect(&mut handle, Method::PATCH, &format!("{SECRETS}/{pod_name}")).await;
    assert_eq!(
        patch["stringData"]["notes"],
        "The run pod's container worker cannot start (ImagePullBackOff): Back-off pulling image \"registry.example.com/runner:1\""
    );
    reply(
        respond,
        StatusCode::OK,
        &json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": pod_name } }),
    );
    let (_, respond) = expect(&mut handle, Method::PATCH, POOL_STATUS).await;
    reply(respond, StatusCode::OK, &pool_object());
    pass.await.unwrap().unwrap();
    let log = world.api(Method::GET, &format!("runs/{run_id}/logs"), None).await.to_string();
    assert!(!log.contains("ImagePullBackOff"), "the operator leaves the log to the sidecar: {log}");
}

#[tokio::test]
async fn without_credentials_the_operator_registers_the_pool_and_keeps_its_key() {
    let world = World::start().await;
    let (kube, mut handle) = mock();
    let ctx = context(kube);
    let mut pool = worker_pool(0);
    pool.spec.token = None;
    pool.spec.private_key = None;
    pool.spec.registration = Some(
        serde_json::from_value(json!({
            "endpoint": world.server.url,
            "apiKey": { "name": "admin", "key": "key" },
            "serverCa": { "name": "admin", "key": "ca.crt" },
        }))
        .unwrap(),
    );
    let pass = tokio::spawn(reconcile(Arc::new(pool), Arc::clone(&ctx)));
    let (_, respond) = expect(&mut handle, Method::GET, &format!("{SECRETS}/wp-credentials")).await;
    not_found(respond);
    let admin = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "admin" },
        "data": { "key": base64(&world.server.admin_key), "ca.crt": base64(&world.server.ca_pem) },
    });
    for _ in 0..2 {
        let (_, respond) = expect(&mut handle, Method::GET, &format!("{SECRETS}/admin")).await;
        reply(respond, StatusCode::OK, &admin);
    }
    let (stored, respond) = expect(&mut handle, Method::POST, SECRETS).await;
    assert_eq!(stored["metadata"]["name"], "wp-credentials");
    assert!(stored["data"]["token"].is_string() && stored["data"]["privateKey"].is_string());
    let stored = created(respond, stored);
    for _ in 0..2 {
        let (_, respond) =
            expect(&mut handle, Method::GET, &format!("{SECRETS}/wp-credentials")).await;
        reply(respond, StatusCode::OK, &stored);
    }
    serve_listings(&mut handle, &[], &[]).await;
    let (patch, respond) = expect(&mut handle, Method::PATCH, POOL_STATUS).await;
    assert_eq!(patch["status"]["conditions"][0]["status"], "True");
    let pool_id = patch["status"]["poolId"].as_str().unwrap().to_owned();
    reply(respond, StatusCode::OK, &pool_object());
    pass.await.unwrap().unwrap();

    let on_server = world.api(Method::GET, "pools/runners-wp", None).await;
    assert_eq!(on_server["id"], pool_id.as_str());
    assert!(on_server.to_string().contains("kubernetes"), "{on_server}");
}

async fn expect_any_worker_patch(
    handle: &mut ApiHandle,
) -> ((String, Value), SendResponse<Response<Body>>) {
    let (request, respond) = handle.next_request().await.unwrap();
    assert_eq!(request.method(), Method::PATCH);
    let path = request.uri().path().to_owned();
    let name =
        path.strip_prefix(&format!("{WORKERS}/")).unwrap_or_else(|| panic!("{path}")).to_owned();
    let body = serde_json::from_slice(&request.into_body().collect_bytes().await.unwrap()).unwrap();
    ((name, body), respond)
}

async fn expect_worker_delete(handle: &mut ApiHandle) -> (String, SendResponse<Response<Body>>) {
    let (request, respond) = handle.next_request().await.unwrap();
    assert_eq!(request.method(), Method::DELETE);
    let path = request.uri().path().to_owned();
    (
        path.strip_prefix(&format!("{WORKERS}/")).unwrap_or_else(|| panic!("{path}")).to_owned(),
        respond,
    )
}
