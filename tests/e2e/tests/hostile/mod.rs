//! A run's code is hostile: each test is one attack a stack's author could make on the
//! launcher through what a run leaves in its workspace or commits in its repository
//! (links to the launcher's environment, its key file or `/etc/shadow` in place of the
//! managed state or the backend override, hard links, fifos, forged or oversized state).
//! Each asserts that the run fails with the named reason (or goes on unharmed), that no
//! byte of key material or of the launcher's environment reaches the server, and that
//! the stack's next run works from the state it had. Every attack runs once per
//! executor: `process::<attack>` and `docker::<attack>` (a container per run, of the
//! runner image the tests assemble).

use std::path::PathBuf;

use gantry_testkit::{GitRepository, KeyKind, OpensslKey, runner_image};
use serde_json::Value;

use crate::harness::{Cluster, Launcher, bin, id};

/// The executor a test's launcher runs the runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Executor {
    Process,
    Docker,
}

impl Executor {
    /// The launcher settings that choose this executor.
    fn settings(self) -> Vec<(&'static str, &'static str)> {
        match self {
            Self::Process => vec![("GANTRY_LAUNCHER_EXECUTOR", "process")],
            Self::Docker => vec![
                ("GANTRY_LAUNCHER_EXECUTOR", "docker"),
                ("GANTRY_DEFAULT_RUNNER_IMAGE", runner_image(&bin("gantry-worker"))),
            ],
        }
    }

    /// Whether the run executes as a user other than the launcher's, who can neither
    /// reach nor link the launcher's key file: in a container, or as a root launcher's
    /// per-run user.
    fn isolates_runs(self) -> bool {
        self == Self::Docker || running_as_root()
    }
}

/// Each attack (a function of the executor) as one test per executor.
macro_rules! on_each_executor {
    ($($attack:ident),* $(,)?) => {
        mod process {
            $(#[test]
            fn $attack() {
                super::$attack(super::Executor::Process);
            })*
        }
        mod docker {
            $(#[test]
            fn $attack() {
                super::$attack(super::Executor::Docker);
            })*
        }
    };
}

on_each_executor!(
    a_link_to_the_launchers_environment_in_place_of_the_state_is_refused,
    a_link_to_the_key_file_in_place_of_the_state_is_refused,
    a_link_to_etc_shadow_in_place_of_the_state_is_refused,
    a_hard_link_to_the_key_file_in_place_of_the_state_is_refused,
    a_hard_link_the_run_makes_in_place_of_the_state_is_refused,
    a_fifo_in_place_of_the_state_is_refused_without_waiting_for_a_writer,
    a_directory_in_place_of_the_state_is_refused,
    a_state_that_is_not_json_is_refused,
    a_state_of_another_lineage_is_refused,
    a_state_whose_serial_goes_back_is_refused,
    a_state_of_a_format_version_terraform_cannot_read_is_refused,
    an_oversized_state_is_refused_with_the_option_that_bounds_it,
    a_task_that_deletes_the_state_leaves_the_stack_its_state,
    a_task_that_truncates_the_state_is_refused,
    a_committed_link_in_place_of_the_state_is_replaced_not_followed,
    a_committed_link_in_place_of_the_backend_override_is_replaced_not_followed,
    a_committed_link_to_the_launchers_environment_fails_the_plan_before_anything_is_stored,
    a_committed_link_in_place_of_the_plan_is_not_followed_when_it_is_packed,
    a_project_root_swapped_for_a_link_during_the_run_is_refused,
    the_tool_cannot_read_its_workers_capability,
    runs_of_two_slots_cannot_reach_each_other,
);

/// One resource, managed state: the first apply gives the stack a state version.
const CONFIG: &str = r#"
resource "terraform_data" "example" {
  input = "created by gantry"
}

output "message" {
  value = terraform_data.example.output
}
"#;

/// A value only the launcher's environment holds: if it reaches the server, the
/// launcher's environment did.
const CANARY: &str = "launcher-environment-canary-5c1e7a";

/// A pool whose launcher reads its key from a file, and a managed-state stack whose
/// state holds one applied resource.
struct Attacked {
    cluster: Cluster,
    work: tempfile::TempDir,
    key: OpensslKey,
    key_file: PathBuf,
    _launcher: Launcher,
}

