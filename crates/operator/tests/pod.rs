//! The run Pod builder against docs/operator.md: snapshots of the Pod and Secret built
//! from a WorkerPool using every `spec.pod` option and from a minimal one, and the rules
//! a snapshot would not make obvious (names, label precedence, the deadline, what the
//! worker container must never see).

use std::time::Duration;

use gantry_operator::crd::{LABEL_RUN_ID, LABEL_WORKER, LABEL_WORKER_POOL, WorkerPool};
use gantry_operator::pod::{
    MAX_NAME_LENGTH, PodError, RunPod, RunPodRequest, RunPodSettings, active_deadline_seconds,
    build_run_pod, label_value, pool_credentials, run_pod_disruption_budget, run_pod_name,
};
use gantry_proto::agent::Assignment;
use k8s_openapi::api::core::v1::{Container, Pod, Volume};

/// A WorkerPool that sets every `spec.pod` option, as a user would write it.
const EVERY_OPTION: &str = include_str!("fixtures/workerpool-every-option.yaml");

/// The least a WorkerPool says: its size and credentials.
const MINIMAL: &str = include_str!("fixtures/workerpool-minimal.yaml");

const WORKER: &str = "production-01jd8z6x4m2q7r9s3t5v6w8y0a";
const CAPABILITY: &str = "capability-for-tests-only";
const LAUNCHER_ID: &str = "01JD8Z5N3K1P6Q8R2S4T6V8W0Y";

fn pool(yaml: &str) -> WorkerPool {
    yaml_serde::from_str(yaml).expect("a valid WorkerPool")
}

/// An assignment as the server sends it (a tracked run's plan), with `changes` merged in.
fn assignment(changes: serde_json::Value) -> Assignment {
    let mut value: serde_json::Value =
        serde_json::from_str(include_str!("fixtures/assignment.json")).unwrap();
    if let serde_json::Value::Object(changes) = changes {
        for (key, change) in changes {
            match (value.get_mut(&key), change) {
                (Some(serde_json::Value::Object(inner)), serde_json::Value::Object(change)) => {
                    inner.extend(change)
                }
                (_, change) => {
                    value[key.as_str()] = change;
                }
            }
        }
    }
    serde_json::from_value(value).expect("a valid assignment")
}

fn settings() -> RunPodSettings {
    RunPodSettings {
        launcher_image: "ghcr.io/gantry-dev/gantry-operator:0.1.0".to_owned(),
        default_runner_image: Some("ghcr.io/gantry-dev/runner:latest".to_owned()),
        run_timeout: Duration::from_secs(70 * 60),
    }
}

fn build(pool: &WorkerPool, assignment: &Assignment) -> Result<RunPod, PodError> {
    build_run_pod(
        &settings(),
        &RunPodRequest {
            pool,
            worker_name: WORKER,
            assignment,
            launcher_id: LAUNCHER_ID,
            capability: CAPABILITY,
        },
    )
}

fn snapshot_value(built: &RunPod) -> serde_json::Value {
    serde_json::json!({ "secret": built.secret, "pod": built.pod })
}

#[test]
fn pod_from_every_option() {
    let built = build(&pool(EVERY_OPTION), &assignment(serde_json::json!({}))).unwrap();
    insta::assert_json_snapshot!("every_option", snapshot_value(&built));
}

#[test]
fn minimal_pod() {
    // No runner image on the stack: the operator's default.
    let built = build(
        &pool(MINIMAL),
        &assignment(serde_json::json!({ "stack": { "runner_image": null } })),
    )
    .unwrap();
    insta::assert_json_snapshot!("minimal", snapshot_value(&built));
}

#[test]
fn building_twice_gives_the_same_objects() {
    let (pool, assignment) = (pool(EVERY_OPTION), assignment(serde_json::json!({})));
    assert_eq!(build(&pool, &assignment).unwrap(), build(&pool, &assignment).unwrap());
}

// ---------------------------------------------------------------------------------------
// Names

/// A DNS-1123 label: what a Pod's hostname (its name) must be.
fn is_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

