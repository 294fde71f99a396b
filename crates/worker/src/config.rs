//! The worker's configuration: the launcher's socket and the run's capability, both
//! from the environment the launcher started the worker with (the capability by way of
//! `gantry_secret_env`, which takes it out of the environment block first).

use std::ffi::OsString;
use std::path::PathBuf;

use gantry_proto::local::{
    CAPABILITY_ENV, INPUT_CAPABILITY, INPUT_ENV, SOCKET_ENV, SOCKET_WAIT_ENV,
};
use hyper::header::HeaderValue;

use crate::WorkerError;

/// Where the launcher listens and how to prove this worker belongs to the run.
#[derive(Debug, Clone)]
pub struct Config {
    pub socket_path: PathBuf,
    /// `Bearer <capability>`, marked sensitive so that `Debug` never shows it.
    pub(crate) authorization: HeaderValue,
    /// How long the first request waits for the socket to appear ([`SOCKET_WAIT_ENV`]).
    pub socket_wait: std::time::Duration,
}

/// The longest capability read from standard input: far more than any the launcher makes.
const MAX_CAPABILITY_BYTES: u64 = 4096;

/// The capability the launcher writes on standard input: one line, then the end of input.
/// Read to the end, so that nothing of it stays for a process that inherits the input.
fn capability_from(input: impl std::io::Read) -> Result<OsString, WorkerError> {
    use std::io::Read as _;
    let invalid =
        || WorkerError::InvalidCapability { variable: "the capability on standard input" };
    let mut bytes = Vec::new();
    input.take(MAX_CAPABILITY_BYTES + 1).read_to_end(&mut bytes).map_err(|_| invalid())?;
    if bytes.len() as u64 > MAX_CAPABILITY_BYTES {
        return Err(invalid());
    }
    let text = String::from_utf8(bytes).map_err(|_| invalid())?;
    Ok(OsString::from(text.strip_suffix('\n').unwrap_or(&text)))
}

impl Config {
    /// Reads [`SOCKET_ENV`] and [`CAPABILITY_ENV`] from `secrets` (what
    /// [`gantry_secret_env::take_from_environment`] took out of the environment), then
    /// from the process environment.
    pub fn from_env(secrets: &gantry_secret_env::Secrets) -> Result<Self, WorkerError> {
        let from_stdin = match std::env::var_os(INPUT_ENV) {
            Some(input) if input == INPUT_CAPABILITY => {
                Some(capability_from(std::io::stdin().lock())?)
            }
            _ => None,
        };
        Self::from_lookup(|name| {
            let handed = (name == CAPABILITY_ENV).then(|| from_stdin.clone()).flatten();
            handed
                .or_else(|| secrets.get(name).map(OsString::from))
                .or_else(|| std::env::var_os(name))
        })
    }

    /// Reads the configuration through `lookup`, so tests need not touch the process
    /// environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<OsString>) -> Result<Self, WorkerError> {
        let socket_path = lookup(SOCKET_ENV).filter(|value| !value.is_empty()).ok_or(
            WorkerError::MissingVariable {
                variable: SOCKET_ENV,
                expected: "the path of the launcher's unix socket",
            },
        )?;
        let capability = lookup(CAPABILITY_ENV).filter(|value| !value.is_empty()).ok_or(
            WorkerError::MissingVariable {
                variable: CAPABILITY_ENV,
                expected: "the run's capability, given by the launcher",
            },
        )?;
        let invalid = || WorkerError::InvalidCapability { variable: CAPABILITY_ENV };
        let capability = capability.into_string().map_err(|_| invalid())?;
        let mut authorization =
            HeaderValue::from_str(&format!("Bearer {capability}")).map_err(|_| invalid())?;
        authorization.set_sensitive(true);
        let socket_wait = match lookup(SOCKET_WAIT_ENV).filter(|value| !value.is_empty()) {
            None => 0,
            Some(value) => {
                let text = value.to_string_lossy().into_owned();
                text.trim().parse::<u64>().map_err(|_| WorkerError::InvalidSeconds {
                    variable: SOCKET_WAIT_ENV,
                    value: text,
                })?
            }
        };
        Ok(Self {
            socket_path: PathBuf::from(socket_path),
            authorization,
            socket_wait: std::time::Duration::from_secs(socket_wait),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn check(variables: &[(&str, &str)], expect: Result<&str, &str>) {
        let variables: HashMap<String, OsString> =
            variables.iter().map(|(name, value)| (name.to_string(), value.into())).collect();
        let result = Config::from_lookup(|name| variables.get(name).cloned());
        match (result, expect) {
            (Ok(config), Ok(socket)) => {
                assert_eq!(config.socket_path, PathBuf::from(socket));
                assert!(config.authorization.is_sensitive());
                assert!(!format!("{config:?}").contains("secret"));
            }
            (Err(error), Err(message)) => assert_eq!(error.to_string(), message),
            (result, expect) => panic!("got {result:?}, expected {expect:?}"),
        }
    }

    #[test]
    fn a_capability_on_standard_input_is_its_one_line_and_bounded() {
        let read = |bytes: &[u8]| capability_from(bytes);
        assert_eq!(read(b"gwc_secret\n").unwrap(), OsString::from("gwc_secret"));
        assert_eq!(read(b"gwc_secret").unwrap(), OsString::from("gwc_secret"));
        let long = vec![b'a'; 4097];
        for refused in [&long[..], &[0xff, 0xfe][..]] {
            let error = read(refused).unwrap_err();
            assert_eq!(
                error.to_string(),
                "the capability on standard input is not a valid bearer token: expected visible ASCII characters"
            );
        }
    }

    #[test]
    fn the_socket_wait_is_seconds_and_zero_unless_set() {
        let base = [(SOCKET_ENV, "/s"), (CAPABILITY_ENV, "c")];
        let read = |extra: &[(&str, &str)]| {
            let variables: HashMap<String, OsString> = base
                .iter()
                .chain(extra)
                .map(|(name, value)| (name.to_string(), value.into()))
                .collect();
            Config::from_lookup(|name| variables.get(name).cloned())
        };
        assert_eq!(read(&[]).unwrap().socket_wait, std::time::Duration::ZERO);
        assert_eq!(read(&[(SOCKET_WAIT_ENV, "90")]).unwrap().socket_wait.as_secs(), 90);
        assert_eq!(
            read(&[(SOCKET_WAIT_ENV, "soon")]).unwrap_err().to_string(),
            "GANTRY_WORKER_SOCKET_WAIT_SECONDS is \"soon\": expected a number of seconds"
        );
    }

    #[test]
    fn reads_socket_and_capability() {
        check(
            &[(SOCKET_ENV, "/run/gantry/worker.sock"), (CAPABILITY_ENV, "secret-capability")],
            Ok("/run/gantry/worker.sock"),
        );
    }

    #[test]
    fn names_the_missing_or_empty_variable() {
        check(
            &[(CAPABILITY_ENV, "secret")],
            Err("GANTRY_WORKER_SOCKET is not set: expected the path of the launcher's unix socket"),
        );
        check(
            &[(SOCKET_ENV, "/s"), (CAPABILITY_ENV, "")],
            Err(
                "GANTRY_WORKER_CAPABILITY is not set: expected the run's capability, given by the launcher",
            ),
        );
    }

    #[test]
    fn refuses_a_capability_that_cannot_be_a_header_without_printing_it() {
        check(
            &[(SOCKET_ENV, "/s"), (CAPABILITY_ENV, "secret\nline")],
            Err(
                "GANTRY_WORKER_CAPABILITY is not a valid bearer token: expected visible ASCII characters",
            ),
        );
    }
}
