terraform {
  # optional() attributes and validation messages need 1.5.
  required_version = ">= 1.5"

  required_providers {
    google = {
      source = "hashicorp/google"
      # The module is checked against the 8.x schema; a new major may rename or re-default
      # arguments (as 5.x did with labels), so it is not accepted blindly.
      version = ">= 8.0, < 9.0"
    }
  }
}