/// A label value: at most 63 characters, alphanumerics at both ends, `-_.` inside.
fn is_label_value(value: &str) -> bool {
    value.len() <= 63
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && value.bytes().next().is_none_or(|b| b.is_ascii_alphanumeric())
        && value.bytes().last().is_none_or(|b| b.is_ascii_alphanumeric())
}

#[test]
fn pod_names_are_worker_run_and_job() {
    let cases = [
        ("w-1", serde_json::json!({}), "w-1-01jd9a7b3c5d7e9f1g3h5j7k9m-plan".to_owned()),
        // The operator's own worker names (`<pool>-<worker id>`) leave no room for a
        // whole worker id: the name is cut and told apart by a digest of it.
        (
            WORKER,
            serde_json::json!({}),
            "production-01jd8z6x4-6eb2fec13e-01jd9a7b3c5d7e9f1g3h5j7k9m-plan".to_owned(),
        ),
        (
            "w-1",
            serde_json::json!({ "job": "apply" }),
            "w-1-01jd9a7b3c5d7e9f1g3h5j7k9m-apply".to_owned(),
        ),
        (
            "w-1",
            serde_json::json!({ "run_type": "TASK" }),
            "w-1-01jd9a7b3c5d7e9f1g3h5j7k9m-task".to_owned(),
        ),
        (
            "w-1",
            serde_json::json!({ "run_type": "PROPOSED" }),
            "w-1-01jd9a7b3c5d7e9f1g3h5j7k9m-plan".to_owned(),
        ),
    ];
    for (worker, changes, expected) in cases {
        let name = run_pod_name(worker, &assignment(changes));
        assert_eq!(name, expected);
        assert!(is_dns_label(&name), "{name}");
    }
}

#[test]
fn long_or_unusual_worker_names_are_cut_and_told_apart() {
    let run = assignment(serde_json::json!({}));
    let long_a = format!("{}-a", "x".repeat(80));
    let long_b = format!("{}-b", "x".repeat(80));
    let names = [
        run_pod_name(&long_a, &run),
        run_pod_name(&long_b, &run),
        run_pod_name("workers.example", &run),
        run_pod_name("workers-example", &run),
        run_pod_name("Worker_Example", &run),
        run_pod_name("---", &run),
    ];
    for name in &names {
        assert!(is_dns_label(name), "{name:?} is not a valid pod name");
        assert!(name.ends_with("-01jd9a7b3c5d7e9f1g3h5j7k9m-plan"), "{name}");
    }
    assert_eq!(names[0].len(), MAX_NAME_LENGTH);
    assert!(names[0].starts_with("xxxxxxxxxx"), "{}", names[0]);
    let distinct = names.iter().collect::<std::collections::BTreeSet<_>>();
    assert_eq!(distinct.len(), names.len(), "two workers share a pod name: {names:#?}");
    // The same inputs always give the same name.
    assert_eq!(run_pod_name(&long_a, &run), names[0]);
}

#[test]
fn label_values_fit_and_stay_distinct() {
    assert_eq!(label_value("production"), "production");
    let exactly = "p".repeat(63);
    assert_eq!(label_value(&exactly), exactly);
    let long_a = format!("{}.a", "p".repeat(100));
    let long_b = format!("{}.b", "p".repeat(100));
    for value in [label_value(&long_a), label_value(&long_b)] {
        assert!(value.len() <= 63 && is_label_value(&value), "{value}");
    }
    assert_ne!(label_value(&long_a), label_value(&long_b));
}

// ---------------------------------------------------------------------------------------
// Labels, deadline, volumes

#[test]
fn gantrys_labels_and_annotations_win_over_the_users() {
    let run = assignment(serde_json::json!({}));
    let built = build(&pool(EVERY_OPTION), &run).unwrap();
    let labels = built.pod.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[LABEL_RUN_ID], "01JD9A7B3C5D7E9F1G3H5J7K9M", "the user's run-id is replaced");
    assert_eq!(labels[LABEL_WORKER_POOL], "production");
    assert_eq!(labels[LABEL_WORKER], WORKER);
    assert_eq!(labels["team"], "platform", "the user's other labels stay");
    let annotations = built.pod.metadata.annotations.as_ref().unwrap();
    assert_eq!(annotations["cluster-autoscaler.kubernetes.io/safe-to-evict"], "false");
    assert_eq!(annotations["karpenter.sh/do-not-disrupt"], "true");
    assert_eq!(annotations["example.com/cost-center"], "infra");
    assert_eq!(
        built.secret.metadata.labels.as_ref().unwrap()[LABEL_RUN_ID],
        "01JD9A7B3C5D7E9F1G3H5J7K9M"
    );
}

