//! The program: parse the command line, run the command on a Tokio runtime, and turn
//! its result into an exit status.

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::commands::{self, Context, Outcome};
use crate::exit;

/// Runs `gantry` with the process's arguments. Usage errors exit through clap (status 2).
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(exit::SOFTWARE);
        }
    };
    let result = runtime.block_on(dispatch(cli));
    ExitCode::from(match result {
        Ok(Outcome::Success) => exit::SUCCESS,
        Ok(Outcome::Unsuccessful) => exit::FAILURE,
        Err(error) => {
            let report = exit::report(&error);
            eprintln!("error: {}", report.message);
            report.code
        }
    })
}

/// Runs one parsed command line.
pub async fn dispatch(cli: Cli) -> anyhow::Result<Outcome> {
    let context = Context::new(&cli.global);
    match &cli.command {
        Command::Keygen(args) => commands::keygen::run(&context, args),
        Command::Pool(command) => commands::pool::run(&context, command).await,
        Command::Worker(command) => commands::worker::run(&context, command).await,
        Command::Stack(command) => commands::stack::run(&context, command).await,
        Command::Run(command) => commands::run::run(&context, command).await,
        Command::Key(command) => commands::key::run(&context, command).await,
        Command::Webhook(command) => commands::webhook::run(&context, command).await,
        Command::Audit(command) => commands::audit::run(&context, command).await,
        Command::Server(args) => commands::server::run(args).await,
        Command::WorkerBinary(command) => commands::release::run(&context, command),
        Command::Up(args) => commands::up::run(args).await,
    }
}