impl Attacked {
    /// With `committed` files added to the repository (paths and contents; a content
    /// starting with `->` makes a symbolic link to the rest).
    fn start(
        executor: Executor,
        committed: &[(&str, &str)],
        launcher_env: &[(&str, &str)],
    ) -> Self {
        Self::start_with(executor, committed, launcher_env, true)
    }

    /// [`Self::start`], with or without autodeploy.
    fn start_with(
        executor: Executor,
        committed: &[(&str, &str)],
        launcher_env: &[(&str, &str)],
        autodeploy: bool,
    ) -> Self {
        let cluster = Cluster::start();
        let work = tempfile::tempdir().unwrap();
        let key = OpensslKey::generate(work.path(), "pool", KeyKind::P256);
        let key_file = work.path().join("pool.key");
        assert!(key_file.is_file(), "openssl wrote the key to {}", key_file.display());
        let token = cluster.gantry.create_pool("p", &key);
        let repository =
            GitRepository::create(&work.path().join("repo"), &[("infra/main.tf", CONFIG)]);
        let regular: Vec<(&str, &str)> =
            committed.iter().copied().filter(|(_, content)| !content.starts_with("->")).collect();
        if !regular.is_empty() {
            repository.commit(&regular, "regular files");
        }
        for (path, content) in committed {
            if let Some(target) = content.strip_prefix("->") {
                repository.commit_link(path, target, "a link");
            }
        }
        let autodeploy: &[&str] = if autodeploy { &["--autodeploy"] } else { &[] };
        cluster.gantry.create_managed_stack("app", &repository.url(), "p", autodeploy);
        let key_path = key_file.display().to_string();
        let mut env =
            vec![("GANTRY_POOL_PRIVATE_KEY_FILE", key_path.as_str()), ("HOSTILE_CANARY", CANARY)];
        env.extend(executor.settings());
        env.extend_from_slice(launcher_env);
        let launcher = Launcher::with_key_file(&cluster, &token, &env);
        Self { cluster, work, key, key_file, _launcher: launcher }
    }

    /// Applies the configuration once, so that the stack has a state version.
    fn with_state(
        executor: Executor,
        committed: &[(&str, &str)],
        launcher_env: &[(&str, &str)],
    ) -> Self {
        let attacked = Self::start(executor, committed, launcher_env);
        let run = attacked.tracked();
        assert_eq!(run["state"], "FINISHED", "{run}\n{}", attacked.cluster.gantry.log(&run));
        attacked
    }

    fn tracked(&self) -> Value {
        let run = self.cluster.gantry.trigger("app", &[]);
        self.cluster.gantry.wait_for_state(&run, &["FINISHED", "FAILED", "UNCONFIRMED"])
    }

    /// Runs a task, the attacker's own command, to its end.
    fn task(&self, command: &str) -> Value {
        let run = self.cluster.gantry.json(&["run", "task", "app", "--", command]);
        self.cluster.gantry.wait_for_state(&run, &["FINISHED", "FAILED"])
    }

    /// The run failed, saying `reason` in its failure and its log.
    fn assert_failed_with(&self, run: &Value, reason: &str) {
        let log = self.cluster.gantry.log(run);
        assert_eq!(run["state"], "FAILED", "{run}\n{log}");
        assert!(log.contains(reason), "the log names the reason {reason:?}:\n{log}");
    }

    /// No byte of the key, its PEM lines or the launcher's environment is on the server,
    /// and the next run of the stack starts from the state it had: nothing to change.
    fn assert_unharmed(&self) {
        self.assert_no_leak();
        let next = self.tracked();
        let log = self.cluster.gantry.log(&next);
        assert_eq!(next["state"], "FINISHED", "{next}\n{log}");
        assert_eq!(next["has_changes"], false, "the stack kept its state:\n{log}");
    }

    fn assert_no_leak(&self) {
        let server = &self.cluster.server;
        server.assert_nothing_contains(CANARY);
        server.assert_nothing_contains("GANTRY_POOL_PRIVATE_KEY");
        for line in key_lines(&self.key.key_pem) {
            server.assert_nothing_contains(&line);
        }
    }

    fn key_path(&self) -> String {
        self.key_file.display().to_string()
    }
}

/// The body lines of a PEM key: any one of them on the server is a leak.
fn key_lines(pem: &str) -> Vec<String> {
    pem.lines()
        .filter(|line| !line.starts_with("-----") && line.len() >= 16)
        .map(str::to_owned)
        .collect()
}