#[test]
fn the_deadline_follows_the_run_timeout_unless_the_pool_sets_one() {
    let minimal = pool(MINIMAL);
    let cases = [
        (Duration::from_secs(70 * 60), 70 * 60 + 300),
        (Duration::from_secs(2 * 3600), 2 * 3600 + 300),
        (Duration::from_millis(1500), 302),
    ];
    for (run_timeout, expected) in cases {
        assert_eq!(
            active_deadline_seconds(&minimal.spec.pod, run_timeout),
            expected,
            "{run_timeout:?}"
        );
    }
    let every = pool(EVERY_OPTION);
    assert_eq!(active_deadline_seconds(&every.spec.pod, Duration::from_secs(60)), 9000);

    let built = build(&minimal, &assignment(serde_json::json!({}))).unwrap();
    assert_eq!(built.pod.spec.as_ref().unwrap().active_deadline_seconds, Some(4500));
    // The launcher containers enforce the same timeout the deadline was made from.
    let sidecar = init_container(&built.pod, "launcher-sidecar");
    assert_eq!(variable(&sidecar, "GANTRY_LAUNCHER_RUN_TIMEOUT"), Some("1h 10m"));
}

fn init_container(pod: &Pod, name: &str) -> Container {
    let spec = pod.spec.as_ref().unwrap();
    spec.init_containers
        .iter()
        .flatten()
        .find(|c| c.name == name)
        .cloned()
        .unwrap_or_else(|| panic!("no init container {name}"))
}

fn container(pod: &Pod, name: &str) -> Container {
    let spec = pod.spec.as_ref().unwrap();
    spec.containers
        .iter()
        .find(|c| c.name == name)
        .cloned()
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn variable<'a>(container: &'a Container, name: &str) -> Option<&'a str> {
    container.env.iter().flatten().find(|v| v.name == name).and_then(|v| v.value.as_deref())
}

/// The sidecar writes sealed blobs and reads them back by path while the run's code runs
/// in the worker container: the scratch volume is mounted, writable, in the launcher
/// containers only, and every volume the worker mounts writable is another.
#[test]
fn the_scratch_volume_is_the_launcher_containers_alone() {
    let run = assignment(serde_json::json!({}));
    for yaml in [EVERY_OPTION, MINIMAL] {
        let built = build(&pool(yaml), &run).unwrap();
        let worker = container(&built.pod, "worker");
        let mounts = worker.volume_mounts.as_deref().unwrap_or_default();
        assert!(!mounts.iter().any(|m| m.name == "gantry-scratch"), "the worker mounts scratch");
        assert!(variable(&worker, "GANTRY_SCRATCH_DIR").is_none());
        let worker_paths: Vec<&str> = mounts.iter().map(|m| m.mount_path.as_str()).collect();
        for name in ["init", "launcher-sidecar"] {
            let launcher = init_container(&built.pod, name);
            let scratch =
                launcher.volume_mounts.iter().flatten().find(|m| m.name == "gantry-scratch");
            let scratch = scratch.unwrap_or_else(|| panic!("{name} mounts no scratch"));
            assert_eq!((scratch.mount_path.as_str(), scratch.read_only), ("/gantry/scratch", None));
            assert_eq!(variable(&launcher, "GANTRY_SCRATCH_DIR"), Some("/gantry/scratch"));
            // Not beneath (nor above) anything the worker container mounts.
            for path in &worker_paths {
                let (a, b) = (format!("{path}/"), "/gantry/scratch/");
                assert!(!a.starts_with(b) && !b.starts_with(&a), "{path} overlaps scratch");
            }
        }
    }
}

