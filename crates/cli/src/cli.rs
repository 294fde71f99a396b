//! The command line: the clap root, the global flags, and the `Command` enum whose
//! variants are the command groups of `commands/`. Adding a command is a variant here
//! and an arm in `commands::dispatch`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::commands::{audit, key, keygen, pool, release, run, server, stack, up, webhook, worker};
use crate::config::ConfigFlags;
use crate::output::OutputFormat;

const AFTER_HELP: &str = "\
Getting started:
  gantry keygen                                  # a pool key and its CSR, in this directory
  gantry pool create --name build --csr pool.csr # prints the token and the launcher command
  gantry stack create --name web --repository https://git.example.com/web.git --pool build
  gantry run trigger web --follow

Connection settings come from the flags, then GANTRY_API_URL, GANTRY_API_KEY and
GANTRY_API_CA_FILE, then ./.gantry/client.json (written by gantry up), then the default
URL https://127.0.0.1:8443.

Exit status: 0 success; 1 the API refused the request or a followed run did not succeed;
2 invalid command line; 64 invalid configuration or input; 69 the API cannot be reached.";

/// The heading of the flags every command takes, listed after the command's own.
const GLOBAL: &str = "Global options";

/// Gantry: Terraform and OpenTofu runs on worker pools you host.
#[derive(Debug, Parser)]
#[command(name = "gantry", version, after_help = AFTER_HELP, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command accepts.
#[derive(Debug, Args)]
pub struct GlobalArgs {
    /// How to print results: tables for people, or the API's JSON for scripts [default:
    /// table]
    // clap prints the default of a global argument twice: it is stated above instead.
    #[arg(long, global = true, help_heading = GLOBAL, value_enum, default_value_t = OutputFormat::Table, hide_default_value = true)]
    pub output: OutputFormat,

    /// The Gantry API URL [env: GANTRY_API_URL] [default: from .gantry/client.json, else
    /// https://127.0.0.1:8443]
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "URL")]
    pub api_url: Option<String>,

    /// The API key [env: GANTRY_API_KEY]. Prefer the variable: command lines are visible
    /// to other users of the machine.
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "KEY")]
    pub api_key: Option<String>,

    /// A PEM file of a CA to trust in addition to the system's roots, for a server with
    /// a private certificate [env: GANTRY_API_CA_FILE]
    #[arg(long, global = true, help_heading = GLOBAL, value_name = "PEM_FILE")]
    pub ca_file: Option<PathBuf>,
}

impl GlobalArgs {
    pub fn config_flags(&self) -> ConfigFlags {
        ConfigFlags {
            api_url: self.api_url.clone(),
            api_key: self.api_key.clone(),
            ca_file: self.ca_file.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Generate a pool private key and its certificate signing request (no server needed)
    Keygen(keygen::KeygenArgs),
    /// Create and inspect worker pools
    #[command(subcommand)]
    Pool(pool::PoolCommand),
    /// List the workers of your pools
    #[command(subcommand)]
    Worker(worker::WorkerCommand),
    /// Create and inspect stacks: what runs, from which repository, on which pool
    #[command(subcommand)]
    Stack(stack::StackCommand),
    /// Trigger runs, follow their logs, confirm or discard their plans
    #[command(subcommand)]
    Run(run::RunCommand),
    /// Create, list and revoke API keys, each with a role and an optional scope (admins)
    #[command(subcommand)]
    Key(key::KeyCommand),
    /// Webhooks: pushes and pull requests that trigger runs, and their deliveries (admins)
    #[command(subcommand)]
    Webhook(webhook::WebhookCommand),
    /// List the audit log of changes and check its hash chain (admins)
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Run the Gantry server (the control plane)
    Server(server::ServerArgs),
    /// Sign worker binaries for launchers that download them
    #[command(subcommand, name = "worker-binary")]
    WorkerBinary(release::ReleaseCommand),
    /// Run everything on this machine: the server, a local pool and its launcher, and an
    /// example stack
    Up(up::UpArgs),
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
