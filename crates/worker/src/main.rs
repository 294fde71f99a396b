//! `gantry-worker`: reads its configuration from the environment the launcher set and
//! runs the job; the exit code tells the launcher how it ended.

use std::process::ExitCode;

use gantry_proto::local::CAPABILITY_ENV;
use gantry_worker::{Config, Termination, WorkerError};

fn main() -> ExitCode {
    // First, before the runtime's threads and any child: the capability leaves this
    // process's environment block (the tool could read it in /proc/<worker>/environ,
    // root even from a non-dumpable worker), and the worker becomes non-dumpable so
    // that the tool, running as the same user, cannot read its memory either.
    let result = gantry_secret_env::take_from_environment(&[CAPABILITY_ENV])
        .map_err(WorkerError::from)
        .and_then(|secrets| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(WorkerError::Runtime)?;
            runtime.block_on(start(&secrets))
        });
    match result {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(error) => {
            eprintln!("gantry-worker: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

async fn start(
    secrets: &gantry_secret_env::Secrets,
) -> Result<gantry_worker::Outcome, WorkerError> {
    let config = Config::from_env(secrets)?;
    let termination = Termination::from_signals()?;
    gantry_worker::end_with_launcher()?;
    gantry_worker::run(config, termination).await
}
