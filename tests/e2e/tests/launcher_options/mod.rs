//! End-to-end tests of launcher options: variables passed from the launcher's
//! environment, and values masked in run logs.

use base64::Engine;
use gantry_testkit::GitRepository;

use serde_json::Value;

use crate::harness::{Cluster, Launcher, PoolAccess};

/// Plans show both variables among the outputs to add.
const VARIABLES_CONFIG: &str = r#"
terraform {
  backend "local" {}
}

variable "reader" {
  default = "absent"
}

variable "writer" {
  default = "absent"
}

output "reader" {
  value = var.reader
}

output "writer" {
  value = var.writer
}
"#;

const SECRET: &str = "s3cret-Marker-4711";

#[test]
fn passed_variables_reach_only_their_runs_and_masked_values_never_reach_the_server() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let pool = cluster.private_pool(work.path(), "p");
    let launcher = Launcher::of(
        &cluster,
        &pool,
        &[
            ("GANTRY_WHITELIST_ENVS", "ro_TF_VAR_reader, wo_TF_VAR_writer"),
            ("TF_VAR_reader", "seen-by-proposed-runs"),
            ("TF_VAR_writer", "seen-by-write-runs"),
            ("GANTRY_MASK_ENVS", "DEPLOY_TOKEN"),
            ("DEPLOY_TOKEN", SECRET),
            ("GANTRY_RUN_LOGS_ON_STANDARD_OUTPUT_ENABLED", "true"),
        ],
    );
    let repository =
        GitRepository::create(&work.path().join("repo"), &[("infra/main.tf", VARIABLES_CONFIG)]);
    cluster.gantry.create_stack("app", &repository, "p", &work.path().join("state.tfstate"), &[]);

    // A proposed run reads: it gets the ro_ variable, not the wo_ one.
    let proposed = cluster.gantry.trigger("app", &["--proposed"]);
    let proposed = cluster.gantry.wait_for_state(&proposed, &["FINISHED", "FAILED"]);
    assert_eq!(proposed["state"], "FINISHED", "{proposed}");
    let log = cluster.gantry.log(&proposed);
    assert!(log.contains(r#"reader = "seen-by-proposed-runs""#), "{log}");
    assert!(log.contains(r#"writer = "absent""#), "{log}");

    // A task writes: the wo_ variable, not the ro_ one; the masked one in every form,
    // printed whole, in base64, and in two halves a moment apart.
    let command = r#"echo "reader=${TF_VAR_reader:-absent} writer=${TF_VAR_writer:-absent}"
echo "token=$DEPLOY_TOKEN"
printf %s "$DEPLOY_TOKEN" | base64
printf 'halves=%s' "$(printf %s "$DEPLOY_TOKEN" | head -c 7)"
sleep 0.5
printf '%s\n' "$(printf %s "$DEPLOY_TOKEN" | tail -c +8)"
echo done"#;
    let task = cluster.gantry.json(&["run", "task", "app", "--", command]);
    let task = cluster.gantry.wait_for_state(&task, &["FINISHED", "FAILED"]);
    assert_eq!(task["state"], "FINISHED", "{task}");
    let log = cluster.gantry.log(&task);
    assert!(log.contains("reader=absent writer=seen-by-write-runs"), "{log}");
    assert!(log.contains("token=***"), "{log}");
    assert!(log.contains("halves=***"), "{log}");
    assert!(log.contains("done"), "{log}");
    let encoded = base64::engine::general_purpose::STANDARD.encode(SECRET);
    for form in [SECRET, encoded.as_str(), &SECRET[..7], &SECRET[7..]] {
        assert!(!log.contains(form), "{form:?} in the log:\n{log}");
    }
    cluster.server.assert_nothing_contains(SECRET);

    // The same log, masked, as JSON lines on the launcher's standard output.
    let printed: Vec<Value> = launcher
        .stdout()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
        .filter(|chunk: &Value| chunk["run_id"] == task["id"])
        .collect();
    let text: String = printed.iter().map(|chunk| chunk["text"].as_str().unwrap()).collect();
    assert!(text.contains("token=***") && text.contains("done"), "{text}");
    assert!(!text.contains(SECRET), "{text}");
    let seqs: Vec<u64> = printed.iter().map(|chunk| chunk["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|pair| pair[0] < pair[1]), "in order: {seqs:?}");
}

/// A stack secret with a character of each kind some encoding writes differently: spaces,
/// quotes, a backslash, HTML-sensitive characters, a non-ASCII one, base64's `+` and `/`.
const STACK_SECRET: &str = r#"p@ss "w0rd" \ <&> é+/~ 9931"#;
/// A `GANTRY_MASK_ENVS` value, as varied.
const LAUNCHER_SECRET: &str = "t0ken 'x' <&> ü+/~ 4242";

/// Outputs the secret variable in clear and encoded by Terraform itself.
const OUTPUTS_CONFIG: &str = r#"
terraform {
  backend "local" {}
}

variable "token" {
  type = string
}

output "token" {
  value = var.token
}

output "token_b64" {
  value = base64encode(var.token)
}

output "token_json" {
  value = jsonencode(var.token)
}

output "token_url" {
  value = urlencode(var.token)
}
"#;

/// A shell function for task commands: `encoded NAME` prints the value of variable NAME in
/// every encoding the launcher masks, one labelled line each (wrapped base64 on several
/// lines), then split between two writes a moment apart.
pub(crate) const PRINT_ENCODED: &str = r#"encoded() {
  v=$(printenv "$1")
  printf '%s literal=%s\n' "$1" "$v"
  for p in '' x xy; do
    printf '%s base64%s=%s\n' "$1" "$p" "$(printf '%s%s' "$p" "$v" | base64 -w0)"
    printf '%s base64url%s=%s\n' "$1" "$p" "$(printf '%s%s' "$p" "$v" | base64 -w0 | tr '+/' '-_' | tr -d =)"
  done
  printf '%s wrapped=\n%s\n' "$1" "$(printf %s "$v" | base64 -w 12)"
  printf '%s json={"v":"%s"}\n' "$1" "$(printf %s "$v" | sed -e 's/\\/\\\\/g' -e 's/"/\\"/g')"
  printf '%s json-ascii="%s"\n' "$1" "$(printf %s "$v" | iconv -f UTF-8 -t UTF-16BE | od -An -v -tx1 | tr -d ' \n' | sed 's/\(....\)/\\u\1/g')"
  printf '%s url=%s\n' "$1" "$(printf %s "$v" | od -An -v -tx1 | tr -d ' \n' | sed 's/\(..\)/%\1/g')"
  printf '%s url-plus=%s\n' "$1" "$(printf %s "$v" | od -An -v -tx1 | tr -d ' \n' | tr a-f A-F | sed -e 's/\(..\)/%\1/g' -e 's/%20/+/g')"
  printf '%s split=%s' "$1" "$(printf %s "$v" | head -c 5)"
  sleep 0.3
  printf '%s\n' "$(printf %s "$v" | tail -c +6)"
}
"#;

/// The labels `encoded` prints before each form.
pub(crate) const ENCODED_LABELS: [&str; 13] = [
    "literal=",
    "base64=",
    "base64url=",
    "base64x=",
    "base64urlx=",
    "base64xy=",
    "base64urlxy=",
    "wrapped=",
    "json=",
    "json-ascii=",
    "url=",
    "url-plus=",
    "split=",
];

/// What of `secret` must appear nowhere once masked: each encoded form `encoded` prints,
/// the characters only the value decides at each base64 alignment, the wrapped lines,
/// and the half printed last.
pub(crate) fn forms_of(secret: &str) -> Vec<String> {
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};
    let mut forms = vec![secret.to_owned(), secret[5..].to_owned()];
    for engine in [&STANDARD, &URL_SAFE] {
        for prefix in ["", "x", "xy"] {
            let encoded = engine.encode(format!("{prefix}{secret}"));
            // Skip the characters the prefix influenced, and the possibly partial tail.
            let start = (prefix.len() * 4).div_ceil(3) + 1;
            forms.push(encoded[start..encoded.len() - 4].to_owned());
        }
    }
    let encoded = STANDARD.encode(secret);
    let lines = encoded.as_bytes().chunks(12).map(|line| String::from_utf8(line.to_vec()).unwrap());
    forms.extend(lines.filter(|line| line.len() == 12));
    let json = serde_json::to_string(secret).unwrap();
    forms.push(json[1..json.len() - 1].to_owned());
    forms.push(secret.encode_utf16().map(|unit| format!("\\u{unit:04x}")).collect());
    forms.push(secret.bytes().map(|byte| format!("%{byte:02x}")).collect());
    forms.push(
        secret
            .bytes()
            .map(|byte| if byte == b' ' { "+".to_owned() } else { format!("%{byte:02X}") })
            .collect(),
    );
    forms
}

/// Asserts that `log` shows each of `variable`'s forms masked and none of them in clear.
pub(crate) fn assert_masked_in_every_form(log: &str, variable: &str, secret: &str) {
    for label in ENCODED_LABELS {
        let line = log
            .lines()
            .skip_while(|line| !line.starts_with(&format!("{variable} {label}")))
            .take(2)
            .collect::<Vec<_>>()
            .join("\n");
        assert!(line.contains("***"), "{variable} {label} is not masked:\n{log}");
    }
    for form in forms_of(secret) {
        assert!(!log.contains(&form), "{variable}: {form:?} in the log:\n{log}");
    }
}

#[test]
fn secrets_are_masked_in_every_encoding_in_logs_and_outputs() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let pool = cluster.private_pool(work.path(), "p");
    let _launcher = Launcher::of(
        &cluster,
        &pool,
        &[("GANTRY_MASK_ENVS", "API_TOKEN"), ("API_TOKEN", LAUNCHER_SECRET)],
    );
    let repository =
        GitRepository::create(&work.path().join("repo"), &[("infra/main.tf", OUTPUTS_CONFIG)]);
    let secret = format!("TF_VAR_token={STACK_SECRET}");
    let state = work.path().join("state.tfstate");
    let flags = ["--autodeploy", "--secret-env", &secret];
    cluster.gantry.create_stack("app", &repository, "p", &state, &flags);

    // Terraform prints the outputs, and reports them: masked in both.
    let run = cluster.gantry.trigger("app", &[]);
    let run = cluster.gantry.wait_for_state(&run, &["FINISHED", "FAILED"]);
    let log = cluster.gantry.log(&run);
    assert_eq!(run["state"], "FINISHED", "{run}\n{log}");
    for form in forms_of(STACK_SECRET) {
        assert!(!log.contains(&form), "{form:?} in the log:\n{log}");
    }
    let outputs: Vec<(String, Value)> = run["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|output| (output["name"].as_str().unwrap().to_owned(), output["value"].clone()))
        .collect();
    let expected =
        [("token", "***"), ("token_b64", "***"), ("token_json", "\"***\""), ("token_url", "***")];
    let expected: Vec<(String, Value)> =
        expected.iter().map(|(name, value)| (name.to_string(), Value::from(*value))).collect();
    assert_eq!(outputs, expected, "{run}");

    // A task prints both secrets in every encoding.
    let command = format!("{PRINT_ENCODED}encoded TF_VAR_token\nencoded API_TOKEN\necho done");
    let task = cluster.gantry.json(&["run", "task", "app", "--", &command]);
    let task = cluster.gantry.wait_for_state(&task, &["FINISHED", "FAILED"]);
    let log = cluster.gantry.log(&task);
    assert_eq!(task["state"], "FINISHED", "{task}\n{log}");
    assert!(log.contains("done"), "{log}");
    assert_masked_in_every_form(&log, "TF_VAR_token", STACK_SECRET);
    assert_masked_in_every_form(&log, "API_TOKEN", LAUNCHER_SECRET);
    // The server keeps the stack's secret (to hand it to runs), but has never seen the
    // launcher's.
    for form in forms_of(LAUNCHER_SECRET) {
        cluster.server.assert_nothing_contains(&form);
    }
}

#[test]
fn secrets_too_short_to_mask_are_refused_where_they_are_set() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let pool = cluster.private_pool(work.path(), "p");
    let said = stops_at_start(&cluster, &pool, &[("GANTRY_MASK_ENVS", "PIN"), ("PIN", "x9z")]);
    assert!(
        said.contains("GANTRY_MASK_ENVS: the value of PIN is shorter than 4 characters"),
        "{said}"
    );
    assert!(!said.contains("x9z"), "the value is not shown: {said}");

    let repository =
        GitRepository::create(&work.path().join("repo"), &[("infra/main.tf", VARIABLES_CONFIG)]);
    let url = repository.url();
    let refused = cluster.gantry.fails(&[
        "stack",
        "create",
        "--name",
        "app",
        "--repository",
        &url,
        "--pool",
        "p",
        "--secret-env",
        "TF_VAR_pin=x9z",
    ]);
    assert!(refused.contains("the value of TF_VAR_pin is shorter than 4 characters"), "{refused}");
    assert!(!refused.contains("x9z"), "the value is not shown: {refused}");
}

#[test]
fn a_launcher_refuses_a_variable_list_naming_an_unset_variable() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let pool = cluster.private_pool(work.path(), "p");
    let said = stops_at_start(&cluster, &pool, &[("GANTRY_WHITELIST_ENVS", "wo_NOT_SET_ANYWHERE")]);
    assert!(
        said.contains(
            "GANTRY_WHITELIST_ENVS: names NOT_SET_ANYWHERE, which is not set in the launcher's environment"
        ),
        "{said}"
    );
}

/// Starts a launcher of `pool` with `env`, which must stop it at start; what it said.
fn stops_at_start(cluster: &Cluster, pool: &PoolAccess, env: &[(&str, &str)]) -> String {
    let exited = Launcher::run_to_exit_with(cluster, &pool.token, &pool.key, env);
    assert!(matches!(exited.status, Some(code) if code != 0), "{:?}", exited.status);
    exited.stderr
}

/// Written for the reference: its package and the syntax before Rego v1. Two rules give
/// the whole input as their message, for the test to read back: a plan of the stack
/// `inspect`, and an apply of a stack labelled `guarded`.
const POLICY: &str = r#"package spacelift

deny[sprintf("stack %s is frozen: runs are not started", [input.static_run_environment.stack_slug])] {
  startswith(input.static_run_environment.stack_slug, "frozen")
}

deny[sprintf("commits by %s <%s> are not run here", [input.run.commit.author, input.run.commit.author_email])] {
  input.run.commit.author == "Mallory"
}

deny[json.marshal(input)] {
  input.static_run_environment.stack_slug == "inspect"
}

deny[sprintf("stack legacy stays below terraform 1.5; this pool runs %s", [input.static_run_environment.terraform_version])] {
  input.static_run_environment.stack_slug == "legacy"
  semver.compare(input.static_run_environment.terraform_version, "1.5.0") >= 0
}

deny[json.marshal(input)] {
  input.run.job == "apply"
  input.static_run_environment.stack_labels[_] == "guarded"
}
"#;

const DENIED: &str = "The run initialization policy denied the run: ";

/// The input a policy rule gave back as its message, from the run's log.
fn judged_input(log: &str) -> Value {
    let line = log.lines().find_map(|line| line.strip_prefix(DENIED)).unwrap_or_else(|| {
        panic!("the log has no denial:\n{log}");
    });
    serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"))
}

/// The run failed at its policy, its job's worker never started.
fn assert_denied(gantry: &crate::harness::Gantry, run: &Value, message: &str) -> String {
    let run = gantry.wait_for_state(run, &["FINISHED", "FAILED"]);
    assert_eq!(run["state"], "FAILED", "{run}");
    assert!(run["failure"].as_str().unwrap().contains(message), "{run}");
    // Failed straight from the state its launcher acknowledged: no worker reported a phase.
    let states = crate::harness::states(&run);
    let before_failure = states.iter().rev().nth(1).map(String::as_str);
    assert!(matches!(before_failure, Some("PREPARING" | "APPLYING")), "the worker started: {run}");
    let log = gantry.log(&run);
    assert!(log.contains(&format!("{DENIED}{message}")), "{log}");
    log
}

/// The version of the terraform on PATH, the one the process executor's runs use.
fn terraform_version() -> String {
    let output = std::process::Command::new("terraform")
        .args(["version", "-json"])
        .env("CHECKPOINT_DISABLE", "1")
        .output()
        .expect("terraform runs");
    let answer: Value = serde_json::from_slice(&output.stdout).expect("terraform answers JSON");
    answer["terraform_version"].as_str().expect("terraform says its version").to_owned()
}

#[test]
fn the_initialization_policy_judges_every_job_on_the_whole_run() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let policy = work.path().join("policy.rego");
    std::fs::write(&policy, POLICY).unwrap();
    let pool = cluster.private_pool(work.path(), "p");
    let _launcher = Launcher::of(
        &cluster,
        &pool,
        &[("GANTRY_LAUNCHER_RUN_INITIALIZATION_POLICY", policy.to_str().unwrap())],
    );
    let gantry = &cluster.gantry;
    let repository = GitRepository::create(
        &work.path().join("repo"),
        &[("infra/main.tf", gantry_testkit::SIMPLE_CONFIG)],
    );
    let contributed = GitRepository::create(
        &work.path().join("contrib"),
        &[("infra/main.tf", gantry_testkit::SIMPLE_CONFIG)],
    );
    gantry_testkit::git(
        &contributed.path,
        &[
            "commit",
            "--quiet",
            "--allow-empty",
            "--author=Mallory <mallory@corp.example>",
            "--date=@1700000000 +0000",
            "-m",
            "Add a backdoor",
        ],
    );
    let state = |name: &str| work.path().join(format!("{name}.tfstate"));
    for name in ["frozen-db", "app", "inspect", "legacy"] {
        gantry.create_stack(name, &repository, "p", &state(name), &["--label", "team:net"]);
    }
    gantry.create_stack("contrib", &contributed, "p", &state("contrib"), &[]);
    gantry.create_stack("vault", &repository, "p", &state("vault"), &["--label", "guarded"]);

    // On the stack's name, as before any commit is known.
    let denied = gantry.trigger("frozen-db", &["--proposed"]);
    assert_denied(gantry, &denied, "stack frozen-db is frozen: runs are not started");

    // On the commit's author, which only the checkout knows.
    let denied = gantry.trigger("contrib", &["--proposed"]);
    let log = assert_denied(
        gantry,
        &denied,
        "commits by Mallory <mallory@corp.example> are not run here",
    );
    assert!(log.contains("Checked out"), "{log}");
    // On the version of the tool the run would use.
    let denied = gantry.trigger("legacy", &["--proposed"]);
    let version = terraform_version();
    let message = format!("stack legacy stays below terraform 1.5; this pool runs {version}");
    assert_denied(gantry, &denied, &message);
    let allowed = gantry.trigger("app", &["--proposed"]);
    let allowed = gantry.wait_for_state(&allowed, &["FINISHED", "FAILED"]);
    assert_eq!(allowed["state"], "FINISHED", "{allowed}");

    // A plan sees the whole run: its commit from the checkout, the rest from the server.
    let inspected = gantry.trigger("inspect", &["--proposed"]);
    let log = assert_denied(gantry, &inspected, "{");
    let input = judged_input(&log);
    let head = repository.head();
    let run = &input["run"];
    assert_eq!(
        (&run["id"], &run["job"], &run["state"]),
        (&inspected["id"], &serde_json::json!("plan"), &serde_json::json!("PREPARING")),
        "{input}"
    );
    let commit = &run["commit"];
    assert_eq!(commit["author"], "Gantry Tests", "{input}");
    assert_eq!(commit["author_email"], "tests@gantry.invalid", "{input}");
    assert_eq!(commit["message"], "initial configuration", "{input}");
    assert_eq!(
        (&commit["hash"], &commit["branch"]),
        (&serde_json::json!(head), &serde_json::json!("main")),
        "{input}"
    );
    // Within the last ten minutes, in nanoseconds: the clock of this machine made them all.
    let recent = |value: &Value| {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
        let now = now.as_nanos() as i64;
        value.as_i64().is_some_and(|ns| (now - 600 * 1_000_000_000..=now).contains(&ns))
    };
    assert!(recent(&commit["created_at"]), "{input}");
    assert!(recent(&run["created_at"]) && recent(&run["updated_at"]), "{input}");
    assert!(run["created_at"].as_i64() <= run["updated_at"].as_i64(), "{input}");
    assert_eq!(run["triggered_by"], inspected["triggered_by"], "{input}");
    assert!(run["triggered_by"].as_str().is_some_and(|by| !by.is_empty()), "{input}");
    let environment = &input["static_run_environment"];
    assert_eq!(environment["stack_labels"], serde_json::json!(["team:net"]), "{input}");
    assert_eq!(environment["auto_deploy"], false, "{input}");
    assert_eq!(environment["tool"], "terraform", "{input}");
    assert_eq!(environment["terraform_version"], version, "{input}");
    assert_eq!(environment["commit_sha"], serde_json::json!(head), "{input}");
    assert_eq!(environment["run_type"], "PROPOSED", "{input}");

    // An apply is judged too, on its plan's commit, which it does not check out.
    let tracked = gantry.trigger("vault", &[]);
    let planned = gantry.wait_for_state(&tracked, &["UNCONFIRMED", "FINISHED", "FAILED"]);
    assert_eq!(planned["state"], "UNCONFIRMED", "{planned}");
    gantry.ok(&["run", "confirm", crate::harness::id(&tracked)]);
    let log = assert_denied(gantry, &tracked, "{");
    let input = judged_input(&log);
    let run = &input["run"];
    assert_eq!(
        (&run["job"], &run["state"]),
        (&serde_json::json!("apply"), &serde_json::json!("APPLYING")),
        "{input}"
    );
    assert_eq!(run["commit"]["author"], "Gantry Tests", "{input}");
    assert_eq!(run["commit"]["author_email"], "tests@gantry.invalid", "{input}");
    assert_eq!(run["commit"]["message"], "initial configuration", "{input}");
    assert_eq!(run["commit"]["hash"], serde_json::json!(head), "{input}");
    assert!(recent(&run["commit"]["created_at"]), "{input}");
    assert!(recent(&run["created_at"]) && recent(&run["updated_at"]), "{input}");
    assert_eq!(
        input["static_run_environment"]["stack_labels"],
        serde_json::json!(["guarded"]),
        "{input}"
    );
    assert!(!crate::harness::state_has_resource(&state("vault")), "nothing was applied");
}

