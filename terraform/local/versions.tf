terraform {
  # terraform_data needs 1.4; optional() attributes and validation messages need 1.5.
  required_version = ">= 1.5"
}
