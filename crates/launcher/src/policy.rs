//! The run initialization policy (`GANTRY_LAUNCHER_RUN_INITIALIZATION_POLICY`): a Rego
//! file evaluated with regorus before each job of a run (a plan once its commit is
//! checked out, an apply before its planned workspace is decrypted), and before anything
//! of the run's code runs. Every message of its `deny` set fails the run there. Policies
//! written for the reference (`package spacelift`, Rego before v1: `deny[msg] { … }`)
//! work as they are, as do Rego v1 ones (`package gantry`, `deny contains msg if { … }`).
//! A policy that does not parse stops the launcher at start.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use gantry_domain::{RunState, Timestamp, Tool};
use gantry_proto::agent::{Assignment, CommitAuthor, Job};
use serde_json::json;

pub const RUN_INITIALIZATION_POLICY: &str = "GANTRY_LAUNCHER_RUN_INITIALIZATION_POLICY";

/// The packages a policy may declare: Gantry's, and the reference's.
const PACKAGES: [&str; 2] = ["data.gantry", "data.spacelift"];

/// Why a policy cannot be used, or could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{RUN_INITIALIZATION_POLICY}={path}: cannot read the policy: {problem}")]
    Read { path: String, problem: String },
    #[error("{RUN_INITIALIZATION_POLICY}={path}: the policy does not parse: {problem}")]
    Parse { path: String, problem: String },
    #[error(
        "{RUN_INITIALIZATION_POLICY}={path}: the policy's package is {package}: expected package gantry (or spacelift, as written for the reference)"
    )]
    Package { path: String, package: String },
    #[error("the run initialization policy failed to evaluate: {0}")]
    Evaluation(String),
}

/// A parsed policy, ready to evaluate.
#[derive(Clone)]
pub struct InitializationPolicy {
    engine: regorus::Engine,
    /// The `deny` rule's path: `data.gantry.deny` or `data.spacelift.deny`.
    deny_rule: String,
}

impl std::fmt::Debug for InitializationPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitializationPolicy").field("deny_rule", &self.deny_rule).finish()
    }
}

impl InitializationPolicy {
    /// Reads and parses the policy at `path`: as Rego v1 first, then as the pre-v1
    /// syntax the reference's policies use.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let shown = path.display().to_string();
        let source = std::fs::read_to_string(path).map_err(|error| PolicyError::Read {
            path: shown.clone(),
            problem: error.to_string(),
        })?;
        Self::parse(&shown, &source)
    }

    fn parse(path: &str, source: &str) -> Result<Self, PolicyError> {
        let mut engine = regorus::Engine::new();
        let package = match engine.add_policy(path.to_owned(), source.to_owned()) {
            Ok(package) => package,
            Err(v1_error) => {
                let mut v0 = regorus::Engine::new();
                v0.set_rego_v0(true);
                match v0.add_policy(path.to_owned(), source.to_owned()) {
                    Ok(package) => {
                        engine = v0;
                        package
                    }
                    // The v1 message is the one a policy written today needs.
                    Err(_) => {
                        return Err(PolicyError::Parse {
                            path: path.to_owned(),
                            problem: v1_error.to_string(),
                        });
                    }
                }
            }
        };
        if !PACKAGES.contains(&package.as_str()) {
            return Err(PolicyError::Package {
                path: path.to_owned(),
                package: package.trim_start_matches("data.").to_owned(),
            });
        }
        Ok(Self { engine, deny_rule: format!("{package}.deny") })
    }

    /// The messages of the policy's `deny` set for this input; none allows the run.
    pub fn denials(&self, input: &serde_json::Value) -> Result<Vec<String>, PolicyError> {
        let mut engine = self.engine.clone();
        let input = regorus::Value::from_json_str(&input.to_string())
            .map_err(|error| PolicyError::Evaluation(error.to_string()))?;
        engine.set_input(input);
        // A query, not a rule lookup: a policy without `deny` allows everything.
        let results = engine
            .eval_query(self.deny_rule.clone(), false)
            .map_err(|error| PolicyError::Evaluation(error.to_string()))?;
        let denied = results
            .result
            .into_iter()
            .flat_map(|result| result.expressions)
            .map(|expression| expression.value)
            .next()
            .unwrap_or(regorus::Value::Undefined);
        let messages = match &denied {
            regorus::Value::Undefined | regorus::Value::Null => Vec::new(),
            regorus::Value::Set(set) => set.iter().map(message).collect(),
            regorus::Value::Array(array) => array.iter().map(message).collect(),
            other => vec![message(other)],
        };
        Ok(messages)
    }
}