/// A Terraform state document of the given lineage and serial, padded to about `size`.
fn state_document(lineage: &str, serial: u64, padding: usize) -> String {
    format!(
        r#"{{"version":4,"terraform_version":"1.11.0","serial":{serial},"lineage":"{lineage}","outputs":{{"pad":{{"value":"{}","type":"string"}}}},"resources":[],"check_results":null}}"#,
        "x".repeat(padding)
    )
}

fn a_link_to_the_launchers_environment_in_place_of_the_state_is_refused(executor: Executor) {
    let attacked = Attacked::with_state(executor, &[], &[]);
    let run = attacked.task("ln -sf /proc/self/environ gantry.tfstate");
    attacked.assert_failed_with(&run, "gantry.tfstate is a symbolic link");
    attacked.assert_unharmed();
}

fn a_link_to_the_key_file_in_place_of_the_state_is_refused(executor: Executor) {
    let attacked = Attacked::with_state(executor, &[], &[]);
    let run = attacked.task(&format!("ln -sf {} gantry.tfstate", attacked.key_path()));
    attacked.assert_failed_with(&run, "gantry.tfstate is a symbolic link");
    attacked.assert_unharmed();
}

fn a_link_to_etc_shadow_in_place_of_the_state_is_refused(executor: Executor) {
    let attacked = Attacked::with_state(executor, &[], &[]);
    let run = attacked.task("ln -sf /etc/shadow gantry.tfstate");
    attacked.assert_failed_with(&run, "gantry.tfstate is a symbolic link");
    attacked.assert_unharmed();
}

fn a_hard_link_to_the_key_file_in_place_of_the_state_is_refused(executor: Executor) {
    let attacked = Attacked::with_state(executor, &[], &[]);
    // Run as the launcher's own user (a launcher that is not root), the kernel lets the
    // run link the key file and the launcher must refuse it. A root launcher runs the run
    // as a user of its own, and a container has no such file: the link cannot be made.
    let run = attacked
        .task(&format!("rm -f gantry.tfstate && ln {} gantry.tfstate", attacked.key_path()));
    let refused = if executor.isolates_runs() { "ln: " } else { "has 2 hard links" };
    attacked.assert_failed_with(&run, refused);
    attacked.assert_unharmed();
}

/// The refusal itself, whoever runs the run: a hard link the run can always make (to a
/// copy of its own state), which a link to a file outside would look just like.
fn a_hard_link_the_run_makes_in_place_of_the_state_is_refused(executor: Executor) {
    let attacked = Attacked::with_state(executor, &[], &[]);
    let run = attacked
        .task("cp gantry.tfstate ../kept && rm gantry.tfstate && ln ../kept gantry.tfstate");
    attacked.assert_failed_with(&run, "has 2 hard links");
    attacked.assert_unharmed();
}

fn a_fifo_in_place_of_the_state_is_refused_without_waiting_for_a_writer(executor: Executor) {
    let attacked = Attacked::with_state(executor, &[], &[]);
    let run = attacked.task("rm -f gantry.tfstate && mkfifo gantry.tfstate");
    attacked.assert_failed_with(&run, "gantry.tfstate is a fifo, not a regular file");
    attacked.assert_unharmed();
}

fn a_directory_in_place_of_the_state_is_refused(executor: Executor) {
    let attacked = Attacked::with_state(executor, &[], &[]);
    let run = attacked.task("rm -f gantry.tfstate && mkdir gantry.tfstate");
    attacked.assert_failed_with(&run, "gantry.tfstate is a directory, not a regular file");
    attacked.assert_unharmed();
}

fn a_state_that_is_not_json_is_refused(executor: Executor) {
    let attacked = Attacked::with_state(executor, &[], &[]);
    let run = attacked.task("printf 'PATH=/usr/bin\\000HOME=/root' > gantry.tfstate");
    attacked.assert_failed_with(&run, "it is not Terraform or OpenTofu state");
    attacked.assert_failed_with(&run, "the stack keeps its previous state");
    attacked.assert_unharmed();
}

fn a_state_of_another_lineage_is_refused(executor: Executor) {
    let attacked = Attacked::with_state(executor, &[], &[]);
    let forged = state_document("00000000-forged-lineage", 99, 0);
    let run = attacked.task(&format!("printf '%s' '{forged}' > gantry.tfstate"));
    attacked.assert_failed_with(&run, "is not the stack's lineage");
    attacked.assert_unharmed();
}

