//! `gantry keygen`: a new pool private key and its certificate signing request, written
//! to files, with no server involved. The key stays with the pool's launchers; only the
//! CSR goes to the server.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use serde::Serialize;

use super::{Context, Outcome, UsageError};
use crate::config::owner_only_options;

const AFTER_HELP: &str = "\
The key is EC P-256 in PKCS#8 PEM, readable by its owner only (mode 0600). Keep it on the
machines that run the pool's launchers: the server never sees it, and runs' state is
encrypted to it. Keys made with openssl work too:
  openssl req -new -newkey rsa:4096 -nodes -keyout pool.key -out pool.csr -subj /CN=pool

Examples:
  gantry keygen                        # ./pool.key and ./pool.csr
  gantry keygen --name prod --out-dir ~/.gantry-keys
  gantry pool create --name prod --csr ~/.gantry-keys/prod.csr";

#[derive(Debug, Args)]
#[command(after_help = AFTER_HELP)]
pub struct KeygenArgs {
    /// Directory to write the files to (created when missing)
    #[arg(long, value_name = "DIR", default_value = ".")]
    pub out_dir: PathBuf,
    /// Base name of the files: NAME.key and NAME.csr
    #[arg(long, default_value = "pool", value_parser = parse_name)]
    pub name: String,
    /// Overwrite existing files
    #[arg(long)]
    pub force: bool,
}

fn parse_name(value: &str) -> Result<String, String> {
    let valid = !value.is_empty()
        && value != "."
        && value != ".."
        && !value.contains(['/', '\\', '\0'])
        && !value.starts_with('-');
    if valid {
        Ok(value.to_owned())
    } else {
        Err("expected a file name without a directory, such as pool or prod".to_owned())
    }
}

#[derive(Debug, Serialize)]
struct Written {
    private_key_file: PathBuf,
    csr_file: PathBuf,
}

pub fn run(context: &Context, args: &KeygenArgs) -> anyhow::Result<Outcome> {
    let key_path = display_path(&args.out_dir, &format!("{}.key", args.name));
    let csr_path = display_path(&args.out_dir, &format!("{}.csr", args.name));
    if !args.force {
        for path in [&key_path, &csr_path] {
            if path.exists() {
                return Err(UsageError(format!(
                    "{} already exists: pass --force to overwrite it, or choose another --name or --out-dir",
                    path.display()
                ))
                .into());
            }
        }
    }

    let generated =
        gantry_crypto::generate_pool_key(&args.name).context("failed to generate the pool key")?;
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create the directory {}", args.out_dir.display()))?;
    write_private_key(&key_path, &generated.private_key_pem, args.force)?;
    write_file(&csr_path, &generated.csr_pem, args.force)?;

    if context.is_json() {
        crate::output::print_json(&Written { private_key_file: key_path, csr_file: csr_path })?;
        return Ok(Outcome::Success);
    }
    print!("{}", summary(&args.name, &key_path, &csr_path));
    Ok(Outcome::Success)
}

/// `out_dir/file`, without a leading `./` for the current directory, as people type it.
fn display_path(out_dir: &Path, file: &str) -> PathBuf {
    if out_dir == Path::new(".") { PathBuf::from(file) } else { out_dir.join(file) }
}

fn open_for_writing(path: &Path, force: bool, owner_only: bool) -> anyhow::Result<File> {
    let result = if owner_only {
        let mut options = owner_only_options();
        if !force {
            options.create_new(true);
        }
        options.open(path)
    } else if force {
        File::create(path)
    } else {
        File::create_new(path)
    };
    result.map_err(|error| {
        if error.kind() == std::io::ErrorKind::AlreadyExists {
            UsageError(format!("{} already exists: pass --force to overwrite it", path.display()))
                .into()
        } else {
            anyhow::Error::new(error).context(format!("cannot write {}", path.display()))
        }
    })
}

fn write_private_key(path: &Path, pem: &str, force: bool) -> anyhow::Result<()> {
    let mut file = open_for_writing(path, force, true)?;
    // An overwritten file keeps its old mode: narrow it before the key is in it.
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        file.set_permissions(std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("cannot make {} private", path.display()))?;
    }
    file.write_all(pem.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

fn write_file(path: &Path, text: &str, force: bool) -> anyhow::Result<()> {
    let mut file = open_for_writing(path, force, false)?;
    file.write_all(text.as_bytes()).with_context(|| format!("cannot write {}", path.display()))
}

fn summary(name: &str, key_path: &Path, csr_path: &Path) -> String {
    format!(
        "Wrote {key} (the pool's private key, EC P-256: keep it secret, only the launchers need it)\n\
         Wrote {csr} (its certificate signing request)\n\
         \n\
         Next, create the pool:\n  gantry pool create --name {name} --csr {csr_quoted}\n",
        key = key_path.display(),
        csr = csr_path.display(),
        csr_quoted = super::pool::shell_quote(&csr_path.display().to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_file_names() {
        for good in ["pool", "prod-eu", "a.b"] {
            assert_eq!(parse_name(good).as_deref(), Ok(good));
        }
        for bad in ["", ".", "..", "a/b", "-x", "a\\b"] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_summary_names_the_files_and_the_next_command() {
        let text = summary("pool", Path::new("keys dir/pool.key"), Path::new("keys dir/pool.csr"));
        insta::assert_snapshot!(text, @r"
        Wrote keys dir/pool.key (the pool's private key, EC P-256: keep it secret, only the launchers need it)
        Wrote keys dir/pool.csr (its certificate signing request)

        Next, create the pool:
          gantry pool create --name pool --csr 'keys dir/pool.csr'
        ");
    }
}