#[test]
fn the_worker_never_sees_the_pool_key_nor_the_assignment() {
    let run = assignment(serde_json::json!({}));
    for yaml in [EVERY_OPTION, MINIMAL] {
        let pool = pool(yaml);
        let built = build(&pool, &run).unwrap();
        let pod_name = built.pod.metadata.name.clone().unwrap();
        let worker = container(&built.pod, "worker");
        let names: Vec<&str> = worker.env.iter().flatten().map(|v| v.name.as_str()).collect();
        for forbidden in [
            "GANTRY_TOKEN",
            "GANTRY_POOL_PRIVATE_KEY",
            "GANTRY_ASSIGNMENT_FILE",
            "GANTRY_LAUNCHER_ID",
        ] {
            assert!(!names.contains(&forbidden), "the worker gets {forbidden}");
        }
        // Its only Secret is the run's, and only the capability in it.
        for variable in worker.env.iter().flatten() {
            if let Some(reference) =
                variable.value_from.as_ref().and_then(|from| from.secret_key_ref.as_ref())
            {
                assert_eq!(
                    (reference.name.as_str(), reference.key.as_str()),
                    (pod_name.as_str(), "capability")
                );
            }
        }
        let mounts = worker.volume_mounts.as_deref().unwrap_or_default();
        assert!(!mounts.iter().any(|m| m.name == "assignment"), "the worker mounts the assignment");
        let binaries = mounts.iter().find(|m| m.name == "binaries").unwrap();
        assert_eq!((binaries.mount_path.as_str(), binaries.read_only), ("/gantry/bin", Some(true)));
        assert_eq!(worker.command, Some(vec!["/gantry/bin/gantry-worker".to_owned()]));
        assert!(variable(&worker, "PATH").unwrap().starts_with("/gantry/bin:"));

        // The launcher containers have both, from the pool's secrets.
        let token = pool.spec.token.as_ref().unwrap();
        for name in ["init", "launcher-sidecar"] {
            let launcher = init_container(&built.pod, name);
            let from = launcher.env.iter().flatten().find(|v| v.name == "GANTRY_TOKEN").unwrap();
            assert_eq!(from.value_from.as_ref().unwrap().secret_key_ref.as_ref(), Some(token));
            assert!(
                launcher
                    .volume_mounts
                    .iter()
                    .flatten()
                    .any(|m| m.name == "assignment" && m.read_only == Some(true))
            );
        }
    }
}

/// The Secrets a volume shows as files, for any key.
fn secrets_shown_by(volume: &Volume) -> Vec<String> {
    let direct = volume.secret.iter().filter_map(|secret| secret.secret_name.clone());
    let projected = volume
        .projected
        .iter()
        .flat_map(|projected| projected.sources.iter().flatten())
        .filter_map(|source| source.secret.as_ref().map(|secret| secret.name.clone()));
    direct.chain(projected).collect()
}

