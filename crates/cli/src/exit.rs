//! Exit statuses (sysexits.h where one fits) and the one place that decides, for any
//! error, which status and which message the user gets.

use crate::client::ClientError;
use crate::commands::UsageError;
use crate::config::ConfigError;

pub const SUCCESS: u8 = 0;
/// The API refused the request, or what the command reports did not succeed.
pub const FAILURE: u8 = 1;
/// EX_USAGE: invalid configuration or input (clap's own usage errors exit with 2).
pub const USAGE: u8 = 64;
/// EX_UNAVAILABLE: the API cannot be reached, or its certificate is not trusted.
pub const UNAVAILABLE: u8 = 69;
/// EX_SOFTWARE: the program itself could not start.
pub const SOFTWARE: u8 = 70;

/// What to print for an error, and the status to exit with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub code: u8,
    pub message: String,
}

pub fn report(error: &anyhow::Error) -> Report {
    // The context that commands add reads "failed to list the pool's workers: <cause>".
    let context = || {
        let outer = error.to_string();
        let root = error.root_cause().to_string();
        if outer == root { None } else { Some(outer) }
    };
    let with_context = |message: String| match context() {
        Some(context) if !message.contains(&context) => format!("{context}: {message}"),
        _ => message,
    };

    if let Some(error) = error.downcast_ref::<ClientError>().or_else(|| find(error)) {
        let (code, message) = match error {
            ClientError::Unreachable { url, cause } => (
                UNAVAILABLE,
                format!(
                    "cannot reach the Gantry API at {url}: {cause} (is the server running? \"gantry up\" starts one)"
                ),
            ),
            ClientError::Tls { url, cause, untrusted_certificate: true } => (
                UNAVAILABLE,
                format!(
                    "the certificate of the Gantry API at {url} is not trusted ({cause}): pass the server's CA with --ca-file or GANTRY_API_CA_FILE"
                ),
            ),
            ClientError::Tls { url, cause, untrusted_certificate: false } => (
                UNAVAILABLE,
                format!(
                    "the TLS connection to the Gantry API at {url} failed: {cause} (does the URL's scheme, http or https, match the server?)"
                ),
            ),
            ClientError::Api { .. }
            | ClientError::Decode { .. }
            | ClientError::InvalidStream { .. } => (FAILURE, with_context(error.to_string())),
            ClientError::InvalidUrl { .. }
            | ClientError::InvalidApiKey
            | ClientError::InvalidCaCertificate { .. } => (USAGE, error.to_string()),
            ClientError::Setup(_) => (SOFTWARE, error.to_string()),
        };
        return Report { code, message };
    }
    if error.downcast_ref::<ConfigError>().is_some() || error.downcast_ref::<UsageError>().is_some()
    {
        return Report { code: USAGE, message: said_once(error) };
    }
    Report { code: FAILURE, message: said_once(error) }
}

/// The error and its causes, each said once: a message that already quotes its cause (as
/// `"cannot open the database: {0}"` does) is not followed by the cause again.
fn said_once(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

/// A client error under added context.
fn find(error: &anyhow::Error) -> Option<&ClientError> {
    error.chain().find_map(|cause| cause.downcast_ref::<ClientError>())
}

#[cfg(test)]
mod tests {
    use anyhow::Context as _;

    use super::*;

    fn check(error: anyhow::Error, code: u8, message: &str) {
        assert_eq!(report(&error), Report { code, message: message.to_owned() });
    }

    #[test]
    fn errors_map_to_statuses_and_messages() {
        check(
            ClientError::Unreachable {
                url: "https://127.0.0.1:9".into(),
                cause: "Connection refused (os error 111)".into(),
            }
            .into(),
            69,
            "cannot reach the Gantry API at https://127.0.0.1:9: Connection refused (os error 111) (is the server running? \"gantry up\" starts one)",
        );
        check(
            ClientError::Tls {
                url: "https://h".into(),
                cause: "invalid peer certificate: UnknownIssuer".into(),
                untrusted_certificate: true,
            }
            .into(),
            69,
            "the certificate of the Gantry API at https://h is not trusted (invalid peer certificate: UnknownIssuer): pass the server's CA with --ca-file or GANTRY_API_CA_FILE",
        );
        check(
            ClientError::Api {
                status: 404,
                code: "not_found".into(),
                message: "no pool named \"x\"".into(),
            }
            .into(),
            1,
            "no pool named \"x\"",
        );
        check(
            anyhow::Error::new(ClientError::Api {
                status: 404,
                code: "not_found".into(),
                message: "no pool".into(),
            })
            .context("failed to list the pool's workers"),
            1,
            "failed to list the pool's workers: no pool",
        );
        check(
            ConfigError::MissingApiKey.into(),
            64,
            "no API key: set GANTRY_API_KEY, pass --api-key, or run gantry up in this directory",
        );
        check(UsageError("pool.key already exists".into()).into(), 64, "pool.key already exists");
        check(
            Err::<(), _>(std::io::Error::other("disk full"))
                .context("cannot write pool.csr")
                .unwrap_err(),
            1,
            "cannot write pool.csr: disk full",
        );
    }

    /// An error whose message quotes its source, as `thiserror`'s `{0}` with `#[from]`.
    #[derive(Debug, thiserror::Error)]
    #[error("cannot open the database: {0}")]
    struct Quoting(#[from] std::io::Error);

    #[test]
    fn a_cause_the_message_already_quotes_is_not_repeated() {
        let quoting = Quoting::from(std::io::Error::other("connection refused"));
        check(quoting.into(), 1, "cannot open the database: connection refused");
        let wrapped = anyhow::Error::new(Quoting::from(std::io::Error::other("refused")))
            .context("the server did not start");
        check(wrapped, 1, "the server did not start: cannot open the database: refused");
    }
}
