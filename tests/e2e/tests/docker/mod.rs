//! End-to-end tests of the `docker` executor against the real Docker daemon, with a
//! runner image assembled and imported by the test (no registry is reachable).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use gantry_testkit::{GitRepository, runner_image};
use serde_json::Value;

use crate::harness::{Cluster, Launcher, PoolAccess, bin, id, left_of_run, state_has_resource};

const CONFIG: &str = r#"
terraform {
  backend "local" {}
}

resource "terraform_data" "example" {
  input = "created in a container"
}
"#;

/// A resource whose creation takes a minute: a run that is still applying.
const SLOW_CONFIG: &str = r#"
terraform {
  backend "local" {}
}

resource "terraform_data" "slow" {
  provisioner "local-exec" {
    command = "sleep 60"
  }
}
"#;

/// The containers labelled with this run, running or not.
fn containers_of(run: &Value) -> Vec<String> {
    let listed = Command::new("docker")
        .args(["ps", "-a", "-q", "--filter", &format!("label=dev.gantry.run={}", id(run))])
        .output()
        .expect("docker runs");
    String::from_utf8_lossy(&listed.stdout).lines().map(str::to_owned).collect()
}

/// A server, a pool, the runner image, and a directory the run user (UID 1983) may
/// write that is mounted into run containers at the same path (it holds the state).
struct DockerSetup {
    cluster: Cluster,
    work: tempfile::TempDir,
    shared: PathBuf,
    pool: PoolAccess,
    image: &'static str,
    worker: String,
}

impl DockerSetup {
    fn new() -> Self {
        Self::with_worker(&bin("gantry-worker"))
    }

    /// Runs `worker` in an image made for it: one without a C library for a static one.
    fn with_worker(worker: &Path) -> Self {
        Self::with_server(worker, &[])
    }

    /// As [`Self::with_worker`], the server started with `server` settings.
    fn with_server(worker: &Path, server: &[(&str, &str)]) -> Self {
        let image = runner_image(worker);
        let cluster = Cluster::start_with(server);
        let work = tempfile::tempdir().unwrap();
        let shared = work.path().join("shared");
        std::fs::create_dir_all(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let pool = cluster.private_pool(work.path(), "p");
        Self { cluster, work, shared, pool, image, worker: worker.display().to_string() }
    }

    /// The settings of a docker launcher of the pool, with `extra` ones.
    fn settings<'a>(
        &'a self,
        mount: &'a str,
        extra: &[(&'a str, &'a str)],
    ) -> Vec<(&'a str, &'a str)> {
        let mut settings = vec![
            ("GANTRY_LAUNCHER_EXECUTOR", "docker"),
            ("GANTRY_WORKER_BINARY", self.worker.as_str()),
            ("GANTRY_DEFAULT_RUNNER_IMAGE", self.image),
            ("GANTRY_WORKER_EXTRA_MOUNTS", mount),
        ];
        settings.extend_from_slice(extra);
        settings
    }

    fn shared_mount(&self) -> String {
        format!("{}:{}", self.shared.display(), self.shared.display())
    }

    fn launcher(&self, extra: &[(&str, &str)]) -> Launcher {
        let mount = self.shared_mount();
        Launcher::of(&self.cluster, &self.pool, &self.settings(&mount, extra))
    }

    /// A stack named `name` of `config`, its state in the shared directory.
    fn stack(&self, name: &str, config: &str, extra: &[&str]) -> PathBuf {
        let repository =
            GitRepository::create(&self.work.path().join(name), &[("infra/main.tf", config)]);
        let state = self.shared.join(format!("{name}.tfstate"));
        self.cluster.gantry.create_stack(name, &repository, "p", &state, extra);
        state
    }

    fn run_to_end(&self, extra: &[&str], stack: &str) -> Value {
        let run = self.cluster.gantry.trigger(stack, extra);
        self.cluster.gantry.wait_for_state(&run, &["FINISHED", "FAILED"])
    }

    fn task_to_end(&self, stack: &str, command: &str) -> Value {
        let task = self.cluster.gantry.json(&["run", "task", stack, "--", command]);
        self.cluster.gantry.wait_for_state(&task, &["FINISHED", "FAILED"])
    }