/// A deny message as users wrote it: strings bare, anything else as JSON.
fn message(value: &regorus::Value) -> String {
    match value {
        regorus::Value::String(text) => text.to_string(),
        other => other.to_json_str().unwrap_or_else(|_| format!("{other:?}")),
    }
}

/// The run's commit as the launcher knows it when it judges the run: checked out (a
/// plan), or as the run's plan recorded it with the server (an apply).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JudgedCommit {
    pub sha: Option<String>,
    /// The subject: the message's first line.
    pub message: Option<String>,
    pub author: Option<CommitAuthor>,
}

impl JudgedCommit {
    /// What the assignment says of the commit: all an apply has, as it checks nothing out.
    pub fn recorded(assignment: &Assignment) -> Self {
        Self {
            sha: assignment.commit.clone(),
            message: assignment.commit_message.clone(),
            author: assignment.commit_author.clone(),
        }
    }
}

/// How long the tool may take to say its version.
const TOOL_VERSION_TIMEOUT: Duration = Duration::from_secs(20);

/// The version of `tool` the worker of a process executor runs: the executable it finds on
/// `path` (the `PATH` it inherits from the launcher), as its `version -json` says. Asked
/// once per file (by path and modification time), then remembered. `None` when the tool
/// is not there or does not answer: the run's own attempt will say why.
pub async fn local_tool_version(tool: Tool, path: Option<&OsStr>) -> Option<String> {
    static KNOWN: Mutex<Option<HashMap<(PathBuf, SystemTime), String>>> = Mutex::new(None);
    let executable = std::env::split_paths(path?)
        .map(|dir| dir.join(tool.executable()))
        .find(|candidate| candidate.is_file())?;
    let modified = std::fs::metadata(&executable).and_then(|m| m.modified()).ok()?;
    let key = (executable, modified);
    let known =
        |map: &mut Option<HashMap<_, String>>| map.get_or_insert_default().get(&key).cloned();
    if let Some(version) = known(&mut KNOWN.lock().unwrap_or_else(|e| e.into_inner())) {
        return Some(version);
    }
    let asked = tokio::process::Command::new(&key.0)
        .args(["version", "-json"])
        // Not the workspace: the answer would list its providers. No upgrade check.
        .current_dir("/")
        .env_clear()
        .env("CHECKPOINT_DISABLE", "1")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(TOOL_VERSION_TIMEOUT, asked).await.ok()?.ok()?;
    let answer: serde_json::Value = serde_json::from_slice(&output.stdout).ok()?;
    // OpenTofu answers under the same name.
    let version = answer["terraform_version"].as_str()?.to_owned();
    let mut map = KNOWN.lock().unwrap_or_else(|e| e.into_inner());
    map.get_or_insert_default().insert(key, version.clone());
    Some(version)
}

/// The label through which a runner image says the version of `tool` it carries:
/// `dev.gantry.terraform-version`, `dev.gantry.tofu-version`. scripts/runner-image.sh sets
/// it; an image of one's own may.
pub fn tool_version_label(tool: Tool) -> String {
    format!("dev.gantry.{}-version", tool.executable())
}

/// The version of `tool` a runner image carries, as its label says: nothing of the image
/// may run before the policy allows the run, so its author's word is all there is. `None`
/// when the image is not on this machine yet, has no such label, or Docker cannot be
/// reached (the run's own attempt will say why).
pub async fn image_tool_version(tool: Tool, image: &str) -> Option<String> {
    let docker =
        bollard::Docker::connect_with_local_defaults().ok()?.negotiate_version().await.ok()?;
    let inspected =
        tokio::time::timeout(TOOL_VERSION_TIMEOUT, docker.inspect_image(image)).await.ok()?.ok()?;
    let version = inspected.config?.labels?.remove(&tool_version_label(tool))?;
    Some(version).filter(|version| !version.trim().is_empty())
}

