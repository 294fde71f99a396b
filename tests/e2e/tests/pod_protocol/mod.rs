//! The Kubernetes run Pod's protocol (`docs/operator.md`) without Kubernetes. The test
//! plays the operator — a session with the pool key under a launcher id it chose, one
//! registered worker, polls, acknowledgements, heartbeats in the background — and
//! kubelet: the Pod's volumes are directories, `gantry-launcher init` runs to completion,
//! then `gantry-launcher sidecar` and the worker binary init placed run as processes
//! sharing those directories, and the sidecar gets SIGTERM once the worker exited, as a
//! native sidecar does.

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gantry_domain::{LauncherId, RunId, WorkerId};
use gantry_launcher::{AgentClient, LauncherConfig};
use gantry_proto::agent::{Acknowledge, Assignment, Heartbeat, Job, LogUpload, WorkerRegistration};
use gantry_testkit::{GitRepository, MARKER_OUTPUT};
use serde_json::Value;

use crate::harness::{
    Cluster, PoolAccess, bin, id, processes_running, signal, states, wait_with_timeout,
};

/// A managed-state stack whose apply writes the tool's environment to `$ENV_DUMP` (a
/// variable of the stack), so the test sees what the worker's children received.
const POD_CONFIG: &str = r#"
resource "terraform_data" "example" {
  input = "created in a pod"

  provisioner "local-exec" {
    command = "env > \"$ENV_DUMP\""
  }
}

output "message" {
  value = terraform_data.example.output
}

output "secret" {
  value     = "s3cr3t-marker-7f3a9c"
  sensitive = true
}
"#;

/// The operator's side of the agent plane, through the launcher's own client.
struct Operator {
    runtime: tokio::runtime::Runtime,
    client: Arc<AgentClient>,
    launcher_id: LauncherId,
    worker_id: WorkerId,
    /// The runs the heartbeat says this launcher executes.
    running: Arc<Mutex<Vec<RunId>>>,
    pool: PoolAccess,
    _work: tempfile::TempDir,
}

impl Operator {
    fn start(pool: &PoolAccess) -> Self {
        gantry_testkit::install_crypto_provider();
        let work = tempfile::tempdir().unwrap();
        let env = gantry_domain::options::env_of(&[
            ("GANTRY_TOKEN", &pool.token),
            ("GANTRY_POOL_PRIVATE_KEY", &pool.key),
            ("GANTRY_WORKER_BINARY", bin("gantry-worker").to_str().unwrap()),
            ("GANTRY_LAUNCHER_WORK_DIR", work.path().to_str().unwrap()),
        ]);
        let mut config = LauncherConfig::from_env(&env).unwrap();
        let launcher_id = LauncherId::generate();
        config.launcher_id = launcher_id;
        let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
        let client = Arc::new(AgentClient::new(&config).unwrap());
        let registered = runtime
            .block_on(client.register_workers(vec![WorkerRegistration {
                previous_id: None,
                metadata: BTreeMap::from([("kind".to_owned(), "pod".to_owned())]),
            }]))
            .unwrap();
        let worker_id = registered.worker_ids[0];
        let running: Arc<Mutex<Vec<RunId>>> = Arc::default();
        let (beating, held) = (Arc::clone(&client), Arc::clone(&running));
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let heartbeat = Heartbeat {
                    worker_ids: vec![worker_id],
                    running_run_ids: held.lock().unwrap().clone(),
                };
                let _ = beating.heartbeat(&heartbeat).await;
            }
        });
        Self {
            runtime,
            client,
            launcher_id,
            worker_id,
            running,
            pool: PoolAccess { token: pool.token.clone(), key: pool.key.clone() },
            _work: work,
        }
    }

    /// Long-polls until an assignment comes, and acknowledges it, as the operator does
    /// before it creates the Pod.
    fn take_assignment(&self, job: Job) -> Assignment {
        let deadline = Instant::now() + Duration::from_secs(60);
        let assignment = loop {
            let polled = self
                .runtime
                .block_on(self.client.poll(Duration::from_secs(5), Vec::new()))
                .unwrap();
            if let Some(assignment) = polled.assignments.into_iter().next() {
                break assignment;
            }
            assert!(Instant::now() < deadline, "no assignment came");
        };
        assert_eq!(assignment.job, job);
        assert_eq!(assignment.worker_id, self.worker_id);
        let acknowledge = Acknowledge { worker_id: self.worker_id, job };
        self.runtime.block_on(self.client.acknowledge(assignment.run_id, &acknowledge)).unwrap();
        self.running.lock().unwrap().push(assignment.run_id);
        assignment
    }

    /// Writes a line into the run log where the server's log ends, as the operator says
    /// why a run's Pod is pending before the Pod's containers write.
    fn note(&self, run_id: RunId, line: &str) {
        let next = self.runtime.block_on(self.client.upload_logs(run_id, Vec::new())).unwrap();
        let chunk = LogUpload { seq: next, text: format!("{line}\n") };
        self.runtime.block_on(self.client.upload_logs(run_id, vec![chunk])).unwrap();
    }

    /// Waits until the server tells the operator to stop the run, which is when the
    /// operator deletes the run's Pod.
    fn wait_until_told_to_stop(&self, run_id: RunId) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let polled = self.runtime.block_on(self.client.poll(Duration::ZERO, Vec::new()));
            if polled.unwrap().stop_run_ids.contains(&run_id) {
                return;
            }
            assert!(Instant::now() < deadline, "the operator was never told to stop the run");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Where init leaves its hand-off for the sidecar: the scratch volume, not the worker's.
