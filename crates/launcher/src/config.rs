//! Launcher configuration from `GANTRY_*` variables, validated completely before the
//! launcher connects anywhere: a malformed token, an unreadable key or a key that does
//! not belong to the token's certificate stops it at once with one clear line.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use gantry_crypto::ReleasePublicKey;

use crate::worker_binary::WorkerSource;
use std::sync::Arc;
use std::time::Duration;

use gantry_crypto::{Certificate, PoolPrivateKey, PoolToken};
use gantry_domain::options::{self, Env, OptionError, RunLimits};
use gantry_domain::{LauncherId, PoolId};

use crate::archive::ArchiveLimits;

pub const SHUTDOWN_GRACE: &str = "GANTRY_LAUNCHER_SHUTDOWN_GRACE";
pub const METRICS_LISTEN: &str = "GANTRY_LAUNCHER_METRICS_LISTEN";
pub const SENSITIVE_OUTPUT_UPLOAD_ENABLED: &str = "GANTRY_SENSITIVE_OUTPUT_UPLOAD_ENABLED";
pub const EXECUTOR: &str = "GANTRY_LAUNCHER_EXECUTOR";
pub const RUN_UID_BASE: &str = "GANTRY_LAUNCHER_RUN_UID_BASE";
pub const RUN_LOGS_ON_STANDARD_OUTPUT: &str = "GANTRY_RUN_LOGS_ON_STANDARD_OUTPUT_ENABLED";

/// How runs are executed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecutorKind {
    /// The worker as a child process of the launcher (local setups).
    Process,
    /// Each run in a container (production).
    Docker(crate::executor::DockerSettings),
}
const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10 * 60);

/// The exit code for a configuration the launcher cannot work with (EX_USAGE).
pub const EXIT_USAGE: i32 = 64;

