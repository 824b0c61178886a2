terraform {
  # validation blocks with error messages and nullable = false as used here need 1.5.
  required_version = ">= 1.5"

  required_providers {
    aws = {
      source = "hashicorp/aws"
      # 6.x: aws_region exposes `region` (5.x had `name`) and every resource takes `region`.
      version = ">= 6.0, < 7.0"
    }
  }
}
