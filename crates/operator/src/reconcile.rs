//! The WorkerPool reconciler: credentials, the pool's session, Worker resources matching
//! `poolSize` (scale-down drains first and never deletes a busy worker), run Pods
//! observed to their end (pending reasons into the run log, history limits), and the
//! pool's status. Every Kubernetes call is made in a fixed order, so a scenario can
//! script the API server call by call.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use gantry_domain::{LauncherId, RunId, WorkerId};
use gantry_proto::agent::{Acknowledge, Assignment, RunReport, WorkerRegistration};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Resource, ResourceExt};
use tokio::sync::Mutex;

use crate::agent::{HeldRun, PoolAgent};
use crate::config::OperatorConfig;
use crate::crd::{
    LABEL_RUN_ID, LABEL_WORKER, LABEL_WORKER_POOL, Worker, WorkerPool, WorkerPoolStatus,
    WorkerSpec, WorkerStatus,
};
use crate::credentials::{self, CredentialProblem};
use crate::identity::{IDENTITY_METADATA, IDENTITY_SECRET_KEY, WorkerIdentity};
use crate::pod::{self, RunPodRequest};

/// Annotation on run Pods: the job they execute, to hold it again after a restart.
pub const JOB_ANNOTATION: &str = "workers.gantry.dev/job";
/// The field manager of the operator's patches.
const MANAGER: &str = "gantry-operator";
/// Registrations per request (the server's limit).
const REGISTRATION_BATCH: usize = 256;
const RESYNC: Duration = Duration::from_secs(30);
const RETRY_PROBLEM: Duration = Duration::from_secs(60);

/// What every reconciliation shares.
pub struct Context {
    pub kube: kube::Client,
    pub config: OperatorConfig,
    agents: Mutex<HashMap<String, Arc<PoolAgent>>>,
    recorder: Recorder,
    pub metrics: Arc<crate::metrics::OperatorMetrics>,
    /// Off in scenario tests, which drive assignments themselves.
    pub background_loops: bool,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("config", &self.config).finish_non_exhaustive()
    }
}

impl Context {
    pub fn new(kube: kube::Client, config: OperatorConfig, background_loops: bool) -> Self {
        let reporter =
            Reporter { controller: MANAGER.to_owned(), instance: Some(config.hostname.clone()) };
        Self {
            recorder: Recorder::new(kube.clone(), reporter),
            kube,
            config,
            agents: Mutex::new(HashMap::new()),
            metrics: Arc::default(),
            background_loops,
        }
    }

    /// The pool's agent, if it has one.
    pub async fn agent(&self, pool: &WorkerPool) -> Option<Arc<PoolAgent>> {
        self.agents.lock().await.get(&key(pool)).cloned()
    }

    async fn forget(&self, pool: &WorkerPool) {
        if let Some(agent) = self.agents.lock().await.remove(&key(pool)) {
            agent.stop.cancel();
        }
    }
}

fn metrics_label(pool: &WorkerPool) -> crate::metrics::PoolLabel {
    crate::metrics::PoolLabel {
        namespace: pool.namespace().unwrap_or_default(),
        workerpool: pool.name_any(),
    }
}

