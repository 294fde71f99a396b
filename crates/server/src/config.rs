//! Server configuration: defaults, then an optional TOML file, then `GANTRY_SERVER_*`
//! environment variables (the CLI turns its flags into the same variables). Everything is
//! validated before any port is bound; an error names the setting, the value and what
//! was expected.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use gantry_domain::options::{self, Env, OptionError};
use gantry_store::{BlobLocation, S3Credentials, S3Settings};
use serde::Deserialize;

/// The database the server keeps its state in.
#[derive(Clone, PartialEq, Eq)]
pub enum Database {
    /// A SQLite file: one server process.
    Sqlite(PathBuf),
    /// A PostgreSQL URL: any number of server processes may share it.
    Postgres(String),
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        match self {
            Self::Sqlite(path) => f.debug_tuple("Sqlite").field(path).finish(),
            Self::Postgres(url) => {
                f.debug_tuple("Postgres").field(&gantry_store::redact_url(url)).finish()
            }
        }
    }
}

const EXPECTED_DATABASE: &str = "postgres://user[:password]@host[:port]/database (or postgresql://), or sqlite:///absolute/path/gantry.db";

impl Database {
    /// `GANTRY_SERVER_DATABASE`, or `<data_dir>/gantry.db` when unset.
    fn from_setting(text: Option<&str>, data_dir: &std::path::Path) -> Result<Self, ConfigError> {
        let Some(text) = text else { return Ok(Self::Sqlite(data_dir.join("gantry.db"))) };
        let redacted = gantry_store::redact_url(text);
        if text.starts_with("postgres://") || text.starts_with("postgresql://") {
            let valid = text
                .split_once("://")
                .map(|(_, rest)| rest.split(['/', '?']).next().unwrap_or(""))
                .is_some_and(|authority| !authority.rsplit('@').next().unwrap_or("").is_empty());
            if !valid {
                return Err(OptionError::invalid(DATABASE, &redacted, EXPECTED_DATABASE).into());
            }
            return Ok(Self::Postgres(text.to_owned()));
        }
        match text.strip_prefix("sqlite://") {
            Some(path) if path.starts_with('/') => Ok(Self::Sqlite(PathBuf::from(path))),
            _ => Err(OptionError::invalid(DATABASE, &redacted, EXPECTED_DATABASE).into()),
        }
    }
}

/// Where the server's TLS certificate comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsSource {
    /// Issued at every start by the server's own CA for these extra names, on top of
    /// `localhost`, the loopback addresses, the listen address and the public URL's host.
    Generated { extra_hostnames: Vec<String> },
    /// Supplied by the admin. `ca_file` is the CA launchers must trust, copied into pool
    /// tokens; absent when the certificate is publicly trusted.
    Files { cert_file: PathBuf, key_file: PathBuf, ca_file: Option<PathBuf> },
}

/// Intervals of the agent plane.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentTimings {
    /// How often launchers heartbeat.
    pub heartbeat_interval: Duration,
    /// A worker whose launcher has not heart-beaten for this long is gone.
    pub worker_timeout: Duration,
    /// The longest a poll blocks.
    pub poll_timeout: Duration,
    /// How long a session token lives.
    pub session_ttl: Duration,
    /// How often liveness and cleanup run.
    pub sweep_interval: Duration,
    /// How long after a run ended its log moves from the database to the blob store.
    pub log_archive_after: Duration,
    /// How long a worker goes on without a launcher that reaches this server.
    pub worker_lease: Duration,
    /// How long a worker whose lease ran out gives the tool between SIGINT and kill.
    pub worker_lease_grace: Duration,
}

impl AgentTimings {
    /// How long after a lock holder's last heartbeat its stack's lock stays taken: by
    /// then its worker has interrupted and killed the tool (see `gantry_proto::lease`).
    pub fn lock_fence(&self) -> Duration {
        self.worker_lease + self.worker_lease_grace
    }
}

impl Default for AgentTimings {
    fn default() -> Self {
        Self {
            // A dead launcher's runs fail within timeout + sweep interval (12 s) of its
            // last heartbeat; three heartbeats may be late or lost before that.
            heartbeat_interval: Duration::from_secs(3),
            worker_timeout: Duration::from_secs(10),
            poll_timeout: Duration::from_secs(30),
            session_ttl: Duration::from_secs(3600),
            sweep_interval: Duration::from_secs(2),
            log_archive_after: Duration::from_secs(60),
            worker_lease: Duration::from_secs(gantry_proto::lease::DEFAULT_LEASE_SECONDS),
            worker_lease_grace: Duration::from_secs(gantry_proto::lease::DEFAULT_GRACE_SECONDS),
        }
    }
}

/// What one client may hold or try over HTTP, per replica.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpLimits {
    /// A request's headers must arrive within this; also how long an HTTP/1.1
    /// connection may wait for its next request, and the TLS handshake's bound.
    pub header_read_timeout: Duration,
    /// The longest a request may take to be answered (its body read included); a
    /// long-poll gets its own wait on top, a blob upload this long between pieces.
    pub request_timeout: Duration,
    /// A connection with no request in flight for this long is closed.
    pub idle_timeout: Duration,
    /// Open connections one source address may hold.
    pub connections_per_address: u32,
    /// Failed authentications (API keys, UI sign-in, launcher session proofs) one source
    /// address may make per minute before it is answered 429.
    pub auth_failures_per_minute: u32,
    /// Failed session proofs for one pool per minute, from all addresses together.
    pub pool_auth_failures_per_minute: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(60),
            // Above the 90 s reqwest and browsers keep an idle connection for, so that a
            // client never reuses one the server is closing.
            idle_timeout: Duration::from_secs(120),
            connections_per_address: 1024,
            auth_failures_per_minute: 30,
            pool_auth_failures_per_minute: 300,
        }
    }
}

