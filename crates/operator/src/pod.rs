//! The run Pod builder: from a WorkerPool, a Worker's name and an assignment, the Pod,
//! the Secret and the PodDisruptionBudget of docs/operator.md ("The run Pod protocol").
//! Pure: no I/O, no clock, no randomness (the capability is passed in), so the same
//! assignment always yields the same objects and creating them twice is idempotent.

use std::collections::BTreeMap;
use std::time::Duration;

use gantry_domain::RunType;
use gantry_domain::options::{self, Env, OptionError};
use gantry_proto::agent::{Assignment, Job};
// The protocol's variables and file names, shared with the launcher's `init` and
// `sidecar` modes, which read them.
use gantry_proto::local::{CAPABILITY_ENV, SOCKET_ENV, SOCKET_WAIT_ENV};
use gantry_proto::pod::{
    ASSIGNMENT_FILE_ENV, BINARIES_DIR_ENV, LAUNCHER_ID_ENV, NOTES_FILE, RUNNER_IMAGE_ENV,
    RUNNER_TOOL_VERSION_ENV, SCRATCH_DIR_ENV, SOCKET_DIR_ENV, SOCKET_FILE, WORKER_BINARY_FILE,
    WORKSPACE_DIR_ENV,
};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, EnvVar, EnvVarSource, KeyToPath, Pod, PodSpec, Secret,
    SecretKeySelector, SecretVolumeSource, Volume, VolumeMount,
};
use k8s_openapi::api::policy::v1::{PodDisruptionBudget, PodDisruptionBudgetSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{Resource, ResourceExt};

use crate::crd::{
    ContainerOptions, LABEL_RUN_ID, LABEL_WORKER, LABEL_WORKER_POOL, PodOptions, WorkerPool,
};

/// The operator's image for the run Pods' `init` and `launcher-sidecar` containers (the
/// chart passes the operator's own image: one image holds both binaries).
pub const LAUNCHER_IMAGE: &str = "GANTRY_OPERATOR_LAUNCHER_IMAGE";
/// The runner image for stacks that name none, as for the docker executor.
pub const DEFAULT_RUNNER_IMAGE: &str = "GANTRY_DEFAULT_RUNNER_IMAGE";
/// The run timeout: the launcher's own variable, passed on to the run Pods' launcher
/// containers so that their limit and the Pod's deadline agree.
pub const RUN_TIMEOUT: &str = options::RUN_TIMEOUT;

/// Container names.
pub const INIT_CONTAINER: &str = "init";
pub const LAUNCHER_SIDECAR_CONTAINER: &str = "launcher-sidecar";
pub const WORKER_CONTAINER: &str = "worker";

/// Volume names and where they are mounted.
pub const WORKSPACE_VOLUME: &str = "workspace";
pub const BINARIES_VOLUME: &str = "binaries";
pub const SOCKET_VOLUME: &str = "socket";
pub const ASSIGNMENT_VOLUME: &str = "assignment";
/// Sealed blobs on their way to and from the server, for the launcher containers only:
/// the sidecar reads them back by path while the run's code runs, so no container that
/// runs that code may mount it. Prefixed, unlike the others, because pools already name
/// volumes of their own `scratch`.
pub const SCRATCH_VOLUME: &str = "gantry-scratch";
pub const WORKSPACE_PATH: &str = "/gantry/workspace";
pub const BINARIES_PATH: &str = "/gantry/bin";
pub const SOCKET_PATH: &str = "/gantry/socket";
pub const ASSIGNMENT_PATH: &str = "/gantry/assignment";
pub const SCRATCH_PATH: &str = "/gantry/scratch";

/// Keys of the run's Secret.
pub const ASSIGNMENT_KEY: &str = "assignment.json";
pub const CAPABILITY_KEY: &str = "capability";

/// Keys of the Secret the operator writes when it registers a pool itself.
pub const CREDENTIALS_TOKEN_KEY: &str = "token";
pub const CREDENTIALS_PRIVATE_KEY_KEY: &str = "privateKey";

/// What the Pod's deadline adds to the run timeout: the launcher enforces the run
/// timeout from the worker's start, while the Pod's clock also counts pulling images,
/// the checkout and the last uploads. The deadline is a backstop, not the limit.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(5 * 60);

/// The longest Pod name (and label value) produced: a Pod's hostname is its name, and a
/// hostname label holds at most 63 characters.
pub const MAX_NAME_LENGTH: usize = 63;

/// How long the worker waits for the sidecar's socket.
pub const SOCKET_WAIT: Duration = Duration::from_secs(120);

/// The Pod's grace after a deletion (a stop) unless the pool sets one: the worker
/// stops terraform, then the sidecar stores the state and uploads the last logs, which
/// Kubernetes' default 30 s may not cover for a large state.
pub const DEFAULT_TERMINATION_GRACE_SECONDS: i64 = 300;

/// PATH of the worker container: the binaries the `init` container fetched come first.
const WORKER_PATH: &str =
    "/gantry/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Annotations that keep cluster autoscalers from evicting a run Pod to shrink a node.
const DO_NOT_EVICT: [(&str, &str); 2] = [
    ("cluster-autoscaler.kubernetes.io/safe-to-evict", "false"),
    ("karpenter.sh/do-not-disrupt", "true"),
];

/// The operator-wide settings the builder needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunPodSettings {
    /// `init` and `launcher-sidecar` image, unless the pool's `spec.pod.launcherImage`.
    pub launcher_image: String,
    /// The `worker` image for stacks that name no runner image.
    pub default_runner_image: Option<String>,
    /// The run timeout the launcher containers enforce; the Pod's deadline follows it.
    pub run_timeout: Duration,
}

