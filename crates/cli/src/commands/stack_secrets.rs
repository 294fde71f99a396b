//! A stack's secret variables sealed here, before they leave the machine: to the pool
//! certificate the server publishes (checked against the server CA when the CLI holds
//! it). `gantry stack secrets set|reseal` and `gantry stack move`.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use gantry_crypto::{Certificate, PoolPrivateKey, SecretContext, open_secret, seal_secret};
use gantry_domain::validation::validate_secret_value;
use gantry_proto::api::{EnvironmentVariable, SetStackSecrets, Stack};

use super::stack::parse_variable;
use super::{Context, Outcome, UsageError};
use crate::client::ApiClient;
use crate::output::{self, print_json};

const SECRETS_AFTER_HELP: &str = "\
Secret values are sealed here to the pool certificate, before they are sent: the server
keeps them sealed and only the pool's launchers open them. After a pool reset, give the
values again (set) or reseal them with the old pool key (reseal).

Examples:
  gantry stack secrets set web --secret-env TF_VAR_db_password=hunter22
  gantry stack secrets reseal web --old-key old-pool.key";

#[derive(Debug, Subcommand)]
#[command(after_help = SECRETS_AFTER_HELP)]
pub enum SecretsCommand {
    /// Give secret variables (again): sealed here to the stack's pool certificate
    Set {
        /// Stack name or id
        stack: String,
        /// A secret variable (repeatable)
        #[arg(long = "secret-env", value_name = "NAME=VALUE", value_parser = parse_variable, required = true)]
        secret_env: Vec<(String, String)>,
    },
    /// Open the stack's secrets with the pool key they were sealed to (from before a
    /// pool reset, or of the pool the stack moves from) and seal them to the current
    /// certificate of its pool, or of --pool, moving the stack there
    Reseal(ResealArgs),
}

#[derive(Debug, Args)]
pub struct ResealArgs {
    /// Stack name or id
    pub stack: String,
    /// The pool private key the values are sealed to now (PEM)
    #[arg(long, value_name = "FILE")]
    pub old_key: PathBuf,
    /// Move the stack to this pool (name or id) with the resealed values
    #[arg(long)]
    pub pool: Option<String>,
}

/// `gantry stack move`
#[derive(Debug, Args)]
#[command(after_help = "\
Every secret variable of the stack must be given again: its values are sealed to the
old pool's key. Or reseal them where that key is:
  gantry stack secrets reseal web --old-key build-pool.key --pool other

Example:
  gantry stack move web --pool other --secret-env TF_VAR_db_password=hunter22")]
pub struct MoveArgs {
    /// Stack name or id
    pub stack: String,
    /// The pool (name or id) whose workers will run the stack
    #[arg(long)]
    pub pool: String,
    /// A secret variable's value, sealed to the new pool (repeatable)
    #[arg(long = "secret-env", value_name = "NAME=VALUE", value_parser = parse_variable)]
    pub secret_env: Vec<(String, String)>,
}

pub async fn run(context: &Context, command: &SecretsCommand) -> anyhow::Result<Outcome> {
    let client = context.api_client()?;
    let stack = match command {
        SecretsCommand::Set { stack, secret_env } => {
            let stack = client.get_stack(stack).await?;
            let secrets =
                seal_all(context, &client, &stack.pool_name, &stack.name, secret_env).await?;
            client.set_stack_secrets(&stack.name, &SetStackSecrets { pool: None, secrets }).await?
        }
        SecretsCommand::Reseal(args) => reseal(context, &client, args).await?,
    };
    print_stack(context, &stack)
}

pub async fn move_stack(context: &Context, args: &MoveArgs) -> anyhow::Result<Outcome> {
    let client = context.api_client()?;
    let stack = client.get_stack(&args.stack).await?;
    let secrets = seal_all(context, &client, &args.pool, &stack.name, &args.secret_env).await?;
    let request = SetStackSecrets { pool: Some(args.pool.clone()), secrets };
    let stack = client.set_stack_secrets(&stack.name, &request).await?;
    print_stack(context, &stack)
}

fn print_stack(context: &Context, stack: &Stack) -> anyhow::Result<Outcome> {
    if context.is_json() {
        print_json(stack)?;
    } else {
        print!("{}", output::stack_details(stack, &[], output::now()));
    }
    Ok(Outcome::Success)
}

