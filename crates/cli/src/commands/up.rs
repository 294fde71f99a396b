//! `gantry up`: the whole product on one machine, in one process — the server, a local
//! private pool and its launcher (connected through the same HTTPS agent plane a remote
//! launcher uses), and an example stack whose tracked run it triggers and follows. State
//! lives in a data directory and is reused on the next start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context as _;
use clap::Args;
use gantry_crypto::{PoolToken, generate_pool_key};
use gantry_domain::RunType;
use gantry_launcher::{LauncherConfig, ProcessExecutor, Shutdown};
use gantry_proto::api::{CreatePool, CreateStack, TriggerRun};
use gantry_server::config::{DATA_DIR, LISTEN};
use gantry_server::{CA_FILE, Server, ServerConfig};

use super::run::follow_on_stdout;
use super::signals::{StopSignals, init_tracing};
use super::{Outcome, UsageError};
use crate::client::{ApiClient, ClientError};
use crate::config::ClientFile;

const POOL_NAME: &str = "local";
const STACK_NAME: &str = "example";
const EXAMPLE_CONFIG: &str = include_str!("../../../../examples/hello/main.tf");
const ADMIN_KEY_FILE: &str = "admin-key";

const AFTER_HELP: &str = "\
gantry up keeps everything in the data directory (default ./.gantry) and reuses it on the
next start: the database, the local pool's key, the example repository. It writes
.gantry/client.json, so gantry commands run in this directory need no setup:

  gantry run list
  gantry run trigger example --follow
  gantry worker list

The launcher runs workers as child processes of this process (the process executor):
fine on your own machine; production pools run gantry-launcher with Docker.
Ctrl-C stops everything cleanly (a run in progress gets 10 s); a second Ctrl-C at once.";

#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct UpArgs {
    /// Where the server, the pool and the example keep their state
    #[arg(long, value_name = "DIR", default_value = ".gantry")]
    pub data_dir: PathBuf,
    /// Address and port the server listens on (127.0.0.1:0 picks a free port)
    #[arg(long, value_name = "ADDRESS", default_value = "127.0.0.1:8443")]
    pub listen: String,
    /// Do not create the example stack or trigger its run
    #[arg(long)]
    pub no_example: bool,
}

pub async fn run(args: &UpArgs) -> anyhow::Result<Outcome> {
    init_tracing("warn");
    // This process holds the pool key and the server's keys in memory, and its workers
    // run as its user: non-dumpable, they cannot read its memory (/proc/<pid>/mem,
    // ptrace). Its environment never holds the key: the launcher gets it in a map.
    nix::sys::prctl::set_dumpable(false).context("failed to mark the process non-dumpable")?;
    let stop = StopSignals::listen()?;
    let mut env: gantry_domain::options::Env =
        std::env::vars().filter(|(name, _)| name.starts_with("GANTRY_SERVER_")).collect();
    env.insert(DATA_DIR.to_owned(), args.data_dir.display().to_string());
    env.insert(LISTEN.to_owned(), args.listen.clone());
    let config = ServerConfig::resolve(None, &env).map_err(|e| UsageError(e.to_string()))?;

    let mut server = Server::start(config).await.map_err(|error| match error {
        gantry_server::StartError::Listen { address, source } => anyhow::anyhow!(
            "cannot listen on {address}: {source} (is another gantry up running? --listen 127.0.0.1:0 picks a free port)"
        ),
        other => other.into(),
    })?;
    if let Some(path) = server.generated_master_key() {
        println!("{}", super::server::generated_master_key_notice(path));
    }
    let api_url = server.public_url().to_owned();
    let ca_pem = server.ca_certificate_pem().to_owned();
    let api_key = admin_key(&mut server, &args.data_dir).await?;
    let ca_file = args.data_dir.join(CA_FILE);
    ClientFile {
        api_url: api_url.clone(),
        api_key: api_key.clone(),
        ca_file: Some(ca_file.clone()),
    }
    .write(&args.data_dir.join("client.json"))
    .context("failed to write the CLI's client.json")?;

    let server_stop = tokio_util::sync::CancellationToken::new();
    let server_task = tokio::spawn(server.serve(server_stop.clone().cancelled_owned()));
    println!("Gantry server listening on {api_url}");

    let client = ApiClient::builder(api_url.clone())
        .api_key(api_key.clone())
        .trust_ca_pem(ca_pem.clone())
        .build()?;
    let pool = local_pool(&client, &args.data_dir.join("local-pool")).await?;
    let token = PoolToken::new(api_url.clone(), Some(ca_pem), pool.id, pool.certificate_pem);
    let launcher_config = launcher_config(&token, &pool.private_key_pem, &args.data_dir)?;
    let shutdown =
        Shutdown { graceful: stop.graceful.child_token(), immediate: stop.immediate.child_token() };
    // For local use: runs execute as the user who started `gantry up`, like any program
    // they run themselves. A pool for code of other people uses the docker executor.
    let executor = Arc::new(ProcessExecutor::new(launcher_config.passthrough_env.clone()));
    let launcher_task = tokio::spawn(gantry_launcher::run(launcher_config, executor, shutdown));
    println!("Local pool {POOL_NAME:?} started: its launcher runs in this process");
    println!(
        "Runs execute as processes of your own user (the process executor, for local use): \
         a pool that runs other people's code should use gantry-launcher with the docker executor"
    );

    if !args.no_example {
        tokio::select! {
            shown = example_run(&client, &args.data_dir) => shown?,
            () = stop.graceful.cancelled() => {}
        }
    }
    if !stop.graceful.is_cancelled() {
        print_summary(&api_url, &api_key, &ca_file, &args.data_dir);
    }

    stop.graceful.cancelled().await;
    println!("\nStopping: the launcher finishes (a running run gets 10s), then the server.");
    match launcher_task.await {
        Ok(Ok(())) => {}
        Ok(Err(error)) => eprintln!("gantry: the launcher stopped with an error: {error}"),
        Err(error) => eprintln!("gantry: the launcher crashed: {error}"),
    }
    server_stop.cancel();
    tokio::select! {
        served = server_task => served??,
        () = stop.immediate.cancelled() => {}
    }
    println!(
        "Gantry stopped. Start it again with gantry up: the state in {} is reused.",
        args.data_dir.display()
    );
    Ok(Outcome::Success)
}