    /// Waits for the run's containers to be gone: the run ends when the worker reports
    /// it, its container a moment later.
    fn wait_until_removed(&self, run: &Value) {
        let gone = || containers_of(run).is_empty().then_some(());
        self.cluster.gantry.wait_for(Duration::from_secs(20), gone);
    }
}

#[test]
fn a_tracked_run_and_a_task_execute_in_containers_as_the_run_user() {
    let setup = DockerSetup::new();
    let _launcher = setup.launcher(&[]);
    let state = setup.stack("app", CONFIG, &["--autodeploy"]);

    let run = setup.run_to_end(&[], "app");
    assert_eq!(run["state"], "FINISHED", "{run}\n{}", setup.cluster.gantry.log(&run));
    assert!(state_has_resource(&state), "the apply in the container wrote the state");
    setup.wait_until_removed(&run);

    let task = setup.task_to_end("app", "echo uid=$(id -u) home=$HOME");
    assert_eq!(task["state"], "FINISHED", "{task}");
    let log = setup.cluster.gantry.log(&task);
    assert!(log.contains("uid=1983 home=/tmp"), "{log}");
}

#[test]
fn a_runner_image_that_cannot_be_had_fails_the_run_with_the_reason() {
    let setup = DockerSetup::new();
    let _launcher = setup.launcher(&[]);
    setup.stack("app", CONFIG, &["--runner-image", "registry.invalid/gantry/absent:1"]);
    let run = setup.run_to_end(&[], "app");
    assert_eq!(run["state"], "FAILED", "{run}");
    let reason = "cannot pull the runner image registry.invalid/gantry/absent:1";
    assert!(run["failure"].as_str().unwrap().contains(reason), "{run}");
    let log = setup.cluster.gantry.log(&run);
    assert!(log.contains(reason), "{log}");
    setup.wait_until_removed(&run);
}

/// A managed-state apply that creates one resource, then takes a minute on a second.
const HALF_APPLIED_CONFIG: &str = r#"
resource "terraform_data" "first" {
  input = "made before the launcher died"
}

resource "terraform_data" "second" {
  depends_on = [terraform_data.first]
  provisioner "local-exec" {
    command = "sleep 61.5"
  }
}
"#;

#[test]
fn a_launcher_started_again_recovers_the_apply_its_killed_instance_left() {
    // The server fails a dead launcher's run a worker timeout after its last heartbeat:
    // long enough here for the launcher started again to report first.
    let setup = DockerSetup::with_server(
        &bin("gantry-worker"),
        &[
            ("GANTRY_SERVER_HEARTBEAT_INTERVAL", "1s"),
            ("GANTRY_SERVER_WORKER_TIMEOUT", "40s"),
            ("GANTRY_SERVER_WORKER_LEASE", "6s"),
            ("GANTRY_SERVER_WORKER_LEASE_GRACE", "20s"),
        ],
    );
    let launcher_dir = setup.work.path().join("launcher");
    let mount = setup.shared_mount();
    let settings = setup.settings(&mount, &[]);
    let start = || setup.pool.start_launcher(&launcher_dir, &settings);
    let first = start();
    let repository = GitRepository::create(
        &setup.work.path().join("half"),
        &[("infra/main.tf", HALF_APPLIED_CONFIG)],
    );
    setup.cluster.gantry.create_managed_stack("half", &repository.url(), "p", &["--autodeploy"]);
    let run = setup.cluster.gantry.trigger("half", &[]);
    setup.cluster.gantry.wait_for(Duration::from_secs(60), || {
        setup.cluster.gantry.log(&run).contains("terraform_data.second: Provisioning").then_some(())
    });
    assert_eq!(running_containers_of(&run).len(), 1, "the run applies in a container");

    first.kill();
    // The container's worker stops on its lease; the launcher started again waits for
    // it, then stores the state the apply left, reports the run and removes the rest.
    let second = start();
    let ended = setup.cluster.gantry.wait_for_state(&run, &["FAILED", "FINISHED"]);
    let failure = ended["failure"].as_str().unwrap_or_default();
    assert!(
        failure.contains(
            "died while the run was executing; the state the run left was recovered and stored"
        ),
        "{ended}"
    );
    let log = setup.cluster.gantry.log(&run);
    assert!(log.contains("the lease from the launcher ran out"), "the worker's own words: {log}");
    assert!(log.contains("takes the run over"), "{log}");
    let versions = setup.cluster.gantry.json(&["stack", "state", "list", "half"]);
    let current = &versions["versions"][0];
    assert_eq!(
        (&current["run_id"], &current["current"]),
        (&run["id"], &Value::Bool(true)),
        "{versions}"
    );
    assert!(containers_of(&run).is_empty(), "the container is removed");
    let left = left_of_run(&launcher_dir, &run);
    assert!(left.is_empty(), "nothing of the run is left in the work directory: {left:?}");

    // The next run starts from the recovered state: the first resource is in it.
    let task = setup.task_to_end("half", "terraform state list");
    assert_eq!(task["state"], "FINISHED", "{task}");
    let log = setup.cluster.gantry.log(&task);
    assert!(log.lines().any(|line| line == "terraform_data.first"), "{log}");
    drop(second);
}

