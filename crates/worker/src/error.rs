//! The worker's one error type and how a run ends, each mapped to the exit code the
//! launcher expects: 0 done, 1 run failed (already reported), 64 bad configuration,
//! 70 cannot talk to the launcher, 143 terminated.

use std::io;
use std::path::PathBuf;

use hyper::StatusCode;

/// How a run ended, when the worker could talk to its launcher until the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every phase the launcher asked for succeeded, or a directive said to stop.
    Finished,
    /// A phase failed and the failure was reported.
    RunFailed,
    /// SIGTERM or SIGINT arrived; nothing was reported, the launcher reports it.
    Terminated,
}

impl Outcome {
    pub fn exit_code(self) -> u8 {
        match self {
            Self::Finished => 0,
            Self::RunFailed => 1,
            // 128 + SIGTERM, as a shell reports a process SIGTERM ended.
            Self::Terminated => 143,
        }
    }
}

/// Why the worker could not carry out its job at all.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("{variable} is not set: expected {expected}")]
    MissingVariable { variable: &'static str, expected: &'static str },

    /// The value itself is never part of the message: it is a secret.
    #[error("{variable} is not a valid bearer token: expected visible ASCII characters")]
    InvalidCapability { variable: &'static str },

    #[error("{variable} is {value:?}: expected a number of seconds")]
    InvalidSeconds { variable: &'static str, value: String },

    #[error("GANTRY_LAUNCHER_PID is {value:?}: expected a process id")]
    InvalidLauncherPid { value: String },

    #[error("the launcher (process {pid}) that started this worker is gone")]
    LauncherGone { pid: i32 },

    #[error("cannot listen for SIGTERM and SIGINT: {0}")]
    Signals(#[source] io::Error),

    #[error(transparent)]
    Secrets(#[from] gantry_secret_env::SecretEnvError),

    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] io::Error),

    #[error("cannot connect to the launcher at {}: {source}", path.display())]
    Connect { path: PathBuf, source: io::Error },

    #[error("{request} on the launcher's socket failed: {source}")]
    Exchange { request: &'static str, source: hyper::Error },

    #[error("the launcher refused {request} ({status}): {message}")]
    Refused { request: &'static str, status: StatusCode, message: String },

    #[error("the launcher's answer to {request} is not valid JSON of the expected shape: {source}")]
    InvalidAnswer { request: &'static str, source: serde_json::Error },

    #[error("the run log cannot be delivered: an earlier delivery to the launcher failed")]
    LogsUndeliverable,
}

impl WorkerError {
    pub fn exit_code(&self) -> u8 {
        match self {
            // EX_USAGE from sysexits.h.
            Self::MissingVariable { .. }
            | Self::InvalidCapability { .. }
            | Self::InvalidSeconds { .. }
            | Self::InvalidLauncherPid { .. } => 64,
            // EX_SOFTWARE: without its launcher the worker can do nothing useful.
            Self::Signals(_)
            | Self::Secrets(_)
            | Self::Runtime(_)
            | Self::LauncherGone { .. }
            | Self::Connect { .. }
            | Self::Exchange { .. }
            | Self::Refused { .. }
            | Self::InvalidAnswer { .. }
            | Self::LogsUndeliverable => 70,
        }
    }
}
