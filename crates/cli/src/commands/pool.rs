//! `gantry pool create|list|show`: worker pools. Creating one sends the CSR, and prints
//! the pool's token (the only time the server shows it) and the command that starts a
//! launcher with it.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use gantry_proto::api::{CreatePool, Pool, PoolCreated, ResetPool};
use serde::Serialize;

use super::{Context, Outcome, UsageError};
use crate::config::owner_only_options;
use crate::output::{self, print_json};

const CREATE_AFTER_HELP: &str = "\
The token is printed once, with the command that starts a launcher for the pool; with
--token-file it is written to that file (mode 0600) instead. The token holds no secret by
itself: a launcher also needs the pool's private key.

Examples:
  gantry keygen --name build
  gantry pool create --name build --csr build.csr --label linux --label eu
  gantry pool create --name build --csr build.csr --token-file build.token";

#[derive(Debug, Subcommand)]
pub enum PoolCommand {
    /// Create a private pool from a certificate signing request (see gantry keygen)
    #[command(after_help = CREATE_AFTER_HELP)]
    Create(CreateArgs),
    /// List pools with their worker counts
    List,
    /// Show a pool and its workers
    #[command(after_help = "Example:\n  gantry pool show build")]
    Show {
        /// Pool name or id
        pool: String,
    },
    /// Give a pool a new certificate from a new CSR: its launchers must restart with the
    /// new token and key
    #[command(after_help = RESET_AFTER_HELP)]
    Reset(ResetArgs),
    /// Drain every worker of a pool: busy ones finish their run, none takes a new one
    #[command(after_help = "Example:\n  gantry pool drain build --wait-until-drained")]
    Drain {
        /// Pool name or id
        pool: String,
        /// Wait until no worker of the pool is busy
        #[arg(long)]
        wait_until_drained: bool,
    },
    /// Undrain every worker of a pool: waiting runs are scheduled at once
    Undrain {
        /// Pool name or id
        pool: String,
    },
    /// Ask every launcher of a pool to exit after its current runs (its supervisor
    /// restarts it, with a fresh binary)
    Cycle {
        /// Pool name or id
        pool: String,
    },
    /// The pool's queue: runs in progress, then waiting runs in order, with why they wait
    Queue {
        /// Pool name or id
        pool: String,
    },
}

const RESET_AFTER_HELP: &str = "\
Resetting replaces the pool's certificate: sessions opened with the old one end at once,
launchers still holding the old token are refused, runs executing on them fail, and runs
whose stored workspace or managed state was sealed for the old key can no longer be
decrypted (they fail saying so). Use it when the pool key may have leaked.

Example:
  gantry keygen --name pool-2024
  gantry pool reset build --csr pool-2024.csr --token-file build.token";

#[derive(Debug, Args)]
pub struct ResetArgs {
    /// Pool name or id
    pub pool: String,
    /// PEM certificate signing request made with the pool's new private key
    #[arg(long, value_name = "FILE")]
    pub csr: PathBuf,
    /// Write the new token to this new file (mode 0600) instead of printing it
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Pool name: lowercase letters, digits, '-' and '_'
    #[arg(long, value_parser = parse_pool_name)]
    pub name: String,
    /// PEM certificate signing request made with the pool's private key
    #[arg(long, value_name = "FILE")]
    pub csr: PathBuf,
    /// A description, shown by pool show
    #[arg(long, default_value = "")]
    pub description: String,
    /// A label (repeatable)
    #[arg(long = "label", value_name = "LABEL")]
    pub labels: Vec<String>,
    /// Write the token to this new file (mode 0600) instead of printing it
    #[arg(long, value_name = "PATH")]
    pub token_file: Option<PathBuf>,
}

fn parse_pool_name(value: &str) -> Result<String, String> {
    gantry_domain::validate_name("pool", value)
        .map(|()| value.to_owned())
        .map_err(|e| e.to_string())
}

pub async fn run(context: &Context, command: &PoolCommand) -> anyhow::Result<Outcome> {
    match command {
        PoolCommand::Create(args) => create(context, args).await,
        PoolCommand::List => list(context).await,
        PoolCommand::Show { pool } => show(context, pool).await,
        PoolCommand::Reset(args) => reset(context, args).await,
        PoolCommand::Drain { pool, wait_until_drained } => {
            drain(context, pool, true, *wait_until_drained).await
        }
        PoolCommand::Undrain { pool } => drain(context, pool, false, false).await,
        PoolCommand::Cycle { pool } => cycle(context, pool).await,
        PoolCommand::Queue { pool } => queue(context, pool).await,
    }
}

