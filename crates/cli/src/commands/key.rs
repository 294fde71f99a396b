//! `gantry key create|list|revoke`: API keys, each with a role and an optional scope and
//! expiry (admins only).

use std::time::Duration;

use clap::{Args, Subcommand};
use gantry_domain::access::Role;
use gantry_proto::keys::CreateKey;

use super::{Context, Outcome};
use crate::output::{self, print_json};

const CREATE_AFTER_HELP: &str = "\
Roles, each able to do what the ones before it can:
  reader    read pools, workers, stacks, runs and logs
  writer    also trigger, confirm, discard and stop runs
  operator  also create, reset, drain and cycle pools, manage stacks, prioritize runs
  admin     also create, list and revoke API keys (an admin key has no scope)

A scope limits the key to some pools and stacks: a stack is reached by its own name or
label, or through its pool. Lists show only what the key reaches; anything else is
\"not found\" to it.

The key is printed once: Gantry keeps only its hash.

Examples:
  gantry key create --name ci-deploy --role writer --scope stack:web --expires-in 90d
  gantry key create --name k8s-operator --role operator --scope pool:k8s-build
  gantry key create --name auditor --role reader";

#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Create an API key and print its secret, this once
    #[command(after_help = CREATE_AFTER_HELP)]
    Create(CreateArgs),
    /// List API keys: role, scope, expiry, creator, last use, revoked or not
    #[command(after_help = "Example:\n  gantry key list --output json")]
    List,
    /// Revoke an API key: it stops working at once, web UI sessions included
    #[command(after_help = "\
The last active admin key cannot be revoked: create another admin key first.

Example:
  gantry key revoke ci-deploy")]
    Revoke {
        /// Key name (of an active key) or id
        key: String,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// A name for the key: runs it triggers record it (1 to 63 of a-z, 0-9, '-', '_')
    #[arg(long)]
    pub name: String,
    /// What the key may do: admin, operator, writer or reader
    #[arg(long, value_parser = parse_role)]
    pub role: Role,
    /// Limit the key to a pool or stack: pool:NAME, pool-label:LABEL, stack:NAME or
    /// stack-label:LABEL; repeat for several (default: everything)
    #[arg(long = "scope", value_name = "SELECTOR")]
    pub scope: Vec<String>,
    /// Make the key stop working after this long: 30d, 12h, 45m (default: never)
    #[arg(long, value_name = "DURATION", value_parser = parse_lifetime)]
    pub expires_in: Option<Duration>,
}

fn parse_role(value: &str) -> Result<Role, String> {
    value.parse().map_err(|e: gantry_domain::access::UnknownRole| e.to_string())
}

/// A lifetime written as a whole number of days, hours or minutes.
pub(super) fn parse_lifetime(value: &str) -> Result<Duration, String> {
    let refuse =
        || format!("{value:?} is not a lifetime: expected a number with d, h or m, like 30d");
    let unit = value.chars().last().ok_or_else(refuse)?;
    let count: u64 = value[..value.len() - unit.len_utf8()].parse().map_err(|_| refuse())?;
    let seconds = match unit {
        'd' => 86_400,
        'h' => 3_600,
        'm' => 60,
        _ => return Err(refuse()),
    };
    if count == 0 {
        return Err(refuse());
    }
    Ok(Duration::from_secs(count.saturating_mul(seconds)))
}

pub async fn run(context: &Context, command: &KeyCommand) -> anyhow::Result<Outcome> {
    let client = context.api_client()?;
    match command {
        KeyCommand::Create(args) => {
            let request = CreateKey {
                name: args.name.clone(),
                role: args.role,
                scope: args.scope.clone(),
                expires_at: args.expires_in.map(|lifetime| output::now().plus(lifetime)),
            };
            let created = client.create_key(&request).await?;
            if context.is_json() {
                print_json(&created)?;
            } else {
                println!(
                    "Created API key {} (role {}, id {}).",
                    created.key.name, created.key.role, created.key.id
                );
                println!("Copy it now: it is shown only this once.\n\n{}", created.secret);
            }
        }
        KeyCommand::List => {
            let list = client.list_keys().await?;
            if context.is_json() {
                print_json(&list)?;
            } else {
                print!("{}", output::keys_table(&list.keys, output::now()));
            }
        }
        KeyCommand::Revoke { key } => {
            let revoked = client.revoke_key(key).await?;
            if context.is_json() {
                print_json(&revoked)?;
            } else {
                println!("Revoked API key {} (id {}).", revoked.name, revoked.id);
            }
        }
    }
    Ok(Outcome::Success)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetimes() {
        assert_eq!(parse_lifetime("30d"), Ok(Duration::from_secs(30 * 86_400)));
        assert_eq!(parse_lifetime("12h"), Ok(Duration::from_secs(12 * 3_600)));
        assert_eq!(parse_lifetime("45m"), Ok(Duration::from_secs(45 * 60)));
        for bad in ["", "d", "0d", "3w", "-1d", "1.5h", "10"] {
            assert!(parse_lifetime(bad).unwrap_err().contains("expected a number"), "{bad}");
        }
    }
}
