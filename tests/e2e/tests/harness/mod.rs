//! Starting and driving the real binaries: `gantry server`, `gantry-launcher`, `gantry up`
//! and the `gantry` CLI, each a separate process, all on loopback.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use gantry_testkit::{GitRepository, KeyKind, OpensslKey};
use serde_json::Value;

/// A binary of the workspace. Unless `GANTRY_BIN_DIR` names prebuilt ones, the binaries
/// are brought up to date once per test process (cargo only checks when nothing
/// changed), so a test never runs a launcher older than the code under test.
pub(crate) fn bin(name: &str) -> PathBuf {
    static BUILT: std::sync::Once = std::sync::Once::new();
    let dir = match std::env::var_os("GANTRY_BIN_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => {
            // target/<profile>/deps/e2e-<hash> → target/<profile>
            let exe = std::env::current_exe().expect("the test knows its path");
            let dir = exe
                .parent()
                .and_then(Path::parent)
                .expect("the test runs from target/<profile>/deps")
                .to_path_buf();
            BUILT.call_once(|| build_binaries(&dir));
            dir
        }
    };
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build --workspace --bins` first (scripts/test.sh does)",
        path.display()
    );
    path
}

fn build_binaries(profile_dir: &Path) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .args(["build", "--quiet", "--workspace", "--bins"])
        .current_dir(env!("CARGO_MANIFEST_DIR"));
    if profile_dir.file_name().is_some_and(|name| name == "release") {
        command.arg("--release");
    }
    let status = command.status().expect("cargo runs");
    assert!(status.success(), "building the binaries for the end-to-end tests failed");
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

/// Collects a child's output lines as they come.
#[derive(Clone, Default)]
struct Transcript(Arc<Mutex<String>>);

impl Transcript {
    fn follow(stream: impl Read + Send + 'static) -> (Self, Receiver<String>) {
        let transcript = Self::default();
        let (sender, receiver) = channel();
        let shared = transcript.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { return };
                shared.0.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = sender.send(line);
            }
        });
        (transcript, receiver)
    }

    fn text(&self) -> String {
        self.0.lock().unwrap().clone()
    }

    /// Waits until the transcript contains `pattern`; returns the transcript.
    fn wait_for(&self, pattern: &str, timeout: Duration, what: &str) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.text();
            if text.contains(pattern) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{what} never printed {pattern:?}; it printed:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

pub(crate) fn signal(child: &Child, name: &str) {
    let _ = Command::new("kill").arg(format!("-{name}")).arg(child.id().to_string()).status();
}

/// Waits for a child to exit, killing it after `timeout`.
pub(crate) fn wait_with_timeout(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the process did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `gantry server` in its own process.
pub(crate) struct ServerProcess {
    child: Child,
    pub(crate) url: String,
    pub(crate) admin_key: Option<String>,
    /// `http://.../metrics`, when the server serves metrics.
    pub(crate) metrics_url: Option<String>,
    pub(crate) ca_file: PathBuf,
    pub(crate) data_dir: PathBuf,
    stderr: Transcript,
}

