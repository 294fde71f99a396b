//! The `gantry` binary, run for real: commands that need no server (keygen, help,
//! configuration and connection errors), and every command group against a scripted
//! stand-in of the REST API over TLS (`support`), until the real server exists.

mod support;

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use futures_util::StreamExt;
use gantry_cli::client::{ApiClient, ClientError, LogStreamEvent, ReconnectPolicy};
use gantry_cli::config::ClientFile;
use gantry_domain::RunState;
use support::{API_KEY, FakeApi, RUN_FAILS, RUN_FINISHES, RUN_WAITS, TOKEN};

const BIN: &str = env!("CARGO_BIN_EXE_gantry");

/// The binary, isolated from the caller's configuration: no `GANTRY_API_*` variables and
/// a working directory without `.gantry/`.
fn gantry(dir: &Path) -> std::process::Command {
    let mut command = std::process::Command::new(BIN);
    command
        .current_dir(dir)
        .env_remove("GANTRY_API_URL")
        .env_remove("GANTRY_API_KEY")
        .env_remove("GANTRY_API_CA_FILE")
        .env_remove("NO_COLOR");
    command
}

struct Ran {
    code: i32,
    stdout: String,
    stderr: String,
}

impl From<Output> for Ran {
    fn from(output: Output) -> Self {
        Ran {
            code: output.status.code().unwrap_or(-1),
            stdout: String::from_utf8(output.stdout).unwrap(),
            stderr: String::from_utf8(output.stderr).unwrap(),
        }
    }
}

impl std::fmt::Debug for Ran {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

fn run_sync(dir: &Path, args: &[&str]) -> Ran {
    gantry(dir).args(args).output().unwrap().into()
}

/// Runs the binary without blocking the runtime that serves the fake API.
async fn run_async(dir: &Path, args: &[&str]) -> Ran {
    let mut command = tokio::process::Command::from(gantry(dir));
    command.args(args).kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(60), command.output())
        .await
        .expect("gantry did not exit within 60 s")
        .unwrap();
    output.into()
}

/// A working directory holding the fake API's CA, and the flags to reach the API.
struct Setup {
    api: FakeApi,
    dir: tempfile::TempDir,
}

impl Setup {
    async fn new() -> Setup {
        let api = FakeApi::start().await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &api.ca_pem).unwrap();
        Setup { api, dir }
    }

    async fn gantry(&self, args: &[&str]) -> Ran {
        let mut full =
            vec!["--api-url", &self.api.url, "--ca-file", "ca.pem", "--api-key", API_KEY];
        full.extend_from_slice(args);
        run_async(self.dir.path(), &full).await
    }

    fn client(&self) -> ApiClient {
        ApiClient::builder(&self.api.url)
            .api_key(API_KEY)
            .trust_ca_pem(self.api.ca_pem.clone())
            .build()
            .unwrap()
    }
}

// ---- without a server ------------------------------------------------------------

