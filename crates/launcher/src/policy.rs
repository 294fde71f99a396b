//! The run initialization policy (`GANTRY_LAUNCHER_RUN_INITIALIZATION_POLICY`): a Rego
//! file evaluated with regorus before each run. Every message of its `deny` set fails the
//! run before it starts. Policies written for the reference (`package spacelift`, Rego
//! before v1: `deny[msg] { … }`) work as they are, as do Rego v1 ones (`package gantry`,
//! `deny contains msg if { … }`). A policy that does not parse stops the launcher at
//! start.

use std::path::Path;

use gantry_proto::agent::Assignment;
use serde_json::json;

pub const RUN_INITIALIZATION_POLICY: &str = "GANTRY_LAUNCHER_RUN_INITIALIZATION_POLICY";

/// The packages a policy may declare: Gantry's, and the reference's.
const PACKAGES: [&str; 2] = ["data.gantry", "data.spacelift"];

/// Why a policy cannot be used, or could not be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{RUN_INITIALIZATION_POLICY}={path}: cannot read the policy: {problem}")]
    Read { path: String, problem: String },
    #[error("{RUN_INITIALIZATION_POLICY}={path}: the policy does not parse: {problem}")]
    Parse { path: String, problem: String },
    #[error(
        "{RUN_INITIALIZATION_POLICY}={path}: the policy's package is {package}: expected package gantry (or spacelift, as written for the reference)"
    )]
    Package { path: String, package: String },
    #[error("the run initialization policy failed to evaluate: {0}")]
    Evaluation(String),
}

/// A parsed policy, ready to evaluate.
#[derive(Clone)]
pub struct InitializationPolicy {
    engine: regorus::Engine,
    /// The `deny` rule's path: `data.gantry.deny` or `data.spacelift.deny`.
    deny_rule: String,
}

impl std::fmt::Debug for InitializationPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InitializationPolicy").field("deny_rule", &self.deny_rule).finish()
    }
}

impl InitializationPolicy {
    /// Reads and parses the policy at `path`: as Rego v1 first, then as the pre-v1
    /// syntax the reference's policies use.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let shown = path.display().to_string();
        let source = std::fs::read_to_string(path).map_err(|error| PolicyError::Read {
            path: shown.clone(),
            problem: error.to_string(),
        })?;
        Self::parse(&shown, &source)
    }

    fn parse(path: &str, source: &str) -> Result<Self, PolicyError> {
        let mut engine = regorus::Engine::new();
        let package = match engine.add_policy(path.to_owned(), source.to_owned()) {
            Ok(package) => package,
            Err(v1_error) => {
                let mut v0 = regorus::Engine::new();
                v0.set_rego_v0(true);
                match v0.add_policy(path.to_owned(), source.to_owned()) {
                    Ok(package) => {
                        engine = v0;
                        package
                    }
                    // The v1 message is the one a policy written today needs.
                    Err(_) => {
                        return Err(PolicyError::Parse {
                            path: path.to_owned(),
                            problem: v1_error.to_string(),
                        });
                    }
                }
            }
        };
        if !PACKAGES.contains(&package.as_str()) {
            return Err(PolicyError::Package {
                path: path.to_owned(),
                package: package.trim_start_matches("data.").to_owned(),
            });
        }
        Ok(Self { engine, deny_rule: format!("{package}.deny") })
    }

    /// The messages of the policy's `deny` set for this input; none allows the run.
    pub fn denials(&self, input: &serde_json::Value) -> Result<Vec<String>, PolicyError> {
        let mut engine = self.engine.clone();
        let input = regorus::Value::from_json_str(&input.to_string())
            .map_err(|error| PolicyError::Evaluation(error.to_string()))?;
        engine.set_input(input);
        // A query, not a rule lookup: a policy without `deny` allows everything.
        let results = engine
            .eval_query(self.deny_rule.clone(), false)
            .map_err(|error| PolicyError::Evaluation(error.to_string()))?;
        let denied = results
            .result
            .into_iter()
            .flat_map(|result| result.expressions)
            .map(|expression| expression.value)
            .next()
            .unwrap_or(regorus::Value::Undefined);
        let messages = match &denied {
            regorus::Value::Undefined | regorus::Value::Null => Vec::new(),
            regorus::Value::Set(set) => set.iter().map(message).collect(),
            regorus::Value::Array(array) => array.iter().map(message).collect(),
            other => vec![message(other)],
        };
        Ok(messages)
    }
}