fn key(pool: &WorkerPool) -> String {
    format!("{}/{}", pool.namespace().unwrap_or_default(), pool.name_any())
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("Gantry server: {0}")]
    Server(#[from] gantry_launcher::ClientError),
    #[error("{0}")]
    Identity(#[from] crate::identity::IdentityError),
}

/// One pass over a WorkerPool.
pub async fn reconcile(pool: Arc<WorkerPool>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let namespace = pool.namespace().unwrap_or_else(|| "default".to_owned());
    let credentials = match credentials::resolve(&ctx.kube, &pool).await {
        Ok(credentials) => credentials,
        Err(problem) => return report_problem(&ctx, &pool, problem).await,
    };
    let agent = match ensure_agent(&ctx, &pool, credentials).await {
        Ok(agent) => agent,
        Err(problem) => return report_problem(&ctx, &pool, problem).await,
    };
    let selector = format!("{LABEL_WORKER_POOL}={}", pod::label_value(&pool.name_any()));
    let workers_api: Api<Worker> = Api::namespaced(ctx.kube.clone(), &namespace);
    let pods_api: Api<Pod> = Api::namespaced(ctx.kube.clone(), &namespace);
    let mut workers = workers_api.list(&ListParams::default().labels(&selector)).await?.items;
    let pods = pods_api.list(&ListParams::default().labels(&selector)).await?.items;

    ensure_disruption_budget(&ctx, &pool, &namespace).await?;
    let busy = observe_pods(&ctx, &pool, &agent, &pods).await?;
    adopt_workers(&agent, &workers).await;
    scale(&ctx, &pool, &agent, &mut workers, &busy).await?;
    let actual = update_worker_statuses(&ctx, &namespace, &agent, &workers, &busy).await?;
    let status = WorkerPoolStatus {
        desired_pool_size: pool.spec.pool_size,
        actual_pool_size: count(actual),
        busy_workers: count(busy.len()),
        pool_id: Some(agent.credentials.token.pool_id.clone()),
        launcher_id: Some(agent.launcher_id.to_string()),
        observed_generation: pool.metadata.generation,
        conditions: vec![condition(
            &pool,
            "True",
            "Registered",
            "the workers are registered with the server",
        )],
    };
    patch_pool_status(&ctx, &pool, &status).await?;
    ctx.metrics.pool_sizes(
        &metrics_label(&pool),
        status.desired_pool_size,
        status.actual_pool_size,
        status.busy_workers,
    );
    Ok(Action::requeue(RESYNC))
}

fn count(n: usize) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// A problem with the credentials or the session: a status condition and a warning
/// event name it; the pool counts no workers until it is fixed.
async fn report_problem(
    ctx: &Context,
    pool: &WorkerPool,
    problem: CredentialProblem,
) -> Result<Action, ReconcileError> {
    tracing::warn!(workerpool = %pool.name_any(), reason = problem.reason, "{}", problem.message);
    ctx.forget(pool).await;
    let status = WorkerPoolStatus {
        desired_pool_size: pool.spec.pool_size,
        actual_pool_size: 0,
        busy_workers: 0,
        pool_id: pool.status.as_ref().and_then(|status| status.pool_id.clone()),
        launcher_id: pool.status.as_ref().and_then(|status| status.launcher_id.clone()),
        observed_generation: pool.metadata.generation,
        conditions: vec![condition(pool, "False", problem.reason, &problem.message)],
    };
    patch_pool_status(ctx, pool, &status).await?;
    ctx.metrics.pool_sizes(&metrics_label(pool), pool.spec.pool_size, 0, 0);
    let event = Event {
        type_: EventType::Warning,
        reason: problem.reason.to_owned(),
        note: Some(problem.message.chars().take(1000).collect()),
        action: "Register".to_owned(),
        secondary: None,
    };
    ctx.recorder.publish(&event, &pool.object_ref(&())).await?;
    Ok(Action::requeue(RETRY_PROBLEM))
}

/// The `Ready` condition, keeping its transition time while its status holds.
fn condition(pool: &WorkerPool, status: &str, reason: &str, message: &str) -> Condition {
    let previous = pool
        .status
        .as_ref()
        .and_then(|current| current.conditions.iter().find(|c| c.type_ == "Ready"));
    let last_transition_time = match previous {
        Some(previous) if previous.status == status => previous.last_transition_time.clone(),
        _ => Time(Timestamp::now()),
    };
    Condition {
        type_: "Ready".to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message: message.to_owned(),
        last_transition_time,
        observed_generation: pool.metadata.generation,
    }
}

async fn patch_pool_status(
    ctx: &Context,
    pool: &WorkerPool,
    status: &WorkerPoolStatus,
) -> Result<(), kube::Error> {
    let api: Api<WorkerPool> =
        Api::namespaced(ctx.kube.clone(), &pool.namespace().unwrap_or_default());
    let patch = serde_json::json!({ "status": status });
    api.patch_status(&pool.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
    Ok(())
}

/// The agent for these credentials: the running one, or a new session (a rotated token
/// or key replaces the old session at once rather than being ignored).
async fn ensure_agent(
    ctx: &Arc<Context>,
    pool: &Arc<WorkerPool>,
    credentials: credentials::PoolCredentials,
) -> Result<Arc<PoolAgent>, CredentialProblem> {
    if let Some(agent) = ctx.agent(pool).await {
        if agent.credentials.fingerprint == credentials.fingerprint {
            agent.pool.send_replace(Arc::clone(pool));
            return Ok(agent);
        }
        tracing::info!(workerpool = %pool.name_any(), "the pool's credentials changed: opening a new session");
        ctx.forget(pool).await;
    }
    let launcher_id = pool
        .status
        .as_ref()
        .and_then(|status| status.launcher_id.as_deref())
        .and_then(|id| id.parse::<LauncherId>().ok())
        .unwrap_or_else(LauncherId::generate);
    let agent = Arc::new(
        PoolAgent::connect(Arc::clone(pool), credentials, launcher_id, &ctx.config.hostname)
            .await?,
    );
    ctx.agents.lock().await.insert(key(pool), Arc::clone(&agent));
    if ctx.background_loops {
        crate::loops::spawn(Arc::clone(ctx), Arc::clone(&agent));
    }
    Ok(agent)
}

async fn ensure_disruption_budget(
    ctx: &Context,
    pool: &WorkerPool,
    namespace: &str,
) -> Result<(), kube::Error> {
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(ctx.kube.clone(), namespace);
    let budget = pod::run_pod_disruption_budget(pool);
    if budgets.get_opt(&budget.name_any()).await?.is_none() {
        budgets.create(&PostParams::default(), &budget).await?;
    }
    Ok(())
}

/// Registered workers the server knows from an earlier operator process.
async fn adopt_workers(agent: &PoolAgent, workers: &[Worker]) {
    let mut state = agent.state.lock().await;
    for worker in workers {
        if let Some(id) = worker_id(worker) {
            state.workers.entry(id).or_insert_with(|| worker.name_any());
        }
    }
}

fn worker_id(worker: &Worker) -> Option<WorkerId> {
    worker.status.as_ref()?.worker_id.as_deref()?.to_ascii_uppercase().parse().ok()
}

/// A live run Pod of a worker.
#[derive(Debug, Clone)]
struct LiveRun {
    run_id: RunId,
    pod_name: String,
}

/// Follows each run Pod: live ones keep their worker busy (a pending one explains why
/// in the run log, and fails the run after the pool's pending timeout); ended ones free
/// their worker, tell the server when the Pod died without its sidecar reporting, and
/// are deleted beyond the history limits. Returns the live run of each busy worker.
async fn observe_pods(
    ctx: &Context,
    pool: &WorkerPool,
    agent: &PoolAgent,
    pods: &[Pod],
) -> Result<HashMap<String, LiveRun>, ReconcileError> {
    let namespace = pool.namespace().unwrap_or_default();
    let pods_api: Api<Pod> = Api::namespaced(ctx.kube.clone(), &namespace);
    let secrets_api: Api<Secret> = Api::namespaced(ctx.kube.clone(), &namespace);
    let mut busy = HashMap::new();
    let mut ended: Vec<(&Pod, bool)> = Vec::new();
    for pod in pods {
        let Some(run_id) = label(pod, LABEL_RUN_ID).and_then(|id| id.parse::<RunId>().ok()) else {
            continue;
        };
        let worker = label(pod, LABEL_WORKER).unwrap_or_default().to_owned();
        match phase(pod) {
            "Succeeded" | "Failed" => {
                let succeeded = phase(pod) == "Succeeded";
                let held = agent.state.lock().await.runs.remove(&run_id);
                if held.is_some() {
                    // The assignment (capability, run spec) is not needed once the Pod ended.
                    delete_ignoring_absent(&secrets_api, &pod.name_any()).await?;
                    if !succeeded {
                        ctx.metrics.pod_died(&metrics_label(pool));
                        let message =
                            format!("The run pod {} failed: {}", pod.name_any(), pod_failure(pod));
                        report_ended(agent, run_id, message).await;
                    }
                }
                ended.push((pod, succeeded));
            }
            _ => {
                remember(agent, pod, run_id).await;
                if pending_too_long(ctx, pool, agent, pod, run_id).await? {
                    ctx.metrics.pod_never_started(&metrics_label(pool));
                    pods_api.delete(&pod.name_any(), &DeleteParams::default()).await?;
                    continue;
                }
                busy.insert(worker, LiveRun { run_id, pod_name: pod.name_any() });
            }
        }
    }
    // A run whose Pod is gone (deleted to stop it, or by hand) is no longer held here; if
    // the server hands it again, its Pod is made again under the same name.
    let seen: std::collections::HashSet<RunId> = pods
        .iter()
        .filter_map(|pod| label(pod, LABEL_RUN_ID).and_then(|id| id.parse().ok()))
        .collect();
    agent.state.lock().await.runs.retain(|run_id, _| seen.contains(run_id));
    for pod in expired_history(pool, ended) {
        delete_ignoring_absent(&pods_api, &pod).await?;
    }
    Ok(busy)
}

fn label<'a>(pod: &'a Pod, name: &str) -> Option<&'a str> {
    pod.metadata.labels.as_ref()?.get(name).map(String::as_str)
}

