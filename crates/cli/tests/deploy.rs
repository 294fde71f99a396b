//! `deploy/`: the server's Helm chart and systemd unit. Neither Kubernetes nor systemd runs
//! here, so this checks what can be checked without them, with the real tools and against
//! the server's own code, so that the artifacts cannot drift from either silently:
//!
//! * every `.Values` path a template reads exists in `values.yaml`, and every value is read;
//! * `helm lint` accepts the chart and `helm template` renders it; the server's own
//!   configuration parser accepts the settings it renders, the probes' paths answer on a
//!   real server without credentials, and secrets come from Secrets only;
//! * `systemd-analyze` verifies the unit and rates its exposure;
//! * both stop deadlines leave the server the time its graceful stop takes.
//!
//! helm comes from `scripts/install-helm.sh` (run by `scripts/test.sh`) or `PATH`.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use gantry_server::config::TlsSource;
use gantry_server::{MasterKeySource, ServerConfig};
use gantry_testkit::helm::{
    at, check_values_references, lint_chart, named, of_kind, only, parse_yaml, read, render_chart,
    text,
};
use yaml_serde::Value;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn chart() -> PathBuf {
    workspace().join("deploy/helm/gantry-server")
}

// ---------------------------------------------------------------------------------------
// Values references

#[test]
fn every_values_reference_of_the_chart_exists_and_every_value_is_read() {
    check_values_references(&chart(), 8);
}

#[test]
fn chart_metadata_follows_the_workspace() {
    let metadata = parse_yaml(&chart().join("Chart.yaml"));
    assert_eq!(text(&metadata, "apiVersion"), "v2");
    assert_eq!(text(&metadata, "name"), "gantry-server");
    assert_eq!(text(&metadata, "type"), "application");
    assert_eq!(
        text(&metadata, "appVersion"),
        env!("CARGO_PKG_VERSION"),
        "appVersion is the Gantry release the chart deploys: the workspace version"
    );
    let version = text(&metadata, "version");
    assert_eq!(version.split('.').filter(|n| n.parse::<u64>().is_ok()).count(), 3, "{version}");
    let values = parse_yaml(&chart().join("values.yaml"));
    assert_eq!(at(&values, "replicaCount").as_u64(), Some(2));
}

// ---------------------------------------------------------------------------------------
// helm

/// `helm template` of the chart with these extra arguments: the manifests, or helm's error.
fn render(args: &[&str]) -> Result<Vec<Value>, String> {
    render_chart(&chart(), args)
}

fn values_file(name: &str) -> String {
    chart().join("ci").join(name).display().to_string()
}

/// The settings the server process receives from the rendered manifests: the ConfigMap's
/// variables and the container's literal `env` values. Variables from Secrets are not
/// included; `with_secrets` stands in for them as a Secret would hold them.
fn rendered_settings(documents: &[Value]) -> BTreeMap<String, String> {
    let mut settings = BTreeMap::new();
    let data = at(only(documents, "ConfigMap"), "data").as_mapping().expect("ConfigMap data");
    for (name, value) in data {
        let value = value.as_str().expect("ConfigMap values are strings (quoted)");
        settings.insert(name.as_str().unwrap().to_owned(), value.to_owned());
    }
    let container = at(only(documents, "Deployment"), "spec.template.spec.containers.0");
    for variable in environment(container) {
        if let Some(value) = variable.get("value") {
            settings.insert(text(variable, "name").to_owned(), value.as_str().unwrap().to_owned());
        }
    }
    settings
}

/// The container's `env` list (`env:` with nothing under it renders as null).
fn environment(container: &Value) -> &[Value] {
    container.get("env").and_then(Value::as_sequence).map_or(&[], Vec::as_slice)
}

/// Names of the container's variables that come from Secrets, with the Secret's name.
fn secret_variables(container: &Value) -> BTreeMap<String, String> {
    environment(container)
        .iter()
        .filter_map(|variable| {
            let reference = variable.get("valueFrom")?.get("secretKeyRef")?;
            Some((text(variable, "name").to_owned(), text(reference, "name").to_owned()))
        })
        .collect()
}