/// The input document a policy receives, with the reference's field names (and a few of
/// Gantry's own: `run.job`, `run.commit.hash`, `run.commit.author_email`,
/// `static_run_environment.tool`). Timestamps are nanoseconds since 1970, as the
/// reference's are. What is not known is `null`: the tool's version where the launcher
/// cannot learn it (`tool_version`: a runner image without the label
/// [`tool_version_label`]), and what a server older than these fields does not send.
/// Gantry has no hooks, and no changes exist before a plan: those lists are empty.
pub fn input(
    assignment: &Assignment,
    commit: &JudgedCommit,
    docker_image: Option<&str>,
    tool_version: Option<&str>,
) -> serde_json::Value {
    let stack = &assignment.stack;
    let environment: serde_json::Map<String, serde_json::Value> = stack
        .environment
        .iter()
        .map(|variable| (variable.name.clone(), json!(variable.value.clone().unwrap_or_default())))
        .collect();
    let (job, state) = match assignment.job {
        Job::Plan => ("plan", RunState::Preparing),
        Job::Apply => ("apply", RunState::Applying),
    };
    let author = commit.author.as_ref();
    json!({
        "docker_image": docker_image,
        "worker_version": env!("CARGO_PKG_VERSION"),
        "run": {
            "id": assignment.run_id.to_string(),
            "job": job,
            "state": state.as_str(),
            "created_at": assignment.created_at.map(nanoseconds),
            "updated_at": assignment.updated_at.map(nanoseconds),
            "triggered_by": assignment.triggered_by,
            "commit": {
                "author": author.map(|author| &author.name),
                "author_email": author.map(|author| &author.email),
                "branch": stack.branch,
                "created_at": author.map(|author| nanoseconds(author.authored_at)),
                "hash": commit.sha,
                "message": commit.message,
            },
            "changes": [],
            "user_provided_metadata": [],
        },
        "static_run_environment": {
            "run_type": assignment.run_type.to_string(),
            "run_ulid": assignment.run_id.to_string(),
            "stack_slug": stack.name,
            "stack_labels": stack.labels,
            "commit_branch": stack.branch,
            "commit_sha": commit.sha,
            "project_root": stack.project_root,
            "repository_path": stack.repository,
            "environment_variables": environment,
            "command": assignment.command,
            "before_init": [],
            "before_apply": [],
            "auto_deploy": assignment.autodeploy,
            "tool": stack.tool.as_str(),
            "terraform_version": tool_version,
        },
    })
}

/// A time as the reference's inputs give it; saturated for a commit that claims one past
/// the year 2262.
fn nanoseconds(timestamp: Timestamp) -> i64 {
    timestamp.unix_millis().saturating_mul(1_000_000)
}

#[cfg(test)]
mod tests {
    use gantry_domain::{StackId, WorkerId};
    use gantry_testkit::GitRepository;
    use serde_json::Value;

    use super::*;

    const RUN: &str = "01JD0000000000000000000001";

    /// A tracked run's assignment as a server sends it, every field the policy reads set.
    fn assignment(job: Job) -> Assignment {
        serde_json::from_value(json!({
            "run_id": RUN,
            "worker_id": WorkerId::from_u128(2).to_string(),
            "run_type": "TRACKED",
            "job": job,
            "stack": {
                "id": StackId::from_u128(3).to_string(),
                "name": "network", "repository": "https://git.example/infra.git",
                "branch": "main", "project_root": "network", "tool": "opentofu",
                "runner_image": null,
                "environment": [
                    { "name": "TF_VAR_region", "value": "eu-west-1", "secret": false },
                    { "name": "TOKEN", "value": "s3cret-value", "secret": true },
                ],
                "labels": ["team:net", "prod"],
            },
            "commit": "c0ffee",
            "commit_message": "Open port 443",
            "commit_author": {
                "name": "Ada", "email": "ada@corp.example",
                "authored_at": "2023-11-14T22:13:20Z",
            },
            "triggered_by": "deploy-bot",
            "created_at": "2024-01-02T03:04:05.006Z",
            "updated_at": "2024-01-02T03:04:07Z",
            "autodeploy": true,
        }))
        .unwrap()
    }

    /// The same, as a server older than the policy's fields sends it.
    fn older_assignment() -> Assignment {
        let mut assignment = assignment(Job::Plan);
        assignment.stack.labels.clear();
        assignment.commit = None;
        assignment.commit_message = None;
        assignment.commit_author = None;
        assignment.triggered_by = None;
        assignment.created_at = None;
        assignment.updated_at = None;
        assignment.autodeploy = None;
        assignment
    }

    fn checked_out() -> JudgedCommit {
        JudgedCommit {
            sha: Some("f00d".to_owned()),
            message: Some("Close port 22".to_owned()),
            author: Some(CommitAuthor {
                name: "Grace".to_owned(),
                email: "grace@corp.example".to_owned(),
                authored_at: Timestamp::from_unix_millis(1_700_000_600_000),
            }),
        }
    }

