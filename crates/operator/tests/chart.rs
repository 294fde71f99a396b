//! `deploy/helm/gantry-operator`, checked with the real helm (no Kubernetes runs here) and
//! against the operator's own code:
//!
//! * every `.Values` path a template reads exists in `values.yaml`, and every value is read;
//! * `helm lint --strict` accepts the chart; `helm template` renders it with namespaced and
//!   with cluster-wide RBAC, and the operator's settings parser accepts the rendered env;
//! * a value that changes the registry changes the registry only, for the operator and
//!   for the run pods' launcher image alike;
//! * the chart's CRDs are the generated ones (its copy cannot drift), kept on uninstall.
//!
//! helm comes from `scripts/install-helm.sh` (run by `scripts/test.sh`) or `PATH`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use gantry_operator::config::OperatorConfig;
use gantry_testkit::helm::{
    at, check_values_references, helm, lint_chart, named, of_kind, only, parse_yaml, read,
    render_chart, text,
};
use yaml_serde::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn chart() -> PathBuf {
    workspace().join("deploy/helm/gantry-operator")
}

fn render(args: &[&str]) -> Result<Vec<Value>, String> {
    render_chart(&chart(), args)
}

fn full_values() -> String {
    chart().join("ci/full-values.yaml").display().to_string()
}

/// The chart's copy of the CRDs, which its template includes.
const CHART_CRDS: &str = "deploy/helm/gantry-operator/files/workers.gantry.dev.yaml";
const CRDGEN: &str = "cargo run -p gantry-operator --bin gantry-crdgen deploy/crds/workers.gantry.dev.yaml deploy/helm/gantry-operator/files/workers.gantry.dev.yaml";

fn operator_container(documents: &[Value]) -> &Value {
    at(only(documents, "Deployment"), "spec.template.spec.containers.0")
}

/// The operator's literal environment (the chart puts no secret in it).
fn environment(documents: &[Value]) -> BTreeMap<String, String> {
    let container = operator_container(documents);
    at(container, "env")
        .as_sequence()
        .expect("an env list")
        .iter()
        .map(|variable| {
            let value = variable.get("value").and_then(Value::as_str);
            let value = value.unwrap_or_else(|| panic!("{variable:?} is not a literal value"));
            (text(variable, "name").to_owned(), value.to_owned())
        })
        .collect()
}

/// The operator's configuration from the rendered env, through its own parser.
fn operator_config(documents: &[Value]) -> OperatorConfig {
    OperatorConfig::from_env(&environment(documents))
        .unwrap_or_else(|e| panic!("the operator refuses the rendered settings: {e}"))
}

fn kinds(documents: &[Value]) -> BTreeSet<String> {
    documents.iter().map(|document| text(document, "kind").to_owned()).collect()
}

#[test]
fn every_values_reference_of_the_chart_exists_and_every_value_is_read() {
    check_values_references(&chart(), 6);
}

#[test]
fn chart_metadata_follows_the_workspace() {
    let metadata = parse_yaml(&chart().join("Chart.yaml"));
    assert_eq!(text(&metadata, "name"), "gantry-operator");
    assert_eq!(
        text(&metadata, "appVersion"),
        env!("CARGO_PKG_VERSION"),
        "appVersion is the Gantry release the chart deploys: the workspace version"
    );
}

#[test]
fn helm_lint_accepts_the_chart() {
    lint_chart(&chart(), &[]).unwrap_or_else(|said| panic!("helm lint, defaults:\n{said}"));
    lint_chart(&chart(), &["--values", &full_values()])
        .unwrap_or_else(|said| panic!("helm lint, full-values.yaml:\n{said}"));
}

#[test]
fn by_default_the_operator_serves_its_own_namespace_with_a_role() {
    let documents = render(&[]).unwrap();
    assert_eq!(
        kinds(&documents),
        BTreeSet::from(
            [
                "CustomResourceDefinition",
                "Deployment",
                "Role",
                "RoleBinding",
                "Service",
                "ServiceAccount"
            ]
            .map(str::to_owned)
        )
    );
    let role = only(&documents, "Role");
    assert_eq!(text(role, "metadata.namespace"), "gantry");
    let binding = only(&documents, "RoleBinding");
    assert_eq!(text(binding, "metadata.namespace"), "gantry");
    assert_eq!(text(binding, "roleRef.kind"), "Role");
    check_binding(&documents, binding, role);

    let config = operator_config(&documents);
    assert_eq!(config.watch_namespace.as_deref(), Some("gantry"));
    let settings = config.pod;
    let image = text(operator_container(&documents), "image");
    assert_eq!(image, "ghcr.io/gantry-dev/gantry-operator:0.1.0");
    assert_eq!(settings.launcher_image, image, "run pods' launcher containers use this image");
    assert_eq!(settings.default_runner_image, None);
    assert_eq!(settings.run_timeout, gantry_domain::options::DEFAULT_RUN_TIMEOUT);
    check_common(&documents);
}