#[test]
fn a_launcher_with_a_policy_that_does_not_parse_stops_at_start() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let policy = work.path().join("policy.rego");
    std::fs::write(&policy, "package gantry\n\ndeny contains msg if {\n").unwrap();
    let pool = cluster.private_pool(work.path(), "p");
    let exited = Launcher::run_to_exit_with(
        &cluster,
        &pool.token,
        &pool.key,
        &[("GANTRY_LAUNCHER_RUN_INITIALIZATION_POLICY", policy.to_str().unwrap())],
    );
    assert!(matches!(exited.status, Some(code) if code != 0), "{:?}", exited.status);
    let expected = format!(
        "GANTRY_LAUNCHER_RUN_INITIALIZATION_POLICY={}: the policy does not parse",
        policy.display()
    );
    assert!(exited.stderr.contains(&expected), "{}", exited.stderr);
}

#[test]
fn a_private_vcs_mapping_rewrites_the_clone_address() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let repositories = work.path().join("vcs");
    GitRepository::create(&repositories.join("infra"), &[("infra/main.tf", VARIABLES_CONFIG)]);
    let endpoint = format!("file://{}", repositories.display());
    let pool = cluster.private_pool(work.path(), "p");
    let _launcher = Launcher::of(
        &cluster,
        &pool,
        &[
            ("GANTRY_PRIVATEVCS_MAPPING_NAME_0", "corp"),
            ("GANTRY_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0", &endpoint),
        ],
    );
    // Runs of a root launcher run as users of their own: the state is theirs to write.
    crate::harness::open_to_run_users(work.path());
    let backend = format!(
        "TF_CLI_ARGS_init=-backend-config=path={}",
        work.path().join("state.tfstate").display()
    );
    for (name, repository) in
        [("mapped", "private://corp/infra"), ("unmapped", "private://lab/infra")]
    {
        cluster.gantry.create_stack_at(name, repository, Some("p"), &["--env", &backend]);
    }

    let mapped = cluster.gantry.trigger("mapped", &["--proposed"]);
    let mapped = cluster.gantry.wait_for_state(&mapped, &["FINISHED", "FAILED"]);
    assert_eq!(mapped["state"], "FINISHED", "{mapped}\n{}", cluster.gantry.log(&mapped));
    let log = cluster.gantry.log(&mapped);
    assert!(log.contains("checking out private://corp/infra"), "{log}");

    let unmapped = cluster.gantry.trigger("unmapped", &["--proposed"]);
    let unmapped = cluster.gantry.wait_for_state(&unmapped, &["FINISHED", "FAILED"]);
    assert_eq!(unmapped["state"], "FAILED", "{unmapped}");
    assert!(
        unmapped["failure"]
            .as_str()
            .unwrap()
            .contains("private VCS lab, which this launcher has no mapping for"),
        "{unmapped}"
    );
}

