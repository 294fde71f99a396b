//! `gantry audit list|verify`: the audit log of every change and refused credential, and
//! the check of its hash chain (admins only).

use clap::Subcommand;
use gantry_domain::Timestamp;

use super::{Context, Outcome};
use crate::output::{self, print_json};

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// List recorded changes, oldest first: time, actor, action, target, source, outcome
    #[command(after_help = "\
Examples:
  gantry audit list --since 24h
  gantry audit list --since 2026-12-01T00:00:00Z --actor ci-deploy --output json")]
    List {
        /// Only entries from this time on: RFC 3339, or how long ago (30m, 12h, 7d)
        #[arg(long, value_name = "TIME", value_parser = parse_since)]
        since: Option<String>,
        /// Only entries by this actor: a key's name, or `unauthenticated`, `launcher:ID`
        #[arg(long, value_name = "ACTOR")]
        actor: Option<String>,
    },
    /// Check that no entry was altered or removed; exits 1 naming the first that was
    #[command(after_help = "Example:\n  gantry audit verify")]
    Verify,
}

/// A time as the API takes it: RFC 3339 as written, or a lifetime counted back from now.
fn parse_since(value: &str) -> Result<String, String> {
    if value.contains('T') {
        return Ok(value.to_owned());
    }
    let ago = super::key::parse_lifetime(value)
        .map_err(|_| format!("{value:?} is not a time: expected RFC 3339 or 30m, 12h, 7d"))?;
    let ago = i64::try_from(ago.as_millis()).unwrap_or(i64::MAX);
    let at = Timestamp::from_unix_millis(output::now().unix_millis().saturating_sub(ago));
    Ok(gantry_proto::format_timestamp(at))
}

pub async fn run(context: &Context, command: &AuditCommand) -> anyhow::Result<Outcome> {
    let client = context.api_client()?;
    match command {
        AuditCommand::List { since, actor } => {
            let list = client.list_audit(since.as_deref(), actor.as_deref()).await?;
            if context.is_json() {
                print_json(&list)?;
            } else {
                print!("{}", output::audit_table(&list.entries));
            }
            Ok(Outcome::Success)
        }
        AuditCommand::Verify => {
            let verified = client.verify_audit().await?;
            if context.is_json() {
                print_json(&verified)?;
            }
            match (verified.first_broken, &verified.reason) {
                (None, _) => {
                    if !context.is_json() {
                        println!(
                            "The audit log's {} entries form an intact chain.",
                            verified.entries
                        );
                    }
                    Ok(Outcome::Success)
                }
                (Some(seq), reason) => {
                    eprintln!(
                        "The audit log's chain is broken at entry {seq}: {}",
                        reason.as_deref().unwrap_or("it does not match")
                    );
                    Ok(Outcome::Unsuccessful)
                }
            }
        }
    }
}
