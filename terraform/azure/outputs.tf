output "id" {
  description = "Resource id of the VM."
  value       = azurerm_linux_virtual_machine.this.id
}

output "name" {
  description = "Name of the VM (the runner name)."
  value       = azurerm_linux_virtual_machine.this.name
}

output "resource_group_name" {
  description = "Name of the resource group that holds every resource of the runner (cml-infra-<name>-<launch hash>); deleting it removes the runner."
  value       = azurerm_resource_group.this.name
}

output "resource_group_id" {
  description = "Resource id of the runner's resource group (the scope of the VM's role assignment)."
  value       = azurerm_resource_group.this.id
}

output "location" {
  description = "Azure region of the runner."
  value       = azurerm_linux_virtual_machine.this.location
}

output "vm_size" {
  description = "Azure VM size of the runner."
  value       = azurerm_linux_virtual_machine.this.size
}

output "priority" {
  description = "\"Spot\" or \"Regular\"."
  value       = azurerm_linux_virtual_machine.this.priority
}

output "principal_id" {
  description = "Object id of the VM's system-assigned managed identity (holds the self-delete role on the runner's resource group only)."
  value       = azurerm_linux_virtual_machine.this.identity[0].principal_id
}

output "public_ip" {
  description = "The VM's static public IPv4 address; used for egress only, all inbound traffic to it is denied. null with public_ip = false."
  value       = var.public_ip ? azurerm_public_ip.this[0].ip_address : null
}

output "private_ip" {
  description = "The VM's private IPv4 address in the runner's virtual network."
  value       = azurerm_linux_virtual_machine.this.private_ip_address
}

output "image" {
  description = "What the VM boots: the source_image_id, or publisher:offer:sku:version of the marketplace image."
  value       = var.source_image_id != null ? var.source_image_id : join(":", [local.marketplace_image.publisher, local.marketplace_image.offer, local.marketplace_image.sku, local.marketplace_image.version])
}

output "self_delete_role_id" {
  description = "Resource id of the custom role assigned to the VM's system-assigned identity on its resource group: delete the group and what it holds, nothing else."
  value       = data.azurerm_role_definition.self_delete.role_definition_resource_id
}