/// `settings` with a stand-in value for each of the container's variables from Secrets.
fn with_secrets(
    mut settings: BTreeMap<String, String>,
    container: &Value,
) -> BTreeMap<String, String> {
    for name in secret_variables(container).into_keys() {
        let value = match name.as_str() {
            "GANTRY_SERVER_DATABASE" => {
                "postgres://gantry:from-a-secret@db.example.com:5432/gantry"
            }
            _ => "from-a-secret",
        };
        settings.insert(name, value.to_owned());
    }
    settings
}

const SECRET_VARIABLES: [&str; 4] =
    ["PGPASSWORD", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "GANTRY_SERVER_MASTER_KEY"];

fn port_number(container: &Value, name: &str) -> u64 {
    at(named(container, "ports", name), "containerPort").as_u64().expect("a port number")
}

/// What every rendering must satisfy, whatever the values.
fn check_common(documents: &[Value]) -> ServerConfig {
    assert!(of_kind(documents, "Secret").is_empty(), "the chart must not create Secrets");
    let deployment = only(documents, "Deployment");
    let pod = at(deployment, "spec.template");
    let pod_labels = at(pod, "metadata.labels").as_mapping().unwrap();
    let container = at(pod, "spec.containers.0");

    // Whatever selects the pods selects these pods, on ports they have.
    for service in of_kind(documents, "Service") {
        for (key, value) in at(service, "spec.selector").as_mapping().unwrap() {
            assert_eq!(pod_labels.get(key), Some(value), "Service selector {key:?}");
        }
        for port in at(service, "spec.ports").as_sequence().unwrap() {
            port_number(container, text(port, "targetPort"));
        }
    }
    for (key, value) in at(deployment, "spec.selector.matchLabels").as_mapping().unwrap() {
        assert_eq!(pod_labels.get(key), Some(value), "Deployment selector {key:?}");
    }

    // Hardened: not root, nothing writable but the emptyDirs, no capabilities.
    assert_eq!(at(pod, "spec.securityContext.runAsNonRoot").as_bool(), Some(true));
    assert_eq!(at(pod, "spec.automountServiceAccountToken").as_bool(), Some(false));
    let security = at(container, "securityContext");
    assert_eq!(at(security, "readOnlyRootFilesystem").as_bool(), Some(true));
    assert_eq!(at(security, "allowPrivilegeEscalation").as_bool(), Some(false));
    assert_eq!(at(security, "capabilities.drop").as_sequence().unwrap(), &[Value::from("ALL")]);

    // Probes over HTTPS on the server's port: ready once the database answers; alive
    // whatever the database does, so that an outage restarts nothing.
    for (probe, path) in
        [("startupProbe", READY_PATH), ("readinessProbe", READY_PATH), ("livenessProbe", LIVE_PATH)]
    {
        let get = at(container, &format!("{probe}.httpGet"));
        assert_eq!(text(get, "path"), path, "{probe}");
        assert_eq!(text(get, "scheme"), "HTTPS", "{probe}");
        assert_eq!(text(get, "port"), "https", "{probe}");
    }

    // Secrets come from Secrets: never in the ConfigMap, never as literal values.
    let settings = rendered_settings(documents);
    for name in SECRET_VARIABLES {
        assert!(!settings.contains_key(name), "{name} must come from a Secret");
    }
    if let Some(url) = settings.get("GANTRY_SERVER_DATABASE") {
        let authority = url.split_once("://").map_or("", |(_, rest)| rest).split('/').next();
        let user = authority.and_then(|authority| authority.rsplit_once('@')).map(|(user, _)| user);
        assert!(user.is_none_or(|user| !user.contains(':')), "a password in {url}");
    }

    // The server accepts the rendered settings, and they agree with the pod.
    let config = ServerConfig::resolve(None, &with_secrets(settings, container))
        .unwrap_or_else(|e| panic!("the server refuses the rendered settings: {e}"));
    assert_eq!(u64::from(config.listen.port()), port_number(container, "https"));
    assert!(config.listen.ip().is_unspecified(), "the server must listen on the pod's address");
    let data_mount = named(container, "volumeMounts", "data");
    assert_eq!(config.data_dir, PathBuf::from(text(data_mount, "mountPath")));
    let data_volume = named(pod, "spec.volumes", "data");
    assert!(data_volume.get("emptyDir").is_some(), "the data directory is an emptyDir");
    if let Some(metrics) = config.metrics_listen {
        assert_eq!(u64::from(metrics.port()), port_number(container, "metrics"));
    }
    // Every replica reads the same master key, from a Secret mounted as a file.
    let MasterKeySource::File(key_file) = &config.master_key else {
        panic!("the master key must come from a file: {:?}", config.master_key)
    };
    let key_mount = named(container, "volumeMounts", "master-key");
    assert!(key_file.starts_with(text(key_mount, "mountPath")), "{}", key_file.display());
    assert!(named(pod, "spec.volumes", "master-key").get("secret").is_some());

    // Time to stop: the pre-stop pause, then the server's own graceful stop.
    let pre_stop = container
        .get("lifecycle")
        .map_or(0, |lifecycle| at(lifecycle, "preStop.sleep.seconds").as_u64().unwrap());
    let grace = at(pod, "spec.terminationGracePeriodSeconds").as_u64().unwrap();
    let needed = pre_stop + server_stop_seconds();
    assert!(grace >= needed, "terminationGracePeriodSeconds {grace} < {needed}");
    config
}

