//! The operator's resources, `WorkerPool` and `Worker` in `workers.gantry.dev/v1beta1`:
//! their Rust types are the source of the generated CRD YAML under `deploy/`.

// KubeSchema copies `WorkerPoolSpec`, `pub` included, into a function to derive its
// schema, where the lint cannot be silenced item by item.
#![allow(unreachable_pub)]
// Clippy reads the repeated `printcolumn(type_ = …)` arguments as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    Affinity, Container, EnvFromSource, EnvVar, LocalObjectReference, PodSecurityContext,
    ResourceRequirements, SecretKeySelector, SecurityContext, Toleration, Volume, VolumeMount,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, CustomResourceExt, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The API group of both resources.
pub const GROUP: &str = "workers.gantry.dev";
/// Label on Workers and Pods: the WorkerPool they belong to.
pub const LABEL_WORKER_POOL: &str = "workers.gantry.dev/workerpool";
/// Label on Workers and Pods: the Worker (its resource name).
pub const LABEL_WORKER: &str = "workers.gantry.dev/worker";
/// Label on run Pods: the run they execute.
pub const LABEL_RUN_ID: &str = "workers.gantry.dev/run-id";

/// A pool of workers registered with a Gantry server. Idle workers cost no pods: each
/// run gets a Pod of its own.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "workers.gantry.dev",
    version = "v1beta1",
    kind = "WorkerPool",
    plural = "workerpools",
    shortname = "wp",
    namespaced,
    status = "WorkerPoolStatus",
    scale(spec_replicas_path = ".spec.poolSize", status_replicas_path = ".status.actualPoolSize"),
    printcolumn(name = "Desired", type_ = "integer", json_path = ".status.desiredPoolSize"),
    printcolumn(name = "Actual", type_ = "integer", json_path = ".status.actualPoolSize"),
    printcolumn(name = "Busy", type_ = "integer", json_path = ".status.busyWorkers"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[x_kube(cel)]
#[x_kube(validation = Rule::new("has(self.token) == has(self.privateKey)").message(
    "token and privateKey are given together, or neither (the operator then registers the pool itself from spec.registration)"
))]
#[x_kube(validation = Rule::new("has(self.token) || has(self.registration)").message(
    "give token and privateKey, or registration for the operator to create the pool"
))]
#[serde(rename_all = "camelCase")]
pub struct WorkerPoolSpec {
    /// How many workers to keep registered with the server.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub pool_size: i32,
    /// The pool token (`gantry pool create` prints it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<SecretKeySelector>,
    /// The pool private key (PEM) whose CSR the pool certificate was issued from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<SecretKeySelector>,
    /// Without `token` and `privateKey`: how the operator creates the pool itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registration: Option<Registration>,
    /// How run Pods are made.
    #[serde(default)]
    pub pod: PodOptions,
    /// Succeeded run Pods kept for inspection (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub successful_pods_history_limit: Option<i32>,
    /// Failed run Pods kept for inspection (default 5).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub failed_pods_history_limit: Option<i32>,
    /// Succeeded run Pods are deleted this long after they end, even within the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub successful_pods_ttl_seconds: Option<i64>,
    /// Failed run Pods are deleted this long after they end, even within the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub failed_pods_ttl_seconds: Option<i64>,
    /// A run whose Pod cannot start (unschedulable, image pull failure, quota) fails
    /// after this long, with the reason (default 600).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub pending_pod_timeout_seconds: Option<i64>,
}

/// Default history limits, as the reference's.
pub const DEFAULT_SUCCESSFUL_PODS_HISTORY_LIMIT: i32 = 0;
pub const DEFAULT_FAILED_PODS_HISTORY_LIMIT: i32 = 5;
pub const DEFAULT_PENDING_POD_TIMEOUT_SECONDS: i64 = 600;

impl WorkerPoolSpec {
    pub fn successful_history_limit(&self) -> usize {
        non_negative(self.successful_pods_history_limit, DEFAULT_SUCCESSFUL_PODS_HISTORY_LIMIT)
    }

