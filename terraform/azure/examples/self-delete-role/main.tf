# Once per subscription, before the first runner: the custom role that every runner VM's
# system-assigned identity gets on its own resource group (the module's self_delete_role_name).
# It may delete the group and what the module puts in it, and nothing else: a job that is root
# on the VM can end the VM, but not write the tags cleanup reads, nor create resources. Kept in a
# state of its own, not a runner's: every runner of the subscription uses it, and no runner's
# destroy may delete it. Its actions are the module's local.self_delete_actions; a fork that puts
# another resource type in the group adds that type's delete action to both.
terraform {
  required_version = ">= 1.5"

  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = ">= 5.0, < 6.0"
    }
  }
}

variable "subscription_id" {
  description = "Subscription the runners are launched in."
  type        = string
}

provider "azurerm" {
  features {}
  subscription_id = var.subscription_id
}

data "azurerm_subscription" "current" {}

resource "azurerm_role_definition" "self_delete" {
  name        = "cml-infra runner self-delete"
  scope       = data.azurerm_subscription.current.id
  description = "Assigned by cml-infra to a runner VM's identity on that runner's resource group only: the VM may delete the group (itself included), and nothing else."

  permissions {
    actions = [
      "Microsoft.Resources/subscriptions/resourceGroups/delete",
      "Microsoft.Compute/virtualMachines/delete",
      "Microsoft.Compute/disks/delete",
      "Microsoft.Network/networkInterfaces/delete",
      "Microsoft.Network/publicIPAddresses/delete",
      "Microsoft.Network/networkSecurityGroups/delete",
      "Microsoft.Network/networkSecurityGroups/securityRules/delete",
      "Microsoft.Network/virtualNetworks/delete",
      "Microsoft.Network/virtualNetworks/subnets/delete",
      "Microsoft.Authorization/roleAssignments/delete",
    ]
  }

  assignable_scopes = [data.azurerm_subscription.current.id]
}

output "role_definition_id" {
  description = "Resource id of the role."
  value       = azurerm_role_definition.self_delete.role_definition_resource_id
}
