//! A stack's secret variables sealed before they reach the server: after runs, neither
//! the database (SQLite's files, PostgreSQL's rows) nor the blob store holds a secret in
//! clear or in base64, while the run sees it and its log masks it; a stack cannot move
//! to another pool, or run after a pool reset, without its values given again or
//! resealed with the old key; and an upgrade seals the clear values an older server kept.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use gantry_testkit::{GitRepository, KeyKind, OpensslKey};
use serde_json::Value;

use crate::harness::{Cluster, Gantry, Launcher, PoolAccess, ServerProcess, base64_of, free_port};
use crate::launcher_options::forms_of;

/// Quotes, a backslash, non-ASCII and base64's `+` and `/`: every form must be sealed.
const SECRET: &str = r#"s3aled "v@lue" \ é+/~ 7319"#;

/// A sensitive output from the secret, next to a plain one.
const CONFIG: &str = r#"
terraform {
  backend "local" {}
}

variable "token" {
  type      = string
  sensitive = true
}

output "plain" {
  value = "not a secret"
}

output "token_copy" {
  value     = "copy-${var.token}"
  sensitive = true
}
"#;

/// A task that proves the run sees the value (by its digest: the command is stored on
/// the server, so it must not hold the value), and prints it for the log to mask.
fn check_task() -> String {
    let digest = gantry_crypto::sha256_hex(SECRET.as_bytes());
    format!(
        r#"test "$(printf %s "$TF_VAR_token" | sha256sum | cut -d' ' -f1)" = {digest} && echo value-seen-right
printf 'printed=%s\n' "$TF_VAR_token"
printf %s "$TF_VAR_token" | base64"#
    )
}

/// The secret as a JSON string holds it (quotes and backslash escaped), as the stacks
/// table's `environment` column would.
fn json_escaped() -> String {
    let quoted = serde_json::to_string(SECRET).unwrap();
    quoted[1..quoted.len() - 1].to_owned()
}

/// Every form of the secret that must be nowhere in the server's data: the forms a log
/// must not show, and the escaped form a JSON column would hold.
fn stored_forms() -> Vec<String> {
    let mut forms = forms_of(SECRET);
    forms.push(json_escaped());
    forms
}

fn repository(dir: &Path) -> GitRepository {
    GitRepository::create(&dir.join("repo"), &[("infra/main.tf", CONFIG)])
}

fn secret_flag() -> String {
    format!("TF_VAR_token={SECRET}")
}

/// Runs the check task on the stack; returns its log after asserting that the run saw
/// the value and its log shows it in no form.
fn check_run_sees_the_secret(gantry: &Gantry, stack: &str) -> String {
    let task = gantry.json(&["run", "task", stack, "--", &check_task()]);
    let task = gantry.wait_for_state(&task, &["FINISHED", "FAILED"]);
    let log = gantry.log(&task);
    assert_eq!(task["state"], "FINISHED", "{task}\n{log}");
    assert!(log.contains("value-seen-right"), "{log}");
    assert!(log.contains("printed=***"), "{log}");
    for form in forms_of(SECRET) {
        assert!(!log.contains(&form), "{form:?} in the log:\n{log}");
    }
    log
}

/// A plan-and-apply of the stack, with its sensitive output.
fn apply(gantry: &Gantry, stack: &str) -> Value {
    let run = gantry.trigger(stack, &[]);
    let run = gantry.wait_for_state(&run, &["FINISHED", "FAILED"]);
    assert_eq!(run["state"], "FINISHED", "{run}\n{}", gantry.log(&run));
    run
}

fn secret_variable(stack: &Value) -> &Value {
    stack["environment"]
        .as_array()
        .unwrap()
        .iter()
        .find(|variable| variable["name"] == "TF_VAR_token")
        .expect("the secret variable")
}

/// The stack shows its secret sealed: no value, a sealed value that is not the secret.
fn assert_shown_sealed(gantry: &Gantry, stack: &str) -> String {
    let shown = gantry.json(&["stack", "show", stack]);
    let variable = secret_variable(&shown["stack"]);
    assert!(variable.get("value").is_none(), "{variable}");
    let sealed = variable["sealed_value"].as_str().expect("a sealed value").to_owned();
    gantry_crypto::read_secret_header(&sealed).expect("a sealed secret value");
    sealed
}