#[test]
fn another_namespace_is_served_with_a_role_there() {
    let documents = render(&["--set", "watchNamespace=runs"]).unwrap();
    let role = only(&documents, "Role");
    assert_eq!(text(role, "metadata.namespace"), "runs");
    let binding = only(&documents, "RoleBinding");
    assert_eq!(text(binding, "metadata.namespace"), "runs");
    // The account stays in the release's namespace.
    assert_eq!(text(binding, "subjects.0.namespace"), "gantry");
    assert_eq!(operator_config(&documents).watch_namespace.as_deref(), Some("runs"));
}

#[test]
fn cluster_scope_serves_every_namespace_with_a_cluster_role() {
    let documents = render(&["--values", &full_values()]).unwrap();
    let found = kinds(&documents);
    assert!(found.contains("ClusterRole") && found.contains("ClusterRoleBinding"), "{found:?}");
    assert!(!found.contains("Role") && !found.contains("RoleBinding"), "{found:?}");
    let role = only(&documents, "ClusterRole");
    assert!(role.get("metadata").unwrap().get("namespace").is_none());
    check_binding(&documents, only(&documents, "ClusterRoleBinding"), role);

    let config = operator_config(&documents);
    assert_eq!(config.watch_namespace, None, "every namespace");
    let settings = config.pod;
    assert_eq!(
        settings.launcher_image,
        "registry.example.com/mirror/gantry-dev/gantry-operator:0.1.0-patched"
    );
    assert_eq!(
        settings.default_runner_image.as_deref(),
        Some("registry.example.com/mirror/gantry-dev/runner:1.9")
    );
    assert_eq!(settings.run_timeout, std::time::Duration::from_secs(7200));
    let env = environment(&documents);
    assert_eq!(env["GANTRY_LOG"], "debug");
    assert_eq!(env["TZ"], "UTC");
    check_common(&documents);
    let monitor = only(&documents, "ServiceMonitor");
    assert_eq!(text(monitor, "spec.endpoints.0.port"), "metrics");
}

/// What every rendering must satisfy, whatever the values.
fn check_common(documents: &[Value]) {
    assert!(of_kind(documents, "Secret").is_empty(), "the chart must not create Secrets");
    let deployment = only(documents, "Deployment");
    assert_eq!(at(deployment, "spec.replicas").as_u64(), Some(1), "one operator at a time");
    assert_eq!(text(deployment, "spec.strategy.type"), "Recreate");
    let pod = at(deployment, "spec.template");
    let labels = at(pod, "metadata.labels").as_mapping().unwrap();
    for (key, value) in at(deployment, "spec.selector.matchLabels").as_mapping().unwrap() {
        assert_eq!(labels.get(key), Some(value), "Deployment selector {key:?}");
    }
    let container = operator_container(documents);
    assert_eq!(at(container, "command").as_sequence().unwrap(), &[Value::from("gantry-operator")]);
    assert_eq!(at(pod, "spec.securityContext.runAsNonRoot").as_bool(), Some(true));
    let security = at(container, "securityContext");
    assert_eq!(at(security, "readOnlyRootFilesystem").as_bool(), Some(true));
    assert_eq!(at(security, "allowPrivilegeEscalation").as_bool(), Some(false));

    // Metrics: the listener, the container's port and the Service agree.
    let listen = operator_config(documents).metrics_listen.expect("metrics are on");
    assert!(listen.ip().is_unspecified(), "metrics must listen on the pod's address");
    let port = at(named(container, "ports", "metrics"), "containerPort").as_u64().unwrap();
    assert_eq!(u64::from(listen.port()), port);
    let service = only(documents, "Service");
    assert_eq!(text(service, "spec.ports.0.targetPort"), "metrics");
    for (key, value) in at(service, "spec.selector").as_mapping().unwrap() {
        assert_eq!(labels.get(key), Some(value), "Service selector {key:?}");
    }
    check_rules(documents);
}

fn check_binding(documents: &[Value], binding: &Value, role: &Value) {
    assert_eq!(text(binding, "roleRef.name"), text(role, "metadata.name"));
    let account = only(documents, "ServiceAccount");
    assert_eq!(text(binding, "subjects.0.kind"), "ServiceAccount");
    assert_eq!(text(binding, "subjects.0.name"), text(account, "metadata.name"));
    let deployment = only(documents, "Deployment");
    assert_eq!(
        text(deployment, "spec.template.spec.serviceAccountName"),
        text(account, "metadata.name")
    );
}

/// The verbs the operator needs on each resource, as `group/resource`.
const NEEDED: &[(&str, &[&str])] = &[
    ("/pods", &["get", "list", "watch", "create", "delete"]),
    ("/secrets", &["get", "list", "watch", "create", "patch", "delete"]),
    ("/events", &["create", "patch", "list", "watch"]),
    ("events.k8s.io/events", &["create", "patch"]),
    ("policy/poddisruptionbudgets", &["get", "list", "watch", "create", "patch", "delete"]),
    ("workers.gantry.dev/workerpools", &["get", "list", "watch", "patch"]),
    ("workers.gantry.dev/workers", &["get", "list", "watch", "create", "patch", "delete"]),
    ("workers.gantry.dev/workerpools/status", &["get", "patch", "update"]),
    ("workers.gantry.dev/workers/status", &["get", "patch", "update"]),
    ("workers.gantry.dev/workerpools/finalizers", &["update"]),
    ("workers.gantry.dev/workers/finalizers", &["update"]),
];