const HANDOFF: &str = "scratch/gantry-handoff.json";

/// The volumes the worker container mounts (`docs/operator.md`): everything of the Pod
/// the run's code can reach. The launcher containers also mount `scratch` and
/// `assignment`.
const WORKER_VOLUMES: [&str; 3] = ["workspace", "bin", "socket"];

/// One run Pod: its volumes as directories, its containers as processes.
struct Pod {
    dir: tempfile::TempDir,
    launcher_env: Vec<(String, String)>,
    capability: String,
    run_id: RunId,
}

/// The Pod's containers while they run.
struct Running {
    sidecar: Child,
    worker: Child,
    worker_environment: String,
}

impl Pod {
    fn new(operator: &Operator, assignment: &Assignment) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for volume in ["workspace", "bin", "socket", "scratch", "assignment", "logs"] {
            std::fs::create_dir(dir.path().join(volume)).unwrap();
        }
        let assignment_file = dir.path().join("assignment/assignment.json");
        std::fs::write(&assignment_file, serde_json::to_vec(assignment).unwrap()).unwrap();
        let capability = format!("gwc_pod-{}", assignment.run_id);
        let path = |volume: &str| dir.path().join(volume).display().to_string();
        let launcher_env = [
            ("GANTRY_TOKEN", operator.pool.token.clone()),
            ("GANTRY_POOL_PRIVATE_KEY", operator.pool.key.clone()),
            ("GANTRY_LAUNCHER_ID", operator.launcher_id.to_string()),
            ("GANTRY_ASSIGNMENT_FILE", assignment_file.display().to_string()),
            ("GANTRY_WORKSPACE_DIR", path("workspace")),
            ("GANTRY_BINARIES_DIR", path("bin")),
            ("GANTRY_SOCKET_DIR", path("socket")),
            ("GANTRY_SCRATCH_DIR", path("scratch")),
            // The launcher image carries the worker binary next to the launcher.
            ("GANTRY_WORKER_BINARY", bin("gantry-worker").display().to_string()),
            ("GANTRY_LOG", "info".to_owned()),
        ]
        .into_iter()
        .map(|(name, value)| (name.to_owned(), value))
        .collect();
        Self { dir, launcher_env, capability, run_id: assignment.run_id }
    }

    /// The launcher containers judge the run with this initialization policy file.
    fn judged_by(mut self, policy: &Path) -> Self {
        let variable = "GANTRY_LAUNCHER_RUN_INITIALIZATION_POLICY".to_owned();
        self.launcher_env.push((variable, policy.display().to_string()));
        self
    }

    fn volume(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn log_file(&self, container: &str) -> PathBuf {
        self.volume("logs").join(container)
    }

    /// A container's process: a clean environment, its output in the Pod's logs.
    fn container(&self, name: &str, program: &Path) -> Command {
        let mut command = Command::new(program);
        command.env_clear();
        for name in ["PATH", "HOME", "LANG", "TMPDIR"] {
            if let Some(value) = std::env::var_os(name) {
                command.env(name, value);
            }
        }
        let log = std::fs::File::create(self.log_file(name)).unwrap();
        command.stdin(Stdio::null()).stdout(log.try_clone().unwrap()).stderr(log);
        command
    }

    fn launcher(&self, mode: &str) -> Command {
        let mut command = self.container(mode, &bin("gantry-launcher"));
        command.arg(mode).envs(self.launcher_env.iter().map(|(n, v)| (n, v)));
        if mode == "sidecar" {
            command.env("GANTRY_WORKER_CAPABILITY", &self.capability);
        }
        command
    }

    fn output_of(&self, container: &str) -> String {
        std::fs::read_to_string(self.log_file(container)).unwrap_or_default()
    }

    /// Runs `gantry-launcher init` to its end; returns its exit code.
    fn init(&self) -> Option<i32> {
        let mut init = self.launcher("init").spawn().unwrap();
        wait_with_timeout(&mut init, Duration::from_secs(120))
    }

    /// Starts the sidecar, waits until it serves the socket (what a startup probe does),
    /// then starts the worker binary init placed, as the worker container's command.
    fn start(&self) -> Running {
        let sidecar = self.launcher("sidecar").spawn().unwrap();
        let socket = self.volume("socket/worker.sock");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "the sidecar never opened its socket: {}",
                self.output_of("sidecar")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let worker_binary = self.volume("bin/gantry-worker");
        let worker = self
            .container("worker", &worker_binary)
            .env("GANTRY_WORKER_SOCKET", &socket)
            .env("GANTRY_WORKER_CAPABILITY", &self.capability)
            .current_dir(self.volume("workspace"))
            .process_group(0)
            .spawn()
            .unwrap();
        let worker_environment = environment_of(worker.id());
        Running { sidecar, worker, worker_environment }
    }

    /// The whole Pod of a run that ends by itself: init, then sidecar and worker; the
    /// sidecar is terminated once the worker exited. Returns the worker's environment.
    /// While the worker's volumes are still there, none may hold any of `forbidden`.
    fn run_to_end(&self, forbidden: &[&str]) -> String {
        assert_eq!(self.init(), Some(0), "init failed:\n{}", self.output_of("init"));
        let mut running = self.start();
        let worker = wait_with_timeout(&mut running.worker, Duration::from_secs(120));
        assert_eq!(worker, Some(0), "worker:\n{}", self.output_of("worker"));
        for needle in forbidden {
            self.assert_worker_volumes_lack(needle);
        }
        self.terminate_sidecar(running.sidecar);
        let workspace = self.volume(&format!("workspace/{}", self.run_id));
        assert!(!workspace.exists(), "the sidecar leaves no workspace behind");
        assert!(!self.volume(HANDOFF).exists(), "nor the hand-off");
        let blobs: Vec<_> = std::fs::read_dir(self.volume("scratch/blobs")).unwrap().collect();
        assert!(blobs.is_empty(), "the sidecar leaves no sealed blob behind: {blobs:?}");
        running.worker_environment
    }

    /// SIGTERM, as kubelet ends a native sidecar; it must exit 0 soon.
    fn terminate_sidecar(&self, mut sidecar: Child) {
        signal(&sidecar, "TERM");
        let status = wait_with_timeout(&mut sidecar, Duration::from_secs(60));
        assert_eq!(status, Some(0), "sidecar:\n{}", self.output_of("sidecar"));
    }

    /// Fails when any file of the volumes the worker container mounts holds `needle`.
    fn assert_worker_volumes_lack(&self, needle: &str) {
        for volume in WORKER_VOLUMES {
            let mut stack = vec![self.volume(volume)];
            while let Some(dir) = stack.pop() {
                for entry in std::fs::read_dir(&dir).unwrap() {
                    let path = entry.unwrap().path();
                    if path.is_dir() && !path.is_symlink() {
                        stack.push(path);
                    } else if let Ok(bytes) = std::fs::read(&path) {
                        assert!(
                            !bytes.windows(needle.len()).any(|window| window == needle.as_bytes()),
                            "{} holds pool key material",
                            path.display()
                        );
                    }
                }
            }
        }
    }
}