async fn reseal(context: &Context, client: &ApiClient, args: &ResealArgs) -> anyhow::Result<Stack> {
    let text = std::fs::read_to_string(&args.old_key).map_err(|error| {
        UsageError(format!("cannot read the old pool key {}: {error}", args.old_key.display()))
    })?;
    let old_key = PoolPrivateKey::from_pem(&text)
        .with_context(|| format!("{} is not a usable pool key", args.old_key.display()))?;
    let stack = client.get_stack(&args.stack).await?;
    let target = args.pool.clone().unwrap_or_else(|| stack.pool_name.clone());
    let certificate = pool_certificate(context, client, &target).await?;
    let old_pool = stack.pool_id.to_string();
    let new_pool = certificate.0.clone();
    let mut secrets = Vec::new();
    for variable in stack.environment.iter().filter(|variable| variable.secret) {
        let sealed = variable.sealed_value.as_deref().ok_or_else(|| {
            anyhow::anyhow!(
                "the server did not send the sealed value of {}: it is older than this CLI",
                variable.name
            )
        })?;
        let from =
            SecretContext { pool_id: &old_pool, stack: &stack.name, variable: &variable.name };
        let value = open_secret(&old_key, &from, sealed).map_err(|error| {
            anyhow::anyhow!(
                "secret variable {} of stack {} does not open with {}: {error}",
                variable.name,
                stack.name,
                args.old_key.display()
            )
        })?;
        let to = SecretContext { pool_id: &new_pool, stack: &stack.name, variable: &variable.name };
        secrets.push(sealed_variable(&variable.name, seal_secret(&certificate.1, &to, &value)?));
    }
    if secrets.is_empty() {
        return Err(UsageError(format!("stack {} has no secret variable", stack.name)).into());
    }
    let request = SetStackSecrets { pool: args.pool.clone(), secrets };
    Ok(client.set_stack_secrets(&stack.name, &request).await?)
}

/// `--secret-env` values sealed to `pool`'s certificate for `stack`, after the length
/// check the launcher cannot make before it opens them.
pub async fn seal_all(
    context: &Context,
    client: &ApiClient,
    pool: &str,
    stack: &str,
    secret_env: &[(String, String)],
) -> anyhow::Result<Vec<EnvironmentVariable>> {
    if secret_env.is_empty() {
        return Ok(Vec::new());
    }
    for (name, value) in secret_env {
        validate_secret_value(name, value).map_err(|error| UsageError(error.to_string()))?;
    }
    let (pool_id, certificate) = pool_certificate(context, client, pool).await?;
    secret_env
        .iter()
        .map(|(name, value)| {
            let context = SecretContext { pool_id: &pool_id, stack, variable: name };
            Ok(sealed_variable(name, seal_secret(&certificate, &context, value)?))
        })
        .collect()
}

fn sealed_variable(name: &str, sealed: String) -> EnvironmentVariable {
    EnvironmentVariable {
        name: name.to_owned(),
        value: None,
        secret: true,
        sealed_value: Some(sealed),
    }
}

/// The pool's id and certificate, as the server publishes it. When the CLI's CA file
/// holds the authority the certificate names as its issuer — the server's own CA, as
/// `gantry up` writes it — the certificate must be signed by it. Otherwise (a public TLS
/// certificate, no CA file) the certificate is trusted as TLS delivered it: from the
/// server the CLI authenticated (`docs/security.md`).
async fn pool_certificate(
    context: &Context,
    client: &ApiClient,
    pool: &str,
) -> anyhow::Result<(String, Certificate)> {
    let published = client.pool_certificate(pool).await?;
    let certificate = Certificate::from_pem(&published.certificate)
        .with_context(|| format!("the certificate of pool {}", published.pool_name))?;
    let config = context.config()?;
    if let Some(pem) = config.read_ca_pem()? {
        let text = String::from_utf8_lossy(&pem);
        let authorities: Vec<Certificate> = text
            .split_inclusive("-----END CERTIFICATE-----")
            .filter_map(|block| Certificate::from_pem(block).ok())
            .filter(|authority| certificate.names_as_issuer(authority))
            .collect();
        if !authorities.is_empty()
            && !authorities.iter().any(|authority| certificate.verify_issued_by(authority).is_ok())
        {
            anyhow::bail!(
                "the certificate the server sent for pool {} is not signed by the server CA in {}: nothing was sealed to it",
                published.pool_name,
                config.ca_file.unwrap_or_default().display()
            );
        }
    }
    Ok((published.pool_id.to_string(), certificate))
}
