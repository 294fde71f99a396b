//! `gantry stack state list|rollback`: the versions of a stack's managed state that the
//! server keeps, and returning to an earlier one when a run left a state the stack
//! cannot run from.

use clap::Subcommand;

use super::{Context, Outcome};
use crate::output::{self, print_json};

const ROLLBACK_AFTER_HELP: &str = "\
A rollback adds a version: a copy of the one named, with the run that produced it (its
encryption is bound to that run), so history is kept and a rollback can itself be undone.
It is refused while a tracked run or task of the stack holds its lock, since that run
would store its own state over it.

Example:
  gantry stack state list network
  gantry stack state rollback network --to 41";

#[derive(Debug, Subcommand)]
pub enum StateCommand {
    /// List the kept versions of a stack's managed state, the current one first
    #[command(after_help = "Example:\n  gantry stack state list network --output json")]
    List {
        /// Stack name or id
        stack: String,
    },
    /// Make an earlier version the stack's current state again, as a new version
    #[command(after_help = ROLLBACK_AFTER_HELP)]
    Rollback {
        /// Stack name or id
        stack: String,
        /// The version to return to, as `state list` shows it
        #[arg(long, value_name = "VERSION")]
        to: u64,
    },
}

pub async fn run(context: &Context, command: &StateCommand) -> anyhow::Result<Outcome> {
    let client = context.api_client()?;
    match command {
        StateCommand::List { stack } => {
            let list = client.state_versions(stack).await?;
            if context.is_json() {
                print_json(&list)?;
            } else {
                print!("{}", output::state_versions_table(&list, output::now()));
            }
        }
        StateCommand::Rollback { stack, to } => {
            let version = client.rollback_state(stack, *to).await?;
            if context.is_json() {
                print_json(&version)?;
            } else {
                print!("{}", output::rollback_text(stack, &version));
            }
        }
    }
    Ok(Outcome::Success)
}
