//! The real `gantry-worker` binary against a recording launcher on a real unix socket,
//! with the real `terraform` (built-in resources only, nothing downloaded) and, where
//! Terraform cannot show a behaviour, small shell scripts standing in for the tool.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use gantry_domain::{Phase, RunId, RunType};
use gantry_proto::agent::{Directive, Job, RunReport};
use gantry_proto::api::{ErrorBody, ErrorResponse, Output};
use gantry_proto::local::{
    CAPABILITY_ENV, SOCKET_ENV, WorkerDirective, WorkerJob, WorkerLog, WorkerReport,
};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use tempfile::TempDir;
use tokio::net::UnixListener;
use tokio::process::{Child, Command};

const CAPABILITY: &str = "capability-5e1f0c2a9d";
const SECRET_MARKER: &str = "hunter2-marker-7f3a";
const PLAN_FILE: &str = "plan.tfplan";
const WAIT: Duration = Duration::from_secs(60);

const TRACKED_CONFIG: &str = r#"
variable "secret" {
  type      = string
  sensitive = true
  default   = "hunter2-marker-7f3a"
}

resource "terraform_data" "greeting" {
  input = "hello"
}

output "greeting" {
  value = terraform_data.greeting.output
}

output "secret" {
  value     = var.secret
  sensitive = true
}
"#;

// ---------------------------------------------------------------------------------------
// The recording launcher

#[derive(Debug, Clone)]
enum Event {
    Log(String),
    Report(RunReport),
}

/// What the launcher answers to a report.
#[derive(Debug, Clone, Copy)]
enum Reply {
    Directive(Directive),
    /// Never answers, as a launcher waiting for a confirmation does.
    Hang,
}

type Replies = fn(&RunReport) -> Reply;

fn always_continue(_: &RunReport) -> Reply {
    Reply::Directive(Directive::Continue)
}

struct LauncherState {
    job: WorkerJob,
    events: Mutex<Vec<Event>>,
    replies: Replies,
}

struct Launcher {
    _directory: TempDir,
    socket: PathBuf,
    state: Arc<LauncherState>,
}