fn phase(pod: &Pod) -> &str {
    pod.status.as_ref().and_then(|status| status.phase.as_deref()).unwrap_or("Pending")
}

/// A run Pod found at start (or created by an earlier process) is held again.
async fn remember(agent: &PoolAgent, pod: &Pod, run_id: RunId) {
    let mut state = agent.state.lock().await;
    if state.runs.contains_key(&run_id) {
        return;
    }
    let job = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|annotations| annotations.get(JOB_ANNOTATION))
        .and_then(|job| serde_json::from_value(serde_json::Value::String(job.clone())).ok());
    let worker_name = label(pod, LABEL_WORKER).unwrap_or_default();
    let worker_id = state
        .workers
        .iter()
        .find(|(_, name)| pod::label_value(name) == worker_name)
        .map(|(id, _)| *id);
    if let (Some(job), Some(worker_id)) = (job, worker_id) {
        state.runs.insert(
            run_id,
            HeldRun {
                job,
                worker_id,
                pod_name: pod.name_any(),
                noted: None,
                since: std::time::Instant::now(),
            },
        );
    }
}

/// Tells the server a run ended badly; a run that already ended there stays as it is.
async fn report_ended(agent: &PoolAgent, run_id: RunId, message: String) {
    match agent.client.report(run_id, RunReport::Failed { message }).await {
        Ok(_) => {}
        Err(gantry_launcher::ClientError::Rejected { status: 404 | 409, .. }) => {}
        Err(error) => tracing::warn!(run = %run_id, %error, "cannot report how the run pod ended"),
    }
}

