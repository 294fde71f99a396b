//! Operator configuration from `GANTRY_*` variables, validated completely before the
//! operator starts: a bad value stops it with the variable, the value and what is expected.

use gantry_domain::options::{self, Env, OptionError};

use crate::pod::RunPodSettings;

/// Watch one namespace only (a namespaced install); unset: every namespace.
pub const WATCH_NAMESPACE: &str = "GANTRY_OPERATOR_WATCH_NAMESPACE";
/// Where `/metrics` listens.
pub const METRICS_LISTEN: &str = "GANTRY_OPERATOR_METRICS_LISTEN";

#[derive(Debug, Clone)]
pub struct OperatorConfig {
    /// Launcher image, default runner image, run timeout.
    pub pod: RunPodSettings,
    pub watch_namespace: Option<String>,
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Reported to the server as the launcher's host.
    pub hostname: String,
}

impl OperatorConfig {
    pub fn from_env(env: &Env) -> Result<Self, OptionError> {
        let metrics_listen = options::get(env, METRICS_LISTEN)
            .map(|text| {
                text.parse().map_err(|_| {
                    OptionError::invalid(METRICS_LISTEN, text, "an address like 0.0.0.0:9466")
                })
            })
            .transpose()?;
        Ok(Self {
            pod: RunPodSettings::from_env(env)?,
            watch_namespace: options::get(env, WATCH_NAMESPACE)
                .filter(|namespace| !namespace.is_empty())
                .map(str::to_owned),
            metrics_listen,
            hostname: options::get(env, "HOSTNAME").unwrap_or("gantry-operator").to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod::LAUNCHER_IMAGE;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn the_launcher_image_is_required_and_the_rest_has_defaults() {
        let error = OperatorConfig::from_env(&env(&[])).unwrap_err().to_string();
        assert!(error.contains(LAUNCHER_IMAGE), "{error}");
        let config = OperatorConfig::from_env(&env(&[(LAUNCHER_IMAGE, "gantry:1")])).unwrap();
        assert_eq!(config.pod.run_timeout, options::DEFAULT_RUN_TIMEOUT);
        assert_eq!(config.watch_namespace, None);
    }

    #[test]
    fn bad_values_name_the_variable() {
        let error = OperatorConfig::from_env(&env(&[
            (LAUNCHER_IMAGE, "gantry:1"),
            (options::RUN_TIMEOUT, "soon"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(error.contains("GANTRY_LAUNCHER_RUN_TIMEOUT"), "{error}");
        let error = OperatorConfig::from_env(&env(&[
            (LAUNCHER_IMAGE, "gantry:1"),
            (METRICS_LISTEN, "everywhere"),
        ]))
        .unwrap_err()
        .to_string();
        assert!(error.contains(METRICS_LISTEN) && error.contains("everywhere"), "{error}");
    }
}