impl RunPodSettings {
    /// `GANTRY_OPERATOR_LAUNCHER_IMAGE` (required), `GANTRY_DEFAULT_RUNNER_IMAGE`,
    /// `GANTRY_LAUNCHER_RUN_TIMEOUT` (70m by default).
    pub fn from_env(env: &Env) -> Result<Self, OptionError> {
        let launcher_image = options::get(env, LAUNCHER_IMAGE).ok_or(OptionError::Missing {
            variable: LAUNCHER_IMAGE.to_owned(),
            expected: "the image of the run pods' launcher containers, like ghcr.io/gantry-dev/gantry-operator:0.1.0",
        })?;
        Ok(Self {
            launcher_image: launcher_image.to_owned(),
            default_runner_image: options::get(env, DEFAULT_RUNNER_IMAGE).map(str::to_owned),
            run_timeout: options::duration(env, RUN_TIMEOUT, options::DEFAULT_RUN_TIMEOUT)?,
        })
    }
}

/// One assignment's run: which pool, worker and launcher identity execute it.
#[derive(Debug, Clone, Copy)]
pub struct RunPodRequest<'a> {
    pub pool: &'a WorkerPool,
    /// The Worker resource's name.
    pub worker_name: &'a str,
    /// The assignment as the operator acknowledged it.
    pub assignment: &'a Assignment,
    /// The operator's launcher id for this pool, which the Pod acts as.
    pub launcher_id: &'a str,
    /// The worker's bearer token on the local API for this run (random, from the caller).
    pub capability: &'a str,
}

/// The objects of one run: create the Secret, then the Pod (both named [`run_pod_name`]).
#[derive(Debug, Clone, PartialEq)]
pub struct RunPod {
    pub pod: Pod,
    pub secret: Secret,
}

/// Why a run Pod cannot be built: each names the WorkerPool and what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodError {
    #[error(
        "cannot choose a runner image for stack {stack:?}: it names none and {DEFAULT_RUNNER_IMAGE} is not set"
    )]
    NoRunnerImage { stack: String },
    #[error(
        "WorkerPool {pool:?} has no usable credentials: give spec.token and spec.privateKey together, or spec.registration"
    )]
    NoCredentials { pool: String },
    #[error("WorkerPool {pool:?}: spec.pod.runnerImages[{index}]: {problem}")]
    RunnerImage { pool: String, index: usize, problem: String },
    #[error(
        "WorkerPool {pool:?}: spec.pod names a {kind} {name:?}, a name Gantry's run pod uses for its own"
    )]
    NameTaken { pool: String, kind: &'static str, name: String },
    #[error(
        "WorkerPool {pool:?}: {field} gives the worker container the pool's credentials (Secret {secret:?}): the pool key and token reach only the launcher containers, never the container that runs the stack's code"
    )]
    CredentialsInWorker { pool: String, field: String, secret: String },
    #[error("WorkerPool {pool:?}: {field} mounts the volume {volume:?} in the worker container{}: {why}", writable_word(.read_only_allowed))]
    VolumeInWorker {
        pool: String,
        field: String,
        volume: &'static str,
        /// Whether the worker may mount it read-only (the error is then about writing).
        read_only_allowed: bool,
        why: &'static str,
    },
}