/// A process's environment, as the kernel keeps it. The parent of a vfork-style spawn
/// resumes while the child's exec is still setting up its memory, when the environment
/// reads empty: read again until it is there.
fn environment_of(pid: u32) -> String {
    let path = format!("/proc/{pid}/environ");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
        if !bytes.is_empty() || Instant::now() > deadline {
            return String::from_utf8_lossy(&bytes).replace('\0', "\n");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Asserts `needles` appear in `log` in this order.
fn assert_in_order(log: &str, needles: &[&str]) {
    let mut from = 0;
    for needle in needles {
        match log[from..].find(needle) {
            Some(at) => from += at + needle.len(),
            None => panic!("{needle:?} is missing or out of order in the log:\n{log}"),
        }
    }
}

/// A cluster with a private pool, a repository holding `files`, and the operator of the
/// pool.
struct Setup {
    cluster: Cluster,
    operator: Operator,
    work: tempfile::TempDir,
    pool: PoolAccess,
}

impl Setup {
    fn start() -> Self {
        let cluster = Cluster::start();
        let work = tempfile::tempdir().unwrap();
        let pool = cluster.private_pool(work.path(), "pods");
        let operator = Operator::start(&pool);
        Self { cluster, operator, work, pool }
    }

    fn stack(&self, name: &str, repository: &str, extra: &[&str]) {
        let mut args = vec![
            "stack",
            "create",
            "--name",
            name,
            "--repository",
            repository,
            "--pool",
            "pods",
            "--project-root",
            "infra",
        ];
        args.extend(extra);
        self.cluster.gantry.ok(&args);
    }

    /// An initialization policy file of this Rego text.
    fn policy(&self, rego: &str) -> PathBuf {
        let policy = self.work.path().join("policy.rego");
        std::fs::write(&policy, rego).unwrap();
        policy
    }

    fn repository(&self, config: &str) -> String {
        GitRepository::create(&self.work.path().join("repo"), &[("infra/main.tf", config)]).url()
    }

    fn wait_for(&self, run: &Value, states: &[&str]) -> Value {
        self.cluster.gantry.wait_for_state(run, states)
    }
}

#[test]
fn a_tracked_run_plans_in_one_pod_and_applies_in_another_with_only_ciphertext_on_the_server() {
    let setup = Setup::start();
    let env_dump = setup.work.path().join("tool-environment");
    let dump_variable = format!("ENV_DUMP={}", env_dump.display());
    let repository = setup.repository(POD_CONFIG);
    setup.stack("app", &repository, &["--managed-state", "--env", &dump_variable]);
    let key_pem = String::from_utf8(
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &setup.pool.key)
            .unwrap(),
    )
    .unwrap();
    let key_line = key_pem.lines().nth(1).expect("a PEM body").to_owned();
    let forbidden = [key_line.as_str(), &setup.pool.key[100..160]];
    let run = setup.cluster.gantry.trigger("app", &[]);

    let plan = setup.operator.take_assignment(Job::Plan);
    assert_eq!(plan.run_id.to_string(), id(&run));
    // Written after the poll: the assignment's log position is behind it.
    setup.operator.note(plan.run_id, "The run's Pod waits for a node");
    let plan_pod = Pod::new(&setup.operator, &plan);
    let plan_worker_environment = plan_pod.run_to_end(&forbidden);
    let waiting = setup.wait_for(&run, &["UNCONFIRMED", "FAILED", "FINISHED"]);
    assert_eq!(waiting["state"], "UNCONFIRMED", "{waiting}");
    assert!(setup.cluster.server.workspace_blob(id(&run)).is_file(), "the workspace is stored");

    setup.cluster.gantry.ok(&["run", "confirm", id(&run)]);
    let apply = setup.operator.take_assignment(Job::Apply);
    assert_eq!(apply.run_id, plan.run_id);
    assert!(apply.workspace.is_some(), "the apply receives the stored workspace");
    // A fresh Pod: nothing of the plan's volumes, only what the server hands over.
    let apply_pod = Pod::new(&setup.operator, &apply);
    // What the operator saw of the Pod after init started reaches the log through the
    // sidecar, the log's only writer by then (the operator updates the run's Secret).
    std::fs::write(apply_pod.volume("assignment/notes"), "The runner image is pulled slowly\n")
        .unwrap();
    let apply_worker_environment = apply_pod.run_to_end(&forbidden);
    let finished = setup.wait_for(&run, &["FINISHED", "FAILED"]);
    assert_eq!(finished["state"], "FINISHED", "{finished}");
    assert_eq!(
        states(&finished),
        [
            "QUEUED",
            "READY",
            "PREPARING",
            "INITIALIZING",
            "PLANNING",
            "UNCONFIRMED",
            "CONFIRMED",
            "APPLYING",
            "FINISHED"
        ]
    );

    // The log is whole and in order: each init's lines, then its worker's.
    let log = setup.cluster.gantry.log(&finished);
    assert_in_order(
        &log,
        &[
            "The run's Pod waits for a node",
            "Preparing the workspace on",
            "Checked out",
            "The stack has no state yet",
            "▶ Initializing",
            "▶ Planning",
            "Plan: 1 to add",
            "Storing the planned workspace, encrypted to the pool key",
            "The plan waits for confirmation",
            "Applying the confirmed plan on",
            "▶ Applying",
            "Apply complete! Resources: 1 added",
            "The new state is stored, encrypted to the pool key",
        ],
    );
    assert_eq!(log.matches("▶ Planning").count(), 1, "nothing is relayed twice:\n{log}");
    assert_eq!(log.matches("The runner image is pulled slowly").count(), 1, "{log}");
    assert_in_order(&log, &["Applying the confirmed plan on", "The runner image is pulled slowly"]);
    let message = finished["outputs"].as_array().unwrap().iter().find(|o| o["name"] == "message");
    assert_eq!(message.unwrap()["value"], "created in a pod");

    // The pool key reached neither the worker, nor the tool it ran, nor (checked while
    // each Pod ran) the volumes the worker container mounts.
    let tool_environment = std::fs::read_to_string(&env_dump).expect("the apply ran the tool");
    assert!(tool_environment.contains("ENV_DUMP="), "{tool_environment}");
    for environment in [&plan_worker_environment, &apply_worker_environment, &tool_environment] {
        for secret in ["GANTRY_POOL_PRIVATE_KEY", "GANTRY_TOKEN", &setup.pool.key, &key_line] {
            assert!(!environment.contains(secret), "the worker's side saw {secret}");
        }
    }
    assert!(plan_worker_environment.contains("GANTRY_WORKER_SOCKET="), "{plan_worker_environment}");
    // The server holds the workspace and the state as ciphertext only.
    setup.cluster.server.assert_nothing_contains(MARKER_OUTPUT);
}

#[test]
fn init_that_cannot_check_out_fails_the_run_with_the_reason_in_its_log() {
    let setup = Setup::start();
    let missing = format!("file://{}/no-such-repository", setup.work.path().display());
    setup.stack("broken", &missing, &[]);
    let run = setup.cluster.gantry.trigger("broken", &[]);
    let assignment = setup.operator.take_assignment(Job::Plan);
    let pod = Pod::new(&setup.operator, &assignment);

    let status = pod.init();
    assert_eq!(status, Some(1), "init:\n{}", pod.output_of("init"));
    let failed = setup.wait_for(&run, &["FAILED", "FINISHED"]);
    assert_eq!(failed["state"], "FAILED", "{failed}");
    let log = setup.cluster.gantry.log(&failed);
    assert_in_order(&log, &["Preparing the workspace on", "Cannot check out"]);
    assert!(log.contains("no-such-repository"), "{log}");
    assert!(!pod.volume(HANDOFF).exists(), "a failed init leaves no hand-off for a sidecar");
    assert!(!pod.volume(&format!("workspace/{}", assignment.run_id)).exists(), "nor a workspace");
}

/// Denies every apply, naming the commit's author as the server carried it from the plan.
const APPLY_POLICY: &str = r#"package gantry

deny contains msg if {
  input.run.job == "apply"
  msg := sprintf("applies of commits by %s <%s> are not run in pods", [input.run.commit.author, input.run.commit.author_email])
}
"#;

#[test]
fn init_judges_the_apply_too_on_the_commit_its_plan_checked_out() {
    let setup = Setup::start();
    let policy = setup.policy(APPLY_POLICY);
    let repository = setup.repository(POD_CONFIG);
    setup.stack("app", &repository, &[]);
    let run = setup.cluster.gantry.trigger("app", &[]);

    let plan = setup.operator.take_assignment(Job::Plan);
    Pod::new(&setup.operator, &plan).judged_by(&policy).run_to_end(&[]);
    let waiting = setup.wait_for(&run, &["UNCONFIRMED", "FAILED", "FINISHED"]);
    assert_eq!(waiting["state"], "UNCONFIRMED", "{waiting}");

    setup.cluster.gantry.ok(&["run", "confirm", id(&run)]);
    let apply = setup.operator.take_assignment(Job::Apply);
    let author = apply.commit_author.as_ref().expect("the plan's init reported the author");
    assert_eq!(
        (author.name.as_str(), author.email.as_str()),
        ("Gantry Tests", "tests@gantry.invalid")
    );
    let apply_pod = Pod::new(&setup.operator, &apply).judged_by(&policy);
    assert_eq!(apply_pod.init(), Some(1), "init:\n{}", apply_pod.output_of("init"));
    let failed = setup.wait_for(&run, &["FAILED", "FINISHED"]);
    assert_eq!(failed["state"], "FAILED", "{failed}");
    let message = "applies of commits by Gantry Tests <tests@gantry.invalid> are not run in pods";
    assert!(failed["failure"].as_str().unwrap().contains(message), "{failed}");
    let log = setup.cluster.gantry.log(&failed);
    assert_in_order(&log, &["Applying the confirmed plan on", message]);
    assert!(!apply_pod.volume(HANDOFF).exists(), "no sidecar follows");
    assert!(!apply_pod.volume(&format!("workspace/{}", apply.run_id)).exists(), "nor a workspace");
}

/// Denies every run, saying what it was told of the worker container's image and tool.
const RUNNER_POLICY: &str = r#"package gantry

deny contains msg if {
  environment := input.static_run_environment
  is_string(environment.terraform_version)
  msg := sprintf("judged %s with %s %s", [input.docker_image, environment.tool, environment.terraform_version])
}

deny contains msg if {
  input.static_run_environment.terraform_version == null
  msg := sprintf("judged %s with an unknown version", [input.docker_image])
}
"#;

/// Init runs in the launcher image: the tool its own PATH finds (or a Docker daemon
/// beside it) says nothing of the worker container. The policy sees the image the
/// operator chose and the version the pool declares for it, or none.
#[test]
fn init_judges_the_runner_image_the_operator_names_with_the_version_the_pool_declares() {
    let setup = Setup::start();
    let policy = setup.policy(RUNNER_POLICY);
    let repository = setup.repository(POD_CONFIG);
    setup.stack("app", &repository, &[]);
    let judged = |extra_env: &[(&str, &str)]| {
        let run = setup.cluster.gantry.trigger("app", &[]);
        let plan = setup.operator.take_assignment(Job::Plan);
        let mut pod = Pod::new(&setup.operator, &plan).judged_by(&policy);
        pod.launcher_env.extend(
            extra_env.iter().map(|(name, value)| ((*name).to_owned(), (*value).to_owned())),
        );
        assert_eq!(pod.init(), Some(1), "init:\n{}", pod.output_of("init"));
        let failed = setup.wait_for(&run, &["FAILED", "FINISHED"]);
        assert_eq!(failed["state"], "FAILED", "{failed}");
        failed["failure"].as_str().unwrap().to_owned()
    };

    let declared = judged(&[
        ("GANTRY_RUNNER_IMAGE", "registry.example/runner:1.9"),
        ("GANTRY_RUNNER_TOOL_VERSION", "1.9.5"),
    ]);
    assert!(
        declared.contains("judged registry.example/runner:1.9 with terraform 1.9.5"),
        "{declared}"
    );

    // The test's PATH finds a real terraform, which a process executor's worker would
    // run: not this Pod's.
    let undeclared = judged(&[
        ("GANTRY_RUNNER_IMAGE", "registry.example/runner:2"),
        ("GANTRY_LAUNCHER_EXECUTOR", "process"),
    ]);
    assert!(
        undeclared.contains("judged registry.example/runner:2 with an unknown version"),
        "{undeclared}"
    );
}

/// A task that sleeps for an odd, recognizable time, so that its process can be found.
fn sleeping_task(setup: &Setup, seconds: &str) -> (Value, Pod, Running) {
    let repository = setup.repository("# nothing to manage\n");
    setup.stack("sleeper", &repository, &[]);
    let task =
        setup.cluster.gantry.json(&["run", "task", "sleeper", "--", &format!("sleep {seconds}")]);
    let assignment = setup.operator.take_assignment(Job::Plan);
    let pod = Pod::new(&setup.operator, &assignment);
    assert_eq!(pod.init(), Some(0), "init:\n{}", pod.output_of("init"));
    let running = pod.start();
    setup.wait_for(&task, &["PERFORMING"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while processes_running(&format!("sleep {seconds}")).is_empty() {
        assert!(Instant::now() < deadline, "the task's command never started");
        std::thread::sleep(Duration::from_millis(50));
    }
    (task, pod, running)
}

/// Kills the processes of the task's command, as a container's end kills all of its
/// processes.
fn kill_command(seconds: &str) {
    let output = Command::new("ps").args(["-eo", "pid=,args="]).output().unwrap();
    for line in String::from_utf8_lossy(&output.stdout).lines() {
        let (pid, args) = line.trim().split_once(' ').unwrap_or((line, ""));
        if args.trim() == format!("sleep {seconds}") {
            let _ = Command::new("kill").args(["-KILL", pid]).status();
        }
    }
}

#[test]
fn a_worker_killed_before_it_reported_fails_the_run_when_the_sidecar_is_terminated() {
    let setup = Setup::start();
    let (task, pod, mut running) = sleeping_task(&setup, "41.3");

    // The worker container dies (OOM-killed, say) without a word.
    running.worker.kill().unwrap();
    let _ = running.worker.wait();
    kill_command("41.3");
    pod.terminate_sidecar(running.sidecar);

    let failed = setup.wait_for(&task, &["FAILED", "STOPPED", "FINISHED"]);
    assert_eq!(failed["state"], "FAILED", "{failed}");
    let log = setup.cluster.gantry.log(&failed);
    assert_in_order(
        &log,
        &["▶ Performing", "The worker container exited without reporting how the run ended"],
    );
}

/// Kubelet restarts a sidecar that died (`restartPolicy: Always`): the new one goes on
/// with the log where the server has it, not where init left it, or the server would
/// take its lines for ones it has and drop them (here, why the run failed).
#[test]
fn a_sidecar_restarted_by_kubelet_goes_on_with_the_log_where_the_server_has_it() {
    let setup = Setup::start();
    let repository = setup.repository("# nothing to manage\n");
    setup.stack("restarted", &repository, &[]);
    let command = "echo before-the-restart; sleep 43.1";
    let task = setup.cluster.gantry.json(&["run", "task", "restarted", "--", command]);
    let assignment = setup.operator.take_assignment(Job::Plan);
    let pod = Pod::new(&setup.operator, &assignment);
    assert_eq!(pod.init(), Some(0), "init:\n{}", pod.output_of("init"));
    let mut running = pod.start();
    setup.cluster.gantry.wait_for(Duration::from_secs(60), || {
        setup.cluster.gantry.log(&task).contains("\nbefore-the-restart").then_some(())
    });

    running.sidecar.kill().unwrap();
    let _ = running.sidecar.wait();
    let socket = pod.volume("socket/worker.sock");
    let restarted = pod.launcher("sidecar").spawn().unwrap();
    // The dead sidecar's socket file refuses connections; the new one's takes them.
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::os::unix::net::UnixStream::connect(&socket).is_err() {
        assert!(Instant::now() < deadline, "never bound again:\n{}", pod.output_of("sidecar"));
        std::thread::sleep(Duration::from_millis(20));
    }
    // The worker container ends without a word to the new sidecar.
    running.worker.kill().unwrap();
    let _ = running.worker.wait();
    kill_command("43.1");
    pod.terminate_sidecar(restarted);

    let failed = setup.wait_for(&task, &["FAILED", "STOPPED", "FINISHED"]);
    assert_eq!(failed["state"], "FAILED", "{failed}");
    let log = setup.cluster.gantry.log(&failed);
    assert_in_order(
        &log,
        &["before-the-restart", "The worker container exited without reporting how the run ended"],
    );
}

/// A run's code rewrites what a sidecar reads at start, as it could before the hand-off
/// left the workspace volume: a sidecar restarted by kubelet (`restartPolicy: Always`)
/// while the run's code runs would have taken the forged file's environment for the
/// tool, and its lineage and serial rules and deadline. Emulated by forging the file
/// where the worker container can write before the sidecar starts: what the tool sees
/// must be what init worked out.
#[test]
fn a_hand_off_the_run_forges_in_its_volumes_is_not_what_the_sidecar_reads() {
    let setup = Setup::start();
    let repository = setup.repository("# nothing to manage\n");
    setup.stack("forger", &repository, &["--env", "CHOSEN_BY=the-stack"]);
    let task = setup.cluster.gantry.json(&[
        "run",
        "task",
        "forger",
        "--",
        "echo \"tool sees CHOSEN_BY=$CHOSEN_BY FORGED=${FORGED:-absent}\"",
    ]);
    let assignment = setup.operator.take_assignment(Job::Plan);
    let pod = Pod::new(&setup.operator, &assignment);
    assert_eq!(pod.init(), Some(0), "init:\n{}", pod.output_of("init"));
    pod.assert_worker_volumes_lack("\"log_next_seq\"");

    let mut forged: Value =
        serde_json::from_slice(&std::fs::read(pod.volume(HANDOFF)).unwrap()).unwrap();
    forged["job"]["environment"] = serde_json::json!([["CHOSEN_BY", "the-run"], ["FORGED", "yes"]]);
    let forged = serde_json::to_vec(&forged).unwrap();
    for volume in WORKER_VOLUMES {
        std::fs::write(pod.volume(&format!("{volume}/gantry-handoff.json")), &forged).unwrap();
    }
    let running = pod.start();
    let mut worker = running.worker;
    assert_eq!(wait_with_timeout(&mut worker, Duration::from_secs(120)), Some(0));
    pod.terminate_sidecar(running.sidecar);

    let finished = setup.wait_for(&task, &["FINISHED", "FAILED"]);
    assert_eq!(finished["state"], "FINISHED", "{finished}");
    let log = setup.cluster.gantry.log(&finished);
    assert!(log.contains("tool sees CHOSEN_BY=the-stack FORGED=absent"), "{log}");
}

#[test]
fn a_user_s_stop_deletes_the_pod_and_the_run_ends_stopped() {
    let setup = Setup::start();
    let (task, pod, mut running) = sleeping_task(&setup, "42.7");
    let run_id: RunId = id(&task).parse().unwrap();

    setup.cluster.gantry.ok(&["run", "stop", id(&task)]);
    setup.operator.wait_until_told_to_stop(run_id);
    // Deleting the Pod: kubelet terminates the worker container, then the sidecar.
    signal(&running.worker, "TERM");
    let worker = wait_with_timeout(&mut running.worker, Duration::from_secs(30));
    assert_eq!(worker, Some(143), "worker:\n{}", pod.output_of("worker"));
    pod.terminate_sidecar(running.sidecar);

    let stopped = setup.wait_for(&task, &["STOPPED", "FAILED", "FINISHED"]);
    assert_eq!(stopped["state"], "STOPPED", "{stopped}");
    let log = setup.cluster.gantry.log(&stopped);
    assert_in_order(&log, &["▶ Performing", "The run was stopped."]);
    assert!(processes_running("sleep 42.7").is_empty(), "the command was stopped with the worker");
}

#[test]
fn a_user_s_stop_while_init_prepares_ends_the_run_stopped() {
    let setup = Setup::start();
    // A git server that accepts connections and never answers: the checkout hangs.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let held: Vec<_> = silent.incoming().collect();
        drop(held);
    });
    setup.stack("hanging", &format!("http://127.0.0.1:{port}/infra.git"), &[]);
    let run = setup.cluster.gantry.trigger("hanging", &[]);
    let assignment = setup.operator.take_assignment(Job::Plan);
    let pod = Pod::new(&setup.operator, &assignment);
    let mut init = pod.launcher("init").spawn().unwrap();
    setup.cluster.gantry.wait_for(Duration::from_secs(60), || {
        setup.cluster.gantry.log(&run).contains("Preparing the workspace on").then_some(())
    });

    setup.cluster.gantry.ok(&["run", "stop", id(&run)]);
    setup.operator.wait_until_told_to_stop(assignment.run_id);
    // Deleting the Pod while its init container runs.
    signal(&init, "TERM");
    let status = wait_with_timeout(&mut init, Duration::from_secs(60));
    assert_eq!(status, Some(1), "init:\n{}", pod.output_of("init"));

    let stopped = setup.wait_for(&run, &["STOPPED", "FAILED", "FINISHED"]);
    assert_eq!(stopped["state"], "STOPPED", "{stopped}");
    let log = setup.cluster.gantry.log(&stopped);
    assert_in_order(
        &log,
        &["Preparing the workspace on", "The run was stopped while its workspace was prepared."],
    );
}

/// The lineage of the state the hostile task below leaves: found in the next run's
/// workspace, it shows that the state the sidecar sealed and uploaded is that one.
const SCRATCH_ATTACK_LINEAGE: &str = "5c7a7c4e-0000-4b1d-9a2f-pod-scratch-attack";

/// The hostile task: it leaves a first state for the sidecar to seal and upload, puts
/// links to a directory outside the Pod (`OUTSIDE`, a variable of the stack) where the
/// workspace volume once held the sidecar's scratch files (`.gantry-scratch`) and where
/// a state that cannot be uploaded is kept (`unsaved-state`), and swaps whatever of the
/// sidecar's scratch its own volumes show for a link to `OUTSIDE/victim`. Its working
/// directory is `workspace/<run>/infra`: `../../..` plays the worker container's
/// `/gantry`, where it finds its mounts.
const SCRATCH_ATTACK: &str = r#"set -eu
printf '%s' "$STATE" > gantry.tfstate
pod="$(cd ../../.. && pwd)"
rm -rf ../../.gantry-scratch ../../unsaved-state
ln -s "$OUTSIDE" ../../.gantry-scratch
ln -s "$OUTSIDE" ../../unsaved-state
reached=0
for found in $(find "$pod/workspace" "$pod/bin" "$pod/socket" \( -name blobs -o -name '*.gantry' \) -print); do
  rm -rf "$found"
  ln -s "$OUTSIDE/victim" "$found"
  reached=$((reached + 1))
done
echo "scratch entries reached: $reached"
"#;

/// The names that appear in a directory while it is watched.
struct NamesWatch {
    stop: Arc<std::sync::atomic::AtomicBool>,
    watching: std::thread::JoinHandle<std::collections::BTreeSet<String>>,
}

/// Lists `dir` every fraction of a millisecond until stopped: a sealed file lives at
/// least as long as its `fsync` and upload, far longer.
fn watch_names(dir: &Path) -> NamesWatch {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (dir, stopped) = (dir.to_path_buf(), Arc::clone(&stop));
    let watching = std::thread::spawn(move || {
        let mut seen = std::collections::BTreeSet::new();
        while !stopped.load(std::sync::atomic::Ordering::SeqCst) {
            for entry in std::fs::read_dir(&dir).unwrap().flatten() {
                seen.insert(entry.file_name().to_string_lossy().into_owned());
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        seen
    });
    NamesWatch { stop, watching }
}

impl NamesWatch {
    /// Every name seen, sorted.
    fn stop(self) -> Vec<String> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.watching.join().unwrap().into_iter().collect()
    }
}

/// The sidecar writes sealed blobs and reads them back by path while the run's code may
/// still run: links that code leaves in its volumes redirect none of them.
///
/// What is emulated: in a real Pod the scratch volume (`gantry-scratch`, at
/// `/gantry/scratch`) is mounted in init and the sidecar only, so no process of the
/// worker container can name it, let alone write it
/// (`the_scratch_volume_is_the_launcher_containers_alone` in crates/operator/tests/pod.rs
/// checks the Pod spec). Here every container is a process of the same user on one
/// filesystem, so only the layout keeps the worker out: the attack acts on the worker's
/// own volumes (`WORKER_VOLUMES`), as a worker container can, and the test checks that
/// the scratch directory the sidecar is given lies beneath none of them. What the attack
/// does must change nothing: nothing of the sidecar's scratch is within its reach, no
/// file appears outside the Pod (watched while the Pod runs: a sidecar that followed the
/// link would remove its file again after the upload), and the state the sidecar stores
/// is the one the task left, which the stack's next run opens.
#[test]
fn links_the_worker_leaves_in_its_volumes_redirect_none_of_the_sidecar_s_scratch_files() {
    let setup = Setup::start();
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "untouched").unwrap();
    let repository = GitRepository::create(
        &setup.work.path().join("repo"),
        &[("infra/main.tf", "# the task leaves the state\n"), ("infra/attack.sh", SCRATCH_ATTACK)],
    )
    .url();
    let state = format!(
        r#"{{"version":4,"terraform_version":"1.11.0","serial":1,"lineage":"{SCRATCH_ATTACK_LINEAGE}","outputs":{{}},"resources":[]}}"#
    );
    let (outside_variable, state_variable) =
        (format!("OUTSIDE={}", outside.path().display()), format!("STATE={state}"));
    let variables = ["--managed-state", "--env", &outside_variable, "--env", &state_variable];
    setup.stack("app", &repository, &variables);

    let task = setup.cluster.gantry.json(&["run", "task", "app", "--", "sh attack.sh"]);
    let assignment = setup.operator.take_assignment(Job::Plan);
    let pod = Pod::new(&setup.operator, &assignment);
    let scratch = pod.volume("scratch").canonicalize().unwrap();
    for volume in WORKER_VOLUMES {
        let volume = pod.volume(volume).canonicalize().unwrap();
        assert!(
            !scratch.starts_with(&volume) && !volume.starts_with(&scratch),
            "the scratch volume {} overlaps the worker's {}",
            scratch.display(),
            volume.display()
        );
    }
    let seen_outside = watch_names(outside.path());
    pod.run_to_end(&[]);
    let seen_outside = seen_outside.stop();
    let finished = setup.wait_for(&task, &["FINISHED", "FAILED"]);
    let log = setup.cluster.gantry.log(&finished);
    assert_eq!(finished["state"], "FINISHED", "{finished}\n{log}");
    assert_in_order(
        &log,
        &["scratch entries reached: 0", "The new state is stored, encrypted to the pool key"],
    );
    assert!(pod.volume("workspace/.gantry-scratch").is_symlink(), "the attack ran");
    assert_eq!(seen_outside, ["victim"], "the sidecar wrote nothing through the links");
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");

    // The state stored is the task's own: the stack's next run starts from it.
    let next = setup.cluster.gantry.json(&["run", "task", "app", "--", "cat gantry.tfstate"]);
    let assignment = setup.operator.take_assignment(Job::Plan);
    Pod::new(&setup.operator, &assignment).run_to_end(&[]);
    let read = setup.wait_for(&next, &["FINISHED", "FAILED"]);
    let log = setup.cluster.gantry.log(&read);
    assert_eq!(read["state"], "FINISHED", "{read}\n{log}");
    assert!(log.contains(SCRATCH_ATTACK_LINEAGE), "the next run opened another state:\n{log}");
}