/// Runs `gantry` without a server: the release commands need none.
fn gantry_offline(args: &[&str]) -> String {
    let done = std::process::Command::new(crate::harness::bin("gantry"))
        .args(args)
        .output()
        .expect("gantry runs");
    assert!(done.status.success(), "gantry {args:?}: {}", String::from_utf8_lossy(&done.stderr));
    String::from_utf8(done.stdout).unwrap()
}

#[test]
fn a_launcher_runs_the_servers_older_worker_binary_only_when_its_signature_verifies() {
    let work = tempfile::tempdir().unwrap();
    // A release, signed with a release key, of a worker older than this launcher: it knows
    // its capability only from its environment, never from its input.
    let release = work.path().join("release");
    std::fs::create_dir_all(&release).unwrap();
    let worker = release.join("gantry-worker");
    let older_worker = format!(
        "#!/bin/sh\nunset GANTRY_WORKER_INPUT\nexec '{}' \"$@\" </dev/null\n",
        crate::harness::bin("gantry-worker").display()
    );
    std::fs::write(&worker, older_worker).unwrap();
    let keys = work.path().join("keys");
    gantry_offline(&["worker-binary", "keygen", "--out-dir", keys.to_str().unwrap()]);
    let key_file = keys.join("release.key");
    gantry_offline(&[
        "worker-binary",
        "sign",
        "--key",
        key_file.to_str().unwrap(),
        worker.to_str().unwrap(),
    ]);
    let public = std::fs::read_to_string(keys.join("release.pub")).unwrap();
    let sha256 = {
        let listed = std::process::Command::new("sha256sum").arg(&worker).output().unwrap();
        String::from_utf8(listed.stdout).unwrap().split_whitespace().next().unwrap().to_owned()
    };

    let cluster = Cluster::start_with(&[("GANTRY_SERVER_WORKER_BINARY", worker.to_str().unwrap())]);
    let pool = cluster.private_pool(work.path(), "p");
    let launcher_dir = work.path().join("launcher");
    let downloading =
        [("GANTRY_WORKER_BINARY", ""), ("GANTRY_WORKER_BINARY_PUBLIC_KEY", public.trim())];
    let mut launcher = Launcher::spawn_for(&pool.token, &pool.key, &launcher_dir, &downloading);
    launcher.wait_for_stderr("launcher connected", std::time::Duration::from_secs(30));
    assert!(
        launcher_dir.join("worker-binaries").join(&sha256).is_file(),
        "the verified binary is kept by its digest"
    );
    let repository =
        GitRepository::create(&work.path().join("repo"), &[("infra/main.tf", VARIABLES_CONFIG)]);
    cluster.gantry.create_stack("app", &repository, "p", &work.path().join("state.tfstate"), &[]);
    let run = cluster.gantry.trigger("app", &["--proposed"]);
    let run = cluster.gantry.wait_for_state(&run, &["FINISHED", "FAILED"]);
    assert_eq!(run["state"], "FINISHED", "{run}\n{}", cluster.gantry.log(&run));
    launcher.stop();

    // A launcher pinning another key refuses the binary and stops before taking work.
    let (_, stranger) = release_key(&work.path().join("other-keys"));
    let exited = Launcher::run_to_exit_with(
        &cluster,
        &pool.token,
        &pool.key,
        &[("GANTRY_WORKER_BINARY", ""), ("GANTRY_WORKER_BINARY_PUBLIC_KEY", &stranger)],
    );
    assert!(matches!(exited.status, Some(code) if code != 0), "{:?}", exited.status);
    assert!(exited.stderr.contains("does not verify with the pinned key"), "{}", exited.stderr);
}

/// A fresh release key pair made by `gantry worker-binary keygen` in `dir`.
fn release_key(dir: &std::path::Path) -> (std::path::PathBuf, String) {
    gantry_offline(&["worker-binary", "keygen", "--out-dir", dir.to_str().unwrap()]);
    let public = std::fs::read_to_string(dir.join("release.pub")).unwrap();
    (dir.join("release.key"), public.trim().to_owned())
}