/// " writable" where a read-only mount would have been allowed: what the refusal is about.
fn writable_word(read_only_allowed: &bool) -> &'static str {
    if *read_only_allowed { " writable" } else { "" }
}

/// Where the launcher containers find the pool's token and private key.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolCredentials {
    pub token: SecretKeySelector,
    pub private_key: SecretKeySelector,
}

/// The pool's credentials: `spec.token` and `spec.privateKey`, or with
/// `spec.registration`, keys `token` and `privateKey` of the Secret the operator writes.
pub fn pool_credentials(pool: &WorkerPool) -> Result<PoolCredentials, PodError> {
    let spec = &pool.spec;
    match (&spec.token, &spec.private_key, &spec.registration) {
        (Some(token), Some(private_key), _) => {
            Ok(PoolCredentials { token: token.clone(), private_key: private_key.clone() })
        }
        (None, None, Some(_)) => {
            let name = credentials_secret_name(pool);
            let selector = |key: &str| SecretKeySelector {
                name: name.clone(),
                key: key.to_owned(),
                optional: None,
            };
            Ok(PoolCredentials {
                token: selector(CREDENTIALS_TOKEN_KEY),
                private_key: selector(CREDENTIALS_PRIVATE_KEY_KEY),
            })
        }
        _ => Err(PodError::NoCredentials { pool: pool.name_any() }),
    }
}

/// The Secret the operator writes a registered pool's token and key into:
/// `spec.registration.credentialsSecretName`, or `<workerpool>-credentials`.
pub fn credentials_secret_name(pool: &WorkerPool) -> String {
    pool.spec
        .registration
        .as_ref()
        .and_then(|registration| registration.credentials_secret_name.clone())
        .unwrap_or_else(|| format!("{}-credentials", pool.name_any()))
}

/// The Pod's `activeDeadlineSeconds`: the pool's own, or the run timeout plus
/// [`DEADLINE_MARGIN`].
pub fn active_deadline_seconds(options: &PodOptions, run_timeout: Duration) -> i64 {
    options.active_deadline_seconds.unwrap_or_else(|| {
        let seconds = (run_timeout + DEADLINE_MARGIN).as_secs_f64().ceil();
        // An absurd timeout saturates rather than wrapping into a negative deadline.
        if seconds >= i64::MAX as f64 { i64::MAX } else { seconds as i64 }
    })
}

/// The run Pod's (and its Secret's) name: `<worker>-<run id>-<job>`, lowercase, at most
/// 63 characters. The same worker, run and job always give the same name, so a Pod
/// created again after an operator restart is refused as existing rather than doubled.
/// A long worker name is cut and tagged with a digest of the whole name, so that two
/// workers of one run (a lapsed lease handed on) never share a Pod name.
pub fn run_pod_name(worker_name: &str, assignment: &Assignment) -> String {
    let suffix =
        format!("-{}-{}", assignment.run_id.to_string().to_ascii_lowercase(), job_word(assignment));
    let room = MAX_NAME_LENGTH - suffix.len();
    let worker = dns_label(worker_name);
    let prefix = if worker.is_empty() || worker.len() > room || worker != worker_name {
        shortened(&worker, worker_name, room)
    } else {
        worker
    };
    prefix + &suffix
}

/// `name` as a label value: as it is when it fits, otherwise cut and tagged with a
/// digest of the whole name (a WorkerPool's name may be 253 characters long; a label
/// value 63). Selectors of the pool's Pods must use this too.
pub fn label_value(name: &str) -> String {
    if name.len() <= MAX_NAME_LENGTH {
        name.to_owned()
    } else {
        shortened(name, name, MAX_NAME_LENGTH)
    }
}

