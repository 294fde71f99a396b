//! `gantry webhook create|list|secret|delete|deliveries`: the repositories whose VCS sends
//! pushes and pull requests to the server, and what each delivery triggered (admins).

use clap::Subcommand;
use gantry_proto::webhooks::CreateWebhook;

use super::{Context, Outcome};
use crate::output::{self, print_json};

const CREATE_AFTER_HELP: &str = "\
Configure the printed URL and secret in the repository's webhook settings:
  GitHub, Gitea  payload URL, content type application/json, secret; events: push, pull request
  GitLab         URL, secret token; triggers: push events, merge request events
  Bitbucket      URL, secret; triggers: repository push, pull request created/updated/merged/declined

Then a push to a stack's branch that touches its project root triggers a tracked run of
that commit, and a pull request into a stack's branch a proposed run of its head commit
(closing it stops that run). Deliveries are verified with the secret; one with a bad
signature is refused (401) and audited.

Examples:
  gantry webhook create --provider github --repository https://github.com/acme/infra.git
  gantry webhook create --provider gitlab --repository git@gitlab.example.com:ops/network.git";

#[derive(Debug, Subcommand)]
pub enum WebhookCommand {
    /// Register a repository's webhook and print the URL and secret to configure in the VCS
    #[command(after_help = CREATE_AFTER_HELP)]
    Create {
        /// The VCS: github, gitlab, gitea or bitbucket
        #[arg(long)]
        provider: String,
        /// The repository, as its stacks name it (https or ssh: any spelling matches)
        #[arg(long)]
        repository: String,
    },
    /// List the registered webhooks
    List,
    /// Print a webhook's secret again
    Secret {
        /// The webhook's id (`gantry webhook list`)
        webhook: String,
    },
    /// Delete a webhook: its deliveries are refused from then on
    Delete {
        /// The webhook's id (`gantry webhook list`)
        webhook: String,
    },
    /// The latest deliveries: what each triggered, or why it triggered nothing
    Deliveries {
        /// How many, newest first (at most 500)
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
}

pub async fn run(context: &Context, command: &WebhookCommand) -> anyhow::Result<Outcome> {
    let client = context.api_client()?;
    match command {
        WebhookCommand::Create { provider, repository } => {
            let request =
                CreateWebhook { provider: provider.clone(), repository: repository.clone() };
            let created = client.create_webhook(&request).await?;
            if context.is_json() {
                print_json(&created)?;
            } else {
                println!(
                    "Created the {} webhook {} of {}.\n\nPayload URL: {}\nSecret:      {}",
                    created.webhook.provider,
                    created.webhook.id,
                    created.webhook.repository,
                    created.webhook.url,
                    created.secret
                );
            }
        }
        WebhookCommand::List => {
            let list = client.list_webhooks().await?;
            if context.is_json() {
                print_json(&list)?;
            } else {
                print!("{}", output::webhooks_table(&list.webhooks, output::now()));
            }
        }
        WebhookCommand::Secret { webhook } => {
            let secret = client.webhook_secret(webhook).await?;
            if context.is_json() {
                print_json(&secret)?;
            } else {
                println!("{}", secret.secret);
            }
        }
        WebhookCommand::Delete { webhook } => {
            let deleted = client.delete_webhook(webhook).await?;
            if context.is_json() {
                print_json(&deleted)?;
            } else {
                println!("Deleted the {} webhook of {}.", deleted.provider, deleted.repository);
            }
        }
        WebhookCommand::Deliveries { limit } => {
            let list = client.list_deliveries(*limit).await?;
            if context.is_json() {
                print_json(&list)?;
            } else {
                print!("{}", output::deliveries_table(&list.deliveries, output::now()));
            }
        }
    }
    Ok(Outcome::Success)
}