#[test]
fn helm_lint_accepts_the_chart() {
    for values in ["minimal-values.yaml", "full-values.yaml"] {
        if let Err(said) = lint_chart(&chart(), &["--values", &values_file(values)]) {
            panic!("helm lint --strict with {values}:\n{said}");
        }
    }
}

#[test]
fn the_minimal_install_runs_two_replicas_on_nodes_of_their_own() {
    let documents = render(&["--values", &values_file("minimal-values.yaml")]).unwrap();
    let kinds = documents.iter().map(|d| text(d, "kind")).collect::<BTreeSet<_>>();
    assert_eq!(
        kinds,
        BTreeSet::from([
            "ConfigMap",
            "Deployment",
            "PodDisruptionBudget",
            "Service",
            "ServiceAccount"
        ])
    );
    let config = check_common(&documents);
    assert_eq!(config.public_url.as_deref(), Some("https://gantry.example.com:8443"));
    assert_eq!(config.shared_workers, 0, "no shared pool in the control plane's pods");
    // The generated certificate also names the Service, for clients inside the cluster.
    let TlsSource::Generated { extra_hostnames } = &config.tls else {
        panic!("without a TLS Secret, the replicas issue their own certificates");
    };
    assert!(extra_hostnames.contains(&"gantry-gantry-server.gantry.svc".to_owned()));

    let deployment = only(&documents, "Deployment");
    assert_eq!(at(deployment, "spec.replicas").as_u64(), Some(2));
    assert_eq!(at(deployment, "spec.strategy.rollingUpdate.maxUnavailable").as_u64(), Some(0));
    let spread = at(deployment, "spec.template.spec.topologySpreadConstraints.0");
    assert_eq!(text(spread, "topologyKey"), "kubernetes.io/hostname");
    assert_eq!(text(spread, "whenUnsatisfiable"), "DoNotSchedule");
    assert_eq!(
        at(only(&documents, "PodDisruptionBudget"), "spec.maxUnavailable").as_u64(),
        Some(1)
    );

    let container = at(deployment, "spec.template.spec.containers.0");
    assert_eq!(
        secret_variables(container),
        BTreeMap::from([
            ("PGPASSWORD".to_owned(), "gantry-database".to_owned()),
            ("AWS_ACCESS_KEY_ID".to_owned(), "gantry-s3".to_owned()),
            ("AWS_SECRET_ACCESS_KEY".to_owned(), "gantry-s3".to_owned()),
        ])
    );
    let settings = rendered_settings(&documents);
    assert_eq!(
        settings["GANTRY_SERVER_DATABASE"],
        "postgres://gantry@postgres.databases.svc:5432/gantry"
    );
    assert_eq!(settings["GANTRY_SERVER_BLOB_STORE"], "s3://gantry-blobs/production");
    assert_eq!(settings["GANTRY_SERVER_S3_REGION"], "eu-west-1");

    // Metrics on a headless Service of their own, never behind the public one.
    let services = of_kind(&documents, "Service");
    let public = services.iter().find(|s| !text(s, "metadata.name").ends_with("-metrics")).unwrap();
    let ports = at(public, "spec.ports").as_sequence().unwrap();
    assert_eq!(ports.len(), 1);
    assert_eq!(text(&ports[0], "targetPort"), "https");
}

