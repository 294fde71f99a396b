//! Checks of user input that the domain owns: what makes a branch, a project root, an
//! environment variable name, a secret value, a repository address or a tool version
//! acceptable.

/// A field's value was refused; the message names the field, the value and the rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {value:?} is not valid: expected {expected}")]
pub struct InvalidInput {
    pub field: &'static str,
    pub value: String,
    pub expected: &'static str,
}

fn check(
    field: &'static str,
    value: &str,
    ok: bool,
    expected: &'static str,
) -> Result<(), InvalidInput> {
    if ok { Ok(()) } else { Err(InvalidInput { field, value: value.to_owned(), expected }) }
}

/// A git branch name, as `git check-ref-format --branch` would broadly accept.
pub fn validate_branch(value: &str) -> Result<(), InvalidInput> {
    let ok = !value.is_empty()
        && value.len() <= 255
        && !value.starts_with('-')
        && !value.starts_with('/')
        && !value.ends_with('/')
        && !value.ends_with(".lock")
        && !value.contains("..")
        && !value.contains("@{")
        && !value.chars().any(|c| c.is_control() || " ~^:?*[\\".contains(c));
    check("branch", value, ok, "a git branch name such as main or release/1.2")
}

/// A directory inside the repository: relative, without `..`.
pub fn validate_project_root(value: &str) -> Result<(), InvalidInput> {
    let ok = !value.starts_with('/')
        && !value.contains('\\')
        && !value.chars().any(char::is_control)
        && value.split('/').all(|part| part != "..");
    check("project_root", value, ok, "a relative directory inside the repository, without ..")
}

/// A tool's version as a pool owner declares it for a runner image (`1.9.5`,
/// `1.10.0-beta1`): it reaches the run initialization policy, which compares versions.
pub fn validate_tool_version(value: &str) -> Result<(), InvalidInput> {
    let ok = value.len() <= 64
        && value.starts_with(|c: char| c.is_ascii_digit())
        && value.chars().all(|c| c.is_ascii_alphanumeric() || ".+-".contains(c));
    check("tool version", value, ok, "a version such as 1.9.5 or 1.10.0-beta1")
}

/// A POSIX environment variable name.
pub fn validate_environment_name(value: &str) -> Result<(), InvalidInput> {
    let mut chars = value.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !value.starts_with("GANTRY_");
    check(
        "environment variable",
        value,
        ok,
        "letters, digits and _, not starting with a digit, and not in the reserved GANTRY_ namespace",
    )
}

/// The fewest characters a secret value may have: launchers mask every secret in run
/// logs, and masking a shorter one would mask ordinary words of every log.
pub const MIN_SECRET_LENGTH: usize = 4;

/// A secret value too short to be masked. The message names the variable and never
/// shows the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "the value of {variable} is shorter than {MIN_SECRET_LENGTH} characters: a secret this short cannot be masked in run logs"
)]
pub struct SecretTooShort {
    pub variable: String,
}

/// A value masked in run logs: a stack's secret variable, a launcher's
/// `GANTRY_MASK_ENVS` variable.
pub fn validate_secret_value(variable: &str, value: &str) -> Result<(), SecretTooShort> {
    if value.chars().count() < MIN_SECRET_LENGTH {
        return Err(SecretTooShort { variable: variable.to_owned() });
    }
    Ok(())
}

/// A repository address git can clone: a URL (`https://`, `ssh://`, `git://`, `file://`),
/// scp-like `user@host:path`, or an absolute path; or `private://<name>/<path>`, a
/// repository on a private VCS that each launcher maps to an address it can reach
/// (`GANTRY_PRIVATEVCS_MAPPING_*`).
pub fn validate_repository(value: &str) -> Result<(), InvalidInput> {
    let has_scheme = ["https://", "http://", "ssh://", "git://", "file://", "private://"]
        .iter()
        .any(|scheme| value.strip_prefix(scheme).is_some_and(|rest| !rest.is_empty()));
    let scp_like =
        value.split_once(':').is_some_and(|(host, path)| host.contains('@') && !path.is_empty());
    let ok = (has_scheme || scp_like || value.starts_with('/'))
        && !value.starts_with('-')
        && !value.chars().any(|c| c.is_control() || c.is_whitespace());
    check(
        "repository",
        value,
        ok,
        "a git URL (https://, ssh://, git://, file://, private://), user@host:path, or an absolute path",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branches() {
        for good in ["main", "release/1.2", "feature-x_y"] {
            assert_eq!(validate_branch(good), Ok(()), "{good}");
        }
        for bad in ["", "-x", "a..b", "a b", "x.lock", "/x", "x/", "a:b"] {
            assert!(validate_branch(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn project_roots() {
        for good in ["", "infra", "infra/prod", "./infra"] {
            assert_eq!(validate_project_root(good), Ok(()), "{good}");
        }
        for bad in ["/etc", "../up", "a/../../b", "a\\b"] {
            assert!(validate_project_root(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tool_versions() {
        for good in ["1.9.5", "1.10.0-beta1", "0.15.5+ent"] {
            assert_eq!(validate_tool_version(good), Ok(()), "{good}");
        }
        let too_long = format!("1.{}", "0".repeat(63));
        for bad in ["", "v1.9.5", "latest", "1.9 ", "1.9\n", "1;rm", too_long.as_str()] {
            assert!(validate_tool_version(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn environment_names() {
        for good in ["TF_VAR_region", "_x", "A1"] {
            assert_eq!(validate_environment_name(good), Ok(()), "{good}");
        }
        for bad in ["", "1A", "A-B", "GANTRY_TOKEN", "A B"] {
            assert!(validate_environment_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn repositories() {
        for good in [
            "https://github.com/a/b.git",
            "file:///srv/repo",
            "git@github.com:a/b.git",
            "/srv/repo",
            "ssh://git@host/x",
        ] {
            assert_eq!(validate_repository(good), Ok(()), "{good}");
        }
        for bad in ["", "repo", "https://", "-uupload-pack=x", "file:///a b", "ftp://x"] {
            assert!(validate_repository(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn secret_values() {
        for good in ["abcd", "hunter2", "éèêë", "🔑🔑🔑🔑"] {
            assert_eq!(validate_secret_value("TF_VAR_x", good), Ok(()), "{good}");
        }
        for bad in ["", "a", "abc", "éèê"] {
            let error = validate_secret_value("TF_VAR_x", bad).unwrap_err().to_string();
            assert_eq!(
                error,
                "the value of TF_VAR_x is shorter than 4 characters: a secret this short cannot be masked in run logs"
            );
        }
    }

    #[test]
    fn errors_name_field_value_and_rule() {
        assert_eq!(
            validate_branch("a b").unwrap_err().to_string(),
            "branch \"a b\" is not valid: expected a git branch name such as main or release/1.2"
        );
    }
}
