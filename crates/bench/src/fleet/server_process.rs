//! The server under test as a separate process: the release `gantry server`, so that its
//! memory can be read from `/proc/<pid>/status` apart from the load generator's, and so
//! that it competes for the CPUs as a deployed server would. On PostgreSQL several of
//! them run as replicas of one deployment: one database, one blob directory.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, ChildStdout, Command};

const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
const LISTENING: &str = "Gantry server listening on ";
const TRUST_CA: &str = "Clients trust the CA in ";
const ADMIN_KEY: &str = "Admin API key (shown only this once; store it now): ";

/// A running `gantry server`.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    child: Child,
    pid: Pid,
    pub(crate) url: String,
    /// Printed by the first start on a fresh database only: later replicas share it.
    pub(crate) admin_key: Option<String>,
    pub(crate) ca_pem: String,
}

/// The release `gantry` binary next to this executable (`target/release/gantry-bench`)
/// or one level up (`target/release/deps/fleet-…` when run by `cargo bench`).
pub(crate) fn gantry_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let candidates: Vec<PathBuf> = [
        exe.parent().map(|dir| dir.join("gantry")),
        exe.parent().and_then(Path::parent).map(|dir| dir.join("gantry")),
    ]
    .into_iter()
    .flatten()
    .collect();
    candidates.iter().find(|path| path.is_file()).cloned().with_context(|| {
        format!(
            "the release `gantry` binary is not next to the benchmark (looked for {}): \
             run `cargo build --release --workspace --bins` first",
            candidates.iter().map(|path| path.display().to_string()).collect::<Vec<_>>().join(", ")
        )
    })
}

/// Where a server keeps its state.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Storage<'a> {
    /// SQLite and blobs in the server's data directory.
    Sqlite,
    /// A database and a blob directory that every replica shares.
    Postgres { database_url: &'a str, blob_dir: &'a Path },
}

impl ServerProcess {
    /// Starts `gantry server` on a free loopback port with a fresh data directory, and
    /// waits until it prints its address, and its first admin key when `first` (the
    /// first start on its database).
    pub(crate) async fn start(
        binary: &Path,
        data_dir: &Path,
        storage: Storage<'_>,
        first: bool,
    ) -> anyhow::Result<Self> {
        let log = data_dir.with_extension("log");
        let stderr = std::fs::File::create(&log)
            .with_context(|| format!("cannot create the server log {}", log.display()))?;
        let mut command = Command::new(binary);
        command
            .arg("server")
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // Its tracing goes to a file: the server logs as deployed (level info), and
            // the file explains a failure.
            .stderr(stderr)
            .kill_on_drop(true);
        if let Storage::Postgres { database_url, blob_dir } = storage {
            command.arg("--database").arg(database_url).arg("--blob-store").arg(blob_dir);
        }
        // The benchmark measures the defaults, whatever this shell configures; only the
        // log filter passes (`GANTRY_LOG=info,sqlx::query=debug` logs every statement).
        for (name, _) in std::env::vars_os() {
            let name_text = name.to_string_lossy();
            if name_text.starts_with("GANTRY_") && name_text != "GANTRY_LOG" {
                command.env_remove(name);
            }
        }
        if let Storage::Postgres { blob_dir, .. } = storage {
            // Replicas of one database share the key that seals its server secrets.
            let key_file = blob_dir.with_extension("master.key");
            if !key_file.exists() {
                let key = gantry_crypto::MasterKey::generate();
                std::fs::write(&key_file, format!("{}\n", key.to_base64().as_str()))
                    .with_context(|| format!("cannot write {}", key_file.display()))?;
            }
            command.env("GANTRY_SERVER_MASTER_KEY_FILE", &key_file);
        }
        let mut child =
            command.spawn().with_context(|| format!("cannot start {} server", binary.display()))?;
        let pid = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .map(Pid::from_raw)
            .context("the server exited at once")?;
        let stdout = child.stdout.take().context("the server's stdout is piped")?;
        let (url, admin_key, rest) =
            tokio::time::timeout(STARTUP_TIMEOUT, read_banner(stdout, first)).await.with_context(
                || format!("the server did not start within 60 s; see {}", log.display()),
            )??;
        // Keep reading what it prints: a closed pipe would make its next println fail.
        tokio::spawn(async move {
            let mut lines = rest.lines();
            while let Ok(Some(_)) = lines.next_line().await {}
        });
        let ca_file = data_dir.join(gantry_server::CA_FILE);
        let ca_pem = std::fs::read_to_string(&ca_file)
            .with_context(|| format!("cannot read the server CA {}", ca_file.display()))?;
        Ok(Self { child, pid, url, admin_key, ca_pem })
    }

    /// For attaching a profiler while the benchmark runs.
    pub(crate) fn pid(&self) -> i32 {
        self.pid.as_raw()
    }

    /// The server's resident memory (`VmRSS`), KiB.
    pub(crate) fn rss_kib(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid);
        let status =
            std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
        parse_vm_rss(&status).with_context(|| format!("{path} has no VmRSS line"))
    }

    /// Stops the server as an operator would (SIGTERM), killing it if it lingers.
    pub(crate) async fn stop(mut self) -> anyhow::Result<()> {
        if kill(self.pid, Signal::SIGTERM).is_ok()
            && let Ok(status) = tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await
        {
            status?;
            return Ok(());
        }
        self.child.kill().await?;
        Ok(())
    }
}

/// Reads stdout up to the CA line, and the admin key line that follows it at the first
/// start on a database (`with_admin_key`): (URL, admin key, the rest of stdout).
async fn read_banner(
    stdout: ChildStdout,
    with_admin_key: bool,
) -> anyhow::Result<(String, Option<String>, BufReader<ChildStdout>)> {
    let mut reader = BufReader::new(stdout);
    let mut url = None;
    loop {
        let line = next_line(&mut reader).await?;
        if let Some(address) = line.strip_prefix(LISTENING) {
            url = Some(address.to_owned());
        } else if line.starts_with(TRUST_CA) {
            break;
        }
    }
    let url = url.context("the server printed its CA before its address")?;
    if !with_admin_key {
        return Ok((url, None, reader));
    }
    let line = next_line(&mut reader).await?;
    let key = line.strip_prefix(ADMIN_KEY).with_context(|| {
        format!("expected the admin API key after the CA line of a first start, got {line:?}")
    })?;
    Ok((url, Some(key.to_owned()), reader))
}

async fn next_line(reader: &mut BufReader<ChildStdout>) -> anyhow::Result<String> {
    let mut line = String::new();
    if reader.read_line(&mut line).await? == 0 {
        anyhow::bail!("the server exited before it was ready");
    }
    Ok(line.trim().to_owned())
}

/// `VmRSS:     12345 kB` → 12345.
fn parse_vm_rss(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_rss_is_read_in_kib() {
        let status = "Name:\tgantry\nVmPeak:\t  900000 kB\nVmRSS:\t   41234 kB\nThreads:\t3\n";
        assert_eq!(parse_vm_rss(status), Some(41234));
        assert_eq!(parse_vm_rss("Name:\tgantry\n"), None);
    }
}
