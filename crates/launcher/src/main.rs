//! `gantry-launcher`: reads its configuration from `GANTRY_*` variables, then runs until
//! SIGTERM or SIGINT (a second signal stops running runs at once). `init` and `sidecar`
//! host one run in a Kubernetes run Pod instead (see `--help`).

use std::process::ExitCode;
use std::sync::Arc;

use gantry_domain::options::{self, Env};
use gantry_launcher::config::{EXIT_USAGE, ExecutorKind};
use gantry_launcher::pod::{InitConfig, SidecarConfig};
use gantry_launcher::{DockerExecutor, Executor, LauncherConfig, ProcessExecutor, Shutdown};
use gantry_proto::local::CAPABILITY_ENV;
use tokio_util::sync::CancellationToken;

const HELP: &str = "\
gantry-launcher: runs a Gantry worker pool's runs; holds the pool key, which no worker sees.

Usage:
  gantry-launcher           keep the pool's workers registered, take assignments and run
                            each worker as a process or a container (GANTRY_LAUNCHER_EXECUTOR)
  gantry-launcher init      in a Kubernetes run Pod, as its init container: prepare the one
                            run in GANTRY_ASSIGNMENT_FILE (policy, checkout or the decrypted
                            planned workspace, managed state) into GANTRY_WORKSPACE_DIR, put
                            the verified worker binary into GANTRY_BINARIES_DIR, then exit
                            (non-zero when the run failed; the server was told why)
  gantry-launcher sidecar   in a Kubernetes run Pod, as its native sidecar: serve the worker
                            container's local API on GANTRY_SOCKET_DIR/worker.sock (capability
                            GANTRY_WORKER_CAPABILITY), relay its log, upload sealed state; on
                            SIGTERM make sure the server knows how the run ended, then exit
  gantry-launcher --help    this text

Every mode reads GANTRY_TOKEN and GANTRY_POOL_PRIVATE_KEY (or _FILE); init and sidecar also
GANTRY_LAUNCHER_ID (the operator's launcher id: the Pod acts as that launcher, on one run,
and never closes its session). Every variable: docs/configuration.md. A bad setting stops
the program at start with a message naming the variable, and exit code 64.
";

/// The variables that never stay in the launcher's environment block: the pool's key and
/// token, and in a run Pod's sidecar the worker's capability.
const SECRET_VARIABLES: [&str; 3] = [options::TOKEN, options::POOL_PRIVATE_KEY, CAPABILITY_ENV];

/// What the command line asks for.
enum Mode {
    Launcher,
    Init,
    Sidecar,
}

fn main() -> ExitCode {
    let arguments: Vec<String> = std::env::args().skip(1).collect();
    let mode = match arguments.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        [] => Mode::Launcher,
        ["init"] => Mode::Init,
        ["sidecar"] => Mode::Sidecar,
        ["--help" | "-h" | "help"] => {
            print!("{HELP}");
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!(
                "gantry-launcher: unexpected arguments {arguments:?}: expected none, init or sidecar (see --help)"
            );
            return ExitCode::from(EXIT_USAGE as u8);
        }
    };
    // First, before any thread or child: the key and token leave the environment block
    // (the launcher re-executes itself without them, so /proc/<pid>/environ never shows
    // them again, not even to root), and the process becomes non-dumpable, so that no
    // other process of its user (a worker, a run's code) can read its memory.
    let secrets = match gantry_secret_env::take_from_environment(&SECRET_VARIABLES) {
        Ok(secrets) => secrets,
        Err(error) => {
            eprintln!("gantry-launcher: {error}");
            return ExitCode::FAILURE;
        }
    };
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GANTRY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let mut env: Env = std::env::vars().collect();
    env.extend(secrets.iter().map(|(name, value)| (name.to_owned(), value.to_owned())));
    drop(secrets);
    let config = match LauncherConfig::from_env(&env) {
        Ok(config) => config,
        Err(error) => return usage_error(&error),
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("gantry-launcher: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match mode {
        Mode::Launcher => runtime.block_on(launcher(config)),
        Mode::Init => match InitConfig::from_env(&env) {
            Ok(init) => runtime.block_on(async move {
                let stop = CancellationToken::new();
                tokio::spawn(cancel_on_signal(stop.clone()));
                pod_exit(gantry_launcher::pod::init(config, init, stop).await)
            }),
            Err(error) => usage_error(&error),
        },
        Mode::Sidecar => match SidecarConfig::from_env(&env) {
            Ok(sidecar) => runtime.block_on(async move {
                let terminated = CancellationToken::new();
                tokio::spawn(cancel_on_signal(terminated.clone()));
                pod_exit(gantry_launcher::pod::sidecar(config, sidecar, terminated).await)
            }),
            Err(error) => usage_error(&error),
        },
    }
}

fn usage_error(error: &gantry_launcher::ConfigError) -> ExitCode {
    eprintln!("gantry-launcher: {error}");
    ExitCode::from(EXIT_USAGE as u8)
}

fn pod_exit(result: Result<(), gantry_launcher::pod::PodError>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gantry-launcher: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

async fn launcher(config: LauncherConfig) -> ExitCode {
    let shutdown = Shutdown::default();
    tokio::spawn(watch_signals(shutdown.clone()));
    let executor: Arc<dyn Executor> = match &config.executor {
        ExecutorKind::Process => {
            let executor = ProcessExecutor::for_launcher(
                config.passthrough_env.clone(),
                config.worker_slots,
                config.run_uid_base,
            );
            match executor {
                Ok(executor) => {
                    tracing::info!("process executor: {}", executor.isolation());
                    Arc::new(executor)
                }
                Err(error) => {
                    eprintln!("gantry-launcher: {error}");
                    return ExitCode::from(EXIT_USAGE as u8);
                }
            }
        }
        ExecutorKind::Docker(settings) => {
            let connected =
                DockerExecutor::connect(settings.clone(), config.pool_id, &config.work_dir).await;
            match connected {
                Ok(executor) => Arc::new(executor),
                Err(error) => {
                    eprintln!("gantry-launcher: {error}");
                    return ExitCode::from(EXIT_USAGE as u8);
                }
            }
        }
    };
    match gantry_launcher::run(config, executor, shutdown).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("gantry-launcher: {error}");
            ExitCode::from(EXIT_USAGE as u8)
        }
    }
}

/// First SIGTERM/SIGINT: stop taking work, let runs finish. Second: stop them now.
async fn watch_signals(shutdown: Shutdown) {
    let Some(mut signals) = StopSignals::listen() else { return };
    for stage in [&shutdown.graceful, &shutdown.immediate] {
        signals.next().await;
        stage.cancel();
    }
}

/// In a Pod, one SIGTERM is all kubelet sends before it kills.
async fn cancel_on_signal(token: CancellationToken) {
    let Some(mut signals) = StopSignals::listen() else { return };
    signals.next().await;
    token.cancel();
}

/// SIGTERM (kubelet, systemd) and SIGINT (a terminal), as one series of stop requests.
struct StopSignals {
    terminate: tokio::signal::unix::Signal,
    interrupt: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn listen() -> Option<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Some(Self {
            terminate: signal(SignalKind::terminate()).ok()?,
            interrupt: signal(SignalKind::interrupt()).ok()?,
        })
    }

    async fn next(&mut self) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
    }
}