async fn drain(
    context: &Context,
    pool: &str,
    drained: bool,
    wait: bool,
) -> anyhow::Result<Outcome> {
    let client = context.api_client()?;
    let mut result = client.drain_pool(pool, drained).await?;
    let verb = if drained { "Drained" } else { "Undrained" };
    if !context.is_json() {
        println!("{verb} {} worker(s) of pool {pool}.", result.workers.len());
    }
    while wait && result.workers.iter().any(|worker| worker.busy) {
        let busy = result.workers.iter().filter(|worker| worker.busy).count();
        if !context.is_json() {
            eprintln!("Waiting for {busy} busy worker(s) to finish their run...");
        }
        tokio::time::sleep(std::time::Duration::from_secs(2)).await;
        result.workers = client.list_pool_workers(pool).await?.workers;
    }
    if context.is_json() {
        print_json(&result)?;
    } else if wait {
        println!("Pool {pool} is drained: no worker is busy.");
    }
    Ok(Outcome::Success)
}

async fn cycle(context: &Context, pool: &str) -> anyhow::Result<Outcome> {
    let client = context.api_client()?;
    let cycled = client.cycle_pool(pool).await?;
    if context.is_json() {
        print_json(&cycled)?;
    } else {
        println!(
            "Cycling pool {}: its {} launcher worker(s) take no new run and exit after their current ones.",
            cycled.name, cycled.workers
        );
    }
    Ok(Outcome::Success)
}

async fn queue(context: &Context, pool: &str) -> anyhow::Result<Outcome> {
    let client = context.api_client()?;
    let queue = client.pool_queue(pool).await?;
    if context.is_json() {
        print_json(&queue)?;
    } else {
        print!("{}", output::queue_table(&queue, output::now()));
    }
    Ok(Outcome::Success)
}

async fn reset(context: &Context, args: &ResetArgs) -> anyhow::Result<Outcome> {
    let csr = read_csr(&args.csr)?;
    ensure_new(args.token_file.as_deref())?;
    let client = context.api_client()?;
    let reset = client.reset_pool(&args.pool, &ResetPool { csr }).await?;
    deliver(context, &reset, &args.csr, args.token_file.as_deref(), "Reset")
}

/// Checked before the server acts: once it has, the token cannot be shown again.
fn ensure_new(token_file: Option<&Path>) -> anyhow::Result<()> {
    match token_file {
        Some(path) if path.exists() => Err(UsageError(format!(
            "{} already exists: the token file must be new (remove it or choose another path)",
            path.display()
        ))
        .into()),
        _ => Ok(()),
    }
}

async fn create(context: &Context, args: &CreateArgs) -> anyhow::Result<Outcome> {
    let csr = read_csr(&args.csr)?;
    ensure_new(args.token_file.as_deref())?;
    let client = context.api_client()?;
    let request = CreatePool {
        name: args.name.clone(),
        csr,
        description: args.description.clone(),
        labels: args.labels.clone(),
    };
    let created = client.create_pool(&request).await?;
    deliver(context, &created, &args.csr, args.token_file.as_deref(), "Created")
}

/// Shows the pool and its token (or writes the token to its file) once.
fn deliver(
    context: &Context,
    created: &PoolCreated,
    csr: &Path,
    token_file: Option<&Path>,
    verb: &str,
) -> anyhow::Result<Outcome> {
    let key_file = key_file_beside(csr);
    let token_written = match token_file {
        Some(path) => match write_token(path, &created.token) {
            Ok(()) => Some(path.to_path_buf()),
            Err(error) => {
                // The pool exists and its token is shown only now: print it rather than
                // lose it.
                eprintln!("error: cannot write the token to {}: {error:#}", path.display());
                None
            }
        },
        None => None,
    };

    if context.is_json() {
        #[derive(Serialize)]
        struct PoolWithTokenFile<'a> {
            pool: &'a Pool,
            token_file: &'a Path,
        }
        match &token_written {
            Some(path) => print_json(&PoolWithTokenFile { pool: &created.pool, token_file: path })?,
            None => print_json(created)?,
        }
        return Ok(Outcome::Success);
    }
    print!("{}", created_text(created, key_file.as_deref(), token_written.as_deref(), verb));
    Ok(Outcome::Success)
}

fn read_csr(path: &Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path).map_err(|error| {
        UsageError(format!("cannot read the CSR file {}: {error}", path.display()))
    })?;
    if text.contains("PRIVATE KEY-----") {
        return Err(UsageError(format!(
            "{} is a private key: pass the certificate signing request (the .csr file), the key stays with the launchers",
            path.display()
        ))
        .into());
    }
    if !text.contains("-----BEGIN CERTIFICATE REQUEST-----")
        && !text.contains("-----BEGIN NEW CERTIFICATE REQUEST-----")
    {
        return Err(UsageError(format!(
            "{} is not a PEM certificate signing request (-----BEGIN CERTIFICATE REQUEST-----): make one with gantry keygen",
            path.display()
        ))
        .into());
    }
    Ok(text)
}