/// Why a Pod failed, from what Kubernetes says of it and of its containers.
fn pod_failure(pod: &Pod) -> String {
    let Some(status) = pod.status.as_ref() else { return "no status".to_owned() };
    let mut parts = Vec::new();
    if let Some(reason) = &status.reason {
        parts.push(format!("{reason}: {}", status.message.clone().unwrap_or_default()));
    }
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    for container in containers {
        if let Some(terminated) =
            container.state.as_ref().and_then(|state| state.terminated.as_ref())
            && terminated.exit_code != 0
        {
            parts.push(format!(
                "container {} exited with {} ({})",
                container.name,
                terminated.exit_code,
                terminated.reason.clone().unwrap_or_default()
            ));
        }
    }
    if parts.is_empty() { "no reason given".to_owned() } else { parts.join("; ") }
}

/// Why a Pod has not started its run, when Kubernetes says.
pub fn pending_reason(pod: &Pod) -> Option<String> {
    let status = pod.status.as_ref()?;
    if let Some(unscheduled) = status
        .conditions
        .iter()
        .flatten()
        .find(|condition| condition.type_ == "PodScheduled" && condition.status == "False")
    {
        return Some(format!(
            "The run pod cannot be scheduled ({}): {}",
            unscheduled.reason.clone().unwrap_or_default(),
            unscheduled.message.clone().unwrap_or_default()
        ));
    }
    const STUCK: [&str; 6] = [
        "ErrImagePull",
        "ImagePullBackOff",
        "InvalidImageName",
        "CreateContainerConfigError",
        "CreateContainerError",
        "RunContainerError",
    ];
    let containers = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten());
    containers.into_iter().find_map(|container| {
        let waiting = container.state.as_ref()?.waiting.as_ref()?;
        let reason = waiting.reason.as_deref()?;
        STUCK.contains(&reason).then(|| {
            format!(
                "The run pod's container {} cannot start ({reason}): {}",
                container.name,
                waiting.message.clone().unwrap_or_default()
            )
        })
    })
}

/// Whether the Pod's `init` container has started: from then on the run's own
/// containers write its log, and the operator must not.
fn init_started(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|status| status.init_container_statuses.as_ref())
        .and_then(|statuses| statuses.iter().find(|status| status.name == pod::INIT_CONTAINER))
        .and_then(|status| status.state.as_ref())
        .is_some_and(|state| state.running.is_some() || state.terminated.is_some())
}