/// The containers of this run that are running.
fn running_containers_of(run: &Value) -> Vec<String> {
    let listed = Command::new("docker")
        .args(["ps", "-q", "--filter", &format!("label=dev.gantry.run={}", id(run))])
        .output()
        .expect("docker runs");
    String::from_utf8_lossy(&listed.stdout).lines().map(str::to_owned).collect()
}

#[test]
fn a_killed_launchers_container_stops_on_its_lease_before_the_stacks_next_run_executes() {
    let setup = DockerSetup::with_server(
        &bin("gantry-worker"),
        &[
            ("GANTRY_SERVER_HEARTBEAT_INTERVAL", "1s"),
            ("GANTRY_SERVER_WORKER_TIMEOUT", "3s"),
            ("GANTRY_SERVER_WORKER_LEASE", "4s"),
            ("GANTRY_SERVER_WORKER_LEASE_GRACE", "3s"),
        ],
    );
    let first = setup.launcher(&[]);
    setup.stack("slow", SLOW_CONFIG, &["--autodeploy"]);
    let run = setup.cluster.gantry.trigger("slow", &[]);
    setup.cluster.gantry.wait_for_state(&run, &["APPLYING"]);
    assert_eq!(running_containers_of(&run).len(), 1, "the run applies in a container");
    let _second = setup.launcher(&[]);

    first.kill();
    let next = setup.cluster.gantry.trigger("slow", &[]);
    // The orphan's worker loses its lease (4 s), interrupts terraform, kills it after
    // the grace (3 s) and exits, and its container with it.
    setup
        .cluster
        .gantry
        .wait_for(Duration::from_secs(30), || running_containers_of(&run).is_empty().then_some(()));
    let failed = setup.cluster.gantry.wait_for_state(&run, &["FAILED"]);
    assert!(failed["failure"].as_str().unwrap().starts_with("worker lost"), "{failed}");
    // Only then did the next run of the stack take the lock and start executing, by the
    // daemon's own clock: the orphan's exit against the next container's start.
    let orphan = containers_of(&run);
    setup.cluster.gantry.wait_for_state(&next, &["PLANNING", "APPLYING", "FINISHED", "FAILED"]);
    let started = containers_of(&next);
    assert_eq!((orphan.len(), started.len()), (1, 1), "one container each");
    let orphan_ended = docker_time(&orphan[0], "{{.State.FinishedAt}}");
    let next_started = docker_time(&started[0], "{{.State.StartedAt}}");
    assert!(
        orphan_ended < next_started,
        "the next run started {} ms before the orphan stopped",
        (orphan_ended - next_started) / 1_000_000
    );
}

/// A time of a container, in nanoseconds since the epoch.
fn docker_time(container: &str, format: &str) -> i128 {
    let inspected = Command::new("docker")
        .args(["inspect", "--format", format, container])
        .output()
        .expect("docker runs");
    let text = String::from_utf8_lossy(&inspected.stdout).trim().to_owned();
    // RFC 3339 with nanoseconds; `date` reads it whole.
    let converted = Command::new("date").args(["-u", "-d", &text, "+%s%N"]).output().unwrap();
    let nanos = String::from_utf8_lossy(&converted.stdout);
    nanos.trim().parse().unwrap_or_else(|_| panic!("docker inspect printed {text:?}"))
}

/// Reads which extra mounts a run sees: Terraform's `fileexists` needs no provider.
const MOUNTS_CONFIG: &str = r#"
terraform {
  backend "local" {}
}

output "sees_ro" {
  value = fileexists("/mnt/ro/marker")
}

output "sees_wo" {
  value = fileexists("/mnt/wo/marker")
}
"#;