/// The key file `gantry keygen` wrote beside the CSR (`x.csr` → `x.key`), when it is
/// there.
fn key_file_beside(csr: &Path) -> Option<PathBuf> {
    let key = csr.with_extension("key");
    (key != csr && key.is_file()).then_some(key)
}

fn write_token(path: &Path, token: &str) -> anyhow::Result<()> {
    let mut options = owner_only_options();
    options.create_new(true);
    let mut file = options.open(path)?;
    file.write_all(format!("{token}\n").as_bytes())?;
    Ok(())
}

/// Quotes a word for POSIX shells when it needs quoting.
pub(crate) fn shell_quote(word: &str) -> String {
    let plain = !word.is_empty()
        && word.chars().all(|c| c.is_ascii_alphanumeric() || "-_./:=@%+,".contains(c));
    if plain { word.to_owned() } else { format!("'{}'", word.replace('\'', r"'\''")) }
}

/// The command that starts a launcher for the pool, with the token either inline or
/// read from its file.
pub(crate) fn launcher_command(
    token: TokenSource<'_>,
    key_file: Option<&Path>,
    base64: &str,
) -> String {
    let key = key_file
        .map_or_else(|| "pool.key".to_owned(), |path| shell_quote(&path.display().to_string()));
    let token = match token {
        TokenSource::Inline(token) => shell_quote(token),
        TokenSource::File(path) => {
            format!("\"$(cat {})\"", shell_quote(&path.display().to_string()))
        }
    };
    format!("GANTRY_TOKEN={token} GANTRY_POOL_PRIVATE_KEY=\"$({base64} {key})\" gantry-launcher")
}

#[derive(Debug, Clone, Copy)]
pub(crate) enum TokenSource<'a> {
    Inline(&'a str),
    File(&'a Path),
}

fn created_text(
    created: &PoolCreated,
    key_file: Option<&Path>,
    token_file: Option<&Path>,
    verb: &str,
) -> String {
    let pool = &created.pool;
    let mut text = format!("{verb} pool {} ({}).\n", pool.name, pool.id);
    if let Some(algorithm) = &pool.key_algorithm {
        text.push_str(&format!("  Key:          {algorithm}\n"));
    }
    if let Some(fingerprint) = &pool.certificate_fingerprint {
        text.push_str(&format!("  Certificate:  {fingerprint}\n"));
    }
    let token = match token_file {
        Some(path) => {
            text.push_str(&format!(
                "\nThe token is in {} (readable by you only).\n",
                path.display()
            ));
            TokenSource::File(path)
        }
        None => {
            text.push_str(&format!(
                "\nToken (shown only this once: store it now):\n{}\n",
                created.token
            ));
            TokenSource::Inline(&created.token)
        }
    };
    if verb == "Reset" {
        text.push_str("\nLaunchers holding the old token are refused from now on: restart each with the new token and key.\n");
    }
    text.push_str("\nStart a launcher on a machine that holds the pool's private key");
    if key_file.is_none() {
        text.push_str(" (replace pool.key with its path)");
    }
    text.push_str(":\n");
    text.push_str(&format!("  {}\n", launcher_command(token, key_file, "base64 -w 0")));
    text.push_str("On macOS, use base64 -b 0 instead of base64 -w 0.\n");
    text
}

async fn list(context: &Context) -> anyhow::Result<Outcome> {
    let client = context.api_client()?;
    let pools = client.list_pools().await?;
    if context.is_json() {
        print_json(&pools)?;
    } else {
        print!("{}", output::pools_table(&pools.pools, output::now()));
    }
    Ok(Outcome::Success)
}

async fn show(context: &Context, pool: &str) -> anyhow::Result<Outcome> {
    let client = context.api_client()?;
    let pool = client.get_pool(pool).await?;
    let workers = client
        .list_pool_workers(&pool.id.to_string())
        .await
        .context("failed to list the pool's workers")?;
    if context.is_json() {
        #[derive(Serialize)]
        struct PoolWithWorkers<'a> {
            pool: &'a Pool,
            workers: &'a [gantry_proto::api::Worker],
        }
        print_json(&PoolWithWorkers { pool: &pool, workers: &workers.workers })?;
    } else {
        print!("{}", output::pool_details(&pool, &workers.workers, output::now()));
    }
    Ok(Outcome::Success)
}