/// Writes a new pending reason into the run log; once the Pod has waited longer than
/// the pool allows, fails the run with that reason. `true`: the Pod is to be deleted.
async fn pending_too_long(
    ctx: &Context,
    pool: &WorkerPool,
    agent: &PoolAgent,
    pod: &Pod,
    run_id: RunId,
) -> Result<bool, ReconcileError> {
    if phase(pod) != "Pending" {
        return Ok(false);
    }
    let Some(reason) = pending_reason(pod) else { return Ok(false) };
    let (first_note, waited) = {
        let mut state = agent.state.lock().await;
        let Some(held) = state.runs.get_mut(&run_id) else { return Ok(false) };
        let fresh = held.noted.as_deref() != Some(reason.as_str());
        if fresh {
            held.noted = Some(reason.clone());
        }
        (fresh, held.since.elapsed())
    };
    if first_note {
        // Before init starts the operator may write the log itself; from then on the
        // Pod's sidecar is its only writer, and takes the note from the run's Secret.
        let written = if init_started(pod) {
            let secrets: Api<Secret> =
                Api::namespaced(ctx.kube.clone(), &pool.namespace().unwrap_or_default());
            let patch =
                serde_json::json!({ "stringData": { gantry_proto::pod::NOTES_FILE: reason } });
            secrets
                .patch(&pod.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                .await
                .map(drop)
                .map_err(|error| error.to_string())
        } else {
            agent.note(run_id, &reason).await.map_err(|error| error.to_string())
        };
        if let Err(error) = written {
            tracing::warn!(run = %run_id, %error, "cannot write the pending reason into the run log");
        }
    }
    if waited < pool.spec.pending_pod_timeout() {
        return Ok(false);
    }
    let message = format!(
        "The run pod did not start within {}: {reason}",
        humantime::format_duration(pool.spec.pending_pod_timeout())
    );
    report_ended(agent, run_id, message).await;
    agent.state.lock().await.runs.remove(&run_id);
    Ok(true)
}

/// Ended Pods beyond the pool's history limits or TTLs, newest kept first.
fn expired_history(pool: &WorkerPool, mut ended: Vec<(&Pod, bool)>) -> Vec<String> {
    ended.sort_by_key(|(pod, _)| std::cmp::Reverse(finished_at(pod)));
    let now = Timestamp::now();
    let mut kept = [0usize, 0usize];
    let mut expired = Vec::new();
    for (pod, succeeded) in ended {
        let (limit, ttl) = if succeeded {
            (pool.spec.successful_history_limit(), pool.spec.successful_pods_ttl_seconds)
        } else {
            (pool.spec.failed_history_limit(), pool.spec.failed_pods_ttl_seconds)
        };
        let slot = &mut kept[usize::from(succeeded)];
        let too_old = match (ttl, finished_at(pod)) {
            (Some(ttl), Some(at)) => now.as_second() - at.as_second() > ttl,
            _ => false,
        };
        if *slot >= limit || too_old {
            expired.push(pod.name_any());
        } else {
            *slot += 1;
        }
    }
    expired
}

fn finished_at(pod: &Pod) -> Option<Timestamp> {
    let status = pod.status.as_ref()?;
    status
        .container_statuses
        .iter()
        .flatten()
        .filter_map(|container| container.state.as_ref()?.terminated.as_ref()?.finished_at.as_ref())
        .map(|time| time.0)
        .max()
        .or_else(|| status.start_time.as_ref().map(|time| time.0))
}

async fn delete_ignoring_absent<K>(api: &Api<K>, name: &str) -> Result<(), kube::Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.delete(name, &DeleteParams::default()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(()),
        Err(error) => Err(error),
    }
}