/// Everything `gantry server` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Holds `gantry.db`, and the blobs unless `blob_store` says otherwise.
    pub data_dir: PathBuf,
    /// Where encrypted workspaces and state versions are kept: `<data_dir>/blobs` unless
    /// set.
    pub blob_store: BlobLocation,
    /// Where the state is kept.
    pub database: Database,
    /// The key that seals the server's secrets in the database.
    pub master_key: crate::MasterKeySource,
    pub listen: SocketAddr,
    /// The address launchers and users reach the server at, written into pool tokens;
    /// `https://<bound address>` when unset.
    pub public_url: Option<String>,
    pub tls: TlsSource,
    pub timings: AgentTimings,
    /// The largest encrypted workspace or state version a launcher may upload.
    pub max_blob_size: u64,
    /// How many versions of each stack's managed state are kept; older ones are deleted.
    pub kept_state_versions: u32,
    /// The most of one run's log kept: past it, the first half and the newest half are
    /// kept with a line saying how much was cut between them.
    pub max_run_log_size: u64,
    /// Worker slots of the shared pool's launcher, run inside the server; 0 runs none.
    pub shared_workers: u32,
    /// The worker binary for the shared pool; `gantry-worker` next to the server's
    /// executable when unset.
    pub worker_binary: Option<PathBuf>,
    /// Where Prometheus scrapes `/metrics` over plain HTTP; no metrics listener when unset.
    pub metrics_listen: Option<SocketAddr>,
    /// Timeouts and limits of the HTTP listener.
    pub http: HttpLimits,
}

pub const DATA_DIR: &str = "GANTRY_SERVER_DATA_DIR";
pub const MASTER_KEY: &str = "GANTRY_SERVER_MASTER_KEY";
pub const MASTER_KEY_FILE: &str = "GANTRY_SERVER_MASTER_KEY_FILE";
pub const LISTEN: &str = "GANTRY_SERVER_LISTEN";
pub const PUBLIC_URL: &str = "GANTRY_SERVER_PUBLIC_URL";
pub const TLS_CERT_FILE: &str = "GANTRY_SERVER_TLS_CERT_FILE";
pub const TLS_KEY_FILE: &str = "GANTRY_SERVER_TLS_KEY_FILE";
pub const TLS_CA_FILE: &str = "GANTRY_SERVER_TLS_CA_FILE";
pub const TLS_HOSTNAMES: &str = "GANTRY_SERVER_TLS_HOSTNAMES";
pub const WORKER_TIMEOUT: &str = "GANTRY_SERVER_WORKER_TIMEOUT";
pub const HEARTBEAT_INTERVAL: &str = "GANTRY_SERVER_HEARTBEAT_INTERVAL";
pub const WORKER_LEASE: &str = "GANTRY_SERVER_WORKER_LEASE";
pub const WORKER_LEASE_GRACE: &str = "GANTRY_SERVER_WORKER_LEASE_GRACE";
pub const LOG_ARCHIVE_AFTER: &str = "GANTRY_SERVER_LOG_ARCHIVE_AFTER";
pub const MAX_BLOB_SIZE: &str = "GANTRY_SERVER_MAX_BLOB_SIZE";
pub const STATE_VERSIONS: &str = "GANTRY_SERVER_STATE_VERSIONS";
pub const MAX_RUN_LOG_SIZE: &str = "GANTRY_SERVER_MAX_RUN_LOG_SIZE";
pub const SHARED_WORKERS: &str = "GANTRY_SERVER_SHARED_WORKERS";
pub const WORKER_BINARY: &str = "GANTRY_SERVER_WORKER_BINARY";
pub const METRICS_LISTEN: &str = "GANTRY_SERVER_METRICS_LISTEN";
pub const BLOB_STORE: &str = "GANTRY_SERVER_BLOB_STORE";
pub const DATABASE: &str = "GANTRY_SERVER_DATABASE";
pub const S3_ENDPOINT: &str = "GANTRY_SERVER_S3_ENDPOINT";
pub const S3_REGION: &str = "GANTRY_SERVER_S3_REGION";
pub const S3_ALLOW_HTTP: &str = "GANTRY_SERVER_S3_ALLOW_HTTP";
pub const HEADER_READ_TIMEOUT: &str = "GANTRY_SERVER_HEADER_READ_TIMEOUT";
pub const REQUEST_TIMEOUT: &str = "GANTRY_SERVER_REQUEST_TIMEOUT";
pub const IDLE_TIMEOUT: &str = "GANTRY_SERVER_IDLE_TIMEOUT";
pub const CONNECTIONS_PER_ADDRESS: &str = "GANTRY_SERVER_CONNECTIONS_PER_ADDRESS";
pub const AUTH_FAILURES_PER_MINUTE: &str = "GANTRY_SERVER_AUTH_FAILURES_PER_MINUTE";
pub const POOL_AUTH_FAILURES_PER_MINUTE: &str = "GANTRY_SERVER_POOL_AUTH_FAILURES_PER_MINUTE";
const DEFAULT_S3_REGION: &str = "us-east-1";
const EXPECTED_BLOB_STORE: &str = "a directory, file:///absolute/dir or s3://bucket[/prefix] (a bucket name of 3 to 63 characters a-z 0-9 . -; prefix segments of a-z 0-9 . _ -)";
const DEFAULT_MAX_BLOB_SIZE: u64 = 16 * 1024 * 1024 * 1024;
const DEFAULT_STATE_VERSIONS: u32 = 20;
const DEFAULT_MAX_RUN_LOG_SIZE: u64 = 64 * 1024 * 1024;
/// Room for a useful head and tail, and for the line saying what was cut.
const MIN_RUN_LOG_SIZE: u64 = 4 * 1024;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8443";