    pub fn failed_history_limit(&self) -> usize {
        non_negative(self.failed_pods_history_limit, DEFAULT_FAILED_PODS_HISTORY_LIMIT)
    }

    pub fn desired_workers(&self) -> usize {
        non_negative(Some(self.pool_size), 0)
    }

    pub fn pending_pod_timeout(&self) -> std::time::Duration {
        let seconds =
            self.pending_pod_timeout_seconds.unwrap_or(DEFAULT_PENDING_POD_TIMEOUT_SECONDS);
        std::time::Duration::from_secs(u64::try_from(seconds).unwrap_or(1).max(1))
    }
}

fn non_negative(value: Option<i32>, default: i32) -> usize {
    usize::try_from(value.unwrap_or(default)).unwrap_or(0)
}

/// Credentials for the operator to create the pool through the server's API.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Registration {
    /// The server's address, `https://gantry.example.com`.
    pub endpoint: String,
    /// An API key allowed to create pools.
    pub api_key: SecretKeySelector,
    /// The pool's name on the server (default: the WorkerPool's `<namespace>-<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_name: Option<String>,
    /// PEM of a CA to trust for the server, when it is not publicly trusted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_ca: Option<SecretKeySelector>,
    /// The Secret the operator writes the token and private key into (default:
    /// `<workerpool>-credentials`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_name: Option<String>,
}

/// Options for one of the three containers the operator itself defines.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ContainerOptions {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_from: Vec<EnvFromSource>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<SecurityContext>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volume_mounts: Vec<VolumeMount>,
}

/// A runner image, exactly as stacks or the operator's default name it, and the versions
/// of the tools it carries.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunnerImage {
    pub image: String,
    /// The version of `terraform` in the image, like `1.9.5`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub terraform_version: Option<String>,
    /// The version of `tofu` in the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub open_tofu_version: Option<String>,
}

impl RunnerImage {
    /// The version this image carries of `tool`, if declared.
    pub fn version_of(&self, tool: gantry_domain::Tool) -> Option<&str> {
        match tool {
            gantry_domain::Tool::Terraform => self.terraform_version.as_deref(),
            gantry_domain::Tool::OpenTofu => self.open_tofu_version.as_deref(),
        }
    }
}

