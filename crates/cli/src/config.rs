//! Where the CLI finds the API it talks to: the API URL, the API key and an extra CA to
//! trust, from flags, `GANTRY_API_*` variables or the `.gantry/client.json` that
//! `gantry up` writes. Resolution is a pure function over those inputs; reading them is
//! kept at the edge ([`ClientConfig::load`]).

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The API URL when nothing else names one: where `gantry up` listens.
pub const DEFAULT_API_URL: &str = "https://127.0.0.1:8443";
/// The file `gantry up` writes, relative to the directory it was started in.
pub const CLIENT_FILE: &str = ".gantry/client.json";

pub const ENV_API_URL: &str = "GANTRY_API_URL";
pub const ENV_API_KEY: &str = "GANTRY_API_KEY";
pub const ENV_API_CA_FILE: &str = "GANTRY_API_CA_FILE";

/// `.gantry/client.json`: how to reach the server that `gantry up` started here.
///
/// `ca_file` is relative to the directory that holds `.gantry/` (the current directory
/// of the commands that read it).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientFile {
    pub api_url: String,
    pub api_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl fmt::Debug for ClientFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientFile")
            .field("api_url", &self.api_url)
            .field("api_key", &"(hidden)")
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

impl ClientFile {
    /// Parses the file's text; the error says what is wrong, not where (callers name the
    /// file).
    pub fn parse(text: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(text)
    }

    /// Writes the file readable by its owner only, since it holds the API key, creating
    /// its directory when needed and replacing an older file.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)?;
        }
        let mut text = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        text.push('\n');
        // Written beside the target then renamed, so that a reader never sees half a file
        // and the key is never readable by others, not even for an instant.
        let temporary = path.with_extension("json.tmp");
        // A leftover from an interrupted write could have other permissions: the mode
        // below only applies to files this call creates.
        match std::fs::remove_file(&temporary) {
            Err(error) if error.kind() != std::io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        let mut file = owner_only_options().open(&temporary)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    }
}

/// Options that create a new file (truncating an old one) readable by its owner only.
pub(crate) fn owner_only_options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    options
}

/// What was given on the command line (clap has already parsed it; environment
/// variables are read by [`resolve`], not by clap, so that `--help` never shows a key).
#[derive(Clone, Default)]
pub struct ConfigFlags {
    pub api_url: Option<String>,
    pub api_key: Option<String>,
    pub ca_file: Option<PathBuf>,
}

impl fmt::Debug for ConfigFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfigFlags")
            .field("api_url", &self.api_url)
            .field("api_key", &self.api_key.as_ref().map(|_| "(hidden)"))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// Where a setting came from, to name it in error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigSource {
    Flag,
    Environment,
    ClientFile,
    Default,
}

/// The resolved connection settings.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// An `http://` or `https://` URL.
    pub api_url: String,
    pub api_url_source: ConfigSource,
    pub api_key: Option<String>,
    /// A PEM file of a CA to trust in addition to the system's roots.
    pub ca_file: Option<PathBuf>,
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("api_url", &self.api_url)
            .field("api_url_source", &self.api_url_source)
            .field("api_key", &self.api_key.as_ref().map(|_| "(hidden)"))
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