/// The labels of a run's Pod and Secret, by which the operator finds them again.
pub fn run_labels(
    pool_name: &str,
    worker_name: &str,
    assignment: &Assignment,
) -> BTreeMap<String, String> {
    BTreeMap::from([
        (LABEL_WORKER_POOL.to_owned(), label_value(pool_name)),
        (LABEL_WORKER.to_owned(), label_value(worker_name)),
        (LABEL_RUN_ID.to_owned(), assignment.run_id.to_string()),
    ])
}

/// The run's Pod and Secret, exactly as docs/operator.md lays them out.
pub fn build_run_pod(
    settings: &RunPodSettings,
    request: &RunPodRequest<'_>,
) -> Result<RunPod, PodError> {
    let pool = request.pool;
    let options = &pool.spec.pod;
    check_names(pool)?;
    let credentials = pool_credentials(pool)?;
    check_worker_sees_no_credentials(pool, &credentials)?;
    check_worker_mounts(pool)?;
    check_runner_images(pool)?;
    let runner_image = request
        .assignment
        .stack
        .runner_image
        .as_deref()
        .filter(|image| !image.trim().is_empty())
        .or(settings.default_runner_image.as_deref())
        .ok_or_else(|| PodError::NoRunnerImage { stack: request.assignment.stack.name.clone() })?
        .to_owned();
    let launcher_image =
        options.launcher_image.clone().unwrap_or_else(|| settings.launcher_image.clone());

    let name = run_pod_name(request.worker_name, request.assignment);
    let gantry_labels = run_labels(&pool.name_any(), request.worker_name, request.assignment);
    let owner_references = pool.controller_owner_ref(&()).map(|owner| vec![owner]);
    let metadata = |labels: BTreeMap<String, String>,
                    annotations: Option<BTreeMap<String, String>>| ObjectMeta {
        name: Some(name.clone()),
        namespace: pool.metadata.namespace.clone(),
        labels: Some(labels),
        annotations,
        owner_references: owner_references.clone(),
        ..ObjectMeta::default()
    };

    let assignment_json =
        serde_json::to_string(request.assignment).expect("an assignment serializes to JSON");
    let secret = Secret {
        metadata: metadata(gantry_labels.clone(), None),
        type_: Some("Opaque".to_owned()),
        // Never changes, and kubelets do not watch immutable Secrets.
        immutable: Some(true),
        string_data: Some(BTreeMap::from([
            (ASSIGNMENT_KEY.to_owned(), assignment_json),
            (CAPABILITY_KEY.to_owned(), request.capability.to_owned()),
            // Filled in by the operator while the Pod waits (see NOTES_FILE).
            (NOTES_FILE.to_owned(), String::new()),
        ])),
        ..Secret::default()
    };

    // The user's labels and annotations first, so that Gantry's own win: the operator
    // finds its Pods by these labels, and a busy Pod must never be evictable.
    let mut labels = options.labels.clone();
    labels.extend(gantry_labels);
    let mut annotations = options.annotations.clone();
    annotations.extend(DO_NOT_EVICT.map(|(key, value)| (key.to_owned(), value.to_owned())));

    let declared = options.runner_images.iter().find(|declared| declared.image == runner_image);
    let tool_version =
        declared.and_then(|declared| declared.version_of(request.assignment.stack.tool));
    let launcher_env = |sidecar: bool| {
        let mut env = vec![
            from_secret(options::TOKEN, &credentials.token),
            from_secret(options::POOL_PRIVATE_KEY, &credentials.private_key),
            value(LAUNCHER_ID_ENV, request.launcher_id),
            value(RUN_TIMEOUT, &humantime::format_duration(settings.run_timeout).to_string()),
            value(ASSIGNMENT_FILE_ENV, &format!("{ASSIGNMENT_PATH}/{ASSIGNMENT_KEY}")),
            value(WORKSPACE_DIR_ENV, WORKSPACE_PATH),
            value(BINARIES_DIR_ENV, BINARIES_PATH),
            value(SOCKET_DIR_ENV, SOCKET_PATH),
            value(SCRATCH_DIR_ENV, SCRATCH_PATH),
        ];
        if sidecar {
            env.push(capability(&name));
        } else {
            env.push(value(RUNNER_IMAGE_ENV, &runner_image));
            env.extend(tool_version.map(|version| value(RUNNER_TOOL_VERSION_ENV, version)));
        }
        env
    };
    // The launcher containers see every volume; the worker only what it runs in, with
    // the binaries read-only (a cache volume may outlive the run), no assignment and no
    // scratch.
    let launcher_mounts = || {
        vec![
            mount(WORKSPACE_VOLUME, WORKSPACE_PATH, false),
            mount(BINARIES_VOLUME, BINARIES_PATH, false),
            mount(SOCKET_VOLUME, SOCKET_PATH, false),
            mount(SCRATCH_VOLUME, SCRATCH_PATH, false),
            mount(ASSIGNMENT_VOLUME, ASSIGNMENT_PATH, true),
        ]
    };

    let init = container(
        INIT_CONTAINER,
        &launcher_image,
        Command::Args("init"),
        launcher_env(false),
        launcher_mounts(),
        &options.init_container,
    );
    let mut sidecar = container(
        LAUNCHER_SIDECAR_CONTAINER,
        &launcher_image,
        Command::Args("sidecar"),
        launcher_env(true),
        launcher_mounts(),
        &options.launcher_sidecar_container,
    );
    // A native sidecar: started before the worker, stopped only after it has exited.
    sidecar.restart_policy = Some("Always".to_owned());
    let worker = container(
        WORKER_CONTAINER,
        &runner_image,
        Command::Program(&format!("{BINARIES_PATH}/{WORKER_BINARY_FILE}")),
        vec![
            value(SOCKET_ENV, &format!("{SOCKET_PATH}/{SOCKET_FILE}")),
            capability(&name),
            // A native sidecar counts as started once its process runs, maybe before
            // its socket is bound: the worker waits for it.
            value(SOCKET_WAIT_ENV, &SOCKET_WAIT.as_secs().to_string()),
            value("PATH", WORKER_PATH),
        ],
        vec![
            mount(WORKSPACE_VOLUME, WORKSPACE_PATH, false),
            mount(BINARIES_VOLUME, BINARIES_PATH, true),
            mount(SOCKET_VOLUME, SOCKET_PATH, false),
        ],
        &options.worker_container,
    );

    let mut init_containers = options.custom_init_containers.clone();
    init_containers.extend([init, sidecar]);
    let mut containers = vec![worker];
    containers.extend(options.additional_sidecar_containers.iter().cloned());

    let mut volumes = vec![
        named_volume(WORKSPACE_VOLUME, options.workspace_volume.as_ref()),
        named_volume(BINARIES_VOLUME, options.binaries_cache_volume.as_ref()),
        empty_dir(SOCKET_VOLUME),
        // Never the pool's cache volume: what passes through dies with the Pod.
        empty_dir(SCRATCH_VOLUME),
        Volume {
            name: ASSIGNMENT_VOLUME.to_owned(),
            secret: Some(SecretVolumeSource {
                secret_name: Some(name.clone()),
                // The capability reaches the containers as a variable, not as a file.
                items: Some(
                    [ASSIGNMENT_KEY, NOTES_FILE]
                        .into_iter()
                        .map(|key| KeyToPath {
                            key: key.to_owned(),
                            path: key.to_owned(),
                            ..KeyToPath::default()
                        })
                        .collect(),
                ),
                ..SecretVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];
    volumes.extend(options.volumes.iter().cloned());

    let pod = Pod {
        metadata: metadata(labels, Some(annotations)),
        spec: Some(PodSpec {
            restart_policy: Some("Never".to_owned()),
            active_deadline_seconds: Some(active_deadline_seconds(options, settings.run_timeout)),
            termination_grace_period_seconds: Some(
                options
                    .termination_grace_period_seconds
                    .unwrap_or(DEFAULT_TERMINATION_GRACE_SECONDS),
            ),
            init_containers: Some(init_containers),
            containers,
            volumes: Some(volumes),
            service_account_name: options.service_account_name.clone(),
            // A run needs no API access unless the pool gives it an account of its own
            // (for a Kubernetes provider or workload identity).
            automount_service_account_token: options
                .service_account_name
                .is_none()
                .then_some(false),
            // The namespace's Services stay out of the runner's environment.
            enable_service_links: Some(false),
            security_context: options.security_context.clone(),
            node_selector: non_empty_map(&options.node_selector),
            affinity: options.affinity.clone(),
            tolerations: non_empty(&options.tolerations),
            runtime_class_name: options.runtime_class_name.clone(),
            image_pull_secrets: non_empty(&options.image_pull_secrets),
            ..PodSpec::default()
        }),
        ..Pod::default()
    };
    Ok(RunPod { pod, secret })
}

/// The PodDisruptionBudget that keeps every running run Pod of the pool from voluntary
/// eviction (node drains, autoscalers): `maxUnavailable: 0`. Ended Pods are not
/// protected: the eviction API ignores budgets for them.
pub fn run_pod_disruption_budget(pool: &WorkerPool) -> PodDisruptionBudget {
    let pool_name = pool.name_any();
    let selector = BTreeMap::from([(LABEL_WORKER_POOL.to_owned(), label_value(&pool_name))]);
    PodDisruptionBudget {
        metadata: ObjectMeta {
            name: Some(format!("{pool_name}-runs")),
            namespace: pool.metadata.namespace.clone(),
            labels: Some(selector.clone()),
            owner_references: pool.controller_owner_ref(&()).map(|owner| vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(PodDisruptionBudgetSpec {
            max_unavailable: Some(IntOrString::Int(0)),
            selector: Some(LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            }),
            ..PodDisruptionBudgetSpec::default()
        }),
        ..PodDisruptionBudget::default()
    }
}

/// The job's word in a Pod name: a task's single job is `task`.
fn job_word(assignment: &Assignment) -> &'static str {
    match (assignment.run_type, assignment.job) {
        (RunType::Task, _) => "task",
        (_, Job::Plan) => "plan",
        (_, Job::Apply) => "apply",
    }
}

/// `text` lowercased, with anything but letters, digits and `-` turned into `-`, and no
/// `-` at either end.
fn dns_label(text: &str) -> String {
    let mapped: String = text
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' })
        .collect();
    mapped.trim_matches('-').to_owned()
}

/// `text` cut to leave room for `-<digest>` within `max`, the digest being of `original`.
fn shortened(text: &str, original: &str, max: usize) -> String {
    const DIGEST_LENGTH: usize = 10;
    let digest = &gantry_crypto::sha256_hex(original.as_bytes())[..DIGEST_LENGTH];
    let keep = text.floor_char_boundary(max.saturating_sub(DIGEST_LENGTH + 1));
    let kept = text[..keep].trim_end_matches(['-', '.', '_']);
    if kept.is_empty() { digest.to_owned() } else { format!("{kept}-{digest}") }
}

/// Refuses `spec.pod` names that would collide with the run Pod's own.
fn check_names(pool: &WorkerPool) -> Result<(), PodError> {
    let options = &pool.spec.pod;
    let taken = |kind: &'static str, name: &str| PodError::NameTaken {
        pool: pool.name_any(),
        kind,
        name: name.to_owned(),
    };
    const VOLUMES: [&str; 5] =
        [WORKSPACE_VOLUME, BINARIES_VOLUME, SOCKET_VOLUME, SCRATCH_VOLUME, ASSIGNMENT_VOLUME];
    if let Some(volume) =
        options.volumes.iter().find(|volume| VOLUMES.contains(&volume.name.as_str()))
    {
        return Err(taken("volume", &volume.name));
    }
    const CONTAINERS: [&str; 3] = [INIT_CONTAINER, LAUNCHER_SIDECAR_CONTAINER, WORKER_CONTAINER];
    if let Some(container) = options
        .custom_init_containers
        .iter()
        .chain(&options.additional_sidecar_containers)
        .find(|container| CONTAINERS.contains(&container.name.as_str()))
    {
        return Err(taken("container", &container.name));
    }
    Ok(())
}

/// Refuses a runner image entry the policy could not rely on: no image, a version that
/// is not one, or the same image declared twice (which would make one entry a lie).
fn check_runner_images(pool: &WorkerPool) -> Result<(), PodError> {
    let entries = &pool.spec.pod.runner_images;
    for (index, entry) in entries.iter().enumerate() {
        let refuse =
            |problem: String| PodError::RunnerImage { pool: pool.name_any(), index, problem };
        if entry.image.trim().is_empty() {
            return Err(refuse("image is empty: name the image as stacks do".to_owned()));
        }
        if entries[..index].iter().any(|earlier| earlier.image == entry.image) {
            return Err(refuse(format!("image {:?} is declared twice", entry.image)));
        }
        for version in [&entry.terraform_version, &entry.open_tofu_version].into_iter().flatten() {
            gantry_domain::validation::validate_tool_version(version)
                .map_err(|error| refuse(error.to_string()))?;
        }
    }
    Ok(())
}

/// Refuses worker container options that would hand it the pool's token or key: a
/// variable from their Secret keys, all of their Secret's variables, or a mount of a
/// volume holding them (the pool's own volumes, the workspace and binaries volumes).
fn check_worker_sees_no_credentials(
    pool: &WorkerPool,
    credentials: &PoolCredentials,
) -> Result<(), PodError> {
    let options = &pool.spec.pod;
    let selectors = [&credentials.token, &credentials.private_key];
    let refused = |field: String, secret: &str| PodError::CredentialsInWorker {
        pool: pool.name_any(),
        field,
        secret: secret.to_owned(),
    };
    // A Secret whose `keys` are given (None: all of them) carries a credential.
    let carries = |secret: &str, keys: Option<&[&str]>| {
        selectors.iter().any(|selector| {
            selector.name == secret && keys.is_none_or(|keys| keys.contains(&selector.key.as_str()))
        })
    };
    let worker = &options.worker_container;
    for (index, variable) in worker.env.iter().enumerate() {
        let reference = variable.value_from.as_ref().and_then(|from| from.secret_key_ref.as_ref());
        if let Some(reference) = reference.filter(|r| carries(&r.name, Some(&[r.key.as_str()]))) {
            return Err(refused(format!("spec.pod.workerContainer.env[{index}]"), &reference.name));
        }
    }
    for (index, source) in worker.env_from.iter().enumerate() {
        if let Some(secret) = source.secret_ref.as_ref().filter(|r| carries(&r.name, None)) {
            return Err(refused(
                format!("spec.pod.workerContainer.envFrom[{index}]"),
                &secret.name,
            ));
        }
    }
    let named = |name: &str| options.volumes.iter().find(|volume| volume.name == name);
    let mounted = [
        ("spec.pod.workspaceVolume".to_owned(), options.workspace_volume.as_ref()),
        ("spec.pod.binariesCacheVolume".to_owned(), options.binaries_cache_volume.as_ref()),
    ]
    .into_iter()
    .chain(worker.volume_mounts.iter().enumerate().map(|(index, mount)| {
        (format!("spec.pod.workerContainer.volumeMounts[{index}]"), named(&mount.name))
    }));
    for (field, volume) in mounted {
        let secrets = volume.map(secrets_in).unwrap_or_default();
        if let Some((name, _)) =
            secrets.into_iter().find(|(name, keys)| carries(name, keys.as_deref()))
        {
            return Err(refused(field, name));
        }
    }
    Ok(())
}

/// Refuses a worker container mount that would hand the stack's code one of Gantry's
/// own volumes beyond what the run pod gives it: the pool's own volumes may not take
/// their names, but `volumeMounts` can name any of the Pod's volumes.
fn check_worker_mounts(pool: &WorkerPool) -> Result<(), PodError> {
    // (volume, may the worker mount it read-only, why not otherwise)
    const GUARDED: [(&str, bool, &str); 3] = [
        (
            SCRATCH_VOLUME,
            false,
            "it holds the launcher containers' sealed blobs in transit, out of reach of the stack's code",
        ),
        (
            ASSIGNMENT_VOLUME,
            false,
            "it holds the run's assignment, which only the launcher containers read",
        ),
        (
            BINARIES_VOLUME,
            true,
            "it holds the worker binary the next runs start, which the stack's code must not replace",
        ),
    ];
    let mounts = &pool.spec.pod.worker_container.volume_mounts;
    for (index, mount) in mounts.iter().enumerate() {
        let Some(&(volume, read_only_allowed, why)) =
            GUARDED.iter().find(|(volume, ..)| *volume == mount.name)
        else {
            continue;
        };
        if read_only_allowed && mount.read_only == Some(true) {
            continue;
        }
        return Err(PodError::VolumeInWorker {
            pool: pool.name_any(),
            field: format!("spec.pod.workerContainer.volumeMounts[{index}]"),
            volume,
            read_only_allowed,
            why,
        });
    }
    Ok(())
}

/// The Secrets a volume shows as files, each with the keys it selects (None: all).
fn secrets_in(volume: &Volume) -> Vec<(&str, Option<Vec<&str>>)> {
    fn keys(items: Option<&Vec<KeyToPath>>) -> Option<Vec<&str>> {
        items.map(|items| items.iter().map(|item| item.key.as_str()).collect())
    }
    let mut secrets = Vec::new();
    if let Some(secret) = &volume.secret {
        secrets
            .push((secret.secret_name.as_deref().unwrap_or_default(), keys(secret.items.as_ref())));
    }
    let sources = volume.projected.iter().flat_map(|projected| projected.sources.iter().flatten());
    for secret in sources.filter_map(|source| source.secret.as_ref()) {
        secrets.push((secret.name.as_str(), keys(secret.items.as_ref())));
    }
    secrets
}

enum Command<'a> {
    /// The image's entrypoint (the launcher) with one argument, its mode.
    Args(&'a str),
    /// A program of the container's own.
    Program(&'a str),
}

/// One of Gantry's containers, with the pool's options for it: the user's variables
/// after Gantry's, the user's mounts after Gantry's.
fn container(
    name: &str,
    image: &str,
    command: Command<'_>,
    mut env: Vec<EnvVar>,
    mut volume_mounts: Vec<VolumeMount>,
    options: &ContainerOptions,
) -> Container {
    env.extend(options.env.iter().cloned());
    volume_mounts.extend(options.volume_mounts.iter().cloned());
    let (command, args) = match command {
        Command::Args(arg) => (None, Some(vec![arg.to_owned()])),
        Command::Program(program) => (Some(vec![program.to_owned()]), None),
    };
    Container {
        name: name.to_owned(),
        image: Some(image.to_owned()),
        command,
        args,
        env: Some(env),
        env_from: non_empty(&options.env_from),
        resources: options.resources.clone(),
        security_context: options.security_context.clone(),
        volume_mounts: Some(volume_mounts),
        ..Container::default()
    }
}

fn value(name: &str, value: &str) -> EnvVar {
    EnvVar { name: name.to_owned(), value: Some(value.to_owned()), ..EnvVar::default() }
}

fn from_secret(name: &str, selector: &SecretKeySelector) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(selector.clone()),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// The capability, from the run's Secret.
fn capability(secret_name: &str) -> EnvVar {
    from_secret(
        CAPABILITY_ENV,
        &SecretKeySelector {
            name: secret_name.to_owned(),
            key: CAPABILITY_KEY.to_owned(),
            optional: None,
        },
    )
}

fn mount(name: &str, path: &str, read_only: bool) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: read_only.then_some(true),
        ..VolumeMount::default()
    }
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_owned(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

/// The pool's volume under Gantry's name, or an `emptyDir`.
fn named_volume(name: &str, given: Option<&Volume>) -> Volume {
    match given {
        Some(volume) => Volume { name: name.to_owned(), ..volume.clone() },
        None => empty_dir(name),
    }
}

fn non_empty<T: Clone>(items: &[T]) -> Option<Vec<T>> {
    (!items.is_empty()).then(|| items.to_vec())
}

fn non_empty_map(map: &BTreeMap<String, String>) -> Option<BTreeMap<String, String>> {
    (!map.is_empty()).then(|| map.clone())
}