#[test]
fn the_full_install_serves_a_certificate_from_a_secret_behind_an_ingress() {
    let documents = render(&["--values", &values_file("full-values.yaml")]).unwrap();
    let config = check_common(&documents);
    assert_eq!(
        config.tls,
        TlsSource::Files {
            cert_file: "/etc/gantry/tls/tls.crt".into(),
            key_file: "/etc/gantry/tls/tls.key".into(),
            ca_file: Some("/etc/gantry/tls/ca.crt".into()),
        }
    );
    let pod = at(only(&documents, "Deployment"), "spec.template.spec");
    assert_eq!(text(named(pod, "volumes", "tls"), "secret.secretName"), "gantry-tls");
    let container = at(pod, "containers.0");
    let secrets = secret_variables(container);
    assert_eq!(secrets["GANTRY_SERVER_DATABASE"], "gantry-database-url");
    assert!(!secrets.contains_key("PGPASSWORD"));
    assert_eq!(secrets["AWS_SECRET_ACCESS_KEY"], "gantry-minio");
    let settings = rendered_settings(&documents);
    assert_eq!(settings["GANTRY_SERVER_S3_ALLOW_HTTP"], "true");
    assert_eq!(settings["GANTRY_SERVER_WORKER_BINARY"], "/usr/local/bin/gantry-worker");
    assert!(!settings.contains_key("GANTRY_SERVER_TLS_HOSTNAMES"));

    let ingress = only(&documents, "Ingress");
    let backend = at(ingress, "spec.rules.0.http.paths.0.backend.service");
    let public = of_kind(&documents, "Service")
        .into_iter()
        .find(|service| text(service, "metadata.name") == text(backend, "name"))
        .expect("the Ingress's Service exists");
    named(public, "spec.ports", text(backend, "port.name"));
    let annotations = at(ingress, "metadata.annotations");
    let backend_protocol = annotations.get("nginx.ingress.kubernetes.io/backend-protocol");
    assert_eq!(backend_protocol.and_then(Value::as_str), Some("HTTPS"));

    let monitor = only(&documents, "ServiceMonitor");
    let metrics = of_kind(&documents, "Service")
        .into_iter()
        .find(|service| {
            at(monitor, "spec.selector.matchLabels").as_mapping().unwrap().iter().all(
                |(key, value)| {
                    at(service, "metadata.labels").as_mapping().unwrap().get(key) == Some(value)
                },
            )
        })
        .expect("the ServiceMonitor selects a Service");
    assert!(text(metrics, "metadata.name").ends_with("-metrics"));
    assert_eq!(text(at(monitor, "spec.endpoints.0"), "port"), "metrics");
}