#[test]
fn a_stack_secret_is_sealed_in_the_database_and_blobs_and_masked_in_the_run() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let pool = cluster.private_pool(work.path(), "p");
    let _launcher =
        Launcher::of(&cluster, &pool, &[("GANTRY_SENSITIVE_OUTPUT_UPLOAD_ENABLED", "true")]);
    let repository = repository(work.path());
    let state = work.path().join("state").join("app.tfstate");
    let secret = secret_flag();
    let flags = ["--autodeploy", "--share-sensitive-outputs", "--secret-env", &secret];
    cluster.gantry.create_stack("app", &repository, "p", &state, &flags);
    assert_shown_sealed(&cluster.gantry, "app");

    let run = apply(&cluster.gantry, "app");
    let outputs = run["outputs"].to_string();
    assert!(outputs.contains("token_copy") && outputs.contains("not a secret"), "{outputs}");
    check_run_sees_the_secret(&cluster.gantry, "app");

    // The database files (with the WAL), the blob store: nothing of the secret.
    for form in stored_forms() {
        cluster.server.assert_nothing_contains(&form);
    }
}

#[test]
fn a_stack_secret_is_sealed_in_every_postgresql_row() {
    let Some(database) =
        tokio::runtime::Runtime::new().unwrap().block_on(gantry_test_postgres::fresh_database())
    else {
        return;
    };
    let work = tempfile::tempdir().unwrap();
    let server = ServerProcess::start_with(
        &work.path().join("server"),
        "127.0.0.1:0",
        &[("GANTRY_SERVER_DATABASE", database.as_str())],
    );
    let gantry = Gantry::for_server(&server);
    let key = OpensslKey::generate(work.path(), "p", KeyKind::P256);
    let pool = PoolAccess { token: gantry.create_pool("p", &key), key: base64_of(&key.key_pem) };
    let _launcher = Launcher::connect(&pool, &[("GANTRY_SENSITIVE_OUTPUT_UPLOAD_ENABLED", "true")]);
    let repository = repository(work.path());
    let state = work.path().join("state").join("app.tfstate");
    let secret = secret_flag();
    let flags = ["--autodeploy", "--share-sensitive-outputs", "--secret-env", &secret];
    gantry.create_stack("app", &repository, "p", &state, &flags);
    apply(&gantry, "app");
    check_run_sees_the_secret(&gantry, "app");

    // Every table's rows, as text.
    let dump = Command::new("pg_dump")
        .args(["--data-only", "--inserts", "--no-owner", &database])
        .output()
        .expect("pg_dump runs");
    assert!(dump.status.success(), "{}", String::from_utf8_lossy(&dump.stderr));
    let rows = String::from_utf8_lossy(&dump.stdout);
    assert!(rows.contains("TF_VAR_token"), "the dump holds the stack");
    for form in stored_forms() {
        assert!(!rows.contains(&form), "{form:?} is in a row of the database");
        server.assert_nothing_contains(&form);
    }
}

#[test]
fn moving_a_stack_needs_its_secrets_again_or_resealed_with_the_old_key() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let p_key = OpensslKey::generate(work.path(), "p", KeyKind::P256);
    let q = cluster.private_pool(work.path(), "q");
    cluster.gantry.create_pool("p", &p_key);
    let repository = repository(work.path());
    let state = work.path().join("state").join("app.tfstate");
    let secret = secret_flag();
    cluster.gantry.create_stack("app", &repository, "p", &state, &["--secret-env", &secret]);

    let refused = cluster.gantry.fails(&["stack", "move", "app", "--pool", "q"]);
    assert!(
        refused.contains(
            "moving stack app to pool q needs the values of its secret variables TF_VAR_token again: they are sealed to pool p's key"
        ),
        "{refused}"
    );
    assert!(
        refused.contains("gantry stack secrets reseal app --old-key FILE --pool q"),
        "{refused}"
    );
    assert_eq!(cluster.gantry.json(&["stack", "show", "app"])["stack"]["pool_name"], "p");

    // Where pool p's key is: opened with it, sealed to q's certificate, moved.
    let key_file = p_key.key_path.to_str().unwrap();
    let moved = cluster.gantry.json(&[
        "stack",
        "secrets",
        "reseal",
        "app",
        "--old-key",
        key_file,
        "--pool",
        "q",
    ]);
    assert_eq!(moved["pool_name"], "q", "{moved}");
    let _launcher = Launcher::of(&cluster, &q, &[]);
    check_run_sees_the_secret(&cluster.gantry, "app");

    // Given again instead: moved back to p with the value.
    let moved =
        cluster.gantry.json(&["stack", "move", "app", "--pool", "p", "--secret-env", &secret]);
    assert_eq!(moved["pool_name"], "p", "{moved}");
    cluster.server.assert_nothing_contains(&json_escaped());
}

