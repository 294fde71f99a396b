//! `gantry stack state list|rollback|adopt`: the versions of a stack's managed state that
//! the server keeps, returning to an earlier one when a run left a state the stack
//! cannot run from, and adopting an orphaned one that a fenced-off run stored.

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

const ADOPT_AFTER_HELP: &str = "\
An orphaned version holds the state a run stored after it had lost the stack's lock (the
server had ended it, say as \"worker lost\", while it went on applying, or the lock had
passed on): the server keeps it, never as the current state. Adopting it adds a version:
a copy of it, with the run that produced it. It is refused while a tracked run or task of
the stack holds its lock, since that run would store its own state over it.

Example:
  gantry stack state list network
  gantry stack state adopt network 42";

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
    /// Make an orphaned version (stored by a run that had lost the stack's lock) the
    /// stack's current state, as a new version
    #[command(after_help = ADOPT_AFTER_HELP)]
    Adopt {
        /// Stack name or id
        stack: String,
        /// The orphaned version to adopt, as `state list` shows it
        #[arg(value_name = "VERSION")]
        orphan: u64,
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
        StateCommand::Adopt { stack, orphan } => {
            let adopted = client.adopt_state(stack, *orphan).await?;
            if context.is_json() {
                print_json(&adopted)?;
            } else {
                print!("{}", output::adoption_text(stack, &adopted));
            }
        }
    }
    Ok(Outcome::Success)
}