/// How run Pods are made; every field is optional.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodOptions {
    /// Overrides the deadline taken from the run timeout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_deadline_seconds: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub termination_grace_period_seconds: Option<i64>,
    /// Extra volumes, for the containers' `volumeMounts`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub volumes: Vec<Volume>,
    /// The workspace volume (default: an `emptyDir`); its name is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workspace_volume: Option<Volume>,
    /// The binaries cache volume (default: an `emptyDir`); its name is replaced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binaries_cache_volume: Option<Volume>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub security_context: Option<PodSecurityContext>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub affinity: Option<Affinity>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_class_name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub image_pull_secrets: Vec<LocalObjectReference>,
    /// The image of the `init` and `launcher-sidecar` containers (default: the
    /// operator's own launcher image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launcher_image: Option<String>,
    /// What the pool knows of its runner images: the tool versions each carries, which
    /// the run initialization policy reads (`static_run_environment.terraform_version`).
    /// The operator cannot look inside an image; without an entry the version is `null`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runner_images: Vec<RunnerImage>,
    /// Init containers run before Gantry's `init`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub custom_init_containers: Vec<Container>,
    /// Containers run beside the worker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub additional_sidecar_containers: Vec<Container>,
    #[serde(default)]
    pub init_container: ContainerOptions,
    #[serde(default)]
    pub launcher_sidecar_container: ContainerOptions,
    #[serde(default)]
    pub worker_container: ContainerOptions,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPoolStatus {
    /// `spec.poolSize` as last seen.
    #[serde(default)]
    pub desired_pool_size: i32,
    /// Workers registered with the server.
    #[serde(default)]
    pub actual_pool_size: i32,
    /// Workers executing a run.
    #[serde(default)]
    pub busy_workers: i32,
    /// The server's id of the pool.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_id: Option<String>,
    /// The launcher identity the operator uses for this pool, kept across restarts so
    /// the server keeps its workers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launcher_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// One worker slot of a WorkerPool, registered with the server under `status.workerId`.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "workers.gantry.dev",
    version = "v1beta1",
    kind = "Worker",
    plural = "workers",
    namespaced,
    status = "WorkerStatus",
    printcolumn(name = "Pool", type_ = "string", json_path = ".spec.poolName"),
    printcolumn(name = "Registered", type_ = "boolean", json_path = ".status.registered"),
    printcolumn(name = "Status", type_ = "string", json_path = ".status.state"),
    printcolumn(name = "Run ID", type_ = "string", json_path = ".status.currentRunId"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct WorkerSpec {
    /// The WorkerPool this worker belongs to.
    pub pool_name: String,
    /// The Secret holding this worker's identity key.
    pub identity_secret_name: String,
    /// Set by the operator when the pool shrinks: take no new run, go away once idle.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub draining: bool,
}

#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerStatus {
    /// The server's id of this worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
    #[serde(default)]
    pub registered: bool,
    /// `IDLE`, `BUSY` or `DRAINED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_run_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

/// Fields whose types come from Kubernetes itself: their descriptions are dropped from
/// the generated schema, which would otherwise pass the 256 KiB limit of a client-side
/// `kubectl apply` (the whole PodSpec vocabulary is embedded several times).
const KUBERNETES_TYPED_FIELDS: &[&str] = &[
    "token",
    "privateKey",
    "apiKey",
    "serverCa",
    "env",
    "envFrom",
    "resources",
    "securityContext",
    "volumeMounts",
    "volumes",
    "workspaceVolume",
    "binariesCacheVolume",
    "affinity",
    "tolerations",
    "imagePullSecrets",
    "customInitContainers",
    "additionalSidecarContainers",
    "conditions",
];

/// The CRDs as installed: generated from the types above, nested Kubernetes types
/// without their descriptions.
pub fn definitions() -> Vec<CustomResourceDefinition> {
    [WorkerPool::crd(), Worker::crd()]
        .into_iter()
        .map(|crd| {
            let mut value = serde_json::to_value(&crd).expect("a CRD serializes");
            strip_nested_descriptions(&mut value, false);
            serde_json::from_value(value).expect("a CRD deserializes")
        })
        .collect()
}

/// The CRDs as one multi-document YAML file, as committed under `deploy/`.
pub fn definitions_yaml() -> String {
    let mut yaml = String::from(
        "# Generated by `cargo run -p gantry-operator --bin gantry-crdgen`: do not edit.\n",
    );
    for crd in definitions() {
        yaml.push_str("---\n");
        yaml.push_str(&yaml_serde::to_string(&crd).expect("a CRD serializes to YAML"));
    }
    yaml
}

/// Drops descriptions inside Kubernetes-typed fields; such a field keeps its own (it
/// says what Gantry does with it).
fn strip_nested_descriptions(value: &mut serde_json::Value, inside_kubernetes_type: bool) {
    match value {
        serde_json::Value::Object(map) => {
            for (key, child) in map.iter_mut() {
                match child {
                    serde_json::Value::Object(properties) if key == "properties" => {
                        for (name, property) in properties.iter_mut() {
                            let kubernetes = inside_kubernetes_type
                                || KUBERNETES_TYPED_FIELDS.contains(&name.as_str());
                            if inside_kubernetes_type
                                && let serde_json::Value::Object(property) = property
                            {
                                property.remove("description");
                            }
                            strip_nested_descriptions(property, kubernetes);
                        }
                    }
                    _ => strip_nested_descriptions(child, inside_kubernetes_type),
                }
            }
            if inside_kubernetes_type
                && let Some(items) = map.get_mut("items")
                && let serde_json::Value::Object(items) = items
            {
                items.remove("description");
            }
        }
        serde_json::Value::Array(items) => {
            for item in items {
                strip_nested_descriptions(item, inside_kubernetes_type);
            }
        }
        _ => {}
    }
}
