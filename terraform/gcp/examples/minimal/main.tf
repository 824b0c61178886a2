# A Spot T4 runner with a one-hour hard TTL, as cml-infra renders it.
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
  description = "Project to create the example runner in."
  type        = string
}

provider "google" {
  project = var.project
  region  = "us-central1"
}

module "runner" {
  source = "../.."

  name                     = "cml-example"
  launch_id                = "0123456789abcdef" # cml-infra mints a fresh one per launch
  zone                     = "us-central1-a"
  machine_type             = "n1-standard-8"
  gpu                      = true
  accelerator_type         = "nvidia-tesla-t4"
  accelerator_count        = 1
  spot                     = true
  startup_script           = "#!/bin/sh\necho 'runner agent starts here'\n"
  max_run_duration_seconds = 3600
  created_at               = 1767225600
  expires_at               = 1767229200
  labels                   = { team = "ml" }
}

output "instance" {
  description = "Name, zone and internal IP of the example runner."
  value = {
    name        = module.runner.name
    zone        = module.runner.zone
    internal_ip = module.runner.internal_ip
  }
}