/// Brings the number of serving workers to `poolSize`: registers new ones, or marks the
/// surplus draining (idle ones first); then asks the server to remove draining workers,
/// which it does only for those without a run. `workers` ends as what exists.
async fn scale(
    ctx: &Context,
    pool: &WorkerPool,
    agent: &PoolAgent,
    workers: &mut Vec<Worker>,
    busy: &HashMap<String, LiveRun>,
) -> Result<(), ReconcileError> {
    let namespace = pool.namespace().unwrap_or_default();
    let api: Api<Worker> = Api::namespaced(ctx.kube.clone(), &namespace);
    let serving = workers.iter().filter(|worker| !worker.spec.draining).count();
    let desired = pool.spec.desired_workers();
    if serving < desired {
        let added = register_workers(ctx, pool, agent, desired - serving).await?;
        workers.extend(added);
    } else if serving > desired {
        let mut surplus: Vec<&mut Worker> =
            workers.iter_mut().filter(|worker| !worker.spec.draining).collect();
        // Idle workers leave first, the newest of each kind first.
        surplus.sort_by_key(|worker| {
            (
                busy.contains_key(&pod::label_value(&worker.name_any())),
                std::cmp::Reverse(worker.metadata.creation_timestamp.clone().map(|time| time.0)),
            )
        });
        for worker in surplus.into_iter().take(serving - desired) {
            let patch = serde_json::json!({ "spec": { "draining": true } });
            api.patch(&worker.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await?;
            worker.spec.draining = true;
        }
    }
    let draining: Vec<WorkerId> =
        workers.iter().filter(|worker| worker.spec.draining).filter_map(worker_id).collect();
    if draining.is_empty() {
        return Ok(());
    }
    let answer = agent.client.leave_workers(draining).await?;
    let mut state = agent.state.lock().await;
    for left in &answer.left {
        if let Some(name) = state.workers.remove(left) {
            delete_ignoring_absent(&api, &name).await?;
            workers.retain(|worker| worker.name_any() != name);
        }
    }
    Ok(())
}

/// Registers `count` workers with fresh identities, and creates their Worker resources
/// and identity Secrets.
async fn register_workers(
    ctx: &Context,
    pool: &WorkerPool,
    agent: &PoolAgent,
    count: usize,
) -> Result<Vec<Worker>, ReconcileError> {
    let namespace = pool.namespace().unwrap_or_default();
    let workers_api: Api<Worker> = Api::namespaced(ctx.kube.clone(), &namespace);
    let secrets_api: Api<Secret> = Api::namespaced(ctx.kube.clone(), &namespace);
    let pool_name = pool.name_any();
    let identities =
        (0..count).map(|_| WorkerIdentity::generate()).collect::<Result<Vec<_>, _>>()?;
    let mut created = Vec::with_capacity(count);
    for batch in identities.chunks(REGISTRATION_BATCH) {
        let registrations = batch
            .iter()
            .map(|identity| WorkerRegistration {
                previous_id: None,
                metadata: BTreeMap::from([
                    (IDENTITY_METADATA.to_owned(), identity.fingerprint.clone()),
                    ("workerpool".to_owned(), format!("{namespace}/{pool_name}")),
                ]),
            })
            .collect();
        let registered = agent.client.register_workers(registrations).await?;
        for (worker_id, identity) in registered.worker_ids.into_iter().zip(batch) {
            let name = format!("{pool_name}-{}", worker_id.to_string().to_ascii_lowercase());
            agent.state.lock().await.workers.insert(worker_id, name.clone());
            let worker = Worker {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(namespace.clone()),
                    labels: Some(BTreeMap::from([
                        (LABEL_WORKER_POOL.to_owned(), pod::label_value(&pool_name)),
                        (LABEL_WORKER.to_owned(), pod::label_value(&name)),
                    ])),
                    owner_references: pool.controller_owner_ref(&()).map(|owner| vec![owner]),
                    ..ObjectMeta::default()
                },
                spec: WorkerSpec {
                    pool_name: pool_name.clone(),
                    identity_secret_name: format!("{name}-identity"),
                    draining: false,
                },
                status: None,
            };
            let worker = workers_api.create(&PostParams::default(), &worker).await?;
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(worker.spec.identity_secret_name.clone()),
                    namespace: Some(namespace.clone()),
                    labels: worker.metadata.labels.clone(),
                    owner_references: worker.controller_owner_ref(&()).map(|owner| vec![owner]),
                    ..ObjectMeta::default()
                },
                data: Some(BTreeMap::from([(
                    IDENTITY_SECRET_KEY.to_owned(),
                    ByteString(identity.pkcs8().to_vec()),
                )])),
                type_: Some("Opaque".to_owned()),
                ..Secret::default()
            };
            secrets_api.create(&PostParams::default(), &secret).await?;
            let mut worker = worker;
            worker.status = Some(WorkerStatus {
                worker_id: Some(worker_id.to_string()),
                ..WorkerStatus::default()
            });
            created.push(worker);
        }
    }
    Ok(created)
}