impl Launcher {
    async fn start(job: WorkerJob, replies: Replies) -> Self {
        let directory = tempfile::tempdir().unwrap();
        let socket = directory.path().join("worker.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let state = Arc::new(LauncherState { job, events: Mutex::default(), replies });
        let router = Router::new()
            .route("/v1/job", get(serve_job))
            .route("/v1/logs", post(record_log))
            .route("/v1/reports", post(record_report))
            .layer(middleware::from_fn(require_capability))
            .with_state(state.clone());
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        Self { _directory: directory, socket, state }
    }

    fn events(&self) -> Vec<Event> {
        self.state.events.lock().unwrap().clone()
    }

    fn reports(&self) -> Vec<RunReport> {
        self.events()
            .into_iter()
            .filter_map(|event| match event {
                Event::Report(report) => Some(report),
                Event::Log(_) => None,
            })
            .collect()
    }

    /// All log text, ANSI colours removed.
    fn log(&self) -> String {
        self.log_before(|_| false)
    }

    /// The log text delivered before the first report `is_report` accepts.
    fn log_before(&self, is_report: impl Fn(&RunReport) -> bool) -> String {
        let mut text = String::new();
        for event in self.events() {
            match event {
                Event::Log(log) => text.push_str(&log),
                Event::Report(report) if is_report(&report) => break,
                Event::Report(_) => {}
            }
        }
        without_ansi_colours(&text)
    }

    fn worker(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_gantry-worker"));
        command
            .env(SOCKET_ENV, &self.socket)
            .env(CAPABILITY_ENV, CAPABILITY)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Lets `uid` reach the socket: its directory is the test's, closed to others.
    fn open_to(&self, uid: u32) {
        for path in [self._directory.path(), self.socket.as_path()] {
            std::os::unix::fs::chown(path, Some(uid), Some(uid)).unwrap();
        }
    }

    async fn run_worker(&self) -> Finished {
        finish(self.worker().spawn().unwrap()).await
    }

    /// Waits until the log contains `text`.
    async fn wait_for_log(&self, text: &str) {
        tokio::time::timeout(WAIT, async {
            while !self.log().contains(text) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("the log never showed {text:?}: {:?}", self.log()));
    }

    async fn wait_for_report(&self, expected: &RunReport) {
        tokio::time::timeout(WAIT, async {
            while !self.reports().contains(expected) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{expected:?} never came: {:?}", self.reports()));
    }
}

async fn require_capability(request: Request, next: Next) -> Response {
    let expected = format!("Bearer {CAPABILITY}");
    match request.headers().get(header::AUTHORIZATION) {
        Some(value) if value.as_bytes() == expected.as_bytes() => next.run(request).await,
        _ => {
            let error = ErrorBody {
                code: "unauthorized".into(),
                message: "the capability is not valid for this run".into(),
            };
            (StatusCode::UNAUTHORIZED, Json(ErrorResponse { error })).into_response()
        }
    }
}

async fn serve_job(State(state): State<Arc<LauncherState>>) -> Json<WorkerJob> {
    Json(state.job.clone())
}

async fn record_log(
    State(state): State<Arc<LauncherState>>,
    Json(log): Json<WorkerLog>,
) -> StatusCode {
    assert!(!log.text.is_empty(), "the worker posted an empty log");
    state.events.lock().unwrap().push(Event::Log(log.text));
    StatusCode::NO_CONTENT
}

async fn record_report(
    State(state): State<Arc<LauncherState>>,
    Json(report): Json<WorkerReport>,
) -> Json<WorkerDirective> {
    let reply = (state.replies)(&report.report);
    state.events.lock().unwrap().push(Event::Report(report.report));
    match reply {
        Reply::Directive(directive) => Json(WorkerDirective { directive }),
        Reply::Hang => std::future::pending().await,
    }
}

// ---------------------------------------------------------------------------------------
// Helpers

#[derive(Debug)]
struct Finished {
    status: ExitStatus,
    stderr: String,
}

impl Finished {
    fn code(&self) -> Option<i32> {
        self.status.code()
    }
}

async fn finish(child: Child) -> Finished {
    let output = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("the worker did not exit in time")
        .unwrap();
    Finished { status: output.status, stderr: String::from_utf8_lossy(&output.stderr).into() }
}

fn job(job: Job, run_type: RunType, directory: &Path) -> WorkerJob {
    WorkerJob {
        run_id: RunId::generate(),
        run_type,
        job,
        tool_executable: "terraform".into(),
        working_directory: directory.display().to_string(),
        // The machine's own CLI configuration must not matter.
        environment: vec![("TF_CLI_CONFIG_FILE".into(), "/dev/null".into())],
        plan_file: PLAN_FILE.into(),
        command: None,
        collect_sensitive_outputs: false,
        debug: false,
    }
}

fn configuration(main_tf: &str) -> TempDir {
    let directory = tempfile::tempdir().unwrap();
    std::fs::write(directory.path().join("main.tf"), main_tf).unwrap();
    directory
}

/// Writes an executable shell script standing in for the tool.
fn script_tool(directory: &Path, body: &str) -> String {
    let path = directory.join("fake-terraform");
    std::fs::write(&path, format!("#!/bin/sh\n{body}")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path.display().to_string()
}

fn started(phase: Phase) -> RunReport {
    RunReport::PhaseStarted { phase }
}

fn without_ansi_colours(text: &str) -> String {
    let mut plain = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Colour sequences are ESC [ parameters m.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

async fn terraform(directory: &Path, args: &[&str]) {
    let status = Command::new("terraform")
        .args(args)
        .current_dir(directory)
        .env("TF_CLI_CONFIG_FILE", "/dev/null")
        .env("TF_IN_AUTOMATION", "1")
        .env("CHECKPOINT_DISABLE", "1")
        .stdout(Stdio::null())
        .status()
        .await
        .unwrap();
    assert!(status.success(), "terraform {args:?} failed");
}

// ---------------------------------------------------------------------------------------
// Terraform runs

#[tokio::test]
async fn a_tracked_run_with_changes_plans_then_applies_when_told_to() {
    let workspace = configuration(TRACKED_CONFIG);
    let mut job = job(Job::Plan, RunType::Tracked, workspace.path());
    job.debug = true;
    let launcher = Launcher::start(job, |report| match report {
        RunReport::Planned { .. } => Reply::Directive(Directive::Apply),
        _ => Reply::Directive(Directive::Continue),
    })
    .await;

    let finished = launcher.run_worker().await;

    assert_eq!(finished.code(), Some(0), "{finished:?}");
    let outputs = vec![
        Output { name: "greeting".into(), value: Some(json!("hello")), sensitive: false },
        Output { name: "secret".into(), value: None, sensitive: true },
    ];
    assert_eq!(
        launcher.reports(),
        [
            started(Phase::Initializing),
            started(Phase::Planning),
            RunReport::Planned { has_changes: true },
            started(Phase::Applying),
            RunReport::Outputs { outputs },
            RunReport::Applied,
        ]
    );
    let before_planned = launcher.log_before(|report| matches!(report, RunReport::Planned { .. }));
    assert!(before_planned.contains("▶ Initializing"), "{before_planned}");
    assert!(before_planned.contains("▶ Planning"), "{before_planned}");
    assert!(before_planned.contains("Plan: 1 to add"), "{before_planned}");
    assert!(
        before_planned
            .contains("$ terraform plan -input=false -detailed-exitcode -out=plan.tfplan"),
        "{before_planned}"
    );
    let before_applied = launcher.log_before(|report| *report == RunReport::Applied);
    assert!(before_applied.contains("▶ Applying"), "{before_applied}");
    assert!(before_applied.contains("$ terraform apply -input=false plan.tfplan"));
    assert!(before_applied.contains("Apply complete"), "{before_applied}");
    assert!(before_applied.contains("$ terraform output -json"));
    let everything = format!("{:?}", launcher.events());
    assert!(!everything.contains(SECRET_MARKER), "a sensitive value escaped: {everything}");
    assert!(!finished.stderr.contains(SECRET_MARKER));
}

#[tokio::test]
async fn a_proposed_run_stops_after_the_plan_when_told_to_finish() {
    let workspace = configuration(TRACKED_CONFIG);
    let job = job(Job::Plan, RunType::Proposed, workspace.path());
    let launcher = Launcher::start(job, |report| match report {
        RunReport::Planned { .. } => Reply::Directive(Directive::Finish),
        _ => Reply::Directive(Directive::Continue),
    })
    .await;

    let finished = launcher.run_worker().await;

    assert_eq!(finished.code(), Some(0), "{finished:?}");
    assert_eq!(
        launcher.reports(),
        [
            started(Phase::Initializing),
            started(Phase::Planning),
            RunReport::Planned { has_changes: true },
        ]
    );
    assert!(workspace.path().join(PLAN_FILE).is_file());
    assert!(!workspace.path().join("terraform.tfstate").exists(), "nothing may be applied");
    assert!(!launcher.log().contains("Apply complete"));
}

#[tokio::test]
async fn a_tracked_run_without_changes_reports_its_outputs_before_the_plan() {
    let workspace = configuration(
        r#"
locals {
  answer = 42
}

output "answer" {
  value = local.answer
}
"#,
    );
    // Outputs not yet in the state count as changes: apply them once beforehand.
    terraform(workspace.path(), &["init", "-input=false"]).await;
    terraform(workspace.path(), &["apply", "-input=false", "-auto-approve"]).await;
    let job = job(Job::Plan, RunType::Tracked, workspace.path());
    let launcher = Launcher::start(job, always_continue).await;

    let finished = launcher.run_worker().await;

    assert_eq!(finished.code(), Some(0), "{finished:?}");
    let outputs = vec![Output { name: "answer".into(), value: Some(json!(42)), sensitive: false }];
    assert_eq!(
        launcher.reports(),
        [
            started(Phase::Initializing),
            started(Phase::Planning),
            RunReport::Outputs { outputs },
            RunReport::Planned { has_changes: false },
        ]
    );
    assert!(launcher.log().contains("No changes."), "{}", launcher.log());
}

#[tokio::test]
async fn an_apply_job_applies_the_plan_a_retained_workspace_holds() {
    let workspace = configuration(TRACKED_CONFIG);
    let planning =
        Launcher::start(
            job(Job::Plan, RunType::Tracked, workspace.path()),
            |report| match report {
                RunReport::Planned { .. } => Reply::Directive(Directive::UploadWorkspace),
                _ => Reply::Directive(Directive::Continue),
            },
        )
        .await;
    let finished = planning.run_worker().await;
    assert_eq!(finished.code(), Some(0), "{finished:?}");
    assert_eq!(planning.reports().last(), Some(&RunReport::Planned { has_changes: true }));
    assert!(!workspace.path().join("terraform.tfstate").exists());

    let applying =
        Launcher::start(job(Job::Apply, RunType::Tracked, workspace.path()), always_continue).await;
    let finished = applying.run_worker().await;

    assert_eq!(finished.code(), Some(0), "{finished:?}");
    let outputs = vec![
        Output { name: "greeting".into(), value: Some(json!("hello")), sensitive: false },
        Output { name: "secret".into(), value: None, sensitive: true },
    ];
    assert_eq!(
        applying.reports(),
        [started(Phase::Applying), RunReport::Outputs { outputs }, RunReport::Applied]
    );
    assert!(applying.log().contains("Apply complete! Resources: 1 added"), "{}", applying.log());
    let state = std::fs::read_to_string(workspace.path().join("terraform.tfstate")).unwrap();
    assert!(state.contains("terraform_data"));
}

#[tokio::test]
async fn a_task_runs_its_command_in_the_initialized_project_through_the_shell() {
    let workspace = configuration(TRACKED_CONFIG);
    terraform(workspace.path(), &["init", "-input=false"]).await;
    terraform(workspace.path(), &["apply", "-input=false", "-auto-approve"]).await;
    let mut task = job(Job::Plan, RunType::Task, workspace.path());
    task.command = Some("terraform state list | sed 's/^/resource: /'".into());
    let launcher = Launcher::start(task, always_continue).await;

    let finished = launcher.run_worker().await;

    assert_eq!(finished.code(), Some(0), "{finished:?}");
    assert_eq!(
        launcher.reports(),
        [started(Phase::Initializing), started(Phase::Performing), RunReport::Performed]
    );
    let log = launcher.log_before(|report| *report == RunReport::Performed);
    assert!(log.contains("▶ Performing"), "{log}");
    assert!(log.contains("$ terraform state list | sed"), "{log}");
    assert!(log.contains("resource: terraform_data.greeting"), "{log}");
}

#[tokio::test]
async fn a_failing_task_command_fails_the_run_with_its_exit_code() {
    let workspace = configuration(TRACKED_CONFIG);
    let mut task = job(Job::Plan, RunType::Task, workspace.path());
    task.command = Some("echo about to fail; exit 3".into());
    let launcher = Launcher::start(task, always_continue).await;

    let finished = launcher.run_worker().await;

    assert_eq!(finished.code(), Some(1), "{finished:?}");
    assert_eq!(
        launcher.reports(),
        [
            started(Phase::Initializing),
            started(Phase::Performing),
            RunReport::Failed { message: "the command failed with exit code 3".into() },
        ]
    );
    assert!(launcher.log().contains("about to fail"), "{}", launcher.log());
}

#[tokio::test]
async fn invalid_configuration_fails_the_initializing_phase() {
    let workspace = configuration("resource \"terraform_data\" \"broken\" {\n");
    let launcher =
        Launcher::start(job(Job::Plan, RunType::Tracked, workspace.path()), always_continue).await;

    let finished = launcher.run_worker().await;

    assert_eq!(finished.code(), Some(1), "{finished:?}");
    assert_eq!(
        launcher.reports(),
        [
            started(Phase::Initializing),
            RunReport::Failed { message: "terraform init failed with exit code 1".into() },
        ]
    );
    let log = launcher.log_before(|report| matches!(report, RunReport::Failed { .. }));
    assert!(log.contains("Unclosed configuration block"), "{log}");
}

#[tokio::test]
async fn the_job_environment_reaches_terraform() {
    let workspace = configuration(
        r#"
variable "greeting" {
  type = string
}

resource "terraform_data" "echo" {
  input = var.greeting
}

output "echo" {
  value = terraform_data.echo.output
}
"#,
    );
    let mut job = job(Job::Plan, RunType::Tracked, workspace.path());
    job.environment.push(("TF_VAR_greeting".into(), "hello-from-the-stack".into()));
    let launcher = Launcher::start(job, |report| match report {
        RunReport::Planned { .. } => Reply::Directive(Directive::Apply),
        _ => Reply::Directive(Directive::Continue),
    })
    .await;

    let finished = launcher.run_worker().await;

    assert_eq!(finished.code(), Some(0), "{finished:?}");
    let outputs = vec![Output {
        name: "echo".into(),
        value: Some(json!("hello-from-the-stack")),
        sensitive: false,
    }];
    assert!(
        launcher.reports().contains(&RunReport::Outputs { outputs }),
        "{:?}",
        launcher.reports()
    );
    assert!(launcher.log().contains("hello-from-the-stack"));
}

// ---------------------------------------------------------------------------------------
// Process behaviour, with scripts standing in for the tool

#[tokio::test]
async fn the_tool_sees_the_job_environment_but_never_the_capability() {
    let workspace = tempfile::tempdir().unwrap();
    let mut job = job(Job::Plan, RunType::Proposed, workspace.path());
    job.tool_executable = script_tool(workspace.path(), "echo \"pwd=$(pwd)\"\nenv\n");
    job.environment.push(("STACK_SETTING".into(), "from-the-job".into()));
    job.environment.push(("TF_INPUT".into(), "1".into()));
    let launcher = Launcher::start(job, always_continue).await;

    let finished = launcher.run_worker().await;

    assert_eq!(finished.code(), Some(0), "{finished:?}");
    assert_eq!(launcher.reports().last(), Some(&RunReport::Planned { has_changes: false }));
    let log = launcher.log();
    assert!(log.contains(&format!("pwd={}", workspace.path().display())), "{log}");
    for expected in
        ["STACK_SETTING=from-the-job", "TF_IN_AUTOMATION=1", "TF_INPUT=0", "CHECKPOINT_DISABLE=1"]
    {
        assert!(log.lines().any(|line| line == expected), "{expected} missing: {log}");
    }
    assert!(!log.contains(CAPABILITY), "the tool saw the capability: {log}");
    assert!(!log.contains(CAPABILITY_ENV) && !log.contains(SOCKET_ENV), "{log}");
}

/// The user a test runs the worker as to check what a process of the worker's own user
/// can read: under root, `nobody` (root may read any process's memory and environment,
/// so running as root would prove nothing); otherwise the test's own user.
fn unprivileged_user() -> Option<u32> {
    nix::unistd::geteuid().is_root().then_some(65534)
}

#[tokio::test]
async fn the_capability_is_not_in_the_environment_block_the_tool_can_read() {
    let workspace = tempfile::tempdir().unwrap();
    let mut job = job(Job::Plan, RunType::Proposed, workspace.path());
    job.tool_executable = script_tool(
        workspace.path(),
        r#"[ "$1" = init ] || exit 0
echo "parent: $(tr '\0' ' ' < /proc/$PPID/cmdline)"
cat /proc/$PPID/environ; status=$?; echo; echo "read: $status"
env
"#,
    );
    let launcher = Launcher::start(job, always_continue).await;

    let finished = launcher.run_worker().await;

    assert_eq!(finished.code(), Some(0), "{finished:?}");
    let log = launcher.log();
    assert!(log.contains(&format!("parent: {}", env!("CARGO_BIN_EXE_gantry-worker"))), "{log}");
    assert!(!log.contains(CAPABILITY), "the tool found the capability: {log}");
    if nix::unistd::geteuid().is_root() {
        // Root reads a non-dumpable process's environment too: what it reads holds the
        // worker's other variables, and no capability, since the worker re-executed
        // itself without it.
        assert!(log.contains("read: 0") && log.contains(SOCKET_ENV), "{log}");
    } else {
        assert!(log.contains("Permission denied"), "{log}");
    }
}

#[tokio::test]
async fn a_tool_of_the_workers_own_user_can_read_neither_its_environment_nor_its_memory() {
    let workspace = tempfile::tempdir().unwrap();
    let mut job = job(Job::Plan, RunType::Proposed, workspace.path());
    job.tool_executable = script_tool(
        workspace.path(),
        r#"[ "$1" = init ] || exit 0
echo "uids: $(id -u) $(awk '/^Uid:/ {print $2}' /proc/$PPID/status)"
for file in environ mem; do
  if (exec 3< /proc/$PPID/$file) 2>/dev/null; then echo "$file: readable"; else echo "$file: refused"; fi
done
"#,
    );
    let launcher = Launcher::start(job, always_continue).await;
    let mut worker = launcher.worker();
    if let Some(uid) = unprivileged_user() {
        launcher.open_to(uid);
        std::os::unix::fs::chown(workspace.path(), Some(uid), Some(uid)).unwrap();
        worker.uid(uid).gid(uid);
    }

    let finished = finish(worker.spawn().unwrap()).await;

    assert_eq!(finished.code(), Some(0), "{finished:?}");
    let log = launcher.log();
    let uids = log.lines().find_map(|line| line.strip_prefix("uids: ")).unwrap();
    let (tool, worker) = uids.split_once(' ').unwrap();
    assert_eq!(tool, worker, "the tool runs as the worker's user");
    assert!(log.contains("environ: refused") && log.contains("mem: refused"), "{log}");
    assert!(!log.contains("readable"), "{log}");
    assert!(!log.contains(CAPABILITY), "{log}");
}

#[tokio::test]
async fn output_is_streamed_in_the_order_printed_and_never_splits_a_character() {
    let workspace = tempfile::tempdir().unwrap();
    let go = workspace.path().join("go");
    let mut job = job(Job::Plan, RunType::Proposed, workspace.path());
    job.environment.push(("GO_FILE".into(), go.display().to_string()));
    // Waits for the test to see "ready" in the launcher's log: only streaming gets there.
    job.tool_executable = script_tool(
        workspace.path(),
        r#"[ "$1" = init ] || exit 0
echo out-1; echo err-1 >&2; echo out-2
printf 'split \342\226'; sleep 0.3; printf '\266 done\n'
echo ready
i=0
while [ ! -e "$GO_FILE" ]; do
  i=$((i + 1)); [ "$i" -gt 200 ] && { echo never released; exit 3; }
  sleep 0.1
done
echo released
"#,
    );
    let launcher = Launcher::start(job, always_continue).await;
    let worker = launcher.worker().spawn().unwrap();

    launcher.wait_for_log("ready\n").await;
    std::fs::write(&go, "").unwrap();
    let finished = finish(worker).await;

    assert_eq!(finished.code(), Some(0), "{finished:?}");
    let log = launcher.log();
    assert!(log.contains("out-1\nerr-1\nout-2\nsplit ▶ done\nready\nreleased\n"), "{log}");
    assert!(!log.contains(char::REPLACEMENT_CHARACTER), "{log}");
    let n_posts = launcher.events().iter().filter(|event| matches!(event, Event::Log(_))).count();
    assert!(n_posts >= 2, "the output came in one piece, so it was not streamed");
}

#[tokio::test]
async fn a_tool_that_cannot_start_fails_the_run_naming_the_executable() {
    let workspace = tempfile::tempdir().unwrap();
    let mut job = job(Job::Plan, RunType::Tracked, workspace.path());
    job.tool_executable = "gantry-no-such-terraform".into();
    let launcher = Launcher::start(job, always_continue).await;

    let finished = launcher.run_worker().await;

    assert_eq!(finished.code(), Some(1), "{finished:?}");
    let reports = launcher.reports();
    assert_eq!(reports.len(), 2, "{reports:?}");
    let RunReport::Failed { message } = &reports[1] else { panic!("{reports:?}") };
    assert!(message.starts_with("cannot start gantry-no-such-terraform: "), "{message}");
}

#[tokio::test]
async fn a_directive_to_finish_mid_job_stops_before_the_next_phase() {
    let workspace = tempfile::tempdir().unwrap();
    let mut job = job(Job::Plan, RunType::Tracked, workspace.path());
    job.tool_executable = script_tool(workspace.path(), "echo the tool ran\n");
    let launcher = Launcher::start(job, |_| Reply::Directive(Directive::Finish)).await;

    let finished = launcher.run_worker().await;

    assert_eq!(finished.code(), Some(0), "{finished:?}");
    assert_eq!(launcher.reports(), [started(Phase::Initializing)]);
    assert!(!launcher.log().contains("the tool ran"));
}

// ---------------------------------------------------------------------------------------
// Configuration and the launcher

#[tokio::test]
async fn a_missing_variable_is_a_usage_error_naming_it() {
    let launcher =
        Launcher::start(job(Job::Plan, RunType::Tracked, Path::new("/")), always_continue).await;
    for variable in [SOCKET_ENV, CAPABILITY_ENV] {
        let mut worker = launcher.worker();
        worker.env_remove(variable);
        let finished = finish(worker.spawn().unwrap()).await;

        assert_eq!(finished.code(), Some(64), "{finished:?}");
        assert!(finished.stderr.contains(variable), "{finished:?}");
        assert!(!finished.stderr.contains(CAPABILITY));
        assert_eq!(finished.stderr.lines().count(), 1, "{finished:?}");
    }
    assert!(launcher.events().is_empty());
}

#[tokio::test]
async fn a_wrong_capability_ends_the_worker_with_the_launchers_message() {
    let launcher =
        Launcher::start(job(Job::Plan, RunType::Tracked, Path::new("/")), always_continue).await;
    let mut worker = launcher.worker();
    worker.env(CAPABILITY_ENV, "not-the-capability");

    let finished = finish(worker.spawn().unwrap()).await;

    assert_eq!(finished.code(), Some(70), "{finished:?}");
    assert!(finished.stderr.contains("the capability is not valid for this run"), "{finished:?}");
    assert!(!finished.stderr.contains("not-the-capability"), "{finished:?}");
    assert!(launcher.events().is_empty());
}

#[tokio::test]
async fn an_unreachable_launcher_ends_the_worker() {
    let directory = tempfile::tempdir().unwrap();
    let socket = directory.path().join("nobody-listens.sock");
    let worker = Command::new(env!("CARGO_BIN_EXE_gantry-worker"))
        .env(SOCKET_ENV, &socket)
        .env(CAPABILITY_ENV, CAPABILITY)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    let finished = finish(worker).await;

    assert_eq!(finished.code(), Some(70), "{finished:?}");
    assert!(finished.stderr.contains("cannot connect to the launcher"), "{finished:?}");
    assert!(finished.stderr.contains(&socket.display().to_string()), "{finished:?}");
}

// ---------------------------------------------------------------------------------------
// Termination

const WAITS_FOR_A_SIGNAL: &str = r#"trap 'echo interrupted; exit 130' INT
echo waiting for a signal
sleep 30
echo not interrupted
"#;

fn terminate(worker: &Child) {
    send(worker, Signal::SIGTERM);
}

fn send(worker: &Child, signal: Signal) {
    let pid = Pid::from_raw(i32::try_from(worker.id().unwrap()).unwrap());
    kill(pid, signal).unwrap();
}

#[tokio::test]
async fn sigterm_stops_the_tool_gracefully_and_reports_nothing() {
    let workspace = tempfile::tempdir().unwrap();
    let mut job = job(Job::Plan, RunType::Tracked, workspace.path());
    job.tool_executable = script_tool(workspace.path(), WAITS_FOR_A_SIGNAL);
    let launcher = Launcher::start(job, always_continue).await;
    let worker = launcher.worker().spawn().unwrap();
    launcher.wait_for_log("waiting for a signal").await;

    terminate(&worker);
    let finished = finish(worker).await;

    assert_eq!(finished.code(), Some(143), "{finished:?}");
    let log = launcher.log();
    assert!(log.contains("waiting for a signal\ninterrupted\n"), "{log}");
    assert!(!log.contains("not interrupted"), "{log}");
    assert_eq!(launcher.reports(), [started(Phase::Initializing)]);
}

#[tokio::test]
async fn a_second_sigterm_kills_a_tool_that_ignores_the_first() {
    let workspace = tempfile::tempdir().unwrap();
    let mut job = job(Job::Plan, RunType::Tracked, workspace.path());
    job.tool_executable = script_tool(
        workspace.path(),
        "trap 'echo ignoring the interrupt' INT\necho waiting for a signal\n\
         while true; do sleep 0.1; done\n",
    );
    let launcher = Launcher::start(job, always_continue).await;
    let worker = launcher.worker().spawn().unwrap();
    launcher.wait_for_log("waiting for a signal").await;

    terminate(&worker);
    launcher.wait_for_log("ignoring the interrupt").await;
    terminate(&worker);
    let finished = finish(worker).await;

    assert_eq!(finished.code(), Some(143), "{finished:?}");
    assert_eq!(launcher.reports(), [started(Phase::Initializing)]);
}

#[tokio::test]
async fn a_launcher_death_signalled_twice_still_lets_the_tool_stop_gracefully() {
    // The kernel's SIGHUP for a dead launcher comes once per launcher thread the worker
    // is passed through: however often, it is one request to stop, never a kill, so
    // terraform can finish writing its state.
    let workspace = tempfile::tempdir().unwrap();
    let mut job = job(Job::Plan, RunType::Tracked, workspace.path());
    job.tool_executable = script_tool(
        workspace.path(),
        "trap 'echo interrupted; sleep 0.5; echo state written; exit 1' INT\n\
         echo waiting for a signal\nwhile true; do sleep 0.1; done\n",
    );
    let launcher = Launcher::start(job, always_continue).await;
    let worker = launcher.worker().spawn().unwrap();
    launcher.wait_for_log("waiting for a signal").await;

    for _ in 0..3 {
        send(&worker, Signal::SIGHUP);
    }
    let finished = finish(worker).await;

    assert_eq!(finished.code(), Some(143), "{finished:?}");
    let log = launcher.log();
    assert!(log.contains("interrupted\nstate written\n"), "{log}");
}

#[tokio::test]
async fn sigterm_while_waiting_for_the_launcher_exits_at_once() {
    let workspace = configuration(TRACKED_CONFIG);
    let job = job(Job::Plan, RunType::Tracked, workspace.path());
    let launcher = Launcher::start(job, |report| match report {
        RunReport::Planned { .. } => Reply::Hang,
        _ => Reply::Directive(Directive::Continue),
    })
    .await;
    let worker = launcher.worker().spawn().unwrap();
    launcher.wait_for_report(&RunReport::Planned { has_changes: true }).await;

    terminate(&worker);
    let finished = finish(worker).await;

    assert_eq!(finished.code(), Some(143), "{finished:?}");
    assert_eq!(launcher.reports().last(), Some(&RunReport::Planned { has_changes: true }));
}
