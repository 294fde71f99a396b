//! `gantry worker-binary`: the release key that signs worker binaries, and the
//! signatures the server distributes next to them. Launchers pin the public key
//! (`GANTRY_WORKER_BINARY_PUBLIC_KEY`) and run only a worker binary it verifies.

use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::{Args, Subcommand};
use serde::Serialize;

use super::{Context, Outcome, UsageError};

const AFTER_HELP: &str = "\
Examples:
  gantry worker-binary keygen --out-dir ~/.gantry-release   # release.key, release.pub
  gantry worker-binary sign --key ~/.gantry-release/release.key /usr/local/bin/gantry-worker
  # then, on the launchers:
  GANTRY_WORKER_BINARY_PUBLIC_KEY=\"$(cat ~/.gantry-release/release.pub)\" gantry-launcher";

#[derive(Debug, Subcommand)]
#[command(after_help = AFTER_HELP)]
pub enum ReleaseCommand {
    /// Generate an Ed25519 release key: NAME.key (secret, mode 0600) and NAME.pub
    Keygen(KeygenArgs),
    /// Sign a worker binary: writes BINARY.sig next to it, which the server serves with it
    Sign(SignArgs),
}

#[derive(Debug, Args)]
pub struct KeygenArgs {
    /// Directory to write the files to (created when missing)
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out_dir: PathBuf,
    /// Base name of the files: NAME.key and NAME.pub
    #[arg(long, default_value = "release")]
    pub name: String,
}

#[derive(Debug, Args)]
pub struct SignArgs {
    /// The release key file (from gantry worker-binary keygen)
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// The worker binary to sign
    pub binary: PathBuf,
}

#[derive(Debug, Serialize)]
struct Signed {
    binary: PathBuf,
    sha256: String,
    signature_file: PathBuf,
}

pub fn run(context: &Context, command: &ReleaseCommand) -> anyhow::Result<Outcome> {
    match command {
        ReleaseCommand::Keygen(args) => keygen(context, args),
        ReleaseCommand::Sign(args) => sign(context, args),
    }
}

fn keygen(context: &Context, args: &KeygenArgs) -> anyhow::Result<Outcome> {
    let key_path = args.out_dir.join(format!("{}.key", args.name));
    let public_path = args.out_dir.join(format!("{}.pub", args.name));
    for path in [&key_path, &public_path] {
        if path.exists() {
            return Err(UsageError(format!(
                "{} already exists: choose another --name or --out-dir",
                path.display()
            ))
            .into());
        }
    }
    let (signing, public) =
        gantry_crypto::generate_release_key().context("cannot generate the release key")?;
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create the directory {}", args.out_dir.display()))?;
    write_secret(&key_path, &signing)?;
    std::fs::write(&public_path, format!("{public}\n"))
        .with_context(|| format!("cannot write {}", public_path.display()))?;
    if context.is_json() {
        crate::output::print_json(&serde_json::json!({
            "key_file": key_path, "public_key_file": public_path, "public_key": public,
        }))?;
    } else {
        println!(
            "Wrote {} (the release signing key: keep it secret, off the servers)\nWrote {} (the public key launchers pin)\n\nPublic key: {public}",
            key_path.display(),
            public_path.display()
        );
    }
    Ok(Outcome::Success)
}

fn write_secret(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write {}", path.display()))?;
    file.write_all(format!("{text}\n").as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))
}

fn sign(context: &Context, args: &SignArgs) -> anyhow::Result<Outcome> {
    let key = std::fs::read_to_string(&args.key)
        .with_context(|| format!("cannot read the release key {}", args.key.display()))?;
    let binary = std::fs::read(&args.binary)
        .with_context(|| format!("cannot read the worker binary {}", args.binary.display()))?;
    let sha256 = gantry_crypto::binary_digest(&binary);
    let signature = gantry_crypto::sign_binary_digest(&key, &sha256)
        .map_err(|error| UsageError(format!("{}: {error}", args.key.display())))?;
    let mut signature_file = args.binary.as_os_str().to_owned();
    signature_file.push(".sig");
    let signature_file = PathBuf::from(signature_file);
    std::fs::write(&signature_file, format!("{signature}\n"))
        .with_context(|| format!("cannot write {}", signature_file.display()))?;
    if context.is_json() {
        crate::output::print_json(&Signed { binary: args.binary.clone(), sha256, signature_file })?;
    } else {
        println!(
            "Signed {} (sha256 {sha256})\nWrote {}: keep it next to the binary the server serves",
            args.binary.display(),
            signature_file.display()
        );
    }
    Ok(Outcome::Success)
}
