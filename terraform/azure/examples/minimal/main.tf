# A spot GPU runner in eastus. Credentials come from the environment (az login, or ARM_* variables).
terraform {
  required_version = ">= 1.5"

  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = ">= 5.0, < 6.0"
    }
    tls = {
      source  = "hashicorp/tls"
      version = ">= 4.0, < 5.0"
    }
  }
}

variable "subscription_id" {
  description = "Azure subscription to create the runner in."
  type        = string
}

provider "azurerm" {
  features {}
  subscription_id = var.subscription_id
}

locals {
  # Stand-in for the cml-infra startup script; cloud-init copies its output to the serial log.
  startup_script = <<-EOT
    #!/bin/sh
    nvidia-smi || echo "no GPU visible"
  EOT
}

module "runner" {
  source = "../.."

  name               = "example-runner"
  launch_id          = "0123456789abcdef" # cml-infra mints a fresh one per launch
  location           = "eastus"
  vm_size            = "Standard_NC4as_T4_v3"
  spot               = true
  max_bid_price      = -1
  gpu                = true
  custom_data_base64 = base64gzip(local.startup_script)
  created_at         = 1893369600 # 2029-12-31T00:00:00Z, when the launch began
  expires_at         = 1893456000 # 2030-01-01T00:00:00Z

  tags = {
    "example" = "minimal"
  }
}

output "id" {
  description = "Resource id of the runner VM."
  value       = module.runner.id
}

output "resource_group_name" {
  description = "Resource group holding the runner; delete it to remove everything."
  value       = module.runner.resource_group_name
}

output "principal_id" {
  description = "Object id of the VM's managed identity."
  value       = module.runner.principal_id
}

output "public_ip" {
  description = "The runner's egress-only public IP."
  value       = module.runner.public_ip
}