impl ServerProcess {
    /// Where the server keeps a run's stored workspace (`workspace.<token>`: each upload
    /// has a key of its own); a path that does not exist when it keeps none.
    pub(crate) fn workspace_blob(&self, run_id: &str) -> PathBuf {
        let dir = self.data_dir.join("blobs/runs").join(run_id.to_ascii_lowercase());
        std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|entry| entry.path())
            .find(|path| {
                path.file_name()
                    .and_then(|name| name.to_str())
                    .is_some_and(|name| name.starts_with("workspace."))
            })
            .unwrap_or_else(|| dir.join("workspace"))
    }

    /// Plays a malicious or broken server: records `path`'s current content as the run's
    /// workspace, with its real digest, so that only the encryption can catch a change.
    pub(crate) fn record_workspace(&self, run_id: &str, path: &Path) {
        use gantry_store::Store;
        let bytes = std::fs::read(path).unwrap();
        let sha256 = {
            let output = Command::new("sha256sum").arg(path).output().unwrap();
            String::from_utf8_lossy(&output.stdout).split_whitespace().next().unwrap().to_owned()
        };
        let key = path.strip_prefix(self.data_dir.join("blobs")).unwrap().display().to_string();
        let run: gantry_domain::RunId = run_id.parse().unwrap();
        let database = self.data_dir.join("gantry.db");
        tokio::runtime::Runtime::new().unwrap().block_on(async move {
            let store = gantry_store::SqliteStore::open(&database).await.unwrap();
            let blob = gantry_store::BlobRecord {
                key,
                sha256,
                size: bytes.len() as u64,
                created_at: gantry_domain::Timestamp::from_unix_millis(0),
            };
            store.put_run_blob(run, "workspace", &blob).await.unwrap();
        });
    }

    pub(crate) fn start_in(data_dir: &Path, listen: &str) -> Self {
        Self::start_with(data_dir, listen, &[])
    }

    /// Starts the server with extra environment settings (`GANTRY_SERVER_...`).
    pub(crate) fn start_with(data_dir: &Path, listen: &str, env: &[(&str, &str)]) -> Self {
        let mut child = base_command(&bin("gantry"))
            .args(["server", "--data-dir"])
            .arg(data_dir)
            .args(["--listen", listen])
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gantry server starts");
        let (stdout, _) = Transcript::follow(child.stdout.take().unwrap());
        let (stderr, _) = Transcript::follow(child.stderr.take().unwrap());
        let text =
            stdout.wait_for("Clients trust the CA", Duration::from_secs(30), "gantry server");
        let url = text
            .lines()
            .find_map(|line| line.strip_prefix("Gantry server listening on "))
            .expect("the listening line")
            .trim()
            .to_owned();
        // The key line follows the CA line at a first start; give it a moment.
        std::thread::sleep(Duration::from_millis(100));
        let admin_key = stdout.text().lines().find_map(|line| {
            line.split(": ").nth(1).filter(|_| line.starts_with("Admin API key")).map(str::to_owned)
        });
        let metrics_url = stdout.text().lines().find_map(|line| {
            line.strip_prefix("Prometheus metrics at ").map(|url| url.trim().to_owned())
        });
        Self {
            child,
            url,
            admin_key,
            metrics_url,
            ca_file: data_dir.join("server-ca.pem"),
            data_dir: data_dir.to_path_buf(),
            stderr,
        }
    }

    pub(crate) fn wait_for_stderr(&self, pattern: &str, timeout: Duration) -> String {
        self.stderr.wait_for(pattern, timeout, "gantry server")
    }

    /// Kills the server at once (SIGKILL), as a crash or an OOM kill does.
    pub(crate) fn kill(mut self) {
        signal(&self.child, "KILL");
        let _ = self.child.wait();
    }

    /// Fails if any file of the server's data directory holds `marker`, in clear or in
    /// base64 (at any of the three alignments).
    pub(crate) fn assert_nothing_contains(&self, marker: &str) {
        let engine = base64::engine::general_purpose::STANDARD;
        let mut needles = vec![marker.as_bytes().to_vec()];
        for offset in 0..3 {
            let padded = format!("{}{marker}", "x".repeat(offset));
            let encoded = engine.encode(padded.as_bytes());
            // Skip the characters the padding influenced, and the possibly partial tail.
            let start = (offset * 4).div_ceil(3) + 1;
            needles.push(encoded.as_bytes()[start..encoded.len() - 4].to_vec());
        }
        let mut stack = vec![self.data_dir.clone()];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                    continue;
                }
                let bytes = std::fs::read(&path).unwrap();
                for needle in &needles {
                    assert!(
                        !bytes.windows(needle.len()).any(|window| window == needle.as_slice()),
                        "{} holds {:?}",
                        path.display(),
                        String::from_utf8_lossy(needle)
                    );
                }
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        signal(&self.child, "TERM");
        let _ = wait_with_timeout_quiet(&mut self.child, Duration::from_secs(10));
        // A failed test shows what its server said, whether or not it stopped cleanly.
        if std::thread::panicking() {
            eprintln!("server stderr:\n{}", self.stderr.text());
        }
    }
}

fn wait_with_timeout_quiet(child: &mut Child, timeout: Duration) -> Option<i32> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return status.code();
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// The `gantry` CLI pointed at one server.
pub(crate) struct Gantry {
    url: String,
    pub(crate) api_key: String,
    ca_file: PathBuf,
    cwd: tempfile::TempDir,
}

impl Gantry {
    pub(crate) fn for_server(server: &ServerProcess) -> Self {
        Self::for_server_with_key(
            server,
            server.admin_key.as_deref().expect("a first start prints the admin key"),
        )
    }

    /// The same CLI, talking to `url` (one replica of several) instead.
    pub(crate) fn at(mut self, url: &str) -> Self {
        url.clone_into(&mut self.url);
        self
    }