/// A configuration error: the message names the setting and what was expected.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Option(#[from] OptionError),
    #[error("{path}: {message}")]
    File { path: String, message: String },
    #[error("{0}")]
    Inconsistent(String),
}

/// The TOML file's shape. Keys mirror the environment variables.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    data_dir: Option<String>,
    listen: Option<String>,
    public_url: Option<String>,
    #[serde(default)]
    tls: TlsFile,
    #[serde(default)]
    agent: AgentFile,
    #[serde(default)]
    http: HttpFile,
    max_blob_size: Option<String>,
    #[serde(default, deserialize_with = "scalar_text")]
    state_versions: Option<String>,
    max_run_log_size: Option<String>,
    #[serde(default, deserialize_with = "scalar_text")]
    shared_workers: Option<String>,
    worker_binary: Option<String>,
    metrics_listen: Option<String>,
    blob_store: Option<String>,
    database: Option<String>,
    master_key_file: Option<String>,
    s3_endpoint: Option<String>,
    s3_region: Option<String>,
    #[serde(default, deserialize_with = "scalar_text")]
    s3_allow_http: Option<String>,
}

/// A flag or a count written bare (`true`, `20`) or quoted (`"true"`, `"20"`): the file's
/// other values are strings, but a bare TOML boolean or integer is what anyone writes
/// for those. The text is then checked as the variable's would be.
fn scalar_text<'de, D: serde::Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Scalar {
        Bool(bool),
        Integer(i64),
        Text(String),
    }
    Ok(Option::<Scalar>::deserialize(deserializer)?.map(|scalar| match scalar {
        Scalar::Bool(value) => value.to_string(),
        Scalar::Integer(value) => value.to_string(),
        Scalar::Text(text) => text,
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert_file: Option<String>,
    key_file: Option<String>,
    ca_file: Option<String>,
    #[serde(default)]
    hostnames: Vec<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HttpFile {
    header_read_timeout: Option<String>,
    request_timeout: Option<String>,
    idle_timeout: Option<String>,
    #[serde(default, deserialize_with = "scalar_text")]
    connections_per_address: Option<String>,
    #[serde(default, deserialize_with = "scalar_text")]
    auth_failures_per_minute: Option<String>,
    #[serde(default, deserialize_with = "scalar_text")]
    pool_auth_failures_per_minute: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    worker_timeout: Option<String>,
    heartbeat_interval: Option<String>,
    log_archive_after: Option<String>,
}

impl ServerConfig {
    /// A server on SQLite in `data_dir`, on a loopback port the system picks, without
    /// shared workers: what the crate's own tests start.
    #[cfg(test)]
    pub(crate) fn for_tests(data_dir: &std::path::Path) -> Self {
        let env = [
            (DATA_DIR.to_owned(), data_dir.display().to_string()),
            ("GANTRY_SERVER_LISTEN".to_owned(), "127.0.0.1:0".to_owned()),
        ]
        .into_iter()
        .collect();
        let mut config = Self::resolve(None, &env).unwrap();
        config.shared_workers = 0;
        config
    }

    /// Resolves the configuration from an optional TOML file (its name and text) and the
    /// environment. Environment variables win over the file.
    pub fn resolve(file: Option<(&str, &str)>, env: &Env) -> Result<Self, ConfigError> {
        let mut merged: Env = BTreeMap::new();
        if let Some((path, text)) = file {
            let parsed: ConfigFile = toml::from_str(text).map_err(|e| ConfigError::File {
                path: path.to_owned(),
                message: e.message().to_owned(),
            })?;
            let mut set = |name: &str, value: Option<String>| {
                if let Some(value) = value {
                    merged.insert(name.to_owned(), value);
                }
            };
            set(DATA_DIR, parsed.data_dir);
            set(LISTEN, parsed.listen);
            set(PUBLIC_URL, parsed.public_url);
            set(TLS_CERT_FILE, parsed.tls.cert_file);
            set(TLS_KEY_FILE, parsed.tls.key_file);
            set(TLS_CA_FILE, parsed.tls.ca_file);
            set(WORKER_TIMEOUT, parsed.agent.worker_timeout);
            set(HEARTBEAT_INTERVAL, parsed.agent.heartbeat_interval);
            set(LOG_ARCHIVE_AFTER, parsed.agent.log_archive_after);
            set(MAX_BLOB_SIZE, parsed.max_blob_size);
            set(STATE_VERSIONS, parsed.state_versions);
            set(MAX_RUN_LOG_SIZE, parsed.max_run_log_size);
            set(SHARED_WORKERS, parsed.shared_workers);
            set(WORKER_BINARY, parsed.worker_binary);
            set(METRICS_LISTEN, parsed.metrics_listen);
            set(BLOB_STORE, parsed.blob_store);
            set(DATABASE, parsed.database);
            set(MASTER_KEY_FILE, parsed.master_key_file);
            set(S3_ENDPOINT, parsed.s3_endpoint);
            set(S3_REGION, parsed.s3_region);
            set(S3_ALLOW_HTTP, parsed.s3_allow_http);
            set(HEADER_READ_TIMEOUT, parsed.http.header_read_timeout);
            set(REQUEST_TIMEOUT, parsed.http.request_timeout);
            set(IDLE_TIMEOUT, parsed.http.idle_timeout);
            set(CONNECTIONS_PER_ADDRESS, parsed.http.connections_per_address);
            set(AUTH_FAILURES_PER_MINUTE, parsed.http.auth_failures_per_minute);
            set(POOL_AUTH_FAILURES_PER_MINUTE, parsed.http.pool_auth_failures_per_minute);
            if !parsed.tls.hostnames.is_empty() {
                merged.insert(TLS_HOSTNAMES.to_owned(), parsed.tls.hostnames.join(","));
            }
        }
        for (name, value) in env {
            if name.starts_with("GANTRY_SERVER_") {
                merged.insert(name.clone(), value.clone());
            }
        }
        Self::from_settings(&merged, env)
    }

    /// `settings` are the merged `GANTRY_SERVER_*` values; `env` is the whole environment,
    /// where S3 credentials come from.
    fn from_settings(settings: &Env, env: &Env) -> Result<Self, ConfigError> {
        let data_dir = PathBuf::from(options::get(settings, DATA_DIR).unwrap_or(".gantry"));
        let listen_text = options::get(settings, LISTEN).unwrap_or(DEFAULT_LISTEN);
        let listen: SocketAddr = listen_text.parse().map_err(|_| {
            OptionError::invalid(LISTEN, listen_text, "an address like 0.0.0.0:8443")
        })?;
        let public_url = match options::get(settings, PUBLIC_URL) {
            Some(url) => {
                let trimmed = url.trim_end_matches('/');
                let valid = trimmed
                    .strip_prefix("https://")
                    .is_some_and(|rest| !rest.is_empty() && !rest.contains('/'));
                if !valid {
                    return Err(OptionError::invalid(
                        PUBLIC_URL,
                        url,
                        "an https:// address without a path, like https://gantry.example.com:8443",
                    )
                    .into());
                }
                Some(trimmed.to_owned())
            }
            None => None,
        };
        let hostnames: Vec<String> = options::get(settings, TLS_HOSTNAMES)
            .map(|list| {
                list.split(',')
                    .map(str::trim)
                    .filter(|h| !h.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let tls = match (
            options::get(settings, TLS_CERT_FILE),
            options::get(settings, TLS_KEY_FILE),
        ) {
            (Some(cert), Some(key)) => TlsSource::Files {
                cert_file: PathBuf::from(cert),
                key_file: PathBuf::from(key),
                ca_file: options::get(settings, TLS_CA_FILE).map(PathBuf::from),
            },
            (None, None) => TlsSource::Generated { extra_hostnames: hostnames },
            _ => {
                return Err(ConfigError::Inconsistent(format!(
                    "{TLS_CERT_FILE} and {TLS_KEY_FILE} go together: set both to use your own certificate, or neither to let the server issue one"
                )));
            }
        };
        let defaults = AgentTimings::default();
        let timings = AgentTimings {
            worker_timeout: options::duration(settings, WORKER_TIMEOUT, defaults.worker_timeout)?,
            heartbeat_interval: options::duration(
                settings,
                HEARTBEAT_INTERVAL,
                defaults.heartbeat_interval,
            )?,
            log_archive_after: options::duration(
                settings,
                LOG_ARCHIVE_AFTER,
                defaults.log_archive_after,
            )?,
            worker_lease: options::duration(settings, WORKER_LEASE, defaults.worker_lease)?,
            worker_lease_grace: options::duration(
                settings,
                WORKER_LEASE_GRACE,
                defaults.worker_lease_grace,
            )?,
            ..defaults
        };
        if timings.worker_lease < timings.heartbeat_interval * 2 {
            return Err(ConfigError::Inconsistent(format!(
                "{WORKER_LEASE} ({}) must be at least twice {HEARTBEAT_INTERVAL} ({}), or one late heartbeat would interrupt healthy runs",
                humantime::format_duration(timings.worker_lease),
                humantime::format_duration(timings.heartbeat_interval)
            )));
        }
        if timings.worker_timeout < timings.heartbeat_interval * 2 {
            return Err(ConfigError::Inconsistent(format!(
                "{WORKER_TIMEOUT} ({}) must be at least twice {HEARTBEAT_INTERVAL} ({}), or one late heartbeat would drop healthy workers",
                humantime::format_duration(timings.worker_timeout),
                humantime::format_duration(timings.heartbeat_interval)
            )));
        }
        let max_blob_size = options::size(settings, MAX_BLOB_SIZE, DEFAULT_MAX_BLOB_SIZE)?;
        // At least one: the current version is what the next run starts from.
        let kept_state_versions = options::count(
            settings,
            STATE_VERSIONS,
            DEFAULT_STATE_VERSIONS,
            1,
            1000,
            "a number of state versions to keep per stack, from 1 to 1000",
        )?;
        let max_run_log_size = options::size(settings, MAX_RUN_LOG_SIZE, DEFAULT_MAX_RUN_LOG_SIZE)?;
        if max_run_log_size < MIN_RUN_LOG_SIZE {
            return Err(OptionError::invalid(
                MAX_RUN_LOG_SIZE,
                options::get(settings, MAX_RUN_LOG_SIZE).unwrap_or_default(),
                "a size of at least 4KiB, like 64MiB",
            )
            .into());
        }
        let shared_workers = options::count(
            settings,
            SHARED_WORKERS,
            // Off unless asked for: its runs execute on the server's machine.
            0,
            0,
            64,
            "a number of shared-pool worker slots from 0 to 64",
        )?;
        let worker_binary = options::get(settings, WORKER_BINARY).map(PathBuf::from);
        let metrics_listen = options::get(settings, METRICS_LISTEN)
            .map(|text| {
                text.parse::<SocketAddr>().map_err(|_| {
                    OptionError::invalid(METRICS_LISTEN, text, "an address like 127.0.0.1:9464")
                })
            })
            .transpose()?;
        let blob_store = blob_location(settings, env, &data_dir)?;
        let master_key = crate::MasterKeySource::from_settings(
            options::get(settings, MASTER_KEY),
            options::get(settings, MASTER_KEY_FILE),
            &data_dir,
        )
        .map_err(ConfigError::Inconsistent)?;
        let database = Database::from_setting(options::get(settings, DATABASE), &data_dir)?;
        let http = HttpLimits::from_settings(settings)?;
        Ok(Self {
            data_dir,
            blob_store,
            database,
            master_key,
            listen,
            public_url,
            tls,
            timings,
            max_blob_size,
            kept_state_versions,
            max_run_log_size,
            shared_workers,
            worker_binary,
            metrics_listen,
            http,
        })
    }
}

impl HttpLimits {
    fn from_settings(settings: &Env) -> Result<Self, ConfigError> {
        let defaults = Self::default();
        let per_minute = |name: &str, default: u32| {
            options::count(
                settings,
                name,
                default,
                1,
                1_000_000,
                "a number of failed attempts per minute, from 1 to 1000000",
            )
        };
        Ok(Self {
            header_read_timeout: options::duration(
                settings,
                HEADER_READ_TIMEOUT,
                defaults.header_read_timeout,
            )?,
            request_timeout: options::duration(
                settings,
                REQUEST_TIMEOUT,
                defaults.request_timeout,
            )?,
            idle_timeout: options::duration(settings, IDLE_TIMEOUT, defaults.idle_timeout)?,
            connections_per_address: options::count(
                settings,
                CONNECTIONS_PER_ADDRESS,
                defaults.connections_per_address,
                1,
                1_000_000,
                "a number of connections from 1 to 1000000",
            )?,
            auth_failures_per_minute: per_minute(
                AUTH_FAILURES_PER_MINUTE,
                defaults.auth_failures_per_minute,
            )?,
            pool_auth_failures_per_minute: per_minute(
                POOL_AUTH_FAILURES_PER_MINUTE,
                defaults.pool_auth_failures_per_minute,
            )?,
        })
    }
}

/// `GANTRY_SERVER_BLOB_STORE` and, for a bucket, the `GANTRY_SERVER_S3_*` settings and
/// the `AWS_*` credentials of `env`.
fn blob_location(settings: &Env, env: &Env, data_dir: &Path) -> Result<BlobLocation, ConfigError> {
    let text = options::get(settings, BLOB_STORE);
    let Some(bucket_and_prefix) = text.and_then(|text| text.strip_prefix("s3://")) else {
        if let Some(name) = [S3_ENDPOINT, S3_REGION, S3_ALLOW_HTTP]
            .into_iter()
            .find(|n| options::get(settings, n).is_some())
        {
            return Err(ConfigError::Inconsistent(format!(
                "{name} applies only to a bucket, but {BLOB_STORE} is {}: set it to s3://bucket[/prefix], or unset {name}",
                text.map_or_else(|| "unset (a directory)".to_owned(), |text| format!("{text:?}"))
            )));
        }
        let directory = match text {
            None => data_dir.join("blobs"),
            Some(text) => match text.strip_prefix("file://") {
                Some(path) if path.starts_with('/') => PathBuf::from(path),
                Some(_) => {
                    return Err(OptionError::invalid(BLOB_STORE, text, EXPECTED_BLOB_STORE).into());
                }
                None if text.contains("://") => {
                    return Err(OptionError::invalid(BLOB_STORE, text, EXPECTED_BLOB_STORE).into());
                }
                None => PathBuf::from(text),
            },
        };
        return Ok(BlobLocation::Directory(directory));
    };
    let text = text.unwrap_or_default();
    let (bucket, prefix) = match bucket_and_prefix.split_once('/') {
        Some((bucket, prefix)) => {
            (bucket, Some(prefix.trim_end_matches('/')).filter(|p| !p.is_empty()))
        }
        None => (bucket_and_prefix, None),
    };
    if !is_bucket_name(bucket) || prefix.is_some_and(|p| !gantry_store::is_valid_blob_key(p)) {
        return Err(OptionError::invalid(BLOB_STORE, text, EXPECTED_BLOB_STORE).into());
    }
    let allow_http = options::boolean(settings, S3_ALLOW_HTTP, false)?;
    let endpoint = match options::get(settings, S3_ENDPOINT) {
        Some(endpoint) => {
            let trimmed = endpoint.trim_end_matches('/');
            let authority = trimmed
                .strip_prefix("https://")
                .or_else(|| trimmed.strip_prefix("http://"))
                .map(|rest| rest.split('/').next().unwrap_or_default());
            // Credentials in the address would show in every error and log line naming it.
            if authority.is_some_and(|a| a.contains('@')) {
                return Err(OptionError::invalid_secret(
                    S3_ENDPOINT,
                    "an address without credentials: they come from AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY",
                )
                .into());
            }
            let valid = authority.is_some_and(|a| !a.is_empty()) && !trimmed.contains(['?', '#']);
            if !valid {
                return Err(OptionError::invalid(
                    S3_ENDPOINT,
                    endpoint,
                    "an http(s):// address without credentials or query, like https://minio.example.com:9000",
                )
                .into());
            }
            if trimmed.starts_with("http://") && !allow_http {
                return Err(ConfigError::Inconsistent(format!(
                    "{S3_ENDPOINT}={endpoint:?} is plain HTTP: set {S3_ALLOW_HTTP}=true to allow it (requests and blobs then cross the network unencrypted, the blobs as ciphertext)"
                )));
            }
            Some(trimmed.to_owned())
        }
        None => None,
    };
    let region = options::get(settings, S3_REGION).unwrap_or(DEFAULT_S3_REGION);
    let region_valid =
        region.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !region_valid {
        return Err(OptionError::invalid(S3_REGION, region, "an S3 region like eu-west-1").into());
    }
    let credentials =
        S3Credentials::from_variables(|name| env.get(name).cloned()).map_err(|missing| {
            ConfigError::Inconsistent(format!("{BLOB_STORE}={text:?}: {missing}"))
        })?;
    Ok(BlobLocation::S3(S3Settings {
        bucket: bucket.to_owned(),
        prefix: prefix.map(str::to_owned),
        endpoint,
        region: region.to_owned(),
        allow_http,
        credentials,
    }))
}

/// S3's bucket naming rules, which compatible stores share: 3 to 63 of `a-z 0-9 . -`,
/// starting and ending with a letter or digit.
fn is_bucket_name(name: &str) -> bool {
    let alphanumeric = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    (3..=63).contains(&name.len())
        && name.bytes().all(|b| alphanumeric(b) || b == b'.' || b == b'-')
        && name.bytes().next().is_some_and(alphanumeric)
        && name.bytes().last().is_some_and(alphanumeric)
}

impl ServerConfig {
    /// The public URL, or `https://<bound address>` when none was configured.
    pub fn effective_public_url(&self, bound: SocketAddr) -> String {
        self.public_url.clone().unwrap_or_else(|| default_public_url(bound))
    }
}

/// `https://<listen address>`, with `localhost` for a wildcard address.
fn default_public_url(listen: SocketAddr) -> String {
    let host = match listen.ip() {
        ip if ip.is_unspecified() => "localhost".to_owned(),
        IpAddr::V6(ip) => format!("[{ip}]"),
        IpAddr::V4(ip) => ip.to_string(),
    };
    format!("https://{host}:{}", listen.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_work_on_a_fresh_machine() {
        let config = ServerConfig::resolve(None, &env(&[])).unwrap();
        assert_eq!(config.listen, DEFAULT_LISTEN.parse().unwrap());
        assert_eq!(config.effective_public_url(config.listen), "https://127.0.0.1:8443");
        assert_eq!(
            config.effective_public_url("0.0.0.0:9000".parse().unwrap()),
            "https://localhost:9000"
        );
        assert_eq!(config.tls, TlsSource::Generated { extra_hostnames: vec![] });
        assert_eq!(config.data_dir, PathBuf::from(".gantry"));
        assert_eq!(config.max_blob_size, 16 << 30);
        assert_eq!(config.kept_state_versions, 20);
    }

    #[test]
    fn the_run_log_limit_defaults_to_64_mib_and_refuses_tiny_values() {
        let limit = |file: &str, pairs: &[(&str, &str)]| {
            ServerConfig::resolve(Some(("gantry.toml", file)), &env(pairs))
                .map(|config| config.max_run_log_size)
        };
        assert_eq!(limit("", &[]).unwrap(), 64 << 20);
        assert_eq!(limit("max_run_log_size = \"2MiB\"", &[]).unwrap(), 2 << 20);
        assert_eq!(limit("", &[(MAX_RUN_LOG_SIZE, "16KiB")]).unwrap(), 16 << 10);
        let error = limit("", &[(MAX_RUN_LOG_SIZE, "100b")]).unwrap_err().to_string();
        assert!(error.contains("at least 4KiB"), "{error}");
    }

    #[test]
    fn http_limits_come_from_the_file_or_the_environment() {
        let limits = |file: &str, pairs: &[(&str, &str)]| {
            ServerConfig::resolve(Some(("gantry.toml", file)), &env(pairs)).map(|c| c.http)
        };
        assert_eq!(limits("", &[]).unwrap(), HttpLimits::default());
        let file = "[http]\nheader_read_timeout = \"5s\"\nconnections_per_address = 64\nauth_failures_per_minute = \"10\"";
        let set = limits(file, &[(IDLE_TIMEOUT, "10m"), (AUTH_FAILURES_PER_MINUTE, "12")]).unwrap();
        assert_eq!(set.header_read_timeout, Duration::from_secs(5));
        assert_eq!(set.idle_timeout, Duration::from_secs(600));
        assert_eq!(set.connections_per_address, 64);
        assert_eq!(set.auth_failures_per_minute, 12, "the environment wins");
        assert_eq!(set.request_timeout, HttpLimits::default().request_timeout);
        let error = limits("", &[(REQUEST_TIMEOUT, "60")]).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("{REQUEST_TIMEOUT}=\"60\": expected a duration")),
            "{error}"
        );
        let error = limits("", &[(CONNECTIONS_PER_ADDRESS, "0")]).unwrap_err().to_string();
        assert!(error.contains("a number of connections from 1 to 1000000"), "{error}");
        let error = limits("[http]\nheader_timeout = \"5s\"", &[]).unwrap_err().to_string();
        assert!(error.contains("header_timeout"), "{error}");
    }

    #[test]
    fn kept_state_versions_come_from_the_file_or_the_environment() {
        let kept = |file: &str, pairs: &[(&str, &str)]| {
            ServerConfig::resolve(Some(("gantry.toml", file)), &env(pairs))
                .map(|config| config.kept_state_versions)
        };
        assert_eq!(kept("state_versions = 5", &[]).unwrap(), 5);
        assert_eq!(kept("state_versions = \"7\"", &[]).unwrap(), 7);
        assert_eq!(kept("state_versions = 5", &[(STATE_VERSIONS, "1")]).unwrap(), 1);
        for value in ["0", "1001", "-1", "twenty", "2.5"] {
            let error = kept("", &[(STATE_VERSIONS, value)]).unwrap_err().to_string();
            let expected = format!(
                "{STATE_VERSIONS}={value:?}: expected a number of state versions to keep per stack, from 1 to 1000"
            );
            assert!(error.starts_with(&expected), "{error}");
        }
        let error = kept("state_versions = 0", &[]).unwrap_err().to_string();
        assert!(error.starts_with(&format!("{STATE_VERSIONS}=\"0\": expected")), "{error}");
    }

    #[test]
    fn the_worker_lease_is_set_with_its_grace_and_must_outlast_two_heartbeats() {
        let config = ServerConfig::resolve(None, &env(&[])).unwrap();
        assert_eq!(config.timings.lock_fence(), Duration::from_secs(630));
        let config = ServerConfig::resolve(
            None,
            &env(&[(WORKER_LEASE, "8s"), (WORKER_LEASE_GRACE, "3s"), (HEARTBEAT_INTERVAL, "2s")]),
        )
        .unwrap();
        assert_eq!(config.timings.lock_fence(), Duration::from_secs(11));
        let error = ServerConfig::resolve(None, &env(&[(WORKER_LEASE, "5s")])).unwrap_err();
        assert!(error.to_string().contains("must be at least twice"), "{error}");
    }

    #[test]
    fn by_default_a_dead_launchers_runs_fail_within_15_seconds_of_its_last_heartbeat() {
        let timings = ServerConfig::resolve(None, &env(&[])).unwrap().timings;
        // The sweep that finds it runs at most one interval after the timeout.
        assert!(timings.worker_timeout + timings.sweep_interval <= Duration::from_secs(12));
        // Three heartbeats in a row may be late before a healthy launcher is lost.
        assert!(timings.worker_timeout >= timings.heartbeat_interval * 3);
        // Outages of up to ten minutes interrupt no run (issue 17).
        assert!(timings.worker_lease >= Duration::from_secs(600));
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let file = r#"
            listen = "0.0.0.0:9000"
            public_url = "https://gantry.example.com:9000/"
            max_blob_size = "2GiB"
            [tls]
            hostnames = ["gantry.internal"]
            [agent]
            worker_timeout = "60s"
        "#;
        let config =
            ServerConfig::resolve(Some(("gantry.toml", file)), &env(&[(LISTEN, "0.0.0.0:9443")]))
                .unwrap();
        assert_eq!(config.listen, "0.0.0.0:9443".parse().unwrap());
        assert_eq!(config.public_url.as_deref(), Some("https://gantry.example.com:9000"));
        assert_eq!(
            config.tls,
            TlsSource::Generated { extra_hostnames: vec!["gantry.internal".into()] }
        );
        assert_eq!(config.timings.worker_timeout, Duration::from_secs(60));
        assert_eq!(config.max_blob_size, 2 << 30);
    }

    #[test]
    fn errors_name_the_setting_and_the_expected_form() {
        let cases = [
            (
                env(&[(LISTEN, "nowhere")]),
                "GANTRY_SERVER_LISTEN=\"nowhere\": expected an address like 0.0.0.0:8443",
            ),
            (
                env(&[(PUBLIC_URL, "http://x")]),
                "GANTRY_SERVER_PUBLIC_URL=\"http://x\": expected an https:// address",
            ),
            (
                env(&[(TLS_CERT_FILE, "/c")]),
                "GANTRY_SERVER_TLS_CERT_FILE and GANTRY_SERVER_TLS_KEY_FILE go together",
            ),
            (env(&[(WORKER_TIMEOUT, "5s")]), "must be at least twice"),
        ];
        for (settings, expected) in cases {
            let error = ServerConfig::resolve(None, &settings).unwrap_err().to_string();
            assert!(error.starts_with(expected) || error.contains(expected), "{error}");
        }
        let error =
            ServerConfig::resolve(Some(("gantry.toml", "lisen = 1")), &env(&[])).unwrap_err();
        assert!(error.to_string().starts_with("gantry.toml: unknown field `lisen`"), "{error}");
    }

    const CREDENTIALS: [(&str, &str); 2] =
        [("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"), ("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-secret")];

    #[test]
    fn blobs_live_in_the_data_directory_unless_told_otherwise() {
        let blobs =
            |pairs: &[(&str, &str)]| ServerConfig::resolve(None, &env(pairs)).unwrap().blob_store;
        assert_eq!(
            blobs(&[(DATA_DIR, "/var/lib/gantry")]),
            BlobLocation::Directory("/var/lib/gantry/blobs".into())
        );
        assert_eq!(
            blobs(&[(BLOB_STORE, "/srv/blobs")]),
            BlobLocation::Directory("/srv/blobs".into())
        );
        assert_eq!(
            blobs(&[(BLOB_STORE, "file:///srv/blobs")]),
            BlobLocation::Directory("/srv/blobs".into())
        );
        assert_eq!(blobs(&[(BLOB_STORE, "blobs")]), BlobLocation::Directory("blobs".into()));
    }

    #[test]
    fn a_bucket_comes_from_the_file_and_its_credentials_from_the_environment() {
        let file = r#"
            blob_store = "s3://gantry-blobs/prod/"
            s3_endpoint = "http://minio.internal:9000/"
            s3_allow_http = true
        "#;
        let mut variables = env(&CREDENTIALS);
        variables.insert("AWS_SESSION_TOKEN".into(), "FwoGZXIvYXdz-token".into());
        let config = ServerConfig::resolve(Some(("gantry.toml", file)), &variables).unwrap();
        let expected = S3Settings {
            bucket: "gantry-blobs".into(),
            prefix: Some("prod".into()),
            endpoint: Some("http://minio.internal:9000".into()),
            region: "us-east-1".into(),
            allow_http: true,
            credentials: S3Credentials::new(
                "AKIDEXAMPLE",
                "wJalrXUtnFEMI-secret",
                Some("FwoGZXIvYXdz-token".into()),
            ),
        };
        assert_eq!(config.blob_store, BlobLocation::S3(expected));
        let shown = format!("{config:?}");
        assert!(!shown.contains("wJalrXUtnFEMI") && !shown.contains("FwoGZXIvYXdz"), "{shown}");

        let mut variables = env(&CREDENTIALS);
        variables.insert(BLOB_STORE.into(), "s3://gantry-blobs".into());
        variables.insert(S3_REGION.into(), "eu-west-1".into());
        variables.insert(S3_ALLOW_HTTP.into(), "false".into());
        variables.insert(S3_ENDPOINT.into(), "https://ceph.internal".into());
        let config = ServerConfig::resolve(Some(("gantry.toml", file)), &variables).unwrap();
        let BlobLocation::S3(settings) = config.blob_store else { panic!("a bucket") };
        assert_eq!(
            (settings.prefix, settings.region, settings.allow_http),
            (None, "eu-west-1".into(), false)
        );
        assert_eq!(settings.endpoint.as_deref(), Some("https://ceph.internal"));
    }

    #[test]
    fn blob_store_errors_name_the_setting_and_hide_secrets() {
        let bucket = |extra: &[(&str, &str)]| {
            let mut pairs = CREDENTIALS.to_vec();
            pairs.push((BLOB_STORE, "s3://gantry"));
            pairs.extend_from_slice(extra);
            env(&pairs)
        };
        let expected_form = "expected a directory, file:///absolute/dir or s3://bucket[/prefix]";
        for value in ["s3://", "s3://Gantry_Blobs", "s3://gantry/../up", "gs://x", "file://blobs"] {
            let error = ServerConfig::resolve(None, &env(&[(BLOB_STORE, value)])).unwrap_err();
            let expected = format!("{BLOB_STORE}={value:?}: {expected_form}");
            assert!(error.to_string().starts_with(&expected), "{error}");
        }
        let cases = [
            (
                env(&[(S3_ENDPOINT, "https://s3.example.com")]),
                format!("{S3_ENDPOINT} applies only to a bucket, but {BLOB_STORE} is unset"),
            ),
            (
                env(&[(BLOB_STORE, "/srv/blobs"), (S3_REGION, "eu-west-1")]),
                format!("{S3_REGION} applies only to a bucket, but {BLOB_STORE} is \"/srv/blobs\""),
            ),
            (
                bucket(&[(S3_ENDPOINT, "http://minio:9000")]),
                format!(
                    "{S3_ENDPOINT}=\"http://minio:9000\" is plain HTTP: set {S3_ALLOW_HTTP}=true"
                ),
            ),
            (
                bucket(&[(S3_ENDPOINT, "minio:9000")]),
                format!("{S3_ENDPOINT}=\"minio:9000\": expected an http(s):// address"),
            ),
            (
                bucket(&[(S3_ALLOW_HTTP, "sure")]),
                format!("{S3_ALLOW_HTTP}=\"sure\": expected true or false"),
            ),
            (
                bucket(&[(S3_REGION, "EU West")]),
                format!("{S3_REGION}=\"EU West\": expected an S3 region"),
            ),
            (
                env(&[(BLOB_STORE, "s3://gantry"), ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE")]),
                format!(
                    "{BLOB_STORE}=\"s3://gantry\": AWS_SECRET_ACCESS_KEY not set: S3 credentials come from"
                ),
            ),
        ];
        for (settings, expected) in cases {
            let error = ServerConfig::resolve(None, &settings).unwrap_err().to_string();
            assert!(error.starts_with(&expected), "{error}\nexpected: {expected}");
        }
        let error = ServerConfig::resolve(
            None,
            &bucket(&[(S3_ENDPOINT, "https://AKID:hunter2@s3.example.com")]),
        )
        .unwrap_err()
        .to_string();
        assert!(error.starts_with(&format!("{S3_ENDPOINT} (value hidden)")), "{error}");
        assert!(!error.contains("hunter2"), "{error}");
    }
}