#[test]
fn after_a_pool_reset_a_stack_runs_once_its_secrets_are_resealed() {
    let cluster = Cluster::start();
    let work = tempfile::tempdir().unwrap();
    let old_key = OpensslKey::generate(work.path(), "old", KeyKind::P256);
    cluster.gantry.create_pool("p", &old_key);
    let repository = repository(work.path());
    let state = work.path().join("state").join("app.tfstate");
    let secret = secret_flag();
    cluster.gantry.create_stack("app", &repository, "p", &state, &["--secret-env", &secret]);
    let sealed_before = assert_shown_sealed(&cluster.gantry, "app");

    let new_key = OpensslKey::generate(work.path(), "new", KeyKind::P256);
    let csr = new_key.key_path.with_extension("csr");
    let reset = cluster.gantry.json(&["pool", "reset", "p", "--csr", csr.to_str().unwrap()]);
    let token = reset["token"].as_str().unwrap().to_owned();

    let refused = cluster.gantry.fails(&["run", "trigger", "app"]);
    assert!(
        refused.contains(
            "stack app: the secret variables TF_VAR_token are sealed to a key pool p no longer has (the pool was reset)"
        ),
        "{refused}"
    );
    assert!(refused.contains("gantry stack secrets reseal app --old-key FILE"), "{refused}");

    let key_file = old_key.key_path.to_str().unwrap();
    cluster.gantry.ok(&["stack", "secrets", "reseal", "app", "--old-key", key_file]);
    assert_ne!(assert_shown_sealed(&cluster.gantry, "app"), sealed_before);
    let pool = PoolAccess { token, key: base64_of(&new_key.key_pem) };
    let _launcher = Launcher::of(&cluster, &pool, &[]);
    check_run_sees_the_secret(&cluster.gantry, "app");

    // The old key opens nothing any more.
    let again = cluster.gantry.fails(&["stack", "secrets", "reseal", "app", "--old-key", key_file]);
    assert!(again.contains("secret variable TF_VAR_token of stack app does not open"), "{again}");
}

#[test]
fn an_upgrade_seals_the_clear_values_an_older_server_kept() {
    let work = tempfile::tempdir().unwrap();
    let data_dir = work.path().join("server");
    // The same address at every start: the pool's token names it.
    let listen = format!("127.0.0.1:{}", free_port());
    let server = ServerProcess::start_in(&data_dir, &listen);
    let gantry = Gantry::for_server(&server);
    let repository = repository(work.path());
    let state = work.path().join("state").join("app.tfstate");
    let secret = secret_flag();
    let key = OpensslKey::generate(work.path(), "p", KeyKind::P256);
    let pool = PoolAccess { token: gantry.create_pool("p", &key), key: base64_of(&key.key_pem) };
    gantry.create_stack("app", &repository, "p", &state, &["--secret-env", &secret]);
    let admin_key = server.admin_key.clone().unwrap();
    drop(server);

    // What an older server kept: the value in clear.
    let database = data_dir.join("gantry.db");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use gantry_store::Store;
        let store = gantry_store::SqliteStore::open(&database).await.unwrap();
        let stack = store.find_stack_by_name("app").await.unwrap().unwrap();
        let mut environment = stack.environment.clone();
        for variable in environment.iter_mut().filter(|variable| variable.secret) {
            SECRET.clone_into(&mut variable.value);
        }
        store.update_stack_environments(&[(stack.id, stack.pool_id, environment)]).await.unwrap();
    });
    let clear_in_file = std::fs::read(&database).unwrap();
    let escaped = json_escaped();
    assert!(
        clear_in_file.windows(escaped.len()).any(|window| window == escaped.as_bytes()),
        "the test stored the value in clear"
    );

    let server = ServerProcess::start_in(&data_dir, &listen);
    server.wait_for_stderr("sealed the secret variables stored in clear", Duration::from_secs(10));
    let gantry = Gantry::for_server_with_key(&server, &admin_key);
    let launcher = Launcher::connect(&pool, &[]);
    assert_shown_sealed(&gantry, "app");
    for form in stored_forms() {
        server.assert_nothing_contains(&form);
    }
    check_run_sees_the_secret(&gantry, "app");
    drop(launcher);
    drop(server);

    // Idempotent: a second start finds nothing to seal.
    let server = ServerProcess::start_in(&data_dir, &listen);
    let gantry = Gantry::for_server_with_key(&server, &admin_key);
    let _launcher = Launcher::connect(&pool, &[]);
    assert_shown_sealed(&gantry, "app");
    check_run_sees_the_secret(&gantry, "app");
}
