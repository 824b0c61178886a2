# Once per project, before the first runner: the custom role that every runner's service account
# is granted on its own instance (the module's self_delete_role_id, "cmlInfraSelfDelete"). It
# holds one permission, so a job that is root on the VM can end the VM and do nothing else: not
# change its scheduling (max_run_duration), labels or metadata. Kept in a state of its own, not a
# runner's: every runner of the project uses it, and no runner's destroy may delete it.
terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = ">= 8.0, < 9.0"
    }
  }
}

variable "project" {
  description = "Project the runners are launched in."
  type        = string
}

provider "google" {
  project = var.project
}

resource "google_project_iam_custom_role" "self_delete" {
  project     = var.project
  role_id     = "cmlInfraSelfDelete"
  title       = "cml-infra runner self-delete"
  description = "Granted by cml-infra to a runner VM's service account on that instance only: the VM may delete itself, and nothing else."
  permissions = ["compute.instances.delete"]
  stage       = "GA"
}

output "role" {
  description = "The role's name, projects/PROJECT/roles/cmlInfraSelfDelete."
  value       = google_project_iam_custom_role.self_delete.name
}
