//! Private VCS mappings (`GANTRY_PRIVATEVCS_MAPPING_NAME_<n>` and
//! `GANTRY_PRIVATEVCS_MAPPING_BASE_ENDPOINT_<n>`): a stack's repository
//! `private://<name>/<path>` is cloned from `<base endpoint>/<path>`, an address only the
//! launcher's network reaches; the stack and the run log keep the `private://` form.

use std::collections::BTreeMap;

use gantry_domain::options::Env;

pub const NAME_PREFIX: &str = "GANTRY_PRIVATEVCS_MAPPING_NAME_";
pub const BASE_ENDPOINT_PREFIX: &str = "GANTRY_PRIVATEVCS_MAPPING_BASE_ENDPOINT_";
const PRIVATE_SCHEME: &str = "private://";

/// A mapping list that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{variable}: {problem}")]
pub struct MappingError {
    pub variable: String,
    pub problem: String,
}

/// Names of private VCSs and the base addresses this launcher clones them from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PrivateVcs {
    endpoints: BTreeMap<String, String>,
}

impl PrivateVcs {
    /// Pairs each `NAME_<n>` with its `BASE_ENDPOINT_<n>`.
    pub fn from_env(env: &Env) -> Result<Self, MappingError> {
        let mut endpoints = BTreeMap::new();
        for (variable, name) in env.iter().filter(|(key, _)| key.starts_with(NAME_PREFIX)) {
            let index = &variable[NAME_PREFIX.len()..];
            let endpoint_variable = format!("{BASE_ENDPOINT_PREFIX}{index}");
            let name = name.trim();
            if name.is_empty() || name.contains('/') {
                return Err(MappingError {
                    variable: variable.clone(),
                    problem: "expected the name of a private VCS, without /".to_owned(),
                });
            }
            let endpoint = env.get(&endpoint_variable).map(|value| value.trim()).unwrap_or("");
            if !endpoint.contains("://") {
                return Err(MappingError {
                    variable: endpoint_variable,
                    problem: format!(
                        "expected the base address of private VCS {name}, like https://git.internal/org"
                    ),
                });
            }
            if endpoints
                .insert(name.to_owned(), endpoint.trim_end_matches('/').to_owned())
                .is_some()
            {
                return Err(MappingError {
                    variable: variable.clone(),
                    problem: format!("private VCS {name} is mapped twice"),
                });
            }
        }
        if let Some(variable) = env.keys().find(|key| {
            key.strip_prefix(BASE_ENDPOINT_PREFIX)
                .is_some_and(|index| !env.contains_key(&format!("{NAME_PREFIX}{index}")))
        }) {
            return Err(MappingError {
                variable: variable.clone(),
                problem: format!(
                    "has no {NAME_PREFIX}{} naming its VCS",
                    &variable[BASE_ENDPOINT_PREFIX.len()..]
                ),
            });
        }
        Ok(Self { endpoints })
    }

    /// The address to clone `repository` from: a `private://` one mapped, any other as is.
    pub fn resolve(&self, repository: &str) -> Result<String, String> {
        let Some(rest) = repository.strip_prefix(PRIVATE_SCHEME) else {
            return Ok(repository.to_owned());
        };
        let (name, path) = rest.split_once('/').unwrap_or((rest, ""));
        let endpoint = self.endpoints.get(name).ok_or_else(|| {
            format!(
                "repository {repository} is on private VCS {name}, which this launcher has no mapping for (set {NAME_PREFIX}<n>={name} and {BASE_ENDPOINT_PREFIX}<n>)"
            )
        })?;
        Ok(match path {
            "" => endpoint.clone(),
            path => format!("{endpoint}/{path}"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use gantry_domain::options::env_of as env;

    #[test]
    fn private_repositories_are_cloned_from_their_mapped_address() {
        let vcs = PrivateVcs::from_env(&env(&[
            ("GANTRY_PRIVATEVCS_MAPPING_NAME_0", "internal"),
            ("GANTRY_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0", "https://git.corp.example/"),
            ("GANTRY_PRIVATEVCS_MAPPING_NAME_1", "lab"),
            ("GANTRY_PRIVATEVCS_MAPPING_BASE_ENDPOINT_1", "ssh://git@lab.example:2222"),
        ]))
        .unwrap();
        assert_eq!(
            vcs.resolve("private://internal/infra/network.git").unwrap(),
            "https://git.corp.example/infra/network.git"
        );
        assert_eq!(vcs.resolve("private://lab/x").unwrap(), "ssh://git@lab.example:2222/x");
        assert_eq!(vcs.resolve("https://github.com/a/b").unwrap(), "https://github.com/a/b");
        let unmapped = vcs.resolve("private://elsewhere/x").unwrap_err();
        assert!(unmapped.contains("private VCS elsewhere, which this launcher has no mapping"));
    }

    #[test]
    fn incomplete_mappings_are_refused_naming_the_variable() {
        let error =
            PrivateVcs::from_env(&env(&[("GANTRY_PRIVATEVCS_MAPPING_NAME_3", "x")])).unwrap_err();
        assert_eq!(error.variable, "GANTRY_PRIVATEVCS_MAPPING_BASE_ENDPOINT_3");
        let error = PrivateVcs::from_env(&env(&[(
            "GANTRY_PRIVATEVCS_MAPPING_BASE_ENDPOINT_2",
            "https://x",
        )]))
        .unwrap_err();
        assert_eq!(error.variable, "GANTRY_PRIVATEVCS_MAPPING_BASE_ENDPOINT_2");
        let error = PrivateVcs::from_env(&env(&[
            ("GANTRY_PRIVATEVCS_MAPPING_NAME_0", "a"),
            ("GANTRY_PRIVATEVCS_MAPPING_BASE_ENDPOINT_0", "https://x"),
            ("GANTRY_PRIVATEVCS_MAPPING_NAME_1", "a"),
            ("GANTRY_PRIVATEVCS_MAPPING_BASE_ENDPOINT_1", "https://y"),
        ]))
        .unwrap_err();
        assert!(error.problem.contains("mapped twice"), "{error}");
        assert_eq!(PrivateVcs::from_env(&env(&[])).unwrap(), PrivateVcs::default());
    }
}