fn check_rules(documents: &[Value]) {
    let role = documents
        .iter()
        .find(|document| matches!(text(document, "kind"), "Role" | "ClusterRole"))
        .expect("a role");
    let mut granted: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let strings = |value: &Value, path: &str| -> Vec<String> {
        at(value, path)
            .as_sequence()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_owned())
            .collect()
    };
    for rule in at(role, "rules").as_sequence().unwrap() {
        for group in strings(rule, "apiGroups") {
            for resource in strings(rule, "resources") {
                granted
                    .entry(format!("{group}/{resource}"))
                    .or_default()
                    .extend(strings(rule, "verbs"));
            }
        }
    }
    for (resource, verbs) in NEEDED {
        let have = granted.get(*resource).cloned().unwrap_or_default();
        for verb in *verbs {
            assert!(have.contains(*verb), "the role lacks {verb} on {resource}: {granted:#?}");
        }
    }
    assert!(!granted.values().flatten().any(|verb| verb == "*"), "no wildcard verbs: {granted:#?}");
}

#[test]
fn the_registry_value_changes_the_registry_only() {
    let template = |args: &[&str]| {
        let chart = chart();
        let mut all = vec!["template", "gantry", chart.to_str().unwrap(), "--namespace", "gantry"];
        all.extend_from_slice(args);
        let output = helm(&all);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let default = template(&[]);
    let mirrored = template(&["--set", "image.registry=mirror.example.com:5000"]);
    let from = "ghcr.io/gantry-dev/gantry-operator:";
    let to = "mirror.example.com:5000/gantry-dev/gantry-operator:";
    // The operator's image and the launcher image it gives run pods.
    assert_eq!(default.matches(from).count(), 2, "{default}");
    assert_eq!(mirrored, default.replace(from, to), "only the registry may change");

    // An empty registry leaves a reference resolved by the container runtime's default.
    let bare = template(&["--set", "image.registry="]);
    assert_eq!(bare, default.replace(from, "gantry-dev/gantry-operator:"));
}

#[test]
fn the_charts_crds_are_the_generated_ones_and_kept_on_uninstall() {
    let copy = read(&workspace().join(CHART_CRDS));
    assert!(
        copy == gantry_operator::crd::definitions_yaml(),
        "{CHART_CRDS} is out of date: run `{CRDGEN}`"
    );
    let committed = read(&workspace().join("deploy/crds/workers.gantry.dev.yaml"));
    let mut expected = Vec::new();
    for document in yaml_serde::Deserializer::from_str(&committed) {
        let value = <Value as serde::Deserialize>::deserialize(document).unwrap();
        if !value.is_null() {
            expected.push(value);
        }
    }
    assert_eq!(expected.len(), 2);

    let documents = render(&[]).unwrap();
    let rendered = of_kind(&documents, "CustomResourceDefinition");
    assert_eq!(rendered.len(), expected.len());
    for (rendered, expected) in rendered.into_iter().zip(&expected) {
        // Keys with dots: looked up directly, not by a dotted path.
        let metadata = |key: &str, name: &str| {
            at(rendered, "metadata").get(key).and_then(|map| map.get(name)).and_then(Value::as_str)
        };
        assert_eq!(metadata("annotations", "helm.sh/resource-policy"), Some("keep"));
        assert_eq!(metadata("labels", "app.kubernetes.io/managed-by"), Some("Helm"));
        // Apart from the chart's metadata, the CRD as generated.
        let mut rendered = rendered.clone();
        let metadata = rendered.get_mut("metadata").unwrap().as_mapping_mut().unwrap();
        metadata.remove("annotations");
        metadata.remove("labels");
        assert_eq!(&rendered, expected);
    }

    let without = render(&["--set", "crds.install=false"]).unwrap();
    assert!(of_kind(&without, "CustomResourceDefinition").is_empty());
}

#[test]
fn the_chart_refuses_values_the_operator_cannot_work_with() {
    let cases = [
        (vec!["--set", "rbac.scope=everywhere"], "rbac.scope must be namespace or cluster"),
        (
            vec!["--set", "rbac.scope=cluster", "--set", "watchNamespace=runs"],
            "watchNamespace is for rbac.scope namespace",
        ),
        (
            vec!["--set", "metrics.port=0", "--set", "metrics.serviceMonitor.enabled=true"],
            "metrics.serviceMonitor.enabled needs metrics.port",
        ),
    ];
    for (args, expected) in cases {
        let error = render(&args).expect_err(expected);
        assert!(error.contains(expected), "{args:?}: {error}");
    }
}
