output "id" {
  description = "Instance id (the sandbox folder name, unique among live local instances)."
  value       = terraform_data.instance.output.name
}

output "name" {
  description = "Instance name."
  value       = terraform_data.instance.output.name
}

output "sandbox" {
  description = "Absolute path of the instance's sandbox folder."
  value       = terraform_data.instance.output.sandbox
}

output "started_at" {
  description = "When the instance was created (RFC 3339)."
  value       = terraform_data.instance.output.created_at
}

output "log_path" {
  description = "The instance log while it runs (agent and task output)."
  value       = "${terraform_data.instance.output.sandbox}/instance.log"
}

output "region" {
  description = "Always \"local\"."
  value       = "local"
}