/// Patches each Worker whose status changed; returns how many are registered.
async fn update_worker_statuses(
    ctx: &Context,
    namespace: &str,
    agent: &PoolAgent,
    workers: &[Worker],
    busy: &HashMap<String, LiveRun>,
) -> Result<usize, kube::Error> {
    let api: Api<Worker> = Api::namespaced(ctx.kube.clone(), namespace);
    let known = agent.state.lock().await.workers.clone();
    let mut registered = 0;
    for worker in workers {
        let id = worker_id(worker);
        let is_registered = id.is_some_and(|id| known.contains_key(&id));
        registered += usize::from(is_registered);
        let live = busy.get(&pod::label_value(&worker.name_any()));
        let state = if worker.spec.draining {
            "DRAINED"
        } else if live.is_some() {
            "BUSY"
        } else {
            "IDLE"
        };
        let status = WorkerStatus {
            worker_id: id.map(|id| id.to_string()),
            registered: is_registered,
            state: Some(state.to_owned()),
            current_run_id: live.map(|run| run.run_id.to_string()),
            pod_name: live.map(|run| run.pod_name.clone()),
        };
        if worker.status.as_ref() != Some(&status) {
            let patch = serde_json::json!({ "status": status });
            api.patch_status(&worker.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
    }
    Ok(registered)
}

/// An assignment from the server: acknowledged, then run in a Pod of its own. A run
/// whose Pod cannot be made fails with the reason.
pub async fn start_run(
    ctx: &Context,
    agent: &PoolAgent,
    assignment: Assignment,
) -> Result<(), ReconcileError> {
    let pool = agent.pool.borrow().clone();
    let run_id = assignment.run_id;
    let Some(worker_name) = agent.state.lock().await.workers.get(&assignment.worker_id).cloned()
    else {
        tracing::warn!(run = %run_id, worker = %assignment.worker_id, "an assignment for a worker this operator does not hold");
        return Ok(());
    };
    let acknowledge = Acknowledge { worker_id: assignment.worker_id, job: assignment.job };
    match agent.client.acknowledge(run_id, &acknowledge).await {
        Ok(()) => {}
        Err(gantry_launcher::ClientError::Rejected { status: 404 | 409, .. }) => return Ok(()),
        Err(error) => return Err(error.into()),
    }
    let capability = gantry_crypto::random_secret("gcap_");
    let launcher_id = agent.launcher_id.to_string();
    let request = RunPodRequest {
        pool: &pool,
        worker_name: &worker_name,
        assignment: &assignment,
        launcher_id: &launcher_id,
        capability: &capability,
    };
    let built = match pod::build_run_pod(&ctx.config.pod, &request) {
        Ok(built) => built,
        Err(error) => {
            report_ended(agent, run_id, format!("No run pod can be made: {error}")).await;
            return Ok(());
        }
    };
    let (mut run_pod, secret) = (built.pod, built.secret);
    run_pod.metadata.owner_references = pool.controller_owner_ref(&()).map(|owner| vec![owner]);
    let job = serde_json::to_value(assignment.job)
        .ok()
        .and_then(|job| job.as_str().map(str::to_owned))
        .unwrap_or_default();
    run_pod
        .metadata
        .annotations
        .get_or_insert_with(BTreeMap::new)
        .insert(JOB_ANNOTATION.to_owned(), job);
    let namespace = pool.namespace().unwrap_or_default();
    let secrets_api: Api<Secret> = Api::namespaced(ctx.kube.clone(), &namespace);
    let pods_api: Api<Pod> = Api::namespaced(ctx.kube.clone(), &namespace);
    let pod_name = run_pod.name_any();
    agent.state.lock().await.runs.insert(
        run_id,
        HeldRun {
            job: assignment.job,
            worker_id: assignment.worker_id,
            pod_name: pod_name.clone(),
            noted: None,
            since: std::time::Instant::now(),
        },
    );
    let created = async {
        create_or_keep(&secrets_api, &secret).await?;
        let created = create_or_keep(&pods_api, &run_pod).await?;
        // The Secret goes away with its Pod.
        if let Some(owner) = created.controller_owner_ref(&()).or_else(|| owner_of(&created)) {
            let patch = serde_json::json!({ "metadata": { "ownerReferences": [owner] } });
            secrets_api
                .patch(&secret.name_any(), &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
        }
        Ok::<_, kube::Error>(())
    }
    .await;
    if let Err(error) = created {
        agent.state.lock().await.runs.remove(&run_id);
        let _ = secrets_api.delete(&secret.name_any(), &DeleteParams::default()).await;
        let message = format!("Kubernetes refused the run pod {pod_name}: {error}");
        if let Err(note_error) = agent.note(run_id, &message).await {
            tracing::warn!(run = %run_id, %note_error, "cannot write into the run log");
        }
        report_ended(agent, run_id, message).await;
        return Ok(());
    }
    ctx.metrics.pod_created(&metrics_label(&pool));
    tracing::info!(run = %run_id, pod = %pod_name, worker = %worker_name, "run pod created");
    Ok(())
}

/// An owner reference to the Pod itself (not a controller: the WorkerPool is that).
fn owner_of(pod: &Pod) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
        api_version: "v1".to_owned(),
        kind: "Pod".to_owned(),
        name: pod.metadata.name.clone()?,
        uid: pod.metadata.uid.clone()?,
        ..Default::default()
    })
}