fn a_state_whose_serial_goes_back_is_refused(executor: Executor) {
    let attacked = Attacked::with_state(executor, &[], &[]);
    // Same lineage, serial lowered below the stored one.
    let run = attacked.task(
        r#"sed -i 's/"serial": [0-9]*/"serial": 0/' gantry.tfstate && grep -q '"serial": 0' gantry.tfstate"#,
    );
    attacked.assert_failed_with(&run, "its serial went back from");
    attacked.assert_unharmed();
}

fn a_state_of_a_format_version_terraform_cannot_read_is_refused(executor: Executor) {
    let attacked = Attacked::with_state(executor, &[], &[]);
    // Stored, it would brick the stack: `terraform init` refuses format 5.
    let run = attacked.task(
        r#"sed -i 's/"version": 4/"version": 5/' gantry.tfstate && grep -q '"version": 5' gantry.tfstate"#,
    );
    attacked.assert_failed_with(&run, "its format version is 5");
    attacked.assert_unharmed();
}

fn an_oversized_state_is_refused_with_the_option_that_bounds_it(executor: Executor) {
    let attacked =
        Attacked::with_state(executor, &[], &[("GANTRY_LAUNCHER_STATE_MAX_SIZE", "2KiB")]);
    // A valid successor in every other respect: same lineage, higher serial.
    let run = attacked.task(
        r#"lineage=$(sed -n 's/.*"lineage": "\([^"]*\)".*/\1/p' gantry.tfstate) && printf '{"version":4,"serial":50,"lineage":"%s","pad":"%04096d"}' "$lineage" 0 > gantry.tfstate"#,
    );
    attacked.assert_failed_with(&run, "over GANTRY_LAUNCHER_STATE_MAX_SIZE");
    attacked.assert_unharmed();
}

fn a_task_that_deletes_the_state_leaves_the_stack_its_state(executor: Executor) {
    let attacked = Attacked::with_state(executor, &[], &[]);
    let run = attacked.task("rm gantry.tfstate");
    assert_eq!(run["state"], "FINISHED", "{run}\n{}", attacked.cluster.gantry.log(&run));
    attacked.assert_unharmed();
}

fn a_task_that_truncates_the_state_is_refused(executor: Executor) {
    let attacked = Attacked::with_state(executor, &[], &[]);
    let run = attacked.task(": > gantry.tfstate");
    attacked.assert_failed_with(&run, "it is not Terraform or OpenTofu state");
    attacked.assert_unharmed();
}

fn a_committed_link_in_place_of_the_state_is_replaced_not_followed(executor: Executor) {
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim");
    std::fs::write(&victim, "untouched").unwrap();
    let target = format!("->{}", victim.display());
    let attacked = Attacked::start(executor, &[("infra/gantry.tfstate", &target)], &[]);
    // The first run writes no state through the link, and the apply's state replaces it.
    let first = attacked.tracked();
    assert_eq!(first["state"], "FINISHED", "{first}\n{}", attacked.cluster.gantry.log(&first));
    // The second brings the stored state in, again replacing the committed link.
    attacked.assert_unharmed();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
}

fn a_committed_link_in_place_of_the_backend_override_is_replaced_not_followed(executor: Executor) {
    let outside = tempfile::tempdir().unwrap();
    let victim = outside.path().join("victim.tf");
    std::fs::write(&victim, "# untouched\n").unwrap();
    let target = format!("->{}", victim.display());
    let attacked =
        Attacked::with_state(executor, &[("infra/gantry_managed_state_override.tf", &target)], &[]);
    attacked.assert_unharmed();
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "# untouched\n");
}

fn a_committed_link_to_the_launchers_environment_fails_the_plan_before_anything_is_stored(
    executor: Executor,
) {
    // Without autodeploy the planned workspace is packed for the apply: the link is
    // refused there, before anything is sealed or uploaded.
    let attacked =
        Attacked::start_with(executor, &[("infra/environ", "->/proc/self/environ")], &[], false);
    let run = attacked.tracked();
    attacked.assert_failed_with(&run, "is absolute");
    attacked.assert_no_leak();
}