#[test]
fn no_variable_source_or_mount_carries_the_pool_credentials_into_the_worker_container() {
    let run = assignment(serde_json::json!({}));
    for yaml in [EVERY_OPTION, MINIMAL] {
        let pool = pool(yaml);
        let credentials = pool_credentials(&pool).unwrap();
        let credential_secrets = [&credentials.token.name, &credentials.private_key.name];
        let built = build(&pool, &run).unwrap();
        let spec = built.pod.spec.as_ref().unwrap();
        // A shared process namespace would show the launcher containers' processes, and
        // their environment and memory, to the worker container.
        assert_ne!(spec.share_process_namespace, Some(true));
        let worker = container(&built.pod, "worker");

        for variable in worker.env.iter().flatten() {
            assert!(!variable.name.starts_with("GANTRY_POOL_") && variable.name != "GANTRY_TOKEN");
            let from = variable.value_from.as_ref();
            let secret = from.and_then(|from| from.secret_key_ref.as_ref());
            assert!(
                secret.is_none_or(|secret| !credential_secrets.contains(&&secret.name)),
                "{} comes from the credentials",
                variable.name
            );
        }
        for source in worker.env_from.iter().flatten() {
            let secret = source.secret_ref.as_ref();
            assert!(secret.is_none_or(|secret| !credential_secrets.contains(&&secret.name)));
        }
        for mount in worker.volume_mounts.iter().flatten() {
            let volume = spec.volumes.iter().flatten().find(|v| v.name == mount.name).unwrap();
            for secret in secrets_shown_by(volume) {
                assert!(
                    !credential_secrets.contains(&&secret),
                    "the worker mounts {} showing {secret}",
                    mount.name
                );
            }
        }
    }

    // A pool that would pass them to the worker container anyway is refused, whichever
    // way; another key of the same Secret is the owner's to give.
    let with = |pod: &str| pool(&format!("{MINIMAL}  pod:\n{pod}"));
    let refused = [
        (
            "    workerContainer:\n      env: [{ name: KEY, valueFrom: { secretKeyRef: { name: staging-pool, key: privateKey } } }]\n",
            "spec.pod.workerContainer.env[0]",
        ),
        (
            "    workerContainer:\n      envFrom: [{ secretRef: { name: staging-pool } }]\n",
            "spec.pod.workerContainer.envFrom[0]",
        ),
        (
            "    volumes: [{ name: creds, secret: { secretName: staging-pool } }]\n    workerContainer:\n      volumeMounts: [{ name: creds, mountPath: /creds }]\n",
            "spec.pod.workerContainer.volumeMounts[0]",
        ),
        (
            "    volumes: [{ name: creds, projected: { sources: [{ secret: { name: staging-pool, items: [{ key: token, path: t }] } }] } }]\n    workerContainer:\n      volumeMounts: [{ name: creds, mountPath: /creds }]\n",
            "spec.pod.workerContainer.volumeMounts[0]",
        ),
        (
            "    workspaceVolume: { name: w, secret: { secretName: staging-pool } }\n",
            "spec.pod.workspaceVolume",
        ),
    ];
    for (pod, field) in refused {
        let error = build(&with(pod), &run).unwrap_err();
        assert_eq!(
            error,
            PodError::CredentialsInWorker {
                pool: "staging".to_owned(),
                field: field.to_owned(),
                secret: "staging-pool".to_owned(),
            }
        );
        assert!(error.to_string().contains("never the container that runs the stack's code"));
    }
    let allowed = [
        "    workerContainer:\n      env: [{ name: REGION, valueFrom: { secretKeyRef: { name: staging-pool, key: region } } }]\n",
        "    volumes: [{ name: creds, secret: { secretName: staging-pool, items: [{ key: region, path: r }] } }]\n    workerContainer:\n      volumeMounts: [{ name: creds, mountPath: /creds }]\n",
        "    volumes: [{ name: creds, secret: { secretName: staging-pool } }]\n    launcherSidecarContainer:\n      volumeMounts: [{ name: creds, mountPath: /creds }]\n",
    ];
    for pod in allowed {
        build(&with(pod), &run).unwrap_or_else(|error| panic!("{pod}: {error}"));
    }
}

#[test]
fn the_pods_own_containers_come_in_protocol_order() {
    let built = build(&pool(EVERY_OPTION), &assignment(serde_json::json!({}))).unwrap();
    let spec = built.pod.spec.as_ref().unwrap();
    let init: Vec<&str> = spec.init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
    assert_eq!(init, ["fetch-ca", "init", "launcher-sidecar"]);
    let main: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(main, ["worker", "egress-proxy"]);
    assert_eq!(
        init_container(&built.pod, "launcher-sidecar").restart_policy.as_deref(),
        Some("Always")
    );
    assert_eq!(init_container(&built.pod, "init").args, Some(vec!["init".to_owned()]));
    assert_eq!(spec.restart_policy.as_deref(), Some("Never"));
    // The launcher image is the pool's; the worker's the stack's.
    assert_eq!(
        init_container(&built.pod, "init").image.as_deref(),
        Some("registry.internal/gantry/gantry-operator:0.1.0-patched")
    );
    assert_eq!(
        container(&built.pod, "worker").image.as_deref(),
        Some("ghcr.io/example/runner:1.9")
    );
    // The user's variables come after Gantry's.
    let init = init_container(&built.pod, "init");
    let names: Vec<&str> = init.env.iter().flatten().map(|v| v.name.as_str()).collect();
    assert_eq!(names.first(), Some(&"GANTRY_TOKEN"));
    assert_eq!(names.last(), Some(&"GANTRY_PRIVATEVCS_MAPPING_NAME_0"));
}

