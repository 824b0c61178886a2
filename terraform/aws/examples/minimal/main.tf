# A spot GPU runner in the default VPC, as the cml-infra CLI renders it.
terraform {
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 6.0, < 7.0"
    }
  }
}

provider "aws" {
  region = "us-east-1"
}

module "runner" {
  source = "../.."

  name             = "cml-example-1"
  launch_id        = "0123456789abcdef" # cml-infra mints a fresh one per launch
  instance_type    = "g4dn.xlarge"
  spot             = true
  gpu              = true
  user_data_base64 = base64encode("#!/bin/sh\necho 'runner started' >&2\n")
  created_at       = 1893369600 # 2029-12-31T00:00:00Z, when the launch began
  expires_at       = 1893456000 # 2030-01-01T00:00:00Z

  tags = {
    project = "example"
  }
}

output "id" {
  description = "Instance id."
  value       = module.runner.id
}

output "availability_zone" {
  description = "Where AWS placed it."
  value       = module.runner.availability_zone
}
