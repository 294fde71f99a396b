//! The real binaries in processes of their own: `gantry server` replicas, launchers and
//! the `gantry` CLI. Their output goes to files under the scenario's directory, kept for a
//! failing run's post-mortem.

use std::fs::File;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A binary of the workspace, from a copy taken once per test process: other builds may
/// replace `target/debug` while a scenario runs, and a replica restarted on a newer or
/// older binary than its database's schema would not start.
pub(crate) fn bin(name: &str) -> PathBuf {
    static SNAPSHOT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    SNAPSHOT
        .get_or_init(|| {
            let built_dir = built("gantry").parent().expect("a directory").to_path_buf();
            // Snapshots of test processes that have ended are removed here.
            for entry in std::fs::read_dir(&built_dir).into_iter().flatten().flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if let Some(pid) = name.strip_prefix("chaos-bin-")
                    && !Path::new("/proc").join(pid).exists()
                {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
            let snapshot = built_dir.join(format!("chaos-bin-{}", std::process::id()));
            std::fs::create_dir_all(&snapshot).expect("a directory for the binaries");
            std::fs::set_permissions(&snapshot, std::fs::Permissions::from_mode(0o755)).unwrap();
            for binary in ["gantry", "gantry-launcher", "gantry-worker"] {
                let (from, to) = (built(binary), snapshot.join(binary));
                // A link keeps this build's file even when cargo replaces it.
                if std::fs::hard_link(&from, &to).is_err() {
                    std::fs::copy(&from, &to)
                        .unwrap_or_else(|e| panic!("copying {}: {e}", from.display()));
                }
            }
            snapshot
        })
        .join(name)
}

/// A binary as built: from `GANTRY_BIN_DIR` when set, else next to this test's profile
/// directory, brought up to date once per process (cargo only checks when nothing
/// changed), as the end-to-end tests do.
fn built(name: &str) -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let dir = match std::env::var_os("GANTRY_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            let exe = std::env::current_exe().expect("the test knows its path");
            let dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("the test runs from target/<profile>/deps")
                .to_path_buf();
            BUILT.call_once(|| {
                let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
                let status = Command::new(cargo)
                    .args(["build", "--quiet", "--workspace", "--bins"])
                    .current_dir(env!("CARGO_MANIFEST_DIR"))
                    .status()
                    .expect("cargo runs");
                assert!(status.success(), "building the binaries for the chaos suite failed");
            });
            dir
        }
    };
    let path = dir.join(name);
    assert!(path.is_file(), "{} is missing: run `cargo build --workspace --bins`", path.display());
    path
}

/// The environment children start from: enough to find tools, nothing of ours.
fn base_command(program: &Path) -> Command {
    let mut command = Command::new(program);
    command.env_clear();
    for name in ["PATH", "HOME", "LANG", "TMPDIR"] {
        if let Some(value) = std::env::var_os(name) {
            command.env(name, value);
        }
    }
    command.env("GANTRY_LOG", "info");
    command
}

/// Sends `signal` (a name such as `KILL`) to process `pid`.
pub(crate) fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status();
}