    pub(crate) fn for_server_with_key(server: &ServerProcess, key: &str) -> Self {
        Self {
            url: server.url.clone(),
            api_key: key.to_owned(),
            ca_file: server.ca_file.clone(),
            cwd: tempfile::tempdir().unwrap(),
        }
    }

    fn command(&self, args: &[&str]) -> std::process::Output {
        base_command(&bin("gantry"))
            .args(args)
            .current_dir(self.cwd.path())
            .env("GANTRY_API_URL", &self.url)
            .env("GANTRY_API_KEY", &self.api_key)
            .env("GANTRY_API_CA_FILE", &self.ca_file)
            .output()
            .expect("gantry runs")
    }

    /// Runs a command that must succeed; returns its stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let output = self.command(args);
        assert!(
            output.status.success(),
            "gantry {args:?} failed ({:?}): {}",
            output.status.code(),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs a command that must fail; returns its stderr.
    pub(crate) fn fails(&self, args: &[&str]) -> String {
        let output = self.command(args);
        assert!(
            !output.status.success(),
            "gantry {args:?} succeeded: {}",
            String::from_utf8_lossy(&output.stdout)
        );
        String::from_utf8_lossy(&output.stderr).into_owned()
    }

    pub(crate) fn json(&self, args: &[&str]) -> Value {
        // Before the subcommand: after a task's `--`, it would be part of the command.
        let args = [&["--output", "json"], args].concat();
        let stdout = self.ok(&args);
        serde_json::from_str(&stdout)
            .unwrap_or_else(|e| panic!("gantry {args:?} printed no JSON ({e}): {stdout}"))
    }

    /// Creates a pool from the key's CSR; returns the token.
    pub(crate) fn create_pool(&self, name: &str, key: &OpensslKey) -> String {
        let csr = key.key_path.with_extension("csr");
        let created =
            self.json(&["pool", "create", "--name", name, "--csr", csr.to_str().unwrap()]);
        created["token"].as_str().expect("the token is returned once").to_owned()
    }

    /// A stack on `infra/` of the repository whose local backend keeps its state in
    /// `state_file`, outside the run's workspace.
    pub(crate) fn create_stack(
        &self,
        name: &str,
        repository: &GitRepository,
        pool: &str,
        state_file: &Path,
        extra: &[&str],
    ) {
        self.create_stack_in(name, repository, Some(pool), state_file, extra);
    }

    /// [`Self::create_stack`] on `pool`, or on the server's shared pool when `None`.
    pub(crate) fn create_stack_in(
        &self,
        name: &str,
        repository: &GitRepository,
        pool: Option<&str>,
        state_file: &Path,
        extra: &[&str],
    ) {
        if let Some(dir) = state_file.parent() {
            open_to_run_users(dir);
        }
        let backend = format!("TF_CLI_ARGS_init=-backend-config=path={}", state_file.display());
        let options = [&["--env", backend.as_str()], extra].concat();
        self.create_stack_at(name, &repository.url(), pool, &options);
    }

    /// `stack create` of a stack on `infra/` of the repository at `url`, on `pool` (the
    /// server's shared pool when `None`), with `extra` options.
    pub(crate) fn create_stack_at(
        &self,
        name: &str,
        url: &str,
        pool: Option<&str>,
        extra: &[&str],
    ) {
        let mut args =
            vec!["stack", "create", "--name", name, "--repository", url, "--project-root", "infra"];
        if let Some(pool) = pool {
            args.extend(["--pool", pool]);
        }
        args.extend(extra);
        self.ok(&args);
    }

    /// [`Self::create_stack_at`] with managed state: the pool's launchers keep the
    /// stack's state on the server, sealed to the pool key.
    pub(crate) fn create_managed_stack(&self, name: &str, url: &str, pool: &str, extra: &[&str]) {
        self.create_stack_at(name, url, Some(pool), &[&["--managed-state"], extra].concat());
    }

    pub(crate) fn trigger(&self, stack: &str, extra: &[&str]) -> Value {
        let mut args = vec!["run", "trigger", stack];
        args.extend(extra);
        self.json(&args)
    }

    pub(crate) fn wait_for<T>(&self, timeout: Duration, mut probe: impl FnMut() -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = probe() {
                return found;
            }
            assert!(Instant::now() < deadline, "gave up after {timeout:?}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits until the run is in one of `states`; returns it.
    pub(crate) fn wait_for_state(&self, run: &Value, states: &[&str]) -> Value {
        self.wait_for_state_within(run, states, Duration::from_secs(120))
    }

    pub(crate) fn wait_for_state_within(
        &self,
        run: &Value,
        states: &[&str],
        timeout: Duration,
    ) -> Value {
        let id = run["id"].as_str().unwrap().to_owned();
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.json(&["run", "show", &id]);
            if states.iter().any(|state| last["state"] == *state) {
                return last;
            }
            assert!(Instant::now() < deadline, "run {id} never reached {states:?}: {last}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn log(&self, run: &Value) -> String {
        self.ok(&["run", "logs", run["id"].as_str().unwrap(), "--color", "never"])
    }
}

/// A server and a CLI for it, in a temporary directory.
pub(crate) struct Cluster {
    pub(crate) gantry: Gantry,
    pub(crate) server: ServerProcess,
    _dir: tempfile::TempDir,
}

impl Cluster {
    pub(crate) fn start() -> Self {
        Self::start_with(&[])
    }

    /// A cluster whose server has extra environment settings.
    pub(crate) fn start_with(env: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerProcess::start_with(&dir.path().join("server"), "127.0.0.1:0", env);
        Self { gantry: Gantry::for_server(&server), server, _dir: dir }
    }

    /// Creates a private pool from a fresh P-256 key made in `dir`.
    pub(crate) fn private_pool(&self, dir: &Path, name: &str) -> PoolAccess {
        let key = OpensslKey::generate(dir, name, KeyKind::P256);
        let token = self.gantry.create_pool(name, &key);
        PoolAccess { token, key: base64_of(&key.key_pem) }
    }
}

/// What a launcher of a pool needs.
pub(crate) struct PoolAccess {
    pub(crate) token: String,
    /// The pool's private key, base64 of its PEM.
    pub(crate) key: String,
}

impl PoolAccess {
    /// A launcher of the pool working in `work_dir`, once connected: a test that kills
    /// it starts another with the same directory, as a restarted machine would.
    pub(crate) fn start_launcher(&self, work_dir: &Path, extra: &[(&str, &str)]) -> Launcher {
        let mut launcher = Launcher::spawn_for(&self.token, &self.key, work_dir, extra);
        launcher.wait_for_stderr("launcher connected", Duration::from_secs(90));
        launcher
    }
}

/// `gantry-launcher` in its own process.
pub(crate) struct Launcher {
    child: Child,
    stderr: Transcript,
    stdout: Transcript,
    _work: Option<tempfile::TempDir>,
}

/// How a launcher that stopped on its own ended.
pub(crate) struct Exited {
    pub(crate) status: Option<i32>,
    pub(crate) stderr: String,
}

/// Lets the users runs run as (a root launcher's process executor runs each as a user of
/// its own) write in `dir`, and pass through the directories above it, as a pool owner
/// does for a directory runs share on purpose.
pub(crate) fn open_to_run_users(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    passable_to_run_users(dir);
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o777)).unwrap();
}

/// Creates an empty file every run may append to, whichever user it runs as.
pub(crate) fn shared_file_for_runs(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        open_to_run_users(dir);
    }
    std::fs::write(path, "").unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o666)).unwrap();
}