#[test]
fn keygen_writes_a_private_key_and_a_csr_that_openssl_accepts() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run_sync(dir.path(), &["keygen"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("Wrote pool.key"), "{ran:?}");
    assert!(ran.stdout.contains("gantry pool create --name pool --csr pool.csr"), "{ran:?}");

    let verify = std::process::Command::new("openssl")
        .args(["req", "-verify", "-in", "pool.csr", "-noout"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(verify.status.success(), "{}", String::from_utf8_lossy(&verify.stderr));
    let key = std::process::Command::new("openssl")
        .args(["pkey", "-in", "pool.key", "-noout", "-text"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(key.status.success(), "{}", String::from_utf8_lossy(&key.stderr));
    assert!(String::from_utf8_lossy(&key.stdout).contains("prime256v1"));
    let pem = std::fs::read_to_string(dir.path().join("pool.key")).unwrap();
    assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"));

    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.path().join("pool.key")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn keygen_refuses_to_overwrite_without_force() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("keys");
    let out = out.to_str().unwrap();
    assert_eq!(run_sync(dir.path(), &["keygen", "--out-dir", out, "--name", "prod"]).code, 0);
    let key_path = dir.path().join("keys/prod.key");
    let first_key = std::fs::read_to_string(&key_path).unwrap();

    let ran = run_sync(dir.path(), &["keygen", "--out-dir", out, "--name", "prod"]);
    assert_eq!(ran.code, 64, "{ran:?}");
    assert_eq!(
        ran.stderr,
        format!(
            "error: {out}/prod.key already exists: pass --force to overwrite it, or choose another --name or --out-dir\n"
        )
    );
    assert_eq!(std::fs::read_to_string(&key_path).unwrap(), first_key);

    // --force replaces both, and a key file that was made readable keeps no such mode.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let ran = run_sync(dir.path(), &["keygen", "--out-dir", out, "--name", "prod", "--force"]);
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_ne!(std::fs::read_to_string(&key_path).unwrap(), first_key);
    let mode = std::fs::metadata(&key_path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn every_command_group_has_help() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--help"], "Getting started"),
        (&["keygen", "--help"], "--force"),
        (&["pool", "--help"], "create"),
        (&["pool", "create", "--help"], "--token-file"),
        (&["pool", "show", "--help"], "Pool name or id"),
        (&["worker", "--help"], "list"),
        (&["worker", "list", "--help"], "GANTRY_METADATA_"),
        (&["stack", "--help"], "create"),
        (&["stack", "create", "--help"], "--secret-env"),
        (&["run", "--help"], "trigger"),
        (&["run", "trigger", "--help"], "UNCONFIRMED"),
        (&["run", "logs", "--help"], "--color"),
        (&["run", "show", "--help"], "Run id"),
        (&["run", "fail", "--help"], "--reason <REASON>"),
        (&["stack", "state", "--help"], "rollback"),
        (&["stack", "state", "rollback", "--help"], "--to <VERSION>"),
        (&["stack", "state", "adopt", "--help"], "gantry stack state adopt network 42"),
    ];
    for (args, expect) in cases {
        let ran = run_sync(dir.path(), args);
        assert_eq!(ran.code, 0, "{args:?}: {ran:?}");
        assert!(ran.stdout.contains(expect), "{args:?} should mention {expect:?}: {ran:?}");
    }
    let ran = run_sync(dir.path(), &["--version"]);
    assert!(ran.stdout.starts_with("gantry "), "{ran:?}");
}

#[test]
fn an_unreachable_api_exits_69() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run_sync(
        dir.path(),
        &["--api-url", "https://127.0.0.1:9", "--api-key", "k", "pool", "list"],
    );
    assert_eq!(ran.code, 69, "{ran:?}");
    assert!(
        ran.stderr.starts_with("error: cannot reach the Gantry API at https://127.0.0.1:9: "),
        "{ran:?}"
    );
    assert!(ran.stderr.contains("(is the server running? \"gantry up\" starts one)"), "{ran:?}");
    assert!(!ran.stderr.contains("\"k\""));
}

#[test]
fn a_missing_api_key_exits_64() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run_sync(dir.path(), &["stack", "list"]);
    assert_eq!(ran.code, 64, "{ran:?}");
    assert_eq!(
        ran.stderr,
        "error: no API key: set GANTRY_API_KEY, pass --api-key, or run gantry up in this directory\n"
    );
}

#[test]
fn configuration_and_input_mistakes_exit_64_and_say_which() {
    let dir = tempfile::tempdir().unwrap();
    let ran = run_sync(dir.path(), &["--api-url", "localhost:8443", "pool", "list"]);
    assert_eq!(ran.code, 64, "{ran:?}");
    assert!(
        ran.stderr.contains("--api-url=\"localhost:8443\": expected an http:// or https:// URL"),
        "{ran:?}"
    );

    let ran = run_sync(dir.path(), &["--api-key", "k", "--ca-file", "missing.pem", "pool", "list"]);
    assert_eq!(ran.code, 64, "{ran:?}");
    assert!(ran.stderr.starts_with("error: cannot read the CA file missing.pem: "), "{ran:?}");

    let ran = run_sync(
        dir.path(),
        &["--api-key", "k", "pool", "create", "--name", "p", "--csr", "nope.csr"],
    );
    assert_eq!(ran.code, 64, "{ran:?}");
    assert!(ran.stderr.starts_with("error: cannot read the CSR file nope.csr: "), "{ran:?}");

    // clap's own usage errors keep clap's status.
    let ran = run_sync(dir.path(), &["run", "show", "not-an-id"]);
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(ran.stderr.contains("is not a valid run id"), "{ran:?}");
}

// ---- against the stand-in API --------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_and_workers_are_listed_through_tls_with_the_ca_file() {
    let setup = Setup::new().await;
    let ran = setup.gantry(&["pool", "list"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.starts_with("NAME   ID "), "{ran:?}");
    assert!(ran.stdout.contains("build  00000000000000000000000001  private"), "{ran:?}");

    let ran = setup.gantry(&["pool", "show", "build"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("Key:          EC P-256"), "{ran:?}");
    assert!(ran.stdout.contains("rack=r1"), "{ran:?}");

    let ran = setup.gantry(&["--output", "json", "worker", "list"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let json: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(json["workers"][0]["status"], "IDLE");

    let ran = setup.gantry(&["worker", "list", "--pool", "build"]).await;
    assert!(ran.stdout.contains("IDLE"), "{ran:?}");
    assert!(ran.stdout.contains("  build  "), "pool names replace ids: {ran:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_untrusted_certificate_exits_69_and_points_to_the_ca_file() {
    let setup = Setup::new().await;
    let ran = run_async(
        setup.dir.path(),
        &["--api-url", &setup.api.url, "--api-key", API_KEY, "pool", "list"],
    )
    .await;
    assert_eq!(ran.code, 69, "{ran:?}");
    assert!(ran.stderr.contains("is not trusted"), "{ran:?}");
    assert!(ran.stderr.contains("--ca-file or GANTRY_API_CA_FILE"), "{ran:?}");

    // The same CA through the environment is trusted.
    let mut command = tokio::process::Command::from(gantry(setup.dir.path()));
    command
        .args(["pool", "list"])
        .env("GANTRY_API_URL", &setup.api.url)
        .env("GANTRY_API_KEY", API_KEY)
        .env("GANTRY_API_CA_FILE", "ca.pem");
    let ran: Ran = command.output().await.unwrap().into();
    assert_eq!(ran.code, 0, "{ran:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_errors_exit_1_with_the_servers_message() {
    let setup = Setup::new().await;
    let ran = setup.gantry(&["pool", "show", "nope"]).await;
    assert_eq!((ran.code, ran.stderr.as_str()), (1, "error: no pool named \"nope\"\n"), "{ran:?}");

    let ran = run_async(
        setup.dir.path(),
        &[
            "--api-url",
            &setup.api.url,
            "--ca-file",
            "ca.pem",
            "--api-key",
            "gak_wrong",
            "stack",
            "list",
        ],
    )
    .await;
    assert_eq!((ran.code, ran.stderr.as_str()), (1, "error: invalid API key\n"), "{ran:?}");
    assert!(!ran.stderr.contains("gak_wrong") && !ran.stdout.contains("gak_wrong"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pool_create_prints_the_token_once_with_the_launcher_command() {
    let setup = Setup::new().await;
    let dir = setup.dir.path();
    assert_eq!(run_sync(dir, &["keygen", "--name", "build"]).code, 0);

    let ran = setup
        .gantry(&["pool", "create", "--name", "build", "--csr", "build.csr", "--label", "linux"])
        .await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(
        ran.stdout.contains(&format!("Token (shown only this once: store it now):\n{TOKEN}\n")),
        "{ran:?}"
    );
    assert!(
        ran.stdout.contains(&format!(
            "GANTRY_TOKEN={TOKEN} GANTRY_POOL_PRIVATE_KEY=\"$(base64 -w 0 build.key)\" gantry-launcher"
        )),
        "{ran:?}"
    );
    {
        let recorded = setup.api.recorded.lock().unwrap();
        let request = &recorded.created_pools[0];
        assert_eq!(request.name, "build");
        assert_eq!(request.labels, ["linux"]);
        assert_eq!(request.csr, std::fs::read_to_string(dir.join("build.csr")).unwrap());
    }

    let ran = setup
        .gantry(&[
            "pool",
            "create",
            "--name",
            "build2",
            "--csr",
            "build.csr",
            "--token-file",
            "build.token",
        ])
        .await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(!ran.stdout.contains(TOKEN), "{ran:?}");
    assert!(ran.stdout.contains("GANTRY_TOKEN=\"$(cat build.token)\""), "{ran:?}");
    assert_eq!(std::fs::read_to_string(dir.join("build.token")).unwrap(), format!("{TOKEN}\n"));
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("build.token")).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    // An existing token file is refused before the pool is created.
    let ran = setup
        .gantry(&[
            "pool",
            "create",
            "--name",
            "build3",
            "--csr",
            "build.csr",
            "--token-file",
            "build.token",
        ])
        .await;
    assert_eq!(ran.code, 64, "{ran:?}");
    assert_eq!(setup.api.recorded.lock().unwrap().created_pools.len(), 2);

    let ran = setup
        .gantry(&["--output", "json", "pool", "create", "--name", "b4", "--csr", "build.csr"])
        .await;
    let json: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(json["token"], TOKEN);
    assert_eq!(json["pool"]["name"], "b4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stacks_are_created_from_flags_and_shown_with_their_runs() {
    let setup = Setup::new().await;
    let ran = setup
        .gantry(&[
            "stack",
            "create",
            "--name",
            "web",
            "--repository",
            "file:///srv/git/web.git",
            "--pool",
            "build",
            "--env",
            "TF_VAR_a=1",
            "--secret-env",
            "TF_VAR_b=hunter22",
            "--autodeploy",
        ])
        .await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("gantry run trigger web --follow"), "{ran:?}");
    let request = setup.api.recorded.lock().unwrap().created_stacks[0].clone();
    // The secret left the CLI sealed to the pool's certificate: only the pool key opens it.
    let secret = &request["environment"][1];
    assert_eq!(
        (&secret["name"], &secret["secret"], secret.get("value")),
        (&"TF_VAR_b".into(), &true.into(), None)
    );
    let key = gantry_crypto::PoolPrivateKey::from_pem(&setup.api.pool_key_pem).unwrap();
    let pool_id = setup.api.pool_certificate.pool_id.to_string();
    let context =
        gantry_crypto::SecretContext { pool_id: &pool_id, stack: "web", variable: "TF_VAR_b" };
    let sealed = secret["sealed_value"].as_str().unwrap();
    assert_eq!(*gantry_crypto::open_secret(&key, &context, sealed).unwrap(), "hunter22");
    assert_eq!(request["autodeploy"], true);

    let ran = setup.gantry(&["stack", "show", "web"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("Latest runs:"), "{ran:?}");
    assert!(ran.stdout.contains("FINISHED"), "{ran:?}");

    let ran =
        setup.gantry(&["--output", "json", "run", "list", "--stack", "web", "--limit", "2"]).await;
    let json: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(json["runs"].as_array().unwrap().len(), 2);

    let ran = setup.gantry(&["run", "show", &RUN_FAILS.to_string()]).await;
    assert!(ran.stdout.contains("Failure:      terraform plan exited with status 1"), "{ran:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_follow_resumes_after_a_dropped_connection_and_exits_0_when_finished() {
    let setup = Setup::new().await;
    let ran = setup.gantry(&["run", "trigger", "web", "--follow"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    // stdout is a pipe: the colours are gone, every chunk printed once, in order.
    assert_eq!(
        ran.stdout,
        format!(
            "Triggered TRACKED run {RUN_FINISHES} of stack web: QUEUED\n\
             Initializing the backend...\n\
             Terraform has been successfully initialized!\n\
             Plan: 1 to add, 0 to change, 0 to destroy.\n\
             terraform_data.x: Creating...\n\
             Apply complete! Resources: 1 added.\n"
        )
    );
    assert!(ran.stderr.contains(&format!("gantry: run {RUN_FINISHES} is PLANNING")), "{ran:?}");
    assert!(ran.stderr.contains(&format!("gantry: run {RUN_FINISHES} ended FINISHED")), "{ran:?}");
    assert_eq!(setup.api.stream_froms(), [(RUN_FINISHES, 0), (RUN_FINISHES, 3)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_follow_of_a_failing_run_exits_1() {
    let setup = Setup::new().await;
    let ran = setup.gantry(&["run", "trigger", "broken", "--follow", "--color", "always"]).await;
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stdout.contains("\u{1b}[31mError:\u{1b}[0m Unsupported argument\n"), "{ran:?}");
    assert!(ran.stderr.contains("is FAILED: terraform plan exited with status 1"), "{ran:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_follow_stops_at_unconfirmed_and_says_how_to_confirm() {
    let setup = Setup::new().await;
    let ran = setup.gantry(&["run", "trigger", "gated", "--follow"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    // The last chunk was not streamed before the wait: it comes from the stored log.
    assert!(
        ran.stdout
            .ends_with("Plan: 1 to add, 0 to change, 0 to destroy.\nWaiting for confirmation.\n"),
        "{ran:?}"
    );
    assert!(ran.stderr.contains(&format!("gantry run confirm {RUN_WAITS}")), "{ran:?}");

    let ran = setup.gantry(&["run", "confirm", &RUN_WAITS.to_string()]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("CONFIRMED"), "{ran:?}");
    let ran = setup.gantry(&["run", "confirm", &RUN_FAILS.to_string()]).await;
    assert_eq!(
        (ran.code, ran.stderr.as_str()),
        (1, "error: only UNCONFIRMED runs can be confirmed\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_with_json_output_keeps_stdout_for_json() {
    let setup = Setup::new().await;
    let ran = setup
        .gantry(&["--output", "json", "run", "trigger", "web", "--proposed", "--commit", "abc123"])
        .await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let json: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(json["state"], "QUEUED");
    let (_, request) = setup.api.recorded.lock().unwrap().triggered[0].clone();
    assert_eq!(request, serde_json::json!({"type": "PROPOSED", "commit": "abc123"}));

    let ran = setup.gantry(&["--output", "json", "run", "trigger", "broken", "--follow"]).await;
    assert_eq!(ran.code, 1, "{ran:?}");
    let json: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(json["state"], "FAILED");
    assert!(ran.stderr.contains("Unsupported argument"), "{ran:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_page_through_the_stored_log_as_stored_or_stripped() {
    let setup = Setup::new().await;
    let id = RUN_FINISHES.to_string();
    let raw = support::log_texts(RUN_FINISHES).concat();

    let ran = setup.gantry(&["run", "logs", &id, "--color", "always"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(ran.stdout, raw);

    let ran = setup.gantry(&["run", "logs", &id]).await;
    assert_eq!(ran.stdout, gantry_cli::output::AnsiStripper::default().strip(&raw));
    assert!(!ran.stdout.contains('\u{1b}'));

    let ran = setup.gantry(&["--output", "json", "run", "logs", &id]).await;
    let seqs: Vec<u64> = ran
        .stdout
        .lines()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(line).unwrap()["seq"].as_u64().unwrap()
        })
        .collect();
    assert_eq!(seqs, [0, 1, 2, 3, 4]);

    // Following a run that already ended reads its log and exits by its final state.
    let ran = setup.gantry(&["run", "logs", &RUN_FAILS.to_string(), "--follow"]).await;
    assert_eq!(ran.code, 1, "{ran:?}");
    let ran = setup.gantry(&["run", "logs", &RUN_WAITS.to_string(), "-f"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stderr.contains("gantry run confirm"), "{ran:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_file_of_gantry_up_is_used_without_flags() {
    let setup = Setup::new().await;
    std::fs::create_dir(setup.dir.path().join(".gantry")).unwrap();
    std::fs::rename(
        setup.dir.path().join("ca.pem"),
        setup.dir.path().join(".gantry/server-ca.pem"),
    )
    .unwrap();
    ClientFile {
        api_url: setup.api.url.clone(),
        api_key: API_KEY.to_owned(),
        ca_file: Some(".gantry/server-ca.pem".into()),
    }
    .write(&setup.dir.path().join(".gantry/client.json"))
    .unwrap();
    let ran = run_async(setup.dir.path(), &["stack", "list"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("web"), "{ran:?}");
}

// ---- the library client --------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_follows_a_run_across_a_dropped_connection() {
    let setup = Setup::new().await;
    let client = setup.client();
    assert_eq!(client.health().await.unwrap().status, "ok");

    let mut follower = client.follow_run(RUN_FINISHES, 0).with_reconnect_policy(ReconnectPolicy {
        max_attempts: 3,
        initial_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
    });
    let mut seqs = Vec::new();
    let mut states = Vec::new();
    let mut end = None;
    while let Some(event) = follower.next().await {
        match event.unwrap() {
            LogStreamEvent::Log(chunk) => seqs.push(chunk.seq),
            LogStreamEvent::State(run) => states.push(run.state),
            LogStreamEvent::End(stream_end) => end = Some(stream_end.state),
        }
    }
    assert_eq!(seqs, [0, 1, 2, 3, 4]);
    assert_eq!(states, [RunState::Planning, RunState::Applying, RunState::Finished]);
    assert_eq!(end, Some(RunState::Finished));
    assert_eq!(follower.next_seq(), 5);

    // One connection without reconnection ends with the drop, as a transient error.
    let mut stream = client.open_log_stream(RUN_FINISHES, 0).await.unwrap();
    let mut items = Vec::new();
    while let Some(item) = stream.next().await {
        items.push(item);
    }
    assert_eq!(items.len(), 5, "a state, three chunks and the error: {items:?}");
    let error = items.pop().unwrap().unwrap_err();
    assert!(error.is_transient(), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_errors_are_typed() {
    let setup = Setup::new().await;
    let client = setup.client();
    match client.get_pool("nope").await.unwrap_err() {
        ClientError::Api { status, code, message } => {
            assert_eq!(
                (status, code.as_str(), message.as_str()),
                (404, "not_found", "no pool named \"nope\"")
            );
        }
        other => panic!("{other:?}"),
    }
    let untrusted = ApiClient::builder(&setup.api.url).build().unwrap();
    assert!(matches!(
        untrusted.health().await.unwrap_err(),
        ClientError::Tls { untrusted_certificate: true, .. }
    ));
    let without_key =
        ApiClient::builder(&setup.api.url).trust_ca_pem(setup.api.ca_pem.clone()).build().unwrap();
    assert!(without_key.health().await.is_ok());
    assert!(matches!(
        without_key.list_pools().await.unwrap_err(),
        ClientError::Api { status: 401, .. }
    ));

    let plain_http = ApiClient::builder(setup.api.url.replace("https", "http")).build().unwrap();
    assert!(matches!(plain_http.health().await.unwrap_err(), ClientError::Unreachable { .. }));
}

// ---- against the real server (no launcher: runs wait for a worker) ----------------

/// The binary against a real server: its URL, its CA (`ca.pem` in `dir`) and its admin
/// key. The future owns what it needs, so it can be spawned.
fn gantry_on(
    server: &gantry_testkit::TestServer,
    dir: &Path,
    args: &[&str],
) -> impl Future<Output = Ran> + use<> {
    gantry_as(server, &server.admin_key, dir, args)
}

/// The binary against a real server, with the API key `key`.
fn gantry_as(
    server: &gantry_testkit::TestServer,
    key: &str,
    dir: &Path,
    args: &[&str],
) -> impl Future<Output = Ran> + use<> {
    let full: Vec<String> = ["--api-url", server.url.as_str(), "--ca-file", "ca.pem"]
        .iter()
        .chain(args)
        .map(|arg| (*arg).to_owned())
        .collect();
    let (dir, key) = (dir.to_owned(), key.to_owned());
    async move {
        let mut command = tokio::process::Command::from(gantry(&dir));
        command.args(&full).env("GANTRY_API_KEY", key).kill_on_drop(true);
        let ran: Ran = tokio::time::timeout(Duration::from_secs(60), command.output())
            .await
            .expect("gantry exits")
            .unwrap()
            .into();
        ran
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_speaks_the_real_servers_api() {
    let server = gantry_testkit::TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &server.ca_pem).unwrap();
    let gantry = |args: &[&str]| gantry_on(&server, dir.path(), args);

    assert_eq!(run_sync(dir.path(), &["keygen", "--name", "build"]).code, 0);
    let ran =
        gantry(&["--output", "json", "pool", "create", "--name", "build", "--csr", "build.csr"])
            .await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let created: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    let token = gantry_crypto::PoolToken::decode(created["token"].as_str().unwrap()).unwrap();
    let key = std::fs::read_to_string(dir.path().join("build.key")).unwrap();
    gantry_crypto::PoolPrivateKey::from_pem(&key)
        .unwrap()
        .ensure_matches(&token.pool_certificate().unwrap())
        .unwrap();

    let ran = gantry(&["pool", "show", "build"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("No workers."), "{ran:?}");
    let ran = gantry(&["pool", "show", "nope"]).await;
    assert_eq!(ran.code, 1, "{ran:?}");

    let ran = gantry(&[
        "stack",
        "create",
        "--name",
        "web",
        "--repository",
        "file:///srv/git/web.git",
        "--pool",
        "build",
        "--secret-env",
        "TF_VAR_password=hunter2",
    ])
    .await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(
        ran.stdout.contains("TF_VAR_password=(secret)") && !ran.stdout.contains("hunter2"),
        "{ran:?}"
    );

    let ran = gantry(&["--output", "json", "run", "trigger", "web"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let run: gantry_proto::api::Run = serde_json::from_str(&ran.stdout).unwrap();
    let id = run.id.to_string();

    // Follow in the background, then discard: the follower sees the end and exits 1.
    let follow = tokio::spawn(gantry(&["run", "logs", &id, "--follow"]));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let ran = gantry(&["run", "show", &id]).await;
    assert!(
        ran.stdout.contains("State:        QUEUED") || ran.stdout.contains("State:        READY"),
        "{ran:?}"
    );
    assert!(ran.stdout.contains("Waiting:"), "{ran:?}");
    let ran = gantry(&["run", "discard", &id]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let ran = follow.await.unwrap();
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.contains("ended DISCARDED"), "{ran:?}");

    let ran = gantry(&["run", "list", "--stack", "web"]).await;
    assert!(ran.stdout.contains("DISCARDED"), "{ran:?}");
    let ran = gantry(&["run", "logs", &id]).await;
    assert_eq!((ran.code, ran.stdout.as_str()), (0, ""), "{ran:?}");
    server.stop().await;
}

/// A real server with a managed-state stack `db` on pool `build`, whose one worker the
/// test drives as a launcher would; the directory holds the server's CA for the binary.
struct ManagedDb {
    server: gantry_testkit::TestServer,
    dir: tempfile::TempDir,
    launcher: gantry_testkit::ScriptedLauncher,
    client: ApiClient,
}

impl ManagedDb {
    async fn start() -> Self {
        let server = gantry_testkit::TestServer::start().await;
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &server.ca_pem).unwrap();
        let pool = server.create_pool("build").await;
        let pool_id = gantry_crypto::PoolToken::decode(&pool.token).unwrap().pool_id;
        let launcher = gantry_testkit::ScriptedLauncher::connect(
            &server,
            &pool_id,
            &pool.private_key_pem,
            serde_json::json!({}),
        )
        .await;
        let create = ["stack", "create", "--name", "db", "--repository", "file:///srv/git/db.git"];
        let args = [&create[..], &["--pool", "build", "--managed-state"]].concat();
        let ran = gantry_on(&server, dir.path(), &args).await;
        assert_eq!(ran.code, 0, "{ran:?}");
        let client = ApiClient::builder(&server.url)
            .api_key(&server.admin_key)
            .trust_ca_pem(server.ca_pem.clone())
            .build()
            .unwrap();
        Self { server, dir, launcher, client }
    }
}

/// A task that changes the stack's state.
fn task_applying() -> gantry_proto::api::TriggerRun {
    gantry_proto::api::TriggerRun {
        run_type: gantry_domain::RunType::Task,
        commit: None,
        command: Some("terraform apply -auto-approve".to_owned()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_versions_are_listed_and_rolled_back_on_the_real_server() {
    use gantry_proto::api::{StateVersion, StateVersionList};
    let ManagedDb { server, dir, launcher, client } = ManagedDb::start().await;
    let gantry = |args: &[&str]| gantry_on(&server, dir.path(), args);
    let ran = gantry(&["stack", "state", "list", "db"]).await;
    assert_eq!(ran.stdout, "Stack db has no state yet: its first apply stores one.\n", "{ran:?}");

    // Two tasks store two versions, through the agent plane as a launcher would.
    let task = task_applying;
    let mut runs = Vec::new();
    for state in ["sealed state 1", "sealed state 2"] {
        let run = client.trigger_run("db", &task()).await.unwrap().id.to_string();
        launcher.perform_storing_state(&run, state.as_bytes()).await;
        runs.push(run);
    }

    let ran = gantry(&["stack", "state", "list", "db"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert!(lines[0].starts_with("VERSION  CURRENT  RUN"), "{ran:?}");
    assert!(lines[1].starts_with(&format!("2        yes      {}  14 B", runs[1])), "{ran:?}");
    assert!(lines[2].starts_with(&format!("1        no       {}  14 B", runs[0])), "{ran:?}");
    assert!(ran.stdout.contains("gantry stack state rollback db --to VERSION"), "{ran:?}");

    let ran = gantry(&["stack", "state", "rollback", "db", "--to", "1"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(
        ran.stdout.starts_with("Stack db's current state is now version 3, a copy of version 1"),
        "{ran:?}"
    );
    assert!(ran.stdout.contains(&runs[0]), "{ran:?}");
    let ran = gantry(&["stack", "state", "list", "db", "--output", "json"]).await;
    let list: StateVersionList = serde_json::from_str(&ran.stdout).unwrap();
    let newest = &list.versions[0];
    assert_eq!((newest.version, newest.current, newest.rollback_of), (3, true, Some(1)));
    assert_eq!(
        (newest.run_id.to_string(), newest.rolled_back_by.as_deref()),
        (runs[0].clone(), Some("admin"))
    );
    let ran = gantry(&["stack", "state", "list", "db"]).await;
    assert!(ran.stdout.lines().nth(1).unwrap().ends_with("1 (by admin)"), "{ran:?}");

    // Refusals exit 1 with the server's reason; a missing --to is a usage error.
    let ran = gantry(&["stack", "state", "rollback", "db", "--to", "3"]).await;
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.contains("version 3 is already the current state of stack db"), "{ran:?}");
    let ran = gantry(&["stack", "state", "rollback", "db", "--to", "9"]).await;
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(
        ran.stderr.contains("stack db has no state version 9: it keeps versions 1 to 3"),
        "{ran:?}"
    );
    let holder = client.trigger_run("db", &task()).await.unwrap().id.to_string();
    launcher.take(&holder, "plan").await;
    let ran = gantry(&["stack", "state", "rollback", "db", "--to", "2"]).await;
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.contains(&format!("while its TASK run {holder} is PREPARING")), "{ran:?}");
    launcher.report(&holder, serde_json::json!({"kind": "failed", "message": "test"})).await;
    let ran = gantry(&["--output", "json", "stack", "state", "rollback", "db", "--to", "2"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let version: StateVersion = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!((version.version, version.run_id.to_string()), (4, runs[1].clone()));
    let ran = gantry(&["stack", "state", "rollback", "db"]).await;
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(ran.stderr.contains("--to <VERSION>"), "{ran:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_orphaned_state_version_is_listed_and_adopted_on_the_real_server() {
    use gantry_proto::api::{StateVersion, StateVersionList};
    let ManagedDb { server, dir, launcher, client } = ManagedDb::start().await;
    let gantry = |args: &[&str]| gantry_on(&server, dir.path(), args);
    let task = task_applying;
    let first = client.trigger_run("db", &task()).await.unwrap().id.to_string();
    launcher.perform_storing_state(&first, b"sealed state 1").await;
    // A task whose run ended before the state it applied arrived: kept, orphaned.
    let late = client.trigger_run("db", &task()).await.unwrap().id.to_string();
    launcher.take(&late, "plan").await;
    launcher
        .report(&late, serde_json::json!({"kind": "phase_started", "phase": "PERFORMING"}))
        .await;
    launcher.report(&late, serde_json::json!({"kind": "failed", "message": "interrupted"})).await;
    let (status, stored) = launcher.put_blob(&late, "state", b"sealed state 2").await;
    assert_eq!((status, &stored["orphaned"]), (202, &serde_json::json!(true)), "{stored}");

    let ran = gantry(&["stack", "state", "list", "db"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert!(lines[1].starts_with(&format!("2        orphaned  {late}  14 B")), "{ran:?}");
    assert!(lines[2].starts_with(&format!("1        yes       {first}  14 B")), "{ran:?}");
    assert!(
        ran.stdout.contains("kept until adopted: gantry stack state adopt db VERSION"),
        "{ran:?}"
    );
    let ran = gantry(&["stack", "state", "list", "db", "--output", "json"]).await;
    let list: StateVersionList = serde_json::from_str(&ran.stdout).unwrap();
    let orphaned: Vec<(u64, bool, bool)> =
        list.versions.iter().map(|v| (v.version, v.current, v.orphaned)).collect();
    assert_eq!(orphaned, [(2, false, true), (1, true, false)]);

    // Only an orphaned version is adopted; a rollback to one is pointed at adoption.
    let ran = gantry(&["stack", "state", "adopt", "db", "1"]).await;
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.contains("version 1 of stack db is not orphaned"), "{ran:?}");
    let ran = gantry(&["stack", "state", "rollback", "db", "--to", "2"]).await;
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.contains("adopt it instead, with gantry stack state adopt db 2"), "{ran:?}");
    let ran = gantry(&["stack", "state", "adopt", "db", "2"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(
        ran.stdout.starts_with(&format!(
            "Stack db's current state is now version 3, a copy of orphaned version 2 as run {late}"
        )),
        "{ran:?}"
    );
    let ran = gantry(&["stack", "state", "list", "db"]).await;
    assert!(ran.stdout.lines().nth(1).unwrap().ends_with("adopts 2 (by admin)"), "{ran:?}");
    let ran = gantry(&["--output", "json", "stack", "state", "adopt", "db", "2"]).await;
    let again: StateVersion = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!((again.version, again.adopted_from, again.current), (4, Some(2), true));
    let ran = gantry(&["stack", "state", "adopt", "db"]).await;
    assert_eq!(ran.code, 2, "{ran:?}");
    assert!(ran.stderr.contains("<VERSION>"), "{ran:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_created_listed_and_revoked_and_a_revoked_key_fails_at_once() {
    let server = gantry_testkit::TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &server.ca_pem).unwrap();
    let admin = |args: &[&str]| gantry_on(&server, dir.path(), args);
    assert_eq!(run_sync(dir.path(), &["keygen", "--name", "build"]).code, 0);
    let ran = admin(&["pool", "create", "--name", "build", "--csr", "build.csr"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let repository = "file:///srv/git/web.git";
    let ran =
        admin(&["stack", "create", "--name", "web", "--repository", repository, "--pool", "build"])
            .await;
    assert_eq!(ran.code, 0, "{ran:?}");

    let ran = admin(&[
        "--output",
        "json",
        "key",
        "create",
        "--name",
        "deployer",
        "--role",
        "writer",
        "--scope",
        "pool:build",
        "--expires-in",
        "30d",
    ])
    .await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let created: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("gak_"), "{ran:?}");
    let deployer = |args: &[&str]| gantry_as(&server, &secret, dir.path(), args);

    let ran = admin(&["key", "list"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let line = ran.stdout.lines().find(|line| line.starts_with("deployer")).unwrap();
    for column in ["writer", "pool:build", "active", "admin"] {
        assert!(line.contains(column), "{column}: {ran:?}");
    }
    assert!(!ran.stdout.contains(&secret), "the secret is shown once: {ran:?}");

    // The run records the key that triggered it.
    let ran = deployer(&["--output", "json", "run", "trigger", "web"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let run: gantry_proto::api::Run = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(run.triggered_by, "deployer");
    // A writer manages no keys and no pools.
    let ran = deployer(&["key", "list"]).await;
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.contains("has the role writer; this needs admin"), "{ran:?}");
    let ran = deployer(&["pool", "drain", "build"]).await;
    assert_eq!(ran.code, 1, "{ran:?}");

    let ran = admin(&["key", "revoke", "deployer"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("Revoked API key deployer"), "{ran:?}");
    let ran = deployer(&["pool", "list"]).await;
    assert_eq!(ran.code, 1, "the next call fails: {ran:?}");
    assert!(ran.stderr.contains("the API key is not valid"), "{ran:?}");
    // The last admin key is kept.
    let ran = admin(&["key", "revoke", "admin"]).await;
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.contains("last admin key"), "{ran:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_fails_a_stuck_run_and_others_cannot() {
    use gantry_proto::api::TriggerRun;
    let server = gantry_testkit::TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &server.ca_pem).unwrap();
    let admin = |args: &[&str]| gantry_on(&server, dir.path(), args);
    let pool = server.create_pool("build").await;
    let pool_id = gantry_crypto::PoolToken::decode(&pool.token).unwrap().pool_id;
    let launcher = gantry_testkit::ScriptedLauncher::connect(
        &server,
        &pool_id,
        &pool.private_key_pem,
        serde_json::json!({}),
    )
    .await;
    let create = ["stack", "create", "--name", "db", "--repository", "file:///srv/git/db.git"];
    let ran = admin(&[&create[..], &["--pool", "build"]].concat()).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let client = ApiClient::builder(&server.url)
        .api_key(&server.admin_key)
        .trust_ca_pem(server.ca_pem.clone())
        .build()
        .unwrap();
    let task = TriggerRun {
        run_type: gantry_domain::RunType::Task,
        commit: None,
        command: Some("terraform state list".to_owned()),
    };
    let run = client.trigger_run("db", &task).await.unwrap().id.to_string();
    launcher.take(&run, "plan").await;
    launcher
        .report(&run, serde_json::json!({"kind": "phase_started", "phase": "PERFORMING"}))
        .await;

    let ran =
        admin(&["--output", "json", "key", "create", "--name", "ops", "--role", "operator"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let created: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    let operator = created["secret"].as_str().unwrap().to_owned();
    let fail = ["run", "fail", run.as_str(), "--reason", "launcher host is gone"];
    let ran = gantry_as(&server, &operator, dir.path(), &fail).await;
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.contains("needs admin"), "{ran:?}");
    let ran = admin(&["run", "fail", run.as_str()]).await;
    assert_eq!(ran.code, 2, "the reason is required: {ran:?}");

    let ran = admin(&fail).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert_eq!(ran.stdout, format!("Failed run {run} of stack db: FAILED\n"), "{ran:?}");
    let ran = admin(&["run", "show", run.as_str()]).await;
    assert!(ran.stdout.contains("launcher host is gone"), "{ran:?}");
    let ran = admin(&fail).await;
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.contains("has already ended (FAILED)"), "{ran:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_log_lists_changes_and_verify_names_the_first_altered_entry() {
    let server = gantry_testkit::TestServer::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ca.pem"), &server.ca_pem).unwrap();
    let admin = |args: &[&str]| gantry_on(&server, dir.path(), args);
    let ran = admin(&["key", "create", "--name", "auditor", "--role", "reader"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let ran = admin(&["audit", "list", "--since", "1h"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("POST /api/v1/keys") && ran.stdout.contains("ok 201"), "{ran:?}");
    let ran = admin(&["--output", "json", "audit", "list", "--actor", "nobody"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    let listed: serde_json::Value = serde_json::from_str(&ran.stdout).unwrap();
    assert_eq!(listed["entries"], serde_json::json!([]), "{ran:?}");
    let ran = admin(&["audit", "verify"]).await;
    assert_eq!(ran.code, 0, "{ran:?}");
    assert!(ran.stdout.contains("intact chain"), "{ran:?}");

    let url = format!("sqlite://{}", server.data_dir.path().join("gantry.db").display());
    let mut db = <sqlx::SqliteConnection as sqlx::Connection>::connect(&url).await.unwrap();
    sqlx::query("UPDATE audit_log SET actor = 'key:someone-else' WHERE seq = 1")
        .execute(&mut db)
        .await
        .unwrap();
    let ran = admin(&["audit", "verify"]).await;
    assert_eq!(ran.code, 1, "{ran:?}");
    assert!(ran.stderr.contains("broken at entry 1"), "{ran:?}");
    server.stop().await;
}