#[test]
fn the_pools_volumes_take_gantrys_names() {
    let built = build(&pool(EVERY_OPTION), &assignment(serde_json::json!({}))).unwrap();
    let volumes = built.pod.spec.unwrap().volumes.unwrap();
    let names: Vec<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(
        names,
        [
            "workspace",
            "binaries",
            "socket",
            "gantry-scratch",
            "assignment",
            "terraform-plugins",
            "init-policy"
        ]
    );
    assert!(volumes[0].ephemeral.is_some(), "the pool's workspace volume");
    assert_eq!(volumes[1].persistent_volume_claim.as_ref().unwrap().claim_name, "gantry-binaries");
    assert!(volumes[3].empty_dir.is_some(), "scratch is never a pool's volume");
    let secret = volumes[4].secret.as_ref().unwrap();
    assert_eq!(secret.secret_name, built.secret.metadata.name);
    assert_eq!(
        secret.items.as_ref().unwrap().iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
        ["assignment.json", "notes"],
        "the capability is not a file"
    );

    let minimal = build(&pool(MINIMAL), &assignment(serde_json::json!({}))).unwrap();
    for volume in &minimal.pod.spec.unwrap().volumes.unwrap()[..4] {
        assert!(volume.empty_dir.is_some(), "{} defaults to an emptyDir", volume.name);
    }
}

#[test]
fn the_secret_holds_the_assignment_as_received_and_the_capability() {
    let run = assignment(serde_json::json!({}));
    let built = build(&pool(MINIMAL), &run).unwrap();
    assert_eq!(built.secret.metadata.name, built.pod.metadata.name);
    assert_eq!(built.secret.immutable, Some(true));
    let data = built.secret.string_data.unwrap();
    assert_eq!(data["capability"], CAPABILITY);
    let parsed: Assignment = serde_json::from_str(&data["assignment.json"]).unwrap();
    assert_eq!(serde_json::to_value(parsed).unwrap(), serde_json::to_value(&run).unwrap());
    // Both are owned by the WorkerPool, so deleting the pool collects them.
    for owners in [built.pod.metadata.owner_references, built.secret.metadata.owner_references] {
        let owner = &owners.unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.name.as_str(), owner.controller),
            ("WorkerPool", "staging", Some(true))
        );
    }
}

// ---------------------------------------------------------------------------------------
// Credentials, errors, settings, the disruption budget

#[test]
fn a_registered_pools_credentials_come_from_the_secret_the_operator_writes() {
    let registered = |extra: &str| {
        pool(&format!(
            "apiVersion: workers.gantry.dev/v1beta1\nkind: WorkerPool\nmetadata: {{ name: auto, namespace: ns }}\n\
             spec:\n  registration:\n    endpoint: https://gantry.example.com\n    apiKey: {{ name: admin, key: key }}\n{extra}"
        ))
    };
    for (pool, secret) in [
        (registered(""), "auto-credentials"),
        (registered("    credentialsSecretName: my-pool-credentials\n"), "my-pool-credentials"),
    ] {
        let built = build(&pool, &assignment(serde_json::json!({}))).unwrap();
        let init = init_container(&built.pod, "init");
        for (variable, key) in
            [("GANTRY_TOKEN", "token"), ("GANTRY_POOL_PRIVATE_KEY", "privateKey")]
        {
            let reference = init
                .env
                .iter()
                .flatten()
                .find(|v| v.name == variable)
                .unwrap()
                .value_from
                .clone()
                .unwrap()
                .secret_key_ref
                .unwrap();
            assert_eq!((reference.name.as_str(), reference.key.as_str()), (secret, key));
        }
    }
}