/// Pool names by id, for tables that only know ids.
pub(crate) fn pool_names(pools: &[Pool]) -> BTreeMap<gantry_domain::PoolId, String> {
    pools.iter().map(|pool| (pool.id, pool.name.clone())).collect()
}

#[cfg(test)]
mod tests {
    use gantry_domain::{PoolId, Timestamp};
    use gantry_proto::api::PoolKind;

    use super::*;

    fn created() -> PoolCreated {
        PoolCreated {
            pool: Pool {
                id: PoolId::from_u128(1),
                name: "build".to_owned(),
                kind: PoolKind::Private,
                description: String::new(),
                labels: Vec::new(),
                certificate_fingerprint: Some("sha256:ab12".to_owned()),
                key_algorithm: Some("EC P-256".to_owned()),
                workers: 0,
                busy_workers: 0,
                drained_workers: 0,
                pending_runs: 0,
                used_by: Vec::new(),
                created_at: Timestamp::from_unix_millis(0),
            },
            token: "eyJ0b2tlbiI6dHJ1ZX0".to_owned(),
        }
    }

    #[test]
    fn shell_words_are_quoted_only_when_needed() {
        assert_eq!(shell_quote("pool.key"), "pool.key");
        assert_eq!(shell_quote("/home/me/keys/pool.key"), "/home/me/keys/pool.key");
        assert_eq!(shell_quote("my keys/pool.key"), "'my keys/pool.key'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }

    #[test]
    fn the_launcher_command_uses_the_key_beside_the_csr_or_a_placeholder() {
        let inline = TokenSource::Inline("tok");
        assert_eq!(
            launcher_command(inline, None, "base64 -w 0"),
            r#"GANTRY_TOKEN=tok GANTRY_POOL_PRIVATE_KEY="$(base64 -w 0 pool.key)" gantry-launcher"#
        );
        assert_eq!(
            launcher_command(
                TokenSource::File(Path::new("my dir/build.token")),
                Some(Path::new("keys/build.key")),
                "base64 -w 0"
            ),
            r#"GANTRY_TOKEN="$(cat 'my dir/build.token')" GANTRY_POOL_PRIVATE_KEY="$(base64 -w 0 keys/build.key)" gantry-launcher"#
        );
    }

    #[test]
    fn creation_prints_the_token_once_with_the_launcher_command() {
        insta::assert_snapshot!(created_text(&created(), Some(Path::new("build.key")), None, "Created"), @r#"
        Created pool build (00000000000000000000000001).
          Key:          EC P-256
          Certificate:  sha256:ab12

        Token (shown only this once: store it now):
        eyJ0b2tlbiI6dHJ1ZX0

        Start a launcher on a machine that holds the pool's private key:
          GANTRY_TOKEN=eyJ0b2tlbiI6dHJ1ZX0 GANTRY_POOL_PRIVATE_KEY="$(base64 -w 0 build.key)" gantry-launcher
        On macOS, use base64 -b 0 instead of base64 -w 0.
        "#);
    }

    #[test]
    fn with_a_token_file_the_token_is_not_printed() {
        let text = created_text(&created(), None, Some(Path::new("build.token")), "Created");
        assert!(!text.contains("eyJ0b2tlbiI6dHJ1ZX0"));
        insta::assert_snapshot!(text, @r#"
        Created pool build (00000000000000000000000001).
          Key:          EC P-256
          Certificate:  sha256:ab12

        The token is in build.token (readable by you only).

        Start a launcher on a machine that holds the pool's private key (replace pool.key with its path):
          GANTRY_TOKEN="$(cat build.token)" GANTRY_POOL_PRIVATE_KEY="$(base64 -w 0 pool.key)" gantry-launcher
        On macOS, use base64 -b 0 instead of base64 -w 0.
        "#);
    }

    #[test]
    fn the_csr_file_is_checked_before_anything_is_sent() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.csr");
        let error = read_csr(&missing).unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with(&format!("cannot read the CSR file {}: ", missing.display()))
        );

        let key = dir.path().join("pool.key");
        std::fs::write(&key, "-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n")
            .unwrap();
        assert!(read_csr(&key).unwrap_err().to_string().contains("is a private key"));

        let csr = dir.path().join("pool.csr");
        std::fs::write(
            &csr,
            "-----BEGIN CERTIFICATE REQUEST-----\nAA==\n-----END CERTIFICATE REQUEST-----\n",
        )
        .unwrap();
        assert!(read_csr(&csr).is_ok());
        assert_eq!(key_file_beside(&csr), Some(key));
        assert_eq!(key_file_beside(&missing), None);
    }
}
