//! `gantry-worker`: reads its configuration from the environment the launcher set and
//! runs the job; the exit code tells the launcher how it ended.

use std::process::ExitCode;

use gantry_worker::{Config, Termination, WorkerError};

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match start().await {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(error) => {
            eprintln!("gantry-worker: {error}");
            ExitCode::from(error.exit_code())
        }
    }
}

async fn start() -> Result<gantry_worker::Outcome, WorkerError> {
    let config = Config::from_env()?;
    let termination = Termination::from_signals()?;
    gantry_worker::end_with_launcher()?;
    gantry_worker::run(config, termination).await
}
