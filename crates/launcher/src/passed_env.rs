//! Variables of the launcher's own environment passed to runs: `GANTRY_WHITELIST_ENVS`
//! (a `ro_` prefix limits one to read-only runs, `wo_` to write runs) and
//! `GANTRY_MASK_ENVS` (passed to every run and masked in its log).

use gantry_domain::RunType;
use gantry_domain::options::{self, Env};
use gantry_domain::validation::validate_secret_value;

pub const WHITELIST_ENVS: &str = "GANTRY_WHITELIST_ENVS";
pub const MASK_ENVS: &str = "GANTRY_MASK_ENVS";
/// The prefix of the launcher's own variables, which neither list may name.
const OWN_PREFIX: &str = "GANTRY_";

/// Which runs a passed variable reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunScope {
    All,
    /// Proposed runs: they only read the infrastructure.
    ReadOnly,
    /// Tracked runs and tasks: they may change it.
    Write,
}

impl RunScope {
    pub fn includes(self, run_type: RunType) -> bool {
        match self {
            Self::All => true,
            Self::ReadOnly => run_type == RunType::Proposed,
            Self::Write => run_type != RunType::Proposed,
        }
    }
}

/// One variable passed from the launcher's environment.
#[derive(Clone, PartialEq, Eq)]
pub struct PassedVariable {
    pub name: String,
    pub value: String,
    pub scope: RunScope,
    /// Its value never reaches the server in a log.
    pub masked: bool,
}

impl std::fmt::Debug for PassedVariable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PassedVariable")
            .field("name", &self.name)
            .field("scope", &self.scope)
            .field("masked", &self.masked)
            .finish_non_exhaustive()
    }
}

/// A list option named something it cannot pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{option}: {problem}")]
pub struct PassedEnvError {
    pub option: &'static str,
    pub problem: String,
}

/// The variables both options name, read from `env`.
pub fn from_env(env: &Env) -> Result<Vec<PassedVariable>, PassedEnvError> {
    let mut passed: Vec<PassedVariable> = Vec::new();
    for entry in entries(env, WHITELIST_ENVS) {
        let (scope, name) = match (entry.strip_prefix("ro_"), entry.strip_prefix("wo_")) {
            (Some(name), _) => (RunScope::ReadOnly, name),
            (_, Some(name)) => (RunScope::Write, name),
            _ => (RunScope::All, entry),
        };
        let value = lookup(env, WHITELIST_ENVS, name)?;
        passed.push(PassedVariable { name: name.to_owned(), value, scope, masked: false });
    }
    for name in entries(env, MASK_ENVS) {
        let value = lookup(env, MASK_ENVS, name)?;
        validate_secret_value(name, &value)
            .map_err(|error| PassedEnvError { option: MASK_ENVS, problem: error.to_string() })?;
        match passed.iter_mut().find(|variable| variable.name == name) {
            // Whitelisted too: it keeps its scope and is masked.
            Some(variable) => variable.masked = true,
            None => passed.push(PassedVariable {
                name: name.to_owned(),
                value,
                scope: RunScope::All,
                masked: true,
            }),
        }
    }
    Ok(passed)
}

/// The comma-separated names of `option`, blanks dropped.
fn entries<'a>(env: &'a Env, option: &str) -> impl Iterator<Item = &'a str> {
    options::get(env, option)
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
}

fn lookup(env: &Env, option: &'static str, name: &str) -> Result<String, PassedEnvError> {
    let valid = name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if !valid {
        return Err(PassedEnvError {
            option,
            problem: format!(
                "{name:?} is not an environment variable name (letters, digits and _, \
                 not starting with a digit; a ro_ or wo_ prefix may come first)"
            ),
        });
    }
    // The launcher's own settings hold its pool key and token: a run, whose code is
    // hostile, must never be handed them, whatever a list says.
    if name.starts_with(OWN_PREFIX) {
        return Err(PassedEnvError {
            option,
            problem: format!(
                "names {name}: variables named {OWN_PREFIX}* are the launcher's own settings \
                 (its pool key and token among them) and are never passed to runs"
            ),
        });
    }
    env.get(name).cloned().ok_or_else(|| PassedEnvError {
        option,
        problem: format!("names {name}, which is not set in the launcher's environment"),
    })
}