    /// The whole document for `assignment` judged on `commit`, against `expect`.
    fn check(assignment: &Assignment, commit: &JudgedCommit, image: Option<&str>, expect: Value) {
        let actual = input(assignment, commit, image, None);
        assert_eq!(actual, expect, "\n{}", serde_json::to_string_pretty(&actual).unwrap());
    }

    #[test]
    fn the_input_holds_every_field_of_the_run() {
        let environment = json!({ "TF_VAR_region": "eu-west-1", "TOKEN": "s3cret-value" });
        let static_environment = |commit_sha: Value, auto_deploy: Value, labels: Value| {
            json!({
                "run_type": "TRACKED",
                "run_ulid": RUN,
                "stack_slug": "network",
                "stack_labels": labels,
                "commit_branch": "main",
                "commit_sha": commit_sha,
                "project_root": "network",
                "repository_path": "https://git.example/infra.git",
                "environment_variables": environment,
                "command": null,
                "before_init": [],
                "before_apply": [],
                "auto_deploy": auto_deploy,
                "tool": "opentofu",
                "terraform_version": null,
            })
        };
        let labels = json!(["team:net", "prod"]);
        // A plan, judged on the commit its checkout found (the server knew another).
        check(
            &assignment(Job::Plan),
            &checked_out(),
            Some("registry.example/runner:1"),
            json!({
                "docker_image": "registry.example/runner:1",
                "worker_version": env!("CARGO_PKG_VERSION"),
                "run": {
                    "id": RUN,
                    "job": "plan",
                    "state": "PREPARING",
                    "created_at": 1_704_164_645_006_000_000_i64,
                    "updated_at": 1_704_164_647_000_000_000_i64,
                    "triggered_by": "deploy-bot",
                    "commit": {
                        "author": "Grace",
                        "author_email": "grace@corp.example",
                        "branch": "main",
                        "created_at": 1_700_000_600_000_000_000_i64,
                        "hash": "f00d",
                        "message": "Close port 22",
                    },
                    "changes": [],
                    "user_provided_metadata": [],
                },
                "static_run_environment": static_environment(json!("f00d"), json!(true), labels.clone()),
            }),
        );
        // An apply, judged on the commit its plan recorded with the server.
        let apply = assignment(Job::Apply);
        check(
            &apply,
            &JudgedCommit::recorded(&apply),
            None,
            json!({
                "docker_image": null,
                "worker_version": env!("CARGO_PKG_VERSION"),
                "run": {
                    "id": RUN,
                    "job": "apply",
                    "state": "APPLYING",
                    "created_at": 1_704_164_645_006_000_000_i64,
                    "updated_at": 1_704_164_647_000_000_000_i64,
                    "triggered_by": "deploy-bot",
                    "commit": {
                        "author": "Ada",
                        "author_email": "ada@corp.example",
                        "branch": "main",
                        "created_at": 1_700_000_000_000_000_000_i64,
                        "hash": "c0ffee",
                        "message": "Open port 443",
                    },
                    "changes": [],
                    "user_provided_metadata": [],
                },
                "static_run_environment": static_environment(json!("c0ffee"), json!(true), labels),
            }),
        );
        // From a server that sends none of it, before a checkout: unknown, not invented.
        let older = older_assignment();
        check(
            &older,
            &JudgedCommit::recorded(&older),
            None,
            json!({
                "docker_image": null,
                "worker_version": env!("CARGO_PKG_VERSION"),
                "run": {
                    "id": RUN,
                    "job": "plan",
                    "state": "PREPARING",
                    "created_at": null,
                    "updated_at": null,
                    "triggered_by": null,
                    "commit": {
                        "author": null,
                        "author_email": null,
                        "branch": "main",
                        "created_at": null,
                        "hash": null,
                        "message": null,
                    },
                    "changes": [],
                    "user_provided_metadata": [],
                },
                "static_run_environment": static_environment(Value::Null, Value::Null, json!([])),
            }),
        );
    }

    #[test]
    fn a_task_brings_its_command_and_a_commit_from_the_far_future_saturates() {
        let mut task = assignment(Job::Plan);
        task.run_type = gantry_domain::RunType::Task;
        task.command = Some("terraform state list".to_owned());
        let mut commit = checked_out();
        commit.author.as_mut().unwrap().authored_at =
            Timestamp::from_unix_millis(253_402_300_799_000);
        let document = input(&task, &commit, None, None);
        assert_eq!(document["static_run_environment"]["run_type"], "TASK");
        assert_eq!(document["static_run_environment"]["command"], "terraform state list");
        assert_eq!(document["run"]["commit"]["created_at"], i64::MAX);
    }