#[test]
fn the_chart_refuses_values_that_would_break_the_replicas() {
    // The defaults alone: there is no sensible default address, database or bucket.
    let error = render(&[]).expect_err("the defaults need a public URL, database and bucket");
    assert!(error.contains("server.publicUrl is required"), "{error}");
    let minimal = values_file("minimal-values.yaml");
    let cases = [
        ("server.publicUrl=http://gantry.example.com", "must be an https:// address"),
        ("database.url=", "database.url (or database.urlSecret.name) is required"),
        ("database.urlSecret.name=gantry-url", "set one of database.url and database.urlSecret"),
        ("database.url=postgres://gantry:hunter22@db:5432/gantry", "database.url holds a password"),
        ("blobStore.url=", "blobStore.url is required"),
        ("masterKey.existingSecret=", "masterKey.existingSecret is required"),
        ("blobStore.s3.credentialsSecret.name=", "blobStore.s3.credentialsSecret.name is required"),
        ("server.extraSettings.PGPASSWORD=x", "only GANTRY_SERVER_* settings go here"),
        ("server.metricsPort=0,metrics.serviceMonitor.enabled=true", "needs server.metricsPort"),
    ];
    for (setting, expected) in cases {
        let error = render(&["--values", &minimal, "--set", setting]).expect_err(expected);
        assert!(error.contains(expected), "{setting}: {error}");
    }
}

#[test]
fn a_directory_blob_store_gets_no_bucket_settings() {
    let documents = render(&[
        "--values",
        &values_file("minimal-values.yaml"),
        "--set",
        "blobStore.url=file:///mnt/gantry-blobs",
    ])
    .unwrap();
    check_common(&documents);
    let settings = rendered_settings(&documents);
    assert_eq!(settings["GANTRY_SERVER_BLOB_STORE"], "file:///mnt/gantry-blobs");
    assert!(!settings.keys().any(|name| name.starts_with("GANTRY_SERVER_S3_")), "{settings:?}");
    let container = at(only(&documents, "Deployment"), "spec.template.spec.containers.0");
    assert!(!secret_variables(container).contains_key("AWS_ACCESS_KEY_ID"));
}

// ---------------------------------------------------------------------------------------
// The server itself

/// The paths the chart's probes use: readiness (and startup), and liveness.
const READY_PATH: &str = "/api/v1/ready";
const LIVE_PATH: &str = "/api/v1/health";

#[tokio::test]
async fn the_probe_paths_answer_without_credentials() {
    let data = std::sync::Arc::new(tempfile::tempdir().unwrap());
    let server =
        gantry_testkit::TestServer::start_in(data, &[("GANTRY_SERVER_SHARED_WORKERS", "0")]).await;
    for path in [READY_PATH, LIVE_PATH] {
        let response = server.http().get(format!("{}{path}", server.url)).send().await.unwrap();
        assert_eq!(response.status(), 200, "{path} must answer kubelet's unauthenticated probe");
    }
    server.stop().await;
}

/// How long the server's graceful stop may take: the longer of its request drain and the
/// shared pool's grace for runs, read from the server's source (so that a change there
/// fails this test rather than the deployments), plus time for stopped runs to end.
fn server_stop_seconds() -> u64 {
    let number_after = |path: &str, marker: &str| -> u64 {
        let source = read(&workspace().join(path));
        let start = source.find(marker).map(|at| at + marker.len()).unwrap_or_else(|| {
            panic!("`{marker}` is no longer in {path}: update deploy/ and this test")
        });
        let digits = source[start..].chars().take_while(char::is_ascii_digit).collect::<String>();
        digits.parse().unwrap_or_else(|_| panic!("no number after `{marker}` in {path}"))
    };
    let drain = number_after(
        "crates/server/src/server.rs",
        "const DRAIN_DEADLINE: Duration = Duration::from_secs(",
    );
    let shared_pool_grace =
        number_after("crates/server/src/shared_pool.rs", "(\"GANTRY_LAUNCHER_SHUTDOWN_GRACE\", \"");
    drain.max(shared_pool_grace) + 15
}

// ---------------------------------------------------------------------------------------
// systemd

fn unit_settings(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with(['#', ';', '[']))
        .map(|line| {
            let (key, value) = line.split_once('=').unwrap_or_else(|| panic!("{line}"));
            (key.to_owned(), value.to_owned())
        })
        .collect()
}

