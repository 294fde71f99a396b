//! Terraform configurations that use built-in resources only, so runs need no provider
//! download and work offline.

/// A secret value used to prove that sensitive outputs never leave the pool in clear.
pub const MARKER_OUTPUT: &str = "s3cr3t-marker-7f3a9c";

/// One `terraform_data` resource, a plain output and a sensitive one.
pub const SIMPLE_CONFIG: &str = r#"
variable "greeting" {
  type    = string
  default = "hello"
}

resource "terraform_data" "example" {
  input = "${var.greeting} from gantry"
}

output "message" {
  value = terraform_data.example.output
}

output "secret" {
  value     = "s3cr3t-marker-7f3a9c"
  sensitive = true
}
"#;

/// Outputs only: every plan of it has no changes.
pub const NO_CHANGES_CONFIG: &str = r#"
locals {
  answer = 42
}

output "answer" {
  value = local.answer
}
"#;