    /// The reference's syntax, and the run's real commit: `GitRepository` commits as
    /// "Gantry Tests".
    const AUTHOR_POLICY: &str = r#"package spacelift

deny[sprintf("commits by %s <%s> are not run here", [input.run.commit.author, input.run.commit.author_email])] {
  input.run.commit.author == "Gantry Tests"
}
"#;

    #[tokio::test]
    async fn a_policy_on_the_commit_author_refuses_the_runs_of_that_author_only() {
        let policy = InitializationPolicy::parse("p.rego", AUTHOR_POLICY).unwrap();
        let root = tempfile::tempdir().unwrap();
        let repository = GitRepository::create(&root.path().join("repo"), &[("infra/main.tf", "")]);
        // As the supervisor judges a plan: on the commit its checkout found.
        let judged = async |workspace: &str| {
            let (workspace, url) = (root.path().join(workspace), repository.url());
            let checkout = crate::workspace::checkout(&workspace, &url, "main", None);
            let checkout = checkout.await.unwrap();
            let commit = JudgedCommit {
                sha: Some(checkout.sha),
                message: Some(checkout.message),
                author: Some(checkout.author),
            };
            policy.denials(&input(&assignment(Job::Plan), &commit, None, None)).unwrap()
        };
        assert_eq!(
            judged("w1").await,
            ["commits by Gantry Tests <tests@gantry.invalid> are not run here"]
        );

        gantry_testkit::git(
            &repository.path,
            &["commit", "--quiet", "--allow-empty", "--author=Ada <ada@corp.example>", "-m", "x"],
        );
        assert!(judged("w2").await.is_empty(), "another author's commit runs");
    }

    #[test]
    fn an_apply_is_judged_and_a_rule_can_tell_it_from_its_plan() {
        let policy = InitializationPolicy::parse(
            "p.rego",
            r#"package gantry

deny contains msg if {
  input.run.job == "apply"
  "prod" in input.static_run_environment.stack_labels
  not input.static_run_environment.auto_deploy
  msg := sprintf("%s applies only with autodeploy", [input.static_run_environment.stack_slug])
}

deny contains "commits older than 2024 are not applied" if {
  input.run.state == "APPLYING"
  input.run.commit.created_at < time.parse_rfc3339_ns("2024-01-01T00:00:00Z")
}
"#,
        )
        .unwrap();
        let mut apply = assignment(Job::Apply);
        apply.autodeploy = Some(false);
        let denials = policy.denials(&input(&apply, &JudgedCommit::recorded(&apply), None, None));
        assert_eq!(
            denials.unwrap(),
            ["commits older than 2024 are not applied", "network applies only with autodeploy"]
        );
        let mut plan = apply.clone();
        plan.job = Job::Plan;
        let denials = policy.denials(&input(&plan, &JudgedCommit::recorded(&plan), None, None));
        assert!(denials.unwrap().is_empty(), "the plan of the same run is allowed");
    }

    /// What the tool itself says of its version, in its words: `Terraform v1.11.4`.
    fn said_version(executable: &str) -> String {
        let output = std::process::Command::new(executable)
            .arg("version")
            .env("CHECKPOINT_DISABLE", "1")
            .output()
            .unwrap();
        let said = String::from_utf8_lossy(&output.stdout);
        let first = said.lines().next().unwrap_or_default();
        first.split_once(" v").map(|(_, version)| version.trim().to_owned()).unwrap_or_default()
    }