fn systemd_analyze(args: &[&str]) -> Output {
    Command::new("systemd-analyze").args(args).output().unwrap_or_else(|e| {
        panic!("systemd-analyze cannot run ({e}): install Debian's systemd package (scripts/test.sh does)")
    })
}

#[test]
fn systemd_accepts_the_unit_and_rates_it_hardened() {
    let unit = read(&workspace().join("deploy/systemd/gantry-server.service"));
    assert!(unit.contains("ExecStart=/usr/local/bin/gantry server\n"));
    // Verified with the real binary in the place the unit names.
    let directory = tempfile::tempdir().unwrap();
    let path = directory.path().join("gantry-server.service");
    let executable = env!("CARGO_BIN_EXE_gantry");
    std::fs::write(&path, unit.replace("/usr/local/bin/gantry", executable)).unwrap();
    let path = path.to_str().unwrap();

    let verified = systemd_analyze(&["verify", path]);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    // verify exits 0 after mere warnings (an unknown key, a bad specifier): none allowed.
    assert!(verified.status.success() && said.trim().is_empty(), "systemd-analyze verify:\n{said}");

    // An exposure of 1.5 or less ("OK" begins at 3.9 and below); systemd counts in tenths.
    let rated = systemd_analyze(&["security", "--offline=yes", "--threshold=15", path]);
    assert!(
        rated.status.success(),
        "systemd-analyze security rates the unit above 1.5:\n{}",
        String::from_utf8_lossy(&rated.stdout)
    );

    let settings = unit_settings(&unit);
    let setting = |key: &str| -> Vec<&str> {
        settings.iter().filter(|(k, _)| k == key).map(|(_, v)| v.as_str()).collect()
    };
    assert_eq!(setting("KillSignal"), ["SIGTERM"]);
    assert_eq!(setting("KillMode"), ["mixed"], "SIGTERM to the server, not to its workers");
    assert_eq!(setting("Restart"), ["on-failure"]);
    assert_eq!(setting("CapabilityBoundingSet"), [""]);
    let stop = setting("TimeoutStopSec")[0]
        .strip_suffix('s')
        .and_then(|seconds| seconds.parse::<u64>().ok())
        .expect("TimeoutStopSec in seconds");
    assert!(stop >= server_stop_seconds(), "TimeoutStopSec={stop}s is shorter than the stop");
    let files = setting("LimitNOFILE")[0].parse::<u64>().unwrap();
    assert!(files >= 65536, "LimitNOFILE={files}: every launcher holds connections open");
}

#[test]
fn the_server_accepts_the_example_environment_file() {
    let unit = read(&workspace().join("deploy/systemd/gantry-server.service"));
    let example = read(&workspace().join("deploy/systemd/gantry-server.env.example"));
    let mut settings: BTreeMap<String, String> = BTreeMap::new();
    for (key, value) in unit_settings(&unit) {
        if key == "Environment" {
            let (name, value) = value.split_once('=').unwrap();
            settings.insert(name.to_owned(), value.replace("%S", "/var/lib"));
        }
    }
    for (name, value) in unit_settings(&example) {
        settings.insert(name, value);
    }
    for name in SECRET_VARIABLES {
        let value = settings.get(name).map_or("", String::as_str);
        assert!(value.is_empty() || value == "replace-me", "{name} holds a value: {value}");
    }
    let config = ServerConfig::resolve(None, &settings)
        .unwrap_or_else(|e| panic!("the server refuses the example settings: {e}"));
    assert_eq!(config.data_dir, PathBuf::from("/var/lib/gantry"));
    assert!(config.listen.ip().is_unspecified());
    assert_eq!(config.shared_workers, 0);
    assert!(config.metrics_listen.is_some_and(|address| address.ip().is_loopback()));
    let database = &settings["GANTRY_SERVER_DATABASE"];
    assert!(database.starts_with("postgres://") && !database.contains(":replace-me@"));
    assert_eq!(settings["PGPASSFILE"], "%d/pgpass");
    assert_eq!(config.master_key, MasterKeySource::File("%d/master-key".into()));
}
