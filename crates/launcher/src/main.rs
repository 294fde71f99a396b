//! `gantry-launcher`: reads its configuration from `GANTRY_*` variables, then runs until
//! SIGTERM or SIGINT (a second signal stops running runs at once).

use std::process::ExitCode;
use std::sync::Arc;

use gantry_launcher::config::{EXIT_USAGE, ExecutorKind};
use gantry_launcher::{DockerExecutor, Executor, LauncherConfig, ProcessExecutor, Shutdown};

fn main() -> ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // The pool key is in this process's environment and memory: a non-dumpable process's
    // /proc/<pid>/environ and memory are readable by root only, not by other processes of
    // the same user (and it never writes a core dump).
    if let Err(error) = nix::sys::prctl::set_dumpable(false) {
        eprintln!("gantry-launcher: cannot mark the process non-dumpable: {error}");
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("GANTRY_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let env = std::env::vars().collect();
    let config = match LauncherConfig::from_env(&env) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("gantry-launcher: {error}");
            return ExitCode::from(EXIT_USAGE as u8);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("gantry-launcher: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let shutdown = Shutdown::default();
        tokio::spawn(watch_signals(shutdown.clone()));
        let executor: Arc<dyn Executor> = match &config.executor {
            ExecutorKind::Process => Arc::new(ProcessExecutor::new(config.passthrough_env.clone())),
            ExecutorKind::Docker(settings) => {
                let connected =
                    DockerExecutor::connect(settings.clone(), config.pool_id, &config.work_dir)
                        .await;
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
    })
}

/// First SIGTERM/SIGINT: stop taking work, let runs finish. Second: stop them now.
async fn watch_signals(shutdown: Shutdown) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut terminate), Ok(mut interrupt)) =
        (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
    else {
        return;
    };
    for stage in [&shutdown.graceful, &shutdown.immediate] {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
        stage.cancel();
    }
}