    #[tokio::test]
    async fn a_runner_image_says_its_tool_version_through_its_label() {
        // An image of nothing but the label, as scripts/runner-image.sh sets it.
        let image = format!("gantry-test-label-probe:{}", std::process::id());
        let imported = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "tar -cf - -T /dev/null | docker import -c 'LABEL {}=9.8.7' - {image}",
                tool_version_label(Tool::Terraform)
            ))
            .output()
            .expect("sh runs");
        assert!(
            imported.status.success(),
            "docker import failed (these tests need a Docker daemon): {}",
            String::from_utf8_lossy(&imported.stderr)
        );
        let terraform = image_tool_version(Tool::Terraform, &image).await;
        let tofu = image_tool_version(Tool::OpenTofu, &image).await;
        let absent = image_tool_version(Tool::Terraform, "gantry-test-no-such-image:0").await;
        let _ = std::process::Command::new("docker").args(["rmi", "-f", &image]).output();
        assert_eq!(terraform.as_deref(), Some("9.8.7"));
        assert_eq!(tofu, None, "the image says nothing of tofu");
        assert_eq!(absent, None, "an image not on this machine says nothing");
    }

    #[tokio::test]
    async fn the_tool_version_is_the_one_the_path_finds_and_a_policy_reads_it() {
        let path = std::env::var_os("PATH");
        let version = local_tool_version(Tool::Terraform, path.as_deref()).await;
        let expected = said_version("terraform");
        assert!(!expected.is_empty(), "terraform on PATH says its version");
        assert_eq!(version.as_deref(), Some(expected.as_str()));
        // Remembered: the same answer, from the same file.
        assert_eq!(local_tool_version(Tool::Terraform, path.as_deref()).await, version);
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(local_tool_version(Tool::Terraform, Some(empty.path().as_os_str())).await, None);
        assert_eq!(local_tool_version(Tool::Terraform, None).await, None);

        let policy = InitializationPolicy::parse(
            "p.rego",
            r#"package gantry

deny contains msg if {
  is_string(input.static_run_environment.terraform_version)
  semver.compare(input.static_run_environment.terraform_version, "1.5.0") < 0
  msg := sprintf("terraform %s is older than 1.5", [input.static_run_environment.terraform_version])
}

deny contains "the tool's version is unknown" if {
  input.static_run_environment.terraform_version == null
}
"#,
        )
        .unwrap();
        let plan = assignment(Job::Plan);
        let judged = |version: Option<&str>| {
            let document = input(&plan, &checked_out(), None, version);
            assert_eq!(document["static_run_environment"]["terraform_version"], json!(version));
            policy.denials(&document).unwrap()
        };
        assert_eq!(judged(Some("1.4.7")), ["terraform 1.4.7 is older than 1.5"]);
        assert!(judged(version.as_deref()).is_empty(), "{version:?}");
        assert_eq!(judged(None), ["the tool's version is unknown"]);
    }

    fn input_for(stack: &str) -> serde_json::Value {
        json!({ "static_run_environment": { "stack_slug": stack, "run_type": "TRACKED" } })
    }

    #[test]
    fn a_reference_policy_in_the_old_syntax_denies_with_its_messages() {
        let policy = InitializationPolicy::parse(
            "policy.rego",
            r#"package spacelift

deny["production stacks are deployed from the main pool"] {
  input.static_run_environment.stack_slug == "production"
}

deny["you shall not pass"] { false }
"#,
        )
        .unwrap();
        assert_eq!(
            policy.denials(&input_for("production")).unwrap(),
            ["production stacks are deployed from the main pool"]
        );
        assert!(policy.denials(&input_for("staging")).unwrap().is_empty());
    }

    #[test]
    fn a_rego_v1_policy_of_package_gantry_works_too() {
        let policy = InitializationPolicy::parse(
            "policy.rego",
            r#"package gantry

deny contains msg if {
  input.static_run_environment.run_type == "TRACKED"
  startswith(input.static_run_environment.stack_slug, "frozen-")
  msg := sprintf("stack %s is frozen", [input.static_run_environment.stack_slug])
}
"#,
        )
        .unwrap();
        assert_eq!(policy.denials(&input_for("frozen-db")).unwrap(), ["stack frozen-db is frozen"]);
        assert!(policy.denials(&input_for("app")).unwrap().is_empty());
    }

    #[test]
    fn a_policy_without_deny_allows_everything() {
        let policy = InitializationPolicy::parse("p.rego", "package gantry\n\nallow := true\n");
        assert!(policy.unwrap().denials(&input_for("any")).unwrap().is_empty());
    }

    #[test]
    fn broken_policies_are_refused_with_the_reason() {
        let error = InitializationPolicy::parse("p.rego", "package gantry\n\ndeny contains {\n")
            .unwrap_err();
        assert!(matches!(&error, PolicyError::Parse { path, .. } if path == "p.rego"), "{error}");
        assert!(error.to_string().starts_with(
            "GANTRY_LAUNCHER_RUN_INITIALIZATION_POLICY=p.rego: the policy does not parse: "
        ));
        let error =
            InitializationPolicy::parse("p.rego", "package other\n\nallow := true\n").unwrap_err();
        assert_eq!(
            error,
            PolicyError::Package { path: "p.rego".to_owned(), package: "other".to_owned() }
        );
        let error = InitializationPolicy::load(Path::new("/nonexistent/p.rego")).unwrap_err();
        assert!(matches!(error, PolicyError::Read { .. }), "{error}");
    }
}