#[test]
fn mounts_network_and_runtime_options_reach_the_containers() {
    let setup = DockerSetup::new();
    let (read_only, write) = (setup.work.path().join("ro"), setup.work.path().join("wo"));
    for dir in [&read_only, &write] {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("marker"), "here").unwrap();
    }
    let ro_mounts = format!("{}:/mnt/ro", read_only.display());
    let wo_mounts = format!("{}:/mnt/wo", write.display());
    let _launcher = setup.launcher(&[
        ("GANTRY_WORKER_RO_EXTRA_MOUNTS", &ro_mounts),
        ("GANTRY_WORKER_WO_EXTRA_MOUNTS", &wo_mounts),
        ("GANTRY_WORKER_NETWORK", "none"),
        ("GANTRY_WORKER_RUNTIME", "runc"),
    ]);
    setup.stack("app", MOUNTS_CONFIG, &[]);

    // A proposed run reads: the _RO_ mount only.
    let proposed = setup.run_to_end(&["--proposed"], "app");
    assert_eq!(proposed["state"], "FINISHED", "{proposed}");
    let log = setup.cluster.gantry.log(&proposed);
    assert!(log.contains("sees_ro = true") && log.contains("sees_wo = false"), "{log}");

    // A task writes: the _WO_ mount only, and no network but loopback.
    let task = setup.task_to_end(
        "app",
        "echo net=$(ls /sys/class/net) ro=$(ls /mnt/ro 2>/dev/null) wo=$(ls /mnt/wo)",
    );
    assert_eq!(task["state"], "FINISHED", "{task}");
    let log = setup.cluster.gantry.log(&task);
    assert!(log.contains("net=lo ro= wo=marker"), "{log}");
}

#[test]
fn a_silent_run_in_a_container_is_stopped_after_the_logs_timeout() {
    let setup = DockerSetup::new();
    let _launcher = setup.launcher(&[("GANTRY_LAUNCHER_LOGS_TIMEOUT", "3s")]);
    setup.stack("app", CONFIG, &[]);
    let started = std::time::Instant::now();
    let task = setup.task_to_end("app", "sleep 120");
    let took = started.elapsed();
    assert_eq!(task["state"], "FAILED", "{task}");
    assert!(task["failure"].as_str().unwrap().contains("printed nothing for 3s"), "{task}");
    assert!(took < Duration::from_secs(3 + 5 + 5), "stopped after {took:?}");
    setup.wait_until_removed(&task);
}

/// The worker built as a static binary: `scripts/test.sh` builds it before the tests.
fn static_worker() -> PathBuf {
    let profile_dir = bin("gantry-worker").parent().unwrap().to_path_buf();
    let profile = profile_dir.file_name().unwrap();
    let triple = format!("{}-unknown-linux-gnu", std::env::consts::ARCH);
    let path = profile_dir.parent().unwrap().join(triple).join(profile).join("gantry-worker");
    assert!(
        path.is_file(),
        "{} is missing: build it with RUSTFLAGS='-C target-feature=+crt-static' cargo build -p gantry-worker --target {}-unknown-linux-gnu",
        path.display(),
        std::env::consts::ARCH
    );
    path
}

#[test]
fn the_static_worker_runs_in_an_image_without_a_c_library() {
    let setup = DockerSetup::with_worker(&static_worker());
    let libc = Command::new("docker")
        .args(["run", "--rm", setup.image, "sh", "-c", "find / -xdev -name 'libc.so*' | wc -l"])
        .output()
        .expect("docker runs");
    assert_eq!(String::from_utf8_lossy(&libc.stdout).trim(), "0", "the image has no C library");

    let _launcher = setup.launcher(&[]);
    let state = setup.stack("app", CONFIG, &["--autodeploy"]);
    let run = setup.run_to_end(&[], "app");
    assert_eq!(run["state"], "FINISHED", "{run}\n{}", setup.cluster.gantry.log(&run));
    assert!(state_has_resource(&state));
}