/// A deny message as users wrote it: strings bare, anything else as JSON.
fn message(value: &regorus::Value) -> String {
    match value {
        regorus::Value::String(text) => text.to_string(),
        other => other.to_json_str().unwrap_or_else(|_| format!("{other:?}")),
    }
}

/// The input document a policy receives, with the reference's field names. Fields the
/// launcher does not know (commit author and times, stack labels, hooks, the Terraform
/// version) are empty.
pub fn input(assignment: &Assignment, docker_image: Option<&str>) -> serde_json::Value {
    let stack = &assignment.stack;
    let environment: serde_json::Map<String, serde_json::Value> = stack
        .environment
        .iter()
        .map(|variable| (variable.name.clone(), json!(variable.value.clone().unwrap_or_default())))
        .collect();
    json!({
        "docker_image": docker_image,
        "worker_version": env!("CARGO_PKG_VERSION"),
        "run": {
            "id": assignment.run_id.to_string(),
            "state": "PREPARING",
            "triggered_by": null,
            "commit": {
                "author": "",
                "branch": stack.branch,
                "created_at": 0,
                "hash": assignment.commit,
                "message": "",
            },
            "changes": [],
            "user_provided_metadata": [],
        },
        "static_run_environment": {
            "run_type": assignment.run_type.to_string(),
            "run_ulid": assignment.run_id.to_string(),
            "stack_slug": stack.name,
            "stack_labels": [],
            "commit_branch": stack.branch,
            "commit_sha": assignment.commit,
            "project_root": stack.project_root,
            "repository_path": stack.repository,
            "environment_variables": environment,
            "command": assignment.command,
            "before_init": [],
            "before_apply": [],
            "terraform_version": "",
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input_for(stack: &str) -> serde_json::Value {
        json!({ "static_run_environment": { "stack_slug": stack, "run_type": "TRACKED" } })
    }

    #[test]
    fn a_reference_policy_in_the_old_syntax_denies_with_its_messages() {
        let policy = InitializationPolicy::parse(
            "policy.rego",
            r#"package spacelift

deny["production stacks are deployed from the main pool"] {
  input.static_run_environment.stack_slug == "production"
}

deny["you shall not pass"] { false }
"#,
        )
        .unwrap();
        assert_eq!(
            policy.denials(&input_for("production")).unwrap(),
            ["production stacks are deployed from the main pool"]
        );
        assert!(policy.denials(&input_for("staging")).unwrap().is_empty());
    }

    #[test]
    fn a_rego_v1_policy_of_package_gantry_works_too() {
        let policy = InitializationPolicy::parse(
            "policy.rego",
            r#"package gantry

deny contains msg if {
  input.static_run_environment.run_type == "TRACKED"
  startswith(input.static_run_environment.stack_slug, "frozen-")
  msg := sprintf("stack %s is frozen", [input.static_run_environment.stack_slug])
}
"#,
        )
        .unwrap();
        assert_eq!(policy.denials(&input_for("frozen-db")).unwrap(), ["stack frozen-db is frozen"]);
        assert!(policy.denials(&input_for("app")).unwrap().is_empty());
    }

    #[test]
    fn a_policy_without_deny_allows_everything() {
        let policy = InitializationPolicy::parse("p.rego", "package gantry\n\nallow := true\n");
        assert!(policy.unwrap().denials(&input_for("any")).unwrap().is_empty());
    }

    #[test]
    fn broken_policies_are_refused_with_the_reason() {
        let error = InitializationPolicy::parse("p.rego", "package gantry\n\ndeny contains {\n")
            .unwrap_err();
        assert!(matches!(&error, PolicyError::Parse { path, .. } if path == "p.rego"), "{error}");
        assert!(error.to_string().starts_with(
            "GANTRY_LAUNCHER_RUN_INITIALIZATION_POLICY=p.rego: the policy does not parse: "
        ));
        let error =
            InitializationPolicy::parse("p.rego", "package other\n\nallow := true\n").unwrap_err();
        assert_eq!(
            error,
            PolicyError::Package { path: "p.rego".to_owned(), package: "other".to_owned() }
        );
        let error = InitializationPolicy::load(Path::new("/nonexistent/p.rego")).unwrap_err();
        assert!(matches!(error, PolicyError::Read { .. }), "{error}");
    }
}