/// The variables a run of `run_type` receives.
pub fn for_run(passed: &[PassedVariable], run_type: RunType) -> Vec<(String, String)> {
    passed
        .iter()
        .filter(|variable| variable.scope.includes(run_type))
        .map(|variable| (variable.name.clone(), variable.value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    use gantry_domain::options::env_of as env;

    #[test]
    fn prefixes_limit_variables_to_read_only_or_write_runs() {
        let passed = from_env(&env(&[
            (WHITELIST_ENVS, "SHARED, ro_READER,wo_WRITER,"),
            ("SHARED", "s"),
            ("READER", "r"),
            ("WRITER", "w"),
        ]))
        .unwrap();
        let names = |run_type| -> Vec<String> {
            for_run(&passed, run_type).into_iter().map(|(name, _)| name).collect()
        };
        assert_eq!(names(RunType::Proposed), ["SHARED", "READER"]);
        assert_eq!(names(RunType::Tracked), ["SHARED", "WRITER"]);
        assert_eq!(names(RunType::Task), ["SHARED", "WRITER"]);
    }

    #[test]
    fn masked_variables_reach_every_run_or_keep_their_whitelist_scope() {
        let passed = from_env(&env(&[
            (WHITELIST_ENVS, "wo_DEPLOY_KEY"),
            (MASK_ENVS, "DEPLOY_KEY,API_TOKEN"),
            ("DEPLOY_KEY", "key-value"),
            ("API_TOKEN", "token-value"),
        ]))
        .unwrap();
        assert!(passed.iter().all(|variable| variable.masked));
        assert_eq!(passed[0].scope, RunScope::Write);
        assert_eq!(passed[1].scope, RunScope::All);
        assert_eq!(
            for_run(&passed, RunType::Proposed),
            [("API_TOKEN".into(), "token-value".into())]
        );
        assert!(!format!("{passed:?}").contains("value"), "values stay out of debug output");
    }

    #[test]
    fn bad_lists_are_refused_with_the_option_and_the_name() {
        let error = from_env(&env(&[(WHITELIST_ENVS, "MISSING")])).unwrap_err();
        assert_eq!(
            error.to_string(),
            "GANTRY_WHITELIST_ENVS: names MISSING, which is not set in the launcher's environment"
        );
        for (option, entry, name) in [
            (WHITELIST_ENVS, "GANTRY_POOL_PRIVATE_KEY", "GANTRY_POOL_PRIVATE_KEY"),
            (WHITELIST_ENVS, "wo_GANTRY_TOKEN", "GANTRY_TOKEN"),
            (MASK_ENVS, "GANTRY_POOL_PRIVATE_KEY", "GANTRY_POOL_PRIVATE_KEY"),
        ] {
            let error = from_env(&env(&[
                (option, entry),
                ("GANTRY_POOL_PRIVATE_KEY", "-----BEGIN PRIVATE KEY-----"),
                ("GANTRY_TOKEN", "token-value"),
            ]))
            .unwrap_err();
            assert_eq!(
                error.to_string(),
                format!(
                    "{option}: names {name}: variables named GANTRY_* are the launcher's own \
                     settings (its pool key and token among them) and are never passed to runs"
                )
            );
        }
        let error = from_env(&env(&[(WHITELIST_ENVS, "ro_9LIVES")])).unwrap_err();
        assert!(error.to_string().contains("\"9LIVES\" is not an environment variable name"));
        let error = from_env(&env(&[(MASK_ENVS, "PIN"), ("PIN", "123")])).unwrap_err();
        assert!(error.to_string().starts_with("GANTRY_MASK_ENVS: the value of PIN is shorter"));
        assert!(!error.to_string().contains("123"), "the value is not shown");
        assert_eq!(from_env(&env(&[])).unwrap(), []);
    }
}