#[test]
fn what_cannot_be_built_is_refused_with_the_reason() {
    let run = assignment(serde_json::json!({ "stack": { "runner_image": null } }));
    let mut without_default = settings();
    without_default.default_runner_image = None;
    let request = RunPodRequest {
        pool: &pool(MINIMAL),
        worker_name: WORKER,
        assignment: &run,
        launcher_id: LAUNCHER_ID,
        capability: CAPABILITY,
    };
    let error = build_run_pod(&without_default, &request).unwrap_err();
    assert_eq!(
        error.to_string(),
        "cannot choose a runner image for stack \"network\": it names none and GANTRY_DEFAULT_RUNNER_IMAGE is not set"
    );

    let tracked = assignment(serde_json::json!({}));
    let with = |pod: &str| pool(&format!("{MINIMAL}  pod:\n{pod}"));
    let cases = [
        ("    volumes: [{ name: socket, emptyDir: {} }]\n", "spec.pod names a volume \"socket\""),
        (
            "    volumes: [{ name: gantry-scratch, emptyDir: {} }]\n",
            "spec.pod names a volume \"gantry-scratch\"",
        ),
        (
            "    workerContainer:\n      volumeMounts: [{ name: gantry-scratch, mountPath: /tmp/s }]\n",
            "spec.pod.workerContainer.volumeMounts[0] mounts the volume \"gantry-scratch\" in the worker container:",
        ),
        (
            "    workerContainer:\n      volumeMounts: [{ name: binaries, mountPath: /opt/bin }]\n",
            "spec.pod.workerContainer.volumeMounts[0] mounts the volume \"binaries\" in the worker container writable",
        ),
        (
            "    workerContainer:\n      volumeMounts: [{ name: binaries, mountPath: /opt/bin, readOnly: false }]\n",
            "spec.pod.workerContainer.volumeMounts[0] mounts the volume \"binaries\" in the worker container writable",
        ),
        (
            "    workerContainer:\n      volumeMounts: [{ name: assignment, mountPath: /tmp/a, readOnly: true }]\n",
            "spec.pod.workerContainer.volumeMounts[0] mounts the volume \"assignment\" in the worker container:",
        ),
        (
            "    runnerImages: [{ image: \"\", terraformVersion: 1.9.5 }]\n",
            "spec.pod.runnerImages[0]: image is empty",
        ),
        (
            "    runnerImages: [{ image: r:1, terraformVersion: latest }]\n",
            "spec.pod.runnerImages[0]: tool version \"latest\" is not valid: expected a version",
        ),
        (
            "    runnerImages: [{ image: r:1 }, { image: r:1, openTofuVersion: 1.8.0 }]\n",
            "spec.pod.runnerImages[1]: image \"r:1\" is declared twice",
        ),
        (
            "    customInitContainers: [{ name: init, image: busybox }]\n",
            "spec.pod names a container \"init\"",
        ),
        (
            "    additionalSidecarContainers: [{ name: worker, image: busybox }]\n",
            "spec.pod names a container \"worker\"",
        ),
    ];
    for (pod, expected) in cases {
        let error = build(&with(pod), &tracked).unwrap_err();
        assert!(error.to_string().contains(expected), "{error}");
    }

    let mut no_credentials = pool(MINIMAL);
    no_credentials.spec.private_key = None;
    assert_eq!(
        build(&no_credentials, &tracked).unwrap_err(),
        PodError::NoCredentials { pool: "staging".to_owned() }
    );
}