#[test]
fn sigterm_lets_the_running_run_finish_and_a_second_one_stops_it() {
    let setup = DockerSetup::new();
    setup.stack("app", CONFIG, &[]);

    // One SIGTERM: no new work, the run in progress finishes, the launcher leaves.
    let launcher = setup.launcher(&[]);
    let task = setup.cluster.gantry.json(&[
        "run",
        "task",
        "app",
        "--",
        "sleep 3; echo finished after the signal",
    ]);
    setup.cluster.gantry.wait_for_state(&task, &["PERFORMING"]);
    launcher.terminate();
    let exited = launcher.wait_for_exit(Duration::from_secs(60));
    assert_eq!(exited.status, Some(0), "{}", exited.stderr);
    let task = setup.cluster.gantry.wait_for_state(&task, &["FINISHED", "FAILED"]);
    assert_eq!(task["state"], "FINISHED", "{task}");
    assert!(setup.cluster.gantry.log(&task).contains("finished after the signal"));
    let workers = setup.cluster.gantry.json(&["worker", "list", "--pool", "p"]);
    assert_eq!(workers["workers"].as_array().unwrap().len(), 0, "it deregistered: {workers}");
    setup.wait_until_removed(&task);

    // Two: the run is stopped now, and the launcher still exits cleanly.
    let launcher = setup.launcher(&[]);
    let task = setup.cluster.gantry.json(&["run", "task", "app", "--", "sleep 120"]);
    setup.cluster.gantry.wait_for_state(&task, &["PERFORMING"]);
    launcher.terminate();
    std::thread::sleep(Duration::from_millis(500));
    launcher.terminate();
    let exited = launcher.wait_for_exit(Duration::from_secs(60));
    assert_eq!(exited.status, Some(0), "{}", exited.stderr);
    let task = setup.cluster.gantry.wait_for_state(&task, &["STOPPED", "FAILED", "FINISHED"]);
    assert_ne!(task["state"], "FINISHED", "{task}");
    setup.wait_until_removed(&task);
}

#[test]
fn the_runtime_option_reaches_the_daemon() {
    let setup = DockerSetup::new();
    let _launcher = setup.launcher(&[("GANTRY_WORKER_RUNTIME", "gantry-no-such-runtime")]);
    setup.stack("app", CONFIG, &[]);
    let run = setup.run_to_end(&["--proposed"], "app");
    assert_eq!(run["state"], "FAILED", "{run}");
    let failure = run["failure"].as_str().unwrap();
    assert!(failure.contains("gantry-no-such-runtime"), "the daemon was asked for it: {failure}");
}

/// Builds the default runner image from `deploy/docker/runner.Dockerfile` with
/// `scripts/runner-image.sh`, as a pool owner does, around the static worker build.
fn default_runner_image() -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/runner-image.sh");
    let built = Command::new("bash")
        .arg(script)
        .env("GANTRY_RUNNER_WORKER", static_worker())
        .output()
        .expect("bash runs");
    assert!(built.status.success(), "{}", String::from_utf8_lossy(&built.stderr));
    let tag = String::from_utf8_lossy(&built.stdout).lines().last().unwrap_or_default().to_owned();
    assert_eq!(tag, gantry_launcher::docker::DEFAULT_IMAGE, "the script builds the default image");
    tag
}

#[test]
fn a_launcher_runs_in_containers_of_the_default_runner_image_unless_told_otherwise() {
    let image = default_runner_image();
    let inspect = Command::new("docker")
        .args([
            "image",
            "inspect",
            &image,
            "--format",
            "{{.Config.User}} {{index .Config.Labels \"org.opencontainers.image.version\"}}",
        ])
        .output()
        .expect("docker runs");
    let inspected = String::from_utf8_lossy(&inspect.stdout);
    assert_eq!(inspected.trim(), format!("1983:1983 {}", env!("CARGO_PKG_VERSION")));

    let setup = DockerSetup::with_worker(&static_worker());
    // No executor and no image named: the docker executor and the default image.
    let mount = setup.shared_mount();
    let _launcher = Launcher::of(
        &setup.cluster,
        &setup.pool,
        &[
            ("GANTRY_LAUNCHER_EXECUTOR", ""),
            ("GANTRY_WORKER_BINARY", setup.worker.as_str()),
            ("GANTRY_WORKER_EXTRA_MOUNTS", &mount),
        ],
    );
    setup.stack("app", CONFIG, &[]);
    let task = setup.task_to_end("app", "echo uid=$(id -u) && terraform version");
    let log = setup.cluster.gantry.log(&task);
    assert_eq!(task["state"], "FINISHED", "{task}\n{log}");
    assert!(log.contains("uid=1983") && log.contains("Terraform v"), "{log}");
}