/// Creates the object; one left by an earlier attempt for the same run is kept.
async fn create_or_keep<K>(api: &Api<K>, object: &K) -> Result<K, kube::Error>
where
    K: Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&PostParams::default(), object).await {
        Err(kube::Error::Api(status)) if status.code == 409 => api.get(&object.name_any()).await,
        other => other,
    }
}

/// A run the server says to stop (a user asked, or it ended or left this launcher):
/// its Pod is deleted, which stops the worker and then the sidecar, which reports.
pub async fn stop_run(ctx: &Context, agent: &PoolAgent, run_id: RunId) -> Result<(), kube::Error> {
    let Some(held) = agent.state.lock().await.runs.get(&run_id).cloned() else { return Ok(()) };
    let pool = agent.pool.borrow().clone();
    let pods_api: Api<Pod> =
        Api::namespaced(ctx.kube.clone(), &pool.namespace().unwrap_or_default());
    tracing::info!(run = %run_id, pod = %held.pod_name, "stopping the run: deleting its pod");
    delete_ignoring_absent(&pods_api, &held.pod_name).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(status: Value) -> Pod {
        serde_json::from_value(serde_json::json!({ "metadata": { "name": "p" }, "status": status }))
            .unwrap()
    }

    use serde_json::Value;

    #[test]
    fn a_pending_pod_says_why_it_does_not_start() {
        let unschedulable = pod(serde_json::json!({
            "phase": "Pending",
            "conditions": [{ "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                             "message": "0/3 nodes are available: 3 Insufficient cpu." }],
        }));
        assert_eq!(
            pending_reason(&unschedulable).unwrap(),
            "The run pod cannot be scheduled (Unschedulable): 0/3 nodes are available: 3 Insufficient cpu."
        );
        let image = pod(serde_json::json!({
            "phase": "Pending",
            "conditions": [{ "type": "PodScheduled", "status": "True" }],
            "initContainerStatuses": [{ "name": "init", "ready": false, "restartCount": 0, "image": "x", "imageID": "",
                "state": { "running": { "startedAt": "2026-11-28T09:00:00Z" } } }],
            "containerStatuses": [{ "name": "worker", "ready": false, "restartCount": 0, "image": "runner:9", "imageID": "",
                "state": { "waiting": { "reason": "ImagePullBackOff", "message": "Back-off pulling image runner:9" } } }],
        }));
        assert_eq!(
            pending_reason(&image).unwrap(),
            "The run pod's container worker cannot start (ImagePullBackOff): Back-off pulling image runner:9"
        );
        assert!(init_started(&image));
        let starting = pod(
            serde_json::json!({ "phase": "Pending", "conditions": [{ "type": "PodScheduled", "status": "True" }] }),
        );
        assert_eq!(pending_reason(&starting), None);
        assert!(!init_started(&starting));
    }

    #[test]
    fn ended_pods_beyond_the_limits_are_deleted_newest_kept() {
        let ended = |name: &str, at: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": { "name": name },
                "status": { "phase": "Failed", "containerStatuses": [{ "name": "worker", "ready": false, "restartCount": 0,
                    "image": "x", "imageID": "", "state": { "terminated": { "exitCode": 1, "finishedAt": at } } }] },
            }))
            .unwrap()
        };
        let mut pool = WorkerPool::new(
            "wp",
            serde_json::from_value(serde_json::json!({ "poolSize": 1 })).unwrap(),
        );
        pool.spec.failed_pods_history_limit = Some(2);
        let pods = [
            ended("old", "2026-01-01T00:00:00Z"),
            ended("newest", "2026-01-03T00:00:00Z"),
            ended("middle", "2026-01-02T00:00:00Z"),
        ];
        let listed = pods.iter().map(|pod| (pod, false)).collect();
        assert_eq!(expired_history(&pool, listed), ["old"]);
        pool.spec.failed_pods_ttl_seconds = Some(60);
        let listed = pods.iter().map(|pod| (pod, false)).collect();
        assert_eq!(
            expired_history(&pool, listed),
            ["newest", "middle", "old"],
            "all are older than a minute"
        );
    }
}