/// Why the connection settings cannot be used. All of these are usage errors.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no API key: set GANTRY_API_KEY, pass --api-key, or run gantry up in this directory")]
    MissingApiKey,
    #[error("the API key contains characters that cannot be sent in an HTTP header")]
    InvalidApiKey,
    #[error("{setting}={value:?}: expected an http:// or https:// URL such as {DEFAULT_API_URL}")]
    InvalidApiUrl { setting: String, value: String },
    #[error("cannot read {path}: {source}")]
    UnreadableClientFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid client file (expected api_url, api_key and ca_file): {reason}")]
    InvalidClientFile { path: PathBuf, reason: String },
    #[error("the CA file {path} is not usable: {reason}")]
    InvalidCaFile { path: PathBuf, reason: String },
    #[error("cannot read the CA file {path}: {source}")]
    UnreadableCaFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl ClientConfig {
    /// Reads the process environment and `./.gantry/client.json` (when present) and
    /// resolves them with the flags.
    pub fn load(flags: &ConfigFlags) -> Result<Self, ConfigError> {
        let path = Path::new(CLIENT_FILE);
        let file_text = match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(ConfigError::UnreadableClientFile { path: path.to_owned(), source });
            }
        };
        resolve(flags, |name| std::env::var(name).ok(), file_text.as_deref())
    }

    /// The API key, or the error that tells how to provide one.
    pub fn require_api_key(&self) -> Result<&str, ConfigError> {
        self.api_key.as_deref().ok_or(ConfigError::MissingApiKey)
    }

    /// The PEM text of the extra CA, when one is configured.
    pub fn read_ca_pem(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        let Some(path) = &self.ca_file else { return Ok(None) };
        std::fs::read(path)
            .map(Some)
            .map_err(|source| ConfigError::UnreadableCaFile { path: path.clone(), source })
    }
}

/// Resolves the settings: a flag wins over its environment variable, and both win over
/// the client file, which wins over the defaults.
///
/// The client file belongs to one server: when the API URL is given and is not the
/// file's own, nothing is taken from the file, so its key is never sent to another
/// server.
pub fn resolve(
    flags: &ConfigFlags,
    env: impl Fn(&str) -> Option<String>,
    client_file_text: Option<&str>,
) -> Result<ClientConfig, ConfigError> {
    // An empty variable is how shells unset things in practice (`GANTRY_API_KEY= cmd`).
    let env = |name: &str| env(name).filter(|value| !value.trim().is_empty());

    let given_url = match (&flags.api_url, env(ENV_API_URL)) {
        (Some(url), _) => Some((url.clone(), "--api-url".to_owned(), ConfigSource::Flag)),
        (None, Some(url)) => Some((url, ENV_API_URL.to_owned(), ConfigSource::Environment)),
        (None, None) => None,
    };
    if let Some((url, setting, _)) = &given_url {
        check_api_url(setting, url)?;
    }

    let file = match client_file_text {
        Some(text) => {
            let file = ClientFile::parse(text).map_err(|e| ConfigError::InvalidClientFile {
                path: PathBuf::from(CLIENT_FILE),
                reason: e.to_string(),
            })?;
            check_api_url(&format!("{CLIENT_FILE}: api_url"), &file.api_url)?;
            Some(file)
        }
        None => None,
    };
    let file = file.filter(|file| match &given_url {
        Some((url, _, _)) => same_url(url, &file.api_url),
        None => true,
    });

    let (api_url, api_url_source) = match (given_url, &file) {
        (Some((url, _, source)), _) => (url, source),
        (None, Some(file)) => (file.api_url.clone(), ConfigSource::ClientFile),
        (None, None) => (DEFAULT_API_URL.to_owned(), ConfigSource::Default),
    };
    let api_key = flags
        .api_key
        .clone()
        .filter(|key| !key.trim().is_empty())
        .or_else(|| env(ENV_API_KEY))
        .or_else(|| file.as_ref().map(|f| f.api_key.clone()).filter(|key| !key.is_empty()))
        .map(|key| key.trim().to_owned());
    let ca_file = flags
        .ca_file
        .clone()
        .or_else(|| env(ENV_API_CA_FILE).map(PathBuf::from))
        .or_else(|| file.as_ref().and_then(|f| f.ca_file.clone()));

    Ok(ClientConfig { api_url, api_url_source, api_key, ca_file })
}

fn check_api_url(setting: &str, value: &str) -> Result<(), ConfigError> {
    let invalid =
        || ConfigError::InvalidApiUrl { setting: setting.to_owned(), value: value.to_owned() };
    let url = reqwest::Url::parse(value).map_err(|_| invalid())?;
    if !matches!(url.scheme(), "http" | "https") || url.host_str().is_none() {
        return Err(invalid());
    }
    Ok(())
}