/// The admin key: created at the server's first start and kept (mode 0600) in the data
/// directory for this machine's CLI; issued anew if that file was removed.
async fn admin_key(server: &mut Server, data_dir: &Path) -> anyhow::Result<String> {
    let path = data_dir.join(ADMIN_KEY_FILE);
    if let Some(key) = server.take_initial_admin_key() {
        write_private(&path, &key)?;
        return Ok(key);
    }
    if let Ok(key) = std::fs::read_to_string(&path) {
        return Ok(key.trim().to_owned());
    }
    let key = server.issue_admin_key("gantry up").await?;
    write_private(&path, &key)?;
    Ok(key)
}

/// What the local pool's launcher needs; the pool token holds no secret, so it is
/// rebuilt at every start for the server's current address.
struct LocalPool {
    id: String,
    certificate_pem: String,
    private_key_pem: String,
}

/// The local pool: found again through the files kept in `dir`, or created with a new
/// P-256 key.
async fn local_pool(client: &ApiClient, dir: &Path) -> anyhow::Result<LocalPool> {
    let (id_file, certificate_file, key_file) =
        (dir.join("pool.id"), dir.join("pool.crt"), dir.join("pool.key"));
    if let (Ok(id), Ok(certificate_pem), Ok(private_key_pem)) = (
        std::fs::read_to_string(&id_file),
        std::fs::read_to_string(&certificate_file),
        std::fs::read_to_string(&key_file),
    ) {
        let id = id.trim().to_owned();
        match client.get_pool(&id).await {
            Ok(_) => return Ok(LocalPool { id, certificate_pem, private_key_pem }),
            Err(ClientError::Api { status: 404, .. }) => {}
            Err(error) => return Err(error.into()),
        }
    }
    let generated = generate_pool_key("gantry-up")?;
    let request = CreatePool {
        name: POOL_NAME.to_owned(),
        csr: generated.csr_pem,
        description: "The pool gantry up runs on this machine".to_owned(),
        labels: vec!["gantry-up".to_owned()],
    };
    let created = match client.create_pool(&request).await {
        Ok(created) => created,
        Err(ClientError::Api { status: 409, .. }) => anyhow::bail!(
            "a pool named {POOL_NAME:?} exists, but its key in {} is gone: remove the data directory to start over",
            dir.display()
        ),
        Err(error) => return Err(error.into()),
    };
    let token = PoolToken::decode(&created.token)?;
    std::fs::create_dir_all(dir).with_context(|| format!("failed to create {}", dir.display()))?;
    write_private(&key_file, &generated.private_key_pem)?;
    std::fs::write(&certificate_file, &token.certificate)
        .with_context(|| format!("failed to write {}", certificate_file.display()))?;
    std::fs::write(&id_file, &token.pool_id)
        .with_context(|| format!("failed to write {}", id_file.display()))?;
    println!("Created the pool {POOL_NAME:?} with a new EC P-256 key ({})", key_file.display());
    Ok(LocalPool {
        id: token.pool_id,
        certificate_pem: token.certificate,
        private_key_pem: generated.private_key_pem,
    })
}