/// Lets the users runs run as pass through the directories down to `dir`.
fn passable_to_run_users(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).unwrap();
    for ancestor in dir.ancestors() {
        let Ok(metadata) = std::fs::metadata(ancestor) else { continue };
        let mode = metadata.permissions().mode();
        if mode & 0o001 == 0 {
            let _ =
                std::fs::set_permissions(ancestor, std::fs::Permissions::from_mode(mode | 0o011));
        }
    }
}

fn launcher_command(token: &str, key: &str, work_dir: &Path, extra: &[(&str, &str)]) -> Command {
    passable_to_run_users(work_dir);
    let mut command = base_command(&bin("gantry-launcher"));
    // Tests of the docker executor say so in `extra`, which comes last.
    command.env("GANTRY_LAUNCHER_EXECUTOR", "process");
    // An empty key: the caller names a key file in `extra`.
    if !key.is_empty() {
        command.env("GANTRY_POOL_PRIVATE_KEY", key);
    }
    command
        .env("GANTRY_TOKEN", token)
        .env("GANTRY_WORKER_BINARY", bin("gantry-worker"))
        .env("GANTRY_LAUNCHER_WORK_DIR", work_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (name, value) in extra {
        command.env(name, value);
    }
    command
}

impl Launcher {
    pub(crate) fn start(
        _cluster: &Cluster,
        token: &str,
        key: &str,
        extra: &[(&str, &str)],
    ) -> Self {
        Self::connected(token, key, extra)
    }

    fn connected(token: &str, key: &str, extra: &[(&str, &str)]) -> Self {
        let work = tempfile::tempdir().unwrap();
        let mut launcher = Self::spawn_for(token, key, work.path(), extra);
        launcher._work = Some(work);
        launcher.wait_for_stderr("launcher connected", Duration::from_secs(30));
        launcher
    }

    /// A connected launcher that reads its key from the file `GANTRY_POOL_PRIVATE_KEY_FILE`
    /// in `extra` names.
    pub(crate) fn with_key_file(_cluster: &Cluster, token: &str, extra: &[(&str, &str)]) -> Self {
        Self::connected(token, "", extra)
    }

    /// A connected launcher of `pool` with its own work directory.
    pub(crate) fn connect(pool: &PoolAccess, extra: &[(&str, &str)]) -> Self {
        Self::connected(&pool.token, &pool.key, extra)
    }

    /// A launcher of `pool` with its own work directory.
    pub(crate) fn of(cluster: &Cluster, pool: &PoolAccess, extra: &[(&str, &str)]) -> Self {
        Self::start(cluster, &pool.token, &pool.key, extra)
    }

    /// Kills the launcher at once (SIGKILL): no goodbye, no report, as a crash does.
    pub(crate) fn kill(mut self) {
        signal(&self.child, "KILL");
        let _ = self.child.wait();
    }

    pub(crate) fn spawn_for(
        token: &str,
        key: &str,
        work_dir: &Path,
        extra: &[(&str, &str)],
    ) -> Self {
        Self::spawn_adjusted(token, key, work_dir, extra, |_| {})
    }

    /// [`Self::spawn_for`], the command adjusted first (to run as another user, ...).
    pub(crate) fn spawn_adjusted(
        token: &str,
        key: &str,
        work_dir: &Path,
        extra: &[(&str, &str)],
        adjust: impl FnOnce(&mut Command),
    ) -> Self {
        let mut command = launcher_command(token, key, work_dir, extra);
        adjust(&mut command);
        let mut child = command.spawn().expect("gantry-launcher starts");
        let (stderr, _) = Transcript::follow(child.stderr.take().unwrap());
        let (stdout, _) = Transcript::follow(child.stdout.take().unwrap());
        Self { child, stderr, stdout, _work: None }
    }

    /// Runs a launcher expected to stop by itself quickly.
    pub(crate) fn run_to_exit(cluster: &Cluster, token: &str, key: &str) -> Exited {
        Self::run_to_exit_with(cluster, token, key, &[])
    }

    /// [`Self::run_to_exit`] with extra settings.
    pub(crate) fn run_to_exit_with(
        _cluster: &Cluster,
        token: &str,
        key: &str,
        extra: &[(&str, &str)],
    ) -> Exited {
        let work = tempfile::tempdir().unwrap();
        let mut launcher = Self::spawn_for(token, key, work.path(), extra);
        let status = wait_with_timeout(&mut launcher.child, Duration::from_secs(20));
        std::thread::sleep(Duration::from_millis(100));
        Exited { status, stderr: launcher.stderr.text() }
    }

    pub(crate) fn wait_for_stderr(&mut self, pattern: &str, timeout: Duration) -> String {
        self.stderr.wait_for(pattern, timeout, "gantry-launcher")
    }

    /// The launcher's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM and returns at once.
    pub(crate) fn terminate(&self) {
        signal(&self.child, "TERM");
    }

    /// What the launcher printed on its standard output so far.
    pub(crate) fn stdout(&self) -> String {
        self.stdout.text()
    }

    /// SIGTERM, and waits for a clean exit (status 0).
    pub(crate) fn stop(mut self) {
        signal(&self.child, "TERM");
        assert_eq!(
            wait_with_timeout(&mut self.child, Duration::from_secs(30)),
            Some(0),
            "{}",
            self.stderr.text()
        );
    }

    /// Waits for the launcher to stop by itself; returns its status and stderr.
    pub(crate) fn wait_for_exit(mut self, timeout: Duration) -> Exited {
        let status = wait_with_timeout(&mut self.child, timeout);
        std::thread::sleep(Duration::from_millis(100));
        Exited { status, stderr: self.stderr.text() }
    }
}

impl Drop for Launcher {
    fn drop(&mut self) {
        // A reaped process's id may belong to another process by now.
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        signal(&self.child, "TERM");
        let _ = wait_with_timeout_quiet(&mut self.child, Duration::from_secs(15));
        if std::thread::panicking() {
            eprintln!("launcher stderr:\n{}", self.stderr.text());
        }
    }
}

/// `gantry up` in its own process, in a directory of its own.
pub(crate) struct Up {
    child: Child,
    stdout: Transcript,
    stderr: Transcript,
}

impl Up {
    pub(crate) fn start(dir: &Path) -> Self {
        let mut child = base_command(&bin("gantry"))
            .args(["up", "--listen", "127.0.0.1:0"])
            .current_dir(dir)
            .env("GANTRY_WORKER_BINARY", bin("gantry-worker"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("gantry up starts");
        let (stdout, _) = Transcript::follow(child.stdout.take().unwrap());
        let (stderr, _) = Transcript::follow(child.stderr.take().unwrap());
        Self { child, stdout, stderr }
    }

    pub(crate) fn wait_for_stdout(&self, pattern: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.stdout.text();
            if text.contains(pattern) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "gantry up never printed {pattern:?}; stdout:\n{text}\nstderr:\n{}",
                self.stderr.text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Ctrl-C, then waits for the exit status.
    pub(crate) fn interrupt_and_wait(mut self) -> Option<i32> {
        signal(&self.child, "INT");
        let status = wait_with_timeout(&mut self.child, Duration::from_secs(30));
        assert!(self.stdout.text().contains("Gantry stopped."), "{}", self.stdout.text());
        status
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs the CLI in `dir` with no connection settings: it must find `.gantry/client.json`.
pub(crate) fn cli_in(dir: &Path, args: &[&str]) -> String {
    let output =
        base_command(&bin("gantry")).args(args).current_dir(dir).output().expect("gantry runs");
    assert!(
        output.status.success(),
        "gantry {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub(crate) fn base64_of(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

pub(crate) fn id(run: &Value) -> &str {
    run["id"].as_str().unwrap()
}

pub(crate) fn states(run: &Value) -> Vec<String> {
    run["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|change| change["state"].as_str().unwrap().to_owned())
        .collect()
}

pub(crate) fn state_has_resource(path: &std::path::Path) -> bool {
    std::fs::read_to_string(path).is_ok_and(|state| state.contains("\"terraform_data\""))
}

pub(crate) fn line_after(text: &str, prefix: &str) -> Option<String> {
    text.lines()
        .find_map(|line| line.trim_start().strip_prefix(prefix).map(|rest| rest.trim().to_owned()))
}

/// A configuration whose apply is silent for `seconds` (terraform prints a progress line
/// only every 10 s); the odd duration names the process for the orphan check.
pub(crate) fn slow_config(seconds: &str) -> String {
    format!(
        r#"
resource "terraform_data" "slow" {{
  provisioner "local-exec" {{
    command = "sleep {seconds}"
  }}
}}
"#
    )
}

pub(crate) fn processes_running(pattern: &str) -> Vec<String> {
    let output = std::process::Command::new("ps").args(["-eo", "args"]).output().unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| line.contains(pattern))
        .map(str::to_owned)
        .collect()
}

/// A free loopback port, for a listener a child process binds next.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// `GET` over plain HTTP/1.0; returns the body of a 200 answer.
pub(crate) fn http_get(url: &str) -> String {
    use std::io::Write;
    let rest = url.strip_prefix("http://").expect("an http:// URL");
    let (authority, path) =
        rest.split_once('/').map_or((rest, "/".to_owned()), |(a, p)| (a, format!("/{p}")));
    let mut stream = std::net::TcpStream::connect(authority).unwrap();
    write!(stream, "GET {path} HTTP/1.0\r\nHost: {authority}\r\n\r\n").unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_owned()
}

/// What a launcher's work directory still holds of `run`: paths naming it, and any
/// state file in clear.
pub(crate) fn left_of_run(work_dir: &Path, run: &Value) -> Vec<String> {
    fn walk(dir: &Path, found: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                walk(&path, found);
            }
            found.push(path);
        }
    }
    let mut found = Vec::new();
    walk(work_dir, &mut found);
    found
        .into_iter()
        .map(|path| path.display().to_string())
        .filter(|path| path.contains(id(run)) || path.ends_with(".tfstate"))
        .collect()
}