fn a_committed_link_in_place_of_the_plan_is_not_followed_when_it_is_packed(executor: Executor) {
    // Terraform writes its plan through whatever is at `gantry.tfplan`, here a file the
    // run may write outside its workspace; the launcher must not read it back through the
    // link as it packs the planned workspace for the apply.
    let outside = format!("/tmp/gantry-hostile-plan-{}", std::process::id());
    let link = format!("->{outside}");
    let attacked = Attacked::start_with(executor, &[("infra/gantry.tfplan", &link)], &[], false);
    let run = attacked.tracked();
    let _ = std::fs::remove_file(&outside);
    attacked.assert_failed_with(&run, "gantry.tfplan");
    attacked.assert_no_leak();
}

fn a_project_root_swapped_for_a_link_during_the_run_is_refused(executor: Executor) {
    let attacked = Attacked::with_state(executor, &[], &[]);
    let victim_dir = attacked.work.path().join("elsewhere");
    std::fs::create_dir_all(&victim_dir).unwrap();
    // The task moves its own project directory away and leaves a link in its place: the
    // launcher's writes after the run must not land in the link's target.
    let run = attacked
        .task(&format!("cd .. && mv infra infra.moved && ln -s {} infra", victim_dir.display()));
    attacked.assert_failed_with(&run, "infra/gantry.tfstate is a symbolic link");
    assert!(
        std::fs::read_dir(&victim_dir).unwrap().next().is_none(),
        "nothing was written through the link"
    );
    attacked.assert_unharmed();
}

/// Whether the tests run as root, as CI does.
fn running_as_root() -> bool {
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0
}

/// Runs of two slots cannot reach each other: as users of their own (a root launcher's
/// process executor) or in containers of their own (the docker executor). A process
/// executor without root refuses a second slot instead.
fn runs_of_two_slots_cannot_reach_each_other(executor: Executor) {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let pool = cluster.private_pool(work.path(), "p");
    let launcher_dir = work.path().join("launcher");
    let mut settings = vec![("GANTRY_LAUNCHER_WORKER_SLOTS", "2")];
    settings.extend(executor.settings());
    if !executor.isolates_runs() {
        // Without root the runs of two slots would share one user: refused at start.
        let exited = Launcher::run_to_exit_with(&cluster, &pool.token, &pool.key, &settings);
        assert_eq!(exited.status, Some(64), "{}", exited.stderr);
        assert!(
            exited
                .stderr
                .contains("GANTRY_LAUNCHER_WORKER_SLOTS=2 with the process executor needs root"),
            "{}",
            exited.stderr
        );
        return;
    }
    let mut launcher = Launcher::spawn_for(&pool.token, &pool.key, &launcher_dir, &settings);
    launcher.wait_for_stderr("launcher connected", std::time::Duration::from_secs(30));
    let repository = GitRepository::create(&work.path().join("repo"), &[("infra/main.tf", CONFIG)]);
    let url = repository.url();
    for (name, secret) in
        [("victim", "VICTIM_SECRET=victim-secret-4e1d"), ("probe", "OWN=probe-own-9c2b")]
    {
        cluster.gantry.create_stack_at(name, &url, Some("p"), &["--secret-env", secret]);
    }
    // The victim keeps its workspace, worker and socket alive while the probe looks.
    let victim = cluster.gantry.json(&[
        "run",
        "task",
        "victim",
        "--",
        "id -u > uid && echo victim-file-secret-77aa > marker && sleep 30",
    ]);
    let victim_id = id(&victim).to_owned();
    let marker = cluster
        .gantry
        .wait_for(std::time::Duration::from_secs(60), || find_named(&launcher_dir, "marker"));
    let socket = find_named(&launcher_dir, &format!("{victim_id}.sock"))
        .or_else(|| find_named(&std::env::temp_dir(), &format!("{victim_id}.sock")))
        .expect("the victim's socket");
    // (Patterns and messages are split in the command, which the log shows, so that only
    // what the probe found can match.)
    let socket_probe = match executor {
        Executor::Process => format!(
            "python3 -c \"import socket; s = socket.socket(socket.AF_UNIX); s.connect('{}')\" 2>&1 | tail -n 1",
            socket.display()
        ),
        // A container has neither the other run's socket nor python to connect with.
        Executor::Docker => format!("test -e {} || echo 'no such'' socket'", socket.display()),
    };
    let probe_command = format!(
        "echo probe-uid=$(id -u); \
         cat {marker} 2>&1; \
         for process in /proc/[0-9]*; do {{ tr '\\0' '\\n' < $process/environ; }} 2>/dev/null | grep -e 'GANTRY_WORKER_CAP''ABILITY=' -e 'VICTIM_SEC''RET=' | sed \"s|^|$process: |\"; done; \
         {socket_probe}; \
         ls {workspace} 2>&1",
        marker = marker.display(),
        workspace = marker.parent().unwrap().parent().unwrap().display(),
    );
    let probe = cluster.gantry.json(&["run", "task", "probe", "--", &probe_command]);
    let probe = cluster.gantry.wait_for_state(&probe, &["FINISHED", "FAILED"]);
    let log = cluster.gantry.log(&probe);
    let probe_uid = crate::harness::line_after(&log, "probe-uid=").unwrap_or_default();
    assert!(
        !probe_uid.trim().is_empty() && probe_uid.trim() != "0",
        "the probe ran as root:\n{log}"
    );
    assert!(
        !log.contains("victim-file-secret-77aa"),
        "the probe read the victim's workspace:\n{log}"
    );
    match executor {
        Executor::Process => {
            let victim_uid = std::fs::read_to_string(marker.with_file_name("uid")).unwrap();
            assert_ne!(probe_uid.trim(), victim_uid.trim(), "both runs ran as one user:\n{log}");
            assert!(log.contains("Permission denied"), "{log}");
            assert!(
                log.contains("PermissionError"),
                "the probe connected to the victim's socket:\n{log}"
            );
        }
        Executor::Docker => {
            // The other run's files are not even there.
            assert!(log.contains("No such file or directory"), "{log}");
            assert!(log.contains("no such socket"), "the victim's socket is in reach:\n{log}");
        }
    }
    // Its own capability the worker keeps from its tool; the victim's it cannot see.
    assert!(!log.contains("GANTRY_WORKER_CAPABILITY="), "a capability reached the probe:\n{log}");
    assert!(!log.contains("VICTIM_SECRET="), "the victim's environment reached the probe:\n{log}");
    cluster.gantry.ok(&["run", "stop", &victim_id]);
    cluster.gantry.wait_for_state(&victim, &["STOPPED", "FAILED", "FINISHED"]);

    // Neither run's secrets nor the pool key reached the server, and both stacks run on.
    let pem = base64::Engine::decode(&base64::engine::general_purpose::STANDARD, &pool.key)
        .expect("the pool key is base64 of its PEM");
    let pem = String::from_utf8(pem).unwrap();
    let server = &cluster.server;
    for secret in
        key_lines(&pem).iter().map(String::as_str).chain(["victim-secret-4e1d", "probe-own-9c2b"])
    {
        server.assert_nothing_contains(secret);
    }
    for stack in ["victim", "probe"] {
        let next = cluster.gantry.json(&["run", "task", stack, "--", "echo the stack runs on"]);
        let next = cluster.gantry.wait_for_state(&next, &["FINISHED", "FAILED"]);
        assert_eq!(next["state"], "FINISHED", "{next}\n{}", cluster.gantry.log(&next));
    }
}

