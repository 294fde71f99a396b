# The example stack `gantry up` runs: built-in resources only, so it needs no provider
# download and works offline.

variable "greeting" {
  type        = string
  description = "Who the stack greets."
  default     = "world"
}

resource "terraform_data" "greeting" {
  input = "hello, ${var.greeting}, from a private worker pool"
}

resource "terraform_data" "deployment" {
  input = {
    greeting    = terraform_data.greeting.output
    environment = "example"
  }
}

output "greeting" {
  description = "The greeting, as applied."
  value       = terraform_data.greeting.output
}

output "deployment_id" {
  description = "The id Terraform gave the deployment resource."
  value       = terraform_data.deployment.id
}