fn same_url(a: &str, b: &str) -> bool {
    a.trim_end_matches('/') == b.trim_end_matches('/')
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    const FILE: &str = r#"{"api_url": "https://127.0.0.1:8443", "api_key": "gak_file", "ca_file": ".gantry/server-ca.pem"}"#;

    struct Case {
        name: &'static str,
        flags: ConfigFlags,
        env: &'static [(&'static str, &'static str)],
        file: Option<&'static str>,
        /// (api_url, source, api_key, ca_file)
        expect: (&'static str, ConfigSource, Option<&'static str>, Option<&'static str>),
    }

    fn flags(url: Option<&str>, key: Option<&str>, ca: Option<&str>) -> ConfigFlags {
        ConfigFlags {
            api_url: url.map(str::to_owned),
            api_key: key.map(str::to_owned),
            ca_file: ca.map(PathBuf::from),
        }
    }

    fn run(
        flags: &ConfigFlags,
        env: &[(&str, &str)],
        file: Option<&str>,
    ) -> Result<ClientConfig, ConfigError> {
        let env: HashMap<String, String> =
            env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        resolve(flags, |name| env.get(name).cloned(), file)
    }

    #[test]
    fn settings_resolve_from_flags_then_environment_then_file_then_defaults() {
        use ConfigSource::*;
        let cases = [
            Case {
                name: "nothing at all: default URL, no key",
                flags: flags(None, None, None),
                env: &[],
                file: None,
                expect: ("https://127.0.0.1:8443", Default, None, None),
            },
            Case {
                name: "the client file alone",
                flags: flags(None, None, None),
                env: &[],
                file: Some(FILE),
                expect: (
                    "https://127.0.0.1:8443",
                    ClientFile,
                    Some("gak_file"),
                    Some(".gantry/server-ca.pem"),
                ),
            },
            Case {
                name: "environment only",
                flags: flags(None, None, None),
                env: &[
                    ("GANTRY_API_URL", "https://gantry.example.com"),
                    ("GANTRY_API_KEY", "gak_env"),
                    ("GANTRY_API_CA_FILE", "/etc/ca.pem"),
                ],
                file: None,
                expect: (
                    "https://gantry.example.com",
                    Environment,
                    Some("gak_env"),
                    Some("/etc/ca.pem"),
                ),
            },
            Case {
                name: "flags win over the environment",
                flags: flags(Some("http://localhost:8080"), Some("gak_flag"), Some("flag-ca.pem")),
                env: &[
                    ("GANTRY_API_URL", "https://gantry.example.com"),
                    ("GANTRY_API_KEY", "gak_env"),
                    ("GANTRY_API_CA_FILE", "/etc/ca.pem"),
                ],
                file: Some(FILE),
                expect: ("http://localhost:8080", Flag, Some("gak_flag"), Some("flag-ca.pem")),
            },
            Case {
                name: "a key from the environment with the file's URL and CA",
                flags: flags(None, None, None),
                env: &[("GANTRY_API_KEY", "gak_env")],
                file: Some(FILE),
                expect: (
                    "https://127.0.0.1:8443",
                    ClientFile,
                    Some("gak_env"),
                    Some(".gantry/server-ca.pem"),
                ),
            },
            Case {
                name: "another server's URL: nothing comes from the file, its key least of all",
                flags: flags(None, None, None),
                env: &[("GANTRY_API_URL", "https://gantry.example.com")],
                file: Some(FILE),
                expect: ("https://gantry.example.com", Environment, None, None),
            },
            Case {
                name: "the file's own URL given explicitly (trailing slash aside) still uses the file",
                flags: flags(Some("https://127.0.0.1:8443/"), None, None),
                env: &[],
                file: Some(FILE),
                expect: (
                    "https://127.0.0.1:8443/",
                    Flag,
                    Some("gak_file"),
                    Some(".gantry/server-ca.pem"),
                ),
            },
            Case {
                name: "empty variables count as unset",
                flags: flags(None, None, None),
                env: &[("GANTRY_API_URL", ""), ("GANTRY_API_KEY", " "), ("GANTRY_API_CA_FILE", "")],
                file: None,
                expect: ("https://127.0.0.1:8443", Default, None, None),
            },
            Case {
                name: "a file without ca_file",
                flags: flags(None, None, None),
                env: &[],
                file: Some(r#"{"api_url": "http://127.0.0.1:9000", "api_key": "gak_x"}"#),
                expect: ("http://127.0.0.1:9000", ClientFile, Some("gak_x"), None),
            },
        ];
        for case in cases {
            let config = run(&case.flags, case.env, case.file)
                .unwrap_or_else(|e| panic!("{}: unexpected error {e}", case.name));
            let (url, source, key, ca) = case.expect;
            assert_eq!(config.api_url, url, "{}", case.name);
            assert_eq!(config.api_url_source, source, "{}", case.name);
            assert_eq!(config.api_key.as_deref(), key, "{}", case.name);
            assert_eq!(config.ca_file.as_deref(), ca.map(Path::new), "{}", case.name);
        }
    }

    #[test]
    fn bad_settings_are_errors_that_name_the_setting() {
        type Env = &'static [(&'static str, &'static str)];
        let cases: [(&str, ConfigFlags, Env, Option<&str>, &str); 4] = [
            (
                "a URL without a scheme",
                flags(Some("127.0.0.1:8443"), None, None),
                &[],
                None,
                "--api-url=\"127.0.0.1:8443\": expected an http:// or https:// URL such as https://127.0.0.1:8443",
            ),
            (
                "an ftp URL from the environment",
                flags(None, None, None),
                &[("GANTRY_API_URL", "ftp://example.com")],
                None,
                "GANTRY_API_URL=\"ftp://example.com\": expected an http:// or https:// URL such as https://127.0.0.1:8443",
            ),
            (
                "a client file that is not JSON",
                flags(None, None, None),
                &[],
                Some("not json"),
                ".gantry/client.json is not a valid client file (expected api_url, api_key and ca_file): expected ident at line 1 column 2",
            ),
            (
                "a client file without a key",
                flags(None, None, None),
                &[],
                Some(r#"{"api_url": "https://127.0.0.1:8443"}"#),
                ".gantry/client.json is not a valid client file (expected api_url, api_key and ca_file): missing field `api_key` at line 1 column 37",
            ),
        ];
        for (name, flags, env, file, expect) in cases {
            let error = run(&flags, env, file).expect_err(name);
            assert_eq!(error.to_string(), expect, "{name}");
        }
    }

    #[test]
    fn a_missing_key_is_an_error_only_when_asked_for() {
        let config = run(&ConfigFlags::default(), &[], None).unwrap();
        assert_eq!(
            config.require_api_key().unwrap_err().to_string(),
            "no API key: set GANTRY_API_KEY, pass --api-key, or run gantry up in this directory"
        );
        let config = run(&flags(None, Some("gak_1"), None), &[], None).unwrap();
        assert_eq!(config.require_api_key().unwrap(), "gak_1");
    }

    #[test]
    fn debug_output_never_shows_the_key() {
        let config = run(&flags(None, Some("gak_secret"), None), &[], Some(FILE)).unwrap();
        assert!(!format!("{config:?}").contains("gak_secret"));
        let file = ClientFile::parse(FILE).unwrap();
        assert!(!format!("{file:?}").contains("gak_file"));
        assert!(!format!("{:?}", flags(None, Some("gak_secret"), None)).contains("gak_secret"));
    }

    #[test]
    fn the_client_file_round_trips_and_is_private_to_its_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".gantry/client.json");
        let file = ClientFile::parse(FILE).unwrap();
        file.write(&path).unwrap();
        file.write(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(ClientFile::parse(&text).unwrap(), file);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