/// The tool looks for its worker's capability in the environment of every process it can
/// see (its worker, an init process, the launcher): none shows it.
fn the_tool_cannot_read_its_workers_capability(executor: Executor) {
    let attacked = Attacked::with_state(executor, &[], &[]);
    let run = attacked.task(
        "for process in /proc/[0-9]*; do { tr '\\0' '\\n' < $process/environ; tr '\\0' ' ' < $process/cmdline; } 2>/dev/null | grep -e 'GANTRY_WORKER_CAP''ABILITY' | sed \"s|^|$process: |\"; done; \
         echo looked'' at $(ls -d /proc/[0-9]* | wc -l) processes",
    );
    let log = attacked.cluster.gantry.log(&run);
    assert_eq!(run["state"], "FINISHED", "{run}\n{log}");
    let looked = crate::harness::line_after(&log, "looked at ").unwrap_or_default();
    assert!(looked.ends_with(" processes") && !looked.starts_with('0'), "{log}");
    assert!(!log.contains("GANTRY_WORKER_CAPABILITY"), "the tool read the capability:\n{log}");
    attacked.assert_unharmed();
}

/// The first file named `name` below `dir`, however deep (as root, who may look).
fn find_named(dir: &std::path::Path, name: &str) -> Option<PathBuf> {
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if entry.file_name() == name {
                return Some(path);
            }
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                pending.push(path);
            }
        }
    }
    None
}
