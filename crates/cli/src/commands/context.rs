//! What every command gets: the output format and a way to an API client, resolved only
//! when the command needs one (so `gantry keygen` works without any configuration).

use crate::cli::GlobalArgs;
use crate::client::{ApiClient, ClientError};
use crate::config::{ClientConfig, ConfigError, ConfigFlags};
use crate::output::OutputFormat;

/// How a command that completed went: the exit status is 0 or 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    /// The command did its job but what it reports did not succeed (a followed run
    /// failed, for example).
    Unsuccessful,
}

impl Outcome {
    /// The outcome of following a run until it stopped: a finished run, or a plan that
    /// waits for confirmation, is a success.
    pub fn of_run(run_state: gantry_domain::RunState) -> Self {
        use gantry_domain::RunState;
        match run_state {
            RunState::Finished | RunState::Unconfirmed => Self::Success,
            _ => Self::Unsuccessful,
        }
    }
}

/// A mistake in what the user typed or pointed to (a missing file, a file that would be
/// overwritten): exit status 64.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Shared by every command.
#[derive(Debug)]
pub struct Context {
    pub output: OutputFormat,
    flags: ConfigFlags,
}

impl Context {
    pub fn new(global: &GlobalArgs) -> Self {
        Self { output: global.output, flags: global.config_flags() }
    }

    pub fn is_json(&self) -> bool {
        self.output == OutputFormat::Json
    }

    /// The connection settings from flags, environment and `.gantry/client.json`.
    pub fn config(&self) -> Result<ClientConfig, ConfigError> {
        ClientConfig::load(&self.flags)
    }

    /// A client for the admin endpoints: fails without an API key.
    pub fn api_client(&self) -> anyhow::Result<ApiClient> {
        let config = self.config()?;
        let key = config.require_api_key()?.to_owned();
        build_client(&config, Some(key))
    }
}

fn build_client(config: &ClientConfig, key: Option<String>) -> anyhow::Result<ApiClient> {
    let mut builder = ApiClient::builder(config.api_url.clone());
    if let Some(key) = key {
        builder = builder.api_key(key);
    }
    if let Some(pem) = config.read_ca_pem()? {
        builder = builder.trust_ca_pem(pem);
    }
    builder.build().map_err(|error| match error {
        ClientError::InvalidCaCertificate { reason } => {
            ConfigError::InvalidCaFile { path: config.ca_file.clone().unwrap_or_default(), reason }
                .into()
        }
        ClientError::InvalidApiKey => ConfigError::InvalidApiKey.into(),
        other => other.into(),
    })
}