/// The policy's `docker_image` and `terraform_version` in a Pod: init runs in the
/// launcher image and cannot look inside the worker's, so the operator tells it which image
/// that is and, when the pool declares it, which version of the stack's tool it carries.
#[test]
fn init_alone_learns_the_runner_image_and_the_tool_version_the_pool_declares() {
    let every_option = pool(EVERY_OPTION);
    let runner_facts = |assignment: &Assignment| {
        let built = build(&every_option, assignment).unwrap();
        let sidecar = init_container(&built.pod, "launcher-sidecar");
        let worker = container(&built.pod, "worker");
        for (name, container) in [("sidecar", sidecar), ("worker", worker)] {
            for variable_name in ["GANTRY_RUNNER_IMAGE", "GANTRY_RUNNER_TOOL_VERSION"] {
                assert_eq!(variable(&container, variable_name), None, "{name}: {variable_name}");
            }
        }
        let init = init_container(&built.pod, "init");
        (
            variable(&init, "GANTRY_RUNNER_IMAGE").map(str::to_owned),
            variable(&init, "GANTRY_RUNNER_TOOL_VERSION").map(str::to_owned),
        )
    };
    let facts = |image: Option<&str>, version: Option<&str>| {
        (image.map(str::to_owned), version.map(str::to_owned))
    };
    let declared = assignment(serde_json::json!({}));
    assert_eq!(runner_facts(&declared), facts(Some("ghcr.io/example/runner:1.9"), Some("1.9.5")));
    // Declared for Terraform only: an OpenTofu stack's version is not known.
    let tofu_on_it = assignment(serde_json::json!({ "stack": { "tool": "opentofu" } }));
    assert_eq!(runner_facts(&tofu_on_it), facts(Some("ghcr.io/example/runner:1.9"), None));
    let tofu = assignment(serde_json::json!({
        "stack": { "tool": "opentofu", "runner_image": "ghcr.io/example/tofu-runner:1.8" }
    }));
    assert_eq!(runner_facts(&tofu), facts(Some("ghcr.io/example/tofu-runner:1.8"), Some("1.8.3")));
    // A name is matched as written: another tag is another image.
    let other_tag =
        assignment(serde_json::json!({ "stack": { "runner_image": "ghcr.io/example/runner:2" } }));
    assert_eq!(runner_facts(&other_tag), facts(Some("ghcr.io/example/runner:2"), None));
    // The operator's default, when the stack names none.
    let default = assignment(serde_json::json!({ "stack": { "runner_image": null } }));
    assert_eq!(runner_facts(&default), facts(Some("ghcr.io/gantry-dev/runner:latest"), None));
}

#[test]
fn settings_come_from_the_environment() {
    let env = gantry_domain::options::env_of(&[
        ("GANTRY_OPERATOR_LAUNCHER_IMAGE", "registry.example.com/gantry-operator:0.1.0"),
        ("GANTRY_DEFAULT_RUNNER_IMAGE", "registry.example.com/runner:1"),
        ("GANTRY_LAUNCHER_RUN_TIMEOUT", "2h"),
    ]);
    assert_eq!(
        RunPodSettings::from_env(&env).unwrap(),
        RunPodSettings {
            launcher_image: "registry.example.com/gantry-operator:0.1.0".to_owned(),
            default_runner_image: Some("registry.example.com/runner:1".to_owned()),
            run_timeout: Duration::from_secs(7200),
        }
    );
    let only_image =
        gantry_domain::options::env_of(&[("GANTRY_OPERATOR_LAUNCHER_IMAGE", "gantry:1")]);
    let defaults = RunPodSettings::from_env(&only_image).unwrap();
    assert_eq!(
        (defaults.default_runner_image, defaults.run_timeout),
        (None, Duration::from_secs(4200))
    );

    let missing = RunPodSettings::from_env(&gantry_domain::options::env_of(&[])).unwrap_err();
    assert!(
        missing.to_string().starts_with("GANTRY_OPERATOR_LAUNCHER_IMAGE is not set"),
        "{missing}"
    );
    let bad = gantry_domain::options::env_of(&[
        ("GANTRY_OPERATOR_LAUNCHER_IMAGE", "gantry:1"),
        ("GANTRY_LAUNCHER_RUN_TIMEOUT", "70"),
    ]);
    assert_eq!(
        RunPodSettings::from_env(&bad).unwrap_err().to_string(),
        "GANTRY_LAUNCHER_RUN_TIMEOUT=\"70\": expected a duration like 70m or 4200s"
    );
}

#[test]
fn the_disruption_budget_protects_exactly_the_pools_run_pods() {
    let pool = pool(EVERY_OPTION);
    let budget = run_pod_disruption_budget(&pool);
    insta::assert_json_snapshot!("disruption_budget", budget);
    let built = build(&pool, &assignment(serde_json::json!({}))).unwrap();
    let labels = built.pod.metadata.labels.unwrap();
    let spec = budget.spec.unwrap();
    for (key, value) in spec.selector.unwrap().match_labels.unwrap() {
        assert_eq!(labels.get(&key), Some(&value), "the budget's selector {key}");
    }
    assert_eq!(budget.metadata.namespace.as_deref(), Some("gantry-workers"));
}
