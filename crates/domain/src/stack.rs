//! What a stack runs with.

use std::fmt;
use std::str::FromStr;

/// The infrastructure-as-code tool a stack's runs execute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Tool {
    #[default]
    Terraform,
    OpenTofu,
}

impl Tool {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Terraform => "terraform",
            Self::OpenTofu => "opentofu",
        }
    }

    /// The executable the worker looks up on its PATH.
    pub fn executable(self) -> &'static str {
        match self {
            Self::Terraform => "terraform",
            Self::OpenTofu => "tofu",
        }
    }
}

impl fmt::Display for Tool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The text was not a tool name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a supported tool: expected terraform or opentofu")]
pub struct UnknownTool(String);

impl FromStr for Tool {
    type Err = UnknownTool;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "terraform" => Ok(Self::Terraform),
            "opentofu" | "tofu" => Ok(Self::OpenTofu),
            other => Err(UnknownTool(other.to_owned())),
        }
    }
}

/// One environment variable a stack passes to its runs.
#[derive(Clone, PartialEq, Eq)]
pub struct EnvironmentVariable {
    pub name: String,
    pub value: String,
    /// Write-only through the API and masked in logs.
    pub secret: bool,
}

// A secret's value stays out of debug output, and so out of logs and panics.
impl std::fmt::Debug for EnvironmentVariable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let value: &dyn std::fmt::Debug = if self.secret { &"<secret>" } else { &self.value };
        f.debug_struct("EnvironmentVariable")
            .field("name", &self.name)
            .field("value", value)
            .field("secret", &self.secret)
            .finish()
    }
}

/// Whether a pool is hosted by its owner or run by the server itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolKind {
    Private,
    Shared,
}

impl PoolKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Private => "private",
            Self::Shared => "shared",
        }
    }
}

impl FromStr for PoolKind {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "private" => Ok(Self::Private),
            "shared" => Ok(Self::Shared),
            other => Err(format!("{other:?} is not a pool kind: expected private or shared")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_value_stays_out_of_debug_output() {
        let variable = |secret| EnvironmentVariable {
            name: "TF_VAR_password".to_owned(),
            value: "hunter22".to_owned(),
            secret,
        };
        assert_eq!(
            format!("{:?}", variable(true)),
            r#"EnvironmentVariable { name: "TF_VAR_password", value: "<secret>", secret: true }"#
        );
        assert!(format!("{:?}", variable(false)).contains("hunter22"));
    }
}