/// Waits until `path` contains `pattern`; returns its text, or `None` after `timeout`.
fn wait_for_text(path: &Path, pattern: &str, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if text.contains(pattern) {
            return Some(text);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A program of the suite that may be killed and started again with the same settings.
pub(crate) struct Program {
    pub(crate) name: String,
    program: PathBuf,
    args: Vec<String>,
    env: Vec<(String, String)>,
    logs: PathBuf,
    child: Option<Child>,
    starts: u32,
}

impl Program {
    pub(crate) fn new(
        name: &str,
        program: PathBuf,
        args: &[String],
        env: &[(String, String)],
        logs: &Path,
    ) -> Self {
        Self {
            name: name.to_owned(),
            program,
            args: args.to_vec(),
            env: env.to_vec(),
            logs: logs.to_path_buf(),
            child: None,
            starts: 0,
        }
    }

    /// Starts it; returns the file its standard output goes to, and its standard error's.
    pub(crate) fn start(&mut self) -> (PathBuf, PathBuf) {
        assert!(self.child.is_none(), "{} is already running", self.name);
        self.starts += 1;
        let stdout = self.logs.join(format!("{}.{}.out", self.name, self.starts));
        let stderr = self.logs.join(format!("{}.{}.err", self.name, self.starts));
        let child = base_command(&self.program)
            .args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(File::create(&stdout).expect("a log file"))
            .stderr(File::create(&stderr).expect("a log file"))
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts: {e}", self.name));
        self.child = Some(child);
        (stdout, stderr)
    }

    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub(crate) fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `kill -9`, and reaps it.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits up to `timeout` (and kills it after that); true when it exited
    /// by itself.
    pub(crate) fn terminate(&mut self, timeout: Duration) -> bool {
        let Some(mut child) = self.child.take() else { return true };
        signal(child.id(), "TERM");
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `gantry server` on a fixed loopback port, so that it comes back where launchers and
/// the CLI look for it.
pub(crate) struct Server {
    pub(crate) program: Program,
    pub(crate) listen: std::net::SocketAddr,
    pub(crate) data_dir: PathBuf,
}

impl Server {
    pub(crate) fn new(
        name: &str,
        data_dir: &Path,
        listen: std::net::SocketAddr,
        env: &[(String, String)],
        logs: &Path,
    ) -> Self {
        let args = [
            "server".to_owned(),
            "--data-dir".to_owned(),
            data_dir.display().to_string(),
            "--listen".to_owned(),
            listen.to_string(),
        ];
        Self {
            program: Program::new(name, bin("gantry"), &args, env, logs),
            listen,
            data_dir: data_dir.to_path_buf(),
        }
    }

    /// Starts it and waits until it serves; returns the admin key a first start prints.
    pub(crate) fn start(&mut self) -> Option<String> {
        let (stdout, stderr) = self.program.start();
        let Some(_) = wait_for_text(&stdout, "Clients trust the CA", Duration::from_secs(90))
        else {
            panic!(
                "{} did not start: {}",
                self.program.name,
                std::fs::read_to_string(&stderr).unwrap_or_default()
            );
        };
        std::thread::sleep(Duration::from_millis(100));
        let text = std::fs::read_to_string(&stdout).unwrap_or_default();
        text.lines().find_map(|line| {
            line.split(": ").nth(1).filter(|_| line.starts_with("Admin API key")).map(str::to_owned)
        })
    }

    pub(crate) fn url(&self) -> String {
        format!("https://{}", self.listen)
    }
}

/// The `gantry` CLI, talking to whichever replica answers.
pub(crate) struct Cli {
    urls: Vec<String>,
    key: String,
    ca_file: PathBuf,
    cwd: PathBuf,
}

impl Cli {
    pub(crate) fn new(urls: Vec<String>, key: &str, ca_file: &Path, cwd: &Path) -> Self {
        Self { urls, key: key.to_owned(), ca_file: ca_file.to_path_buf(), cwd: cwd.to_path_buf() }
    }

    fn once(&self, url: &str, args: &[&str]) -> Result<String, String> {
        let output = base_command(&bin("gantry"))
            .args(args)
            .current_dir(&self.cwd)
            .env("GANTRY_API_URL", url)
            .env("GANTRY_API_KEY", &self.key)
            .env("GANTRY_API_CA_FILE", &self.ca_file)
            .output()
            .map_err(|e| format!("gantry does not run: {e}"))?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(format!(
                "gantry {args:?} at {url} failed ({:?}): {}",
                output.status.code(),
                String::from_utf8_lossy(&output.stderr).trim()
            ))
        }
    }

    /// One attempt at each replica in turn; the first success, or the last error.
    pub(crate) fn try_text(&self, args: &[&str]) -> Result<String, String> {
        let mut last = String::new();
        for url in &self.urls {
            match self.once(url, args) {
                Ok(text) => return Ok(text),
                Err(error) => last = error,
            }
        }
        Err(last)
    }

    /// Retries for up to `patience` while replicas are down or restarting.
    pub(crate) fn text(&self, args: &[&str], patience: Duration) -> Result<String, String> {
        let deadline = Instant::now() + patience;
        loop {
            match self.try_text(args) {
                Ok(text) => return Ok(text),
                Err(error) if Instant::now() >= deadline => return Err(error),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    /// [`Self::text`] in JSON mode, parsed.
    pub(crate) fn json(&self, args: &[&str], patience: Duration) -> Result<Value, String> {
        let args = [&["--output", "json"], args].concat();
        let text = self.text(&args, patience)?;
        serde_json::from_str(&text)
            .map_err(|e| format!("gantry {args:?} printed no JSON ({e}): {text}"))
    }
}