/// The launcher's configuration: what a remote launcher would get from its environment,
/// plus the user's own `GANTRY_LAUNCHER_*`, `GANTRY_METADATA_*` and `GANTRY_DEBUG`.
fn launcher_config(
    token: &PoolToken,
    private_key_pem: &str,
    data_dir: &Path,
) -> anyhow::Result<LauncherConfig> {
    let mut env: gantry_domain::options::Env = std::env::vars()
        .filter(|(name, _)| {
            !name.starts_with("GANTRY_")
                || name.starts_with("GANTRY_LAUNCHER_")
                || name.starts_with("GANTRY_METADATA_")
                || name == "GANTRY_DEBUG"
                || name == "GANTRY_WORKER_BINARY"
        })
        .collect();
    env.insert("GANTRY_TOKEN".to_owned(), token.encode());
    env.insert("GANTRY_POOL_PRIVATE_KEY".to_owned(), private_key_pem.to_owned());
    env.insert("GANTRY_LAUNCHER_EXECUTOR".to_owned(), "process".to_owned());
    let work_dir = std::path::absolute(data_dir.join("launcher"))
        .context("failed to resolve the data directory")?;
    env.entry("GANTRY_LAUNCHER_WORK_DIR".to_owned())
        .or_insert_with(|| work_dir.display().to_string());
    env.entry("GANTRY_LAUNCHER_SHUTDOWN_GRACE".to_owned()).or_insert_with(|| "10s".to_owned());
    env.entry("GANTRY_METADATA_started_by".to_owned()).or_insert_with(|| "gantry up".to_owned());
    LauncherConfig::from_env(&env).map_err(|error| {
        UsageError(format!("the local launcher cannot start: {error} (build every binary with: cargo build --workspace --bins)"))
            .into()
    })
}

/// Creates the example stack (from a local git repository holding `examples/hello`) if
/// needed, triggers a tracked run and shows it until it ends.
async fn example_run(client: &ApiClient, data_dir: &Path) -> anyhow::Result<()> {
    let repository = example_repository(&data_dir.join("example-repo"))?;
    match client.get_stack(STACK_NAME).await {
        Ok(_) => {}
        Err(ClientError::Api { status: 404, .. }) => {
            let request = CreateStack {
                name: STACK_NAME.to_owned(),
                repository,
                branch: "main".to_owned(),
                project_root: String::new(),
                pool: Some(POOL_NAME.to_owned()),
                tool: None,
                runner_image: None,
                autodeploy: true,
                managed_state: true,
                share_sensitive_outputs: false,
                environment: vec![],
                description: "The example gantry up runs: two terraform_data resources".to_owned(),
                labels: vec!["example".to_owned()],
                trigger_paths: vec![],
            };
            client.create_stack(&request).await?;
            println!(
                "Created the stack {STACK_NAME:?} (autodeploy, state managed by Gantry) from examples/hello"
            );
        }
        Err(error) => return Err(error.into()),
    }
    let run = client
        .trigger_run(
            STACK_NAME,
            &TriggerRun { run_type: RunType::Tracked, commit: None, command: None },
        )
        .await?;
    println!("Triggered tracked run {} of {STACK_NAME:?}; its log follows:\n", run.id);
    let state = follow_on_stdout(client, &run).await?;
    let run = client.get_run(run.id).await?;
    println!("\nRun {} ended {state}", run.id);
    for output in &run.outputs {
        match &output.value {
            Some(value) => println!("  output {} = {value}", output.name),
            None => println!("  output {} = (sensitive)", output.name),
        }
    }
    if let Some(failure) = &run.failure {
        println!("  failure: {failure}");
    }
    Ok(())
}

/// The example repository: created once from the embedded example, then reused.
fn example_repository(path: &Path) -> anyhow::Result<String> {
    let absolute =
        std::path::absolute(path).context("failed to resolve the example repository path")?;
    if !absolute.join(".git").exists() {
        std::fs::create_dir_all(&absolute)
            .with_context(|| format!("failed to create {}", absolute.display()))?;
        std::fs::write(absolute.join("main.tf"), EXAMPLE_CONFIG)
            .context("failed to write the example")?;
        git(&absolute, &["init", "--quiet", "--initial-branch=main"])?;
        git(&absolute, &["add", "main.tf"])?;
        git(
            &absolute,
            &[
                "-c",
                "user.name=gantry up",
                "-c",
                "user.email=gantry-up@localhost",
                "commit",
                "--quiet",
                "-m",
                "Example stack",
            ],
        )?;
    }
    Ok(format!("file://{}", absolute.display()))
}

fn git(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let output = std::process::Command::new("git")
        .args(args)
        .current_dir(dir)
        .output()
        .context("failed to run git (gantry up needs git to serve the example repository)")?;
    anyhow::ensure!(
        output.status.success(),
        "git {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(())
}

fn write_private(path: &Path, content: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("failed to write {}", path.display()))?;
    file.write_all(content.as_bytes())
        .with_context(|| format!("failed to write {}", path.display()))
}

fn print_summary(api_url: &str, api_key: &str, ca_file: &Path, data_dir: &Path) {
    println!(
        "\nGantry is running.
  API        {api_url}
  Admin key  {api_key}   (kept in {key_file})
  CA         {ca}
  Data       {data}

In this directory, gantry commands need no setup (they read {data}/client.json):
  gantry run list
  gantry run trigger {STACK_NAME} --follow
  gantry worker list

Press Ctrl-C to stop.",
        key_file = data_dir.join(ADMIN_KEY_FILE).display(),
        ca = ca_file.display(),
        data = data_dir.display(),
    );
}