/// Why the configuration was refused. Never contains a secret value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Option(#[from] OptionError),
    #[error(
        "GANTRY_POOL_PRIVATE_KEY does not match the certificate in GANTRY_TOKEN (pool {pool_id}): it is not the key this pool's CSR was made with"
    )]
    KeyMismatch { pool_id: String },
    #[error("{variable}={path}: {problem}")]
    File { variable: &'static str, path: String, problem: String },
    #[error(transparent)]
    PassedEnv(#[from] crate::passed_env::PassedEnvError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error(transparent)]
    PrivateVcs(#[from] crate::private_vcs::MappingError),
    #[error(transparent)]
    RegistryAuth(#[from] crate::executor::registry_auth::RegistryAuthError),
}

/// Everything the launcher needs, checked.
#[derive(Debug, Clone)]
pub struct LauncherConfig {
    pub token: PoolToken,
    pub pool_id: PoolId,
    pub certificate: Certificate,
    /// Signs session proofs, and seals run state (to its own public half, signed by
    /// itself) before it leaves this machine and opens it when it comes back.
    pub key: Arc<PoolPrivateKey>,
    /// What unpacking a stored workspace accepts (`GANTRY_LAUNCHER_WORKSPACE_MAX_*`).
    pub(crate) archive_limits: ArchiveLimits,
    pub limits: RunLimits,
    /// Tags from `GANTRY_METADATA_*`, shown on every worker of this launcher.
    pub metadata: BTreeMap<String, String>,
    pub worker_slots: u32,
    /// Holds run workspaces and the worker sockets.
    pub work_dir: PathBuf,
    /// Where each run's worker binary comes from.
    pub worker: WorkerSource,
    /// `GANTRY_DEBUG`: workers print the exact commands they run.
    pub debug: bool,
    /// How long a graceful shutdown waits for running runs before stopping them.
    pub shutdown_grace: Duration,
    pub hostname: String,
    /// This launcher process, across its sessions.
    pub launcher_id: LauncherId,
    /// Variables passed through to the worker process (PATH, HOME, ...).
    pub passthrough_env: Vec<(String, String)>,
    /// `GANTRY_WHITELIST_ENVS` and `GANTRY_MASK_ENVS`: variables of this environment
    /// added to the runs' own.
    pub passed_env: Vec<crate::passed_env::PassedVariable>,
    /// `GANTRY_LAUNCHER_EXECUTOR`: `docker` (the default, as the reference's) or `process`.
    pub executor: ExecutorKind,
    /// `GANTRY_LAUNCHER_RUN_UID_BASE`: the process executor, run as root, runs each slot's
    /// runs as the user with this UID plus the slot's number.
    pub run_uid_base: u32,
    /// Where `private://` repositories are cloned from.
    pub private_vcs: crate::private_vcs::PrivateVcs,
    /// Print run logs as JSON lines on standard output too.
    pub run_logs_on_stdout: bool,
    /// `GANTRY_LAUNCHER_RUN_INITIALIZATION_POLICY`, parsed.
    pub initialization_policy: Option<crate::policy::InitializationPolicy>,
    /// Where Prometheus scrapes `/metrics` over plain HTTP; none when unset.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Seal the sensitive outputs of stacks that share them and upload them, for the
    /// stacks that depend on them.
    pub sensitive_output_upload: bool,
    /// `GANTRY_LAUNCHER_LOG_BUFFER_SIZE`: the room run logs the server cannot take yet
    /// may fill, shared by every run of this launcher (its clones share it too).
    pub(crate) log_buffer: Arc<crate::logs::LogBufferBudget>,
}

/// What the worker process inherits from the launcher's environment: enough to find
/// tools and write temporary files, nothing of the launcher's own configuration.
const PASSTHROUGH: &[&str] =
    &["PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "TZ", "USER", "SSL_CERT_FILE", "SSL_CERT_DIR"];

impl LauncherConfig {
    /// Reads and checks the configuration from a snapshot of the environment.
    pub fn from_env(env: &Env) -> Result<Self, ConfigError> {
        let token_text = options::get(env, options::TOKEN).ok_or_else(|| OptionError::Missing {
            variable: options::TOKEN.to_owned(),
            expected: "the token printed by gantry pool create",
        })?;
        let token = PoolToken::decode(token_text).map_err(|e| {
            OptionError::invalid_secret(options::TOKEN, format!("a Gantry pool token ({e})"))
        })?;
        let pool_id: PoolId = token.pool_id.parse().map_err(|_| {
            OptionError::invalid_secret(
                options::TOKEN,
                "a Gantry pool token (its pool id is not valid)",
            )
        })?;
        let certificate = token.pool_certificate().map_err(|e| {
            OptionError::invalid_secret(options::TOKEN, format!("a Gantry pool token ({e})"))
        })?;

        let key = read_key(env)?;
        if !key.matches(&certificate) {
            return Err(ConfigError::KeyMismatch { pool_id: token.pool_id.clone() });
        }

        let work_dir = match options::get(env, options::WORK_DIR) {
            Some(dir) => PathBuf::from(dir),
            None => {
                PathBuf::from(options::get(env, "TMPDIR").unwrap_or("/tmp")).join("gantry-launcher")
            }
        };
        let worker = match options::get(env, crate::worker_binary::WORKER_BINARY_PUBLIC_KEY) {
            Some(_) if options::get(env, options::WORKER_BINARY).is_some() => {
                return Err(OptionError::invalid(
                    crate::worker_binary::WORKER_BINARY_PUBLIC_KEY,
                    "(set)",
                    "either GANTRY_WORKER_BINARY (a local worker) or GANTRY_WORKER_BINARY_PUBLIC_KEY (download it from the server), not both",
                )
                .into());
            }
            Some(key) => WorkerSource::Download(ReleasePublicKey::parse(key).map_err(|_| {
                OptionError::invalid(
                    crate::worker_binary::WORKER_BINARY_PUBLIC_KEY,
                    key,
                    "the release public key: base64 of 32 bytes, as gantry worker-binary keygen prints it",
                )
            })?),
            None => WorkerSource::Local(worker_binary(env)?),
        };
        let metrics_listen = options::get(env, METRICS_LISTEN)
            .map(|text| {
                text.parse().map_err(|_| {
                    OptionError::invalid(METRICS_LISTEN, text, "an address like 127.0.0.1:9465")
                })
            })
            .transpose()?;
        let executor = match options::get(env, EXECUTOR).unwrap_or("docker") {
            "process" => ExecutorKind::Process,
            "docker" => {
                use crate::executor::registry_auth::{DOCKER_CONFIG_DIR, RegistryAuth};
                let mut settings = crate::executor::DockerSettings::from_env(env)?;
                if let Some(dir) = options::get(env, DOCKER_CONFIG_DIR) {
                    settings.registry_auth = RegistryAuth::load(Path::new(dir))?;
                }
                ExecutorKind::Docker(settings)
            }
            other => {
                return Err(OptionError::invalid(EXECUTOR, other, "process or docker").into());
            }
        };
        let initialization_policy =
            match options::get(env, crate::policy::RUN_INITIALIZATION_POLICY) {
                Some(path) => Some(crate::policy::InitializationPolicy::load(Path::new(path))?),
                None => None,
            };
        let run_uid_base = options::count(
            env,
            RUN_UID_BASE,
            crate::executor::DEFAULT_RUN_UID_BASE,
            1000,
            u32::MAX - 64,
            "a UID from 1000 on, not used by any account of this machine, like 61000",
        )?;
        Ok(Self {
            run_uid_base,
            private_vcs: crate::private_vcs::PrivateVcs::from_env(env)?,
            run_logs_on_stdout: options::boolean(env, RUN_LOGS_ON_STANDARD_OUTPUT, false)?,
            initialization_policy,
            executor,
            passed_env: crate::passed_env::from_env(env)?,
            metrics_listen,
            sensitive_output_upload: options::boolean(env, SENSITIVE_OUTPUT_UPLOAD_ENABLED, false)?,
            log_buffer: Arc::new(crate::logs::LogBufferBudget::new(options::size(
                env,
                crate::logs::LOG_BUFFER_SIZE,
                crate::logs::DEFAULT_LOG_BUFFER_SIZE,
            )?)),
            pool_id,
            certificate,
            key: Arc::new(key),
            archive_limits: ArchiveLimits::from_env(env)?,
            limits: RunLimits::from_env(env)?,
            metadata: options::metadata(env),
            worker_slots: options::count(
                env,
                options::WORKER_SLOTS,
                1,
                1,
                64,
                "a number of worker slots from 1 to 64",
            )?,
            work_dir,
            worker,
            debug: options::boolean(env, options::DEBUG, false)?,
            shutdown_grace: options::duration(env, SHUTDOWN_GRACE, DEFAULT_SHUTDOWN_GRACE)?,
            hostname: hostname(env),
            launcher_id: LauncherId::generate(),
            passthrough_env: PASSTHROUGH
                .iter()
                .filter_map(|name| env.get(*name).map(|value| ((*name).to_owned(), value.clone())))
                .collect(),
            token,
        })
    }
}

fn read_key(env: &Env) -> Result<PoolPrivateKey, ConfigError> {
    const EXPECTED: &str =
        "the pool's private key: base64 of the PEM file (base64 -w 0 pool.key) or the PEM text";
    if let Some(value) = options::get(env, options::POOL_PRIVATE_KEY) {
        return PoolPrivateKey::from_config_value(value).map_err(|e| {
            OptionError::invalid_secret(options::POOL_PRIVATE_KEY, format!("{EXPECTED} ({e})"))
                .into()
        });
    }
    if let Some(path) = options::get(env, options::POOL_PRIVATE_KEY_FILE) {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::File {
            variable: options::POOL_PRIVATE_KEY_FILE,
            path: path.to_owned(),
            problem: format!("cannot read the key file: {e}"),
        })?;
        return PoolPrivateKey::from_config_value(&text).map_err(|e| ConfigError::File {
            variable: options::POOL_PRIVATE_KEY_FILE,
            path: path.to_owned(),
            problem: e.to_string(),
        });
    }
    Err(OptionError::Missing {
        variable: options::POOL_PRIVATE_KEY.to_owned(),
        expected: "the pool's private key, base64 of the PEM file (base64 -w 0 pool.key); or set GANTRY_POOL_PRIVATE_KEY_FILE",
    }
    .into())
}

/// `GANTRY_WORKER_BINARY`, or `gantry-worker` next to the running executable.
fn worker_binary(env: &Env) -> Result<PathBuf, ConfigError> {
    let path = match options::get(env, options::WORKER_BINARY) {
        Some(path) => PathBuf::from(path),
        None => std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(|dir| dir.join("gantry-worker")))
            .unwrap_or_else(|| PathBuf::from("gantry-worker")),
    };
    if !is_executable(&path) {
        return Err(ConfigError::File {
            variable: options::WORKER_BINARY,
            path: path.display().to_string(),
            problem: "no gantry-worker executable there: install it next to gantry-launcher or point GANTRY_WORKER_BINARY at it".to_owned(),
        });
    }
    Ok(path)
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

fn hostname(env: &Env) -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|name| name.into_string().ok())
        .filter(|name| !name.is_empty())
        .or_else(|| options::get(env, "HOSTNAME").map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned())
}
