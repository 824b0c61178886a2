locals {
  # The module's tags come last so a caller's tags cannot hide a runner from cleanup.
  tags = merge(var.tags, {
    "cml-infra-managed" = "true"
    "cml-infra-name"    = var.name
    "cml-infra-expires" = tostring(var.expires_at)
    # The launch's identity: names collide, so teardown and cleanup match this, not the name.
    "cml-infra-id" = var.launch_id
    # A resource group does not say when it was made: cleanup judges its age by this.
    "cml-infra-created" = tostring(var.created_at)
  })

  # Resource group names are unique in the subscription: the launch id's hash keeps two
  # launches of one runner name from colliding (and a failed one from deleting the other's).
  resource_group_name = "cml-infra-${var.name}-${substr(sha1(var.launch_id), 0, 8)}"

  # What the VM's system-assigned identity may do, on its own resource group: delete the group,
  # which ARM allows only to a caller that may delete everything in it, so the delete action of
  # each type this module puts there (and of the role assignment, at the group's scope). No
  # write, no read: it cannot create anything, nor change a tag cleanup reads. The custom role
  # that holds these is made once per subscription (see README), and checked at plan.
  self_delete_actions = [
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

  # The runner's subnet: one given (an existing virtual network's), else the module's own.
  subnet_id = var.subnet_id != null ? var.subnet_id : azurerm_subnet.this[0].id

  # Marked here so a failed precondition on it never prints the script (see variables.tf).
  custom_data_base64 = sensitive(var.custom_data_base64)

  # Both are first-party images with no purchase plan, so no marketplace terms need accepting.
  # Azure's HPC image ships the NVIDIA driver and CUDA: no driver extension, no reboot at boot.
  marketplace_image = var.gpu ? {
    publisher = "microsoft-dsvm"
    offer     = "ubuntu-hpc"
    sku       = "2204"
    version   = "latest"
    } : {
    publisher = "Canonical"
    offer     = "ubuntu-24_04-lts"
    sku       = "server"
    version   = "latest"
  }
}

# Everything the runner owns lives in this group, so deleting the group (as the VM does to
# terminate itself, and as cleanup does for leftovers) removes all of it in one call.
resource "azurerm_resource_group" "this" {
  name     = local.resource_group_name
  location = var.location
  tags     = local.tags
}

# The module's own network, unless the runner joins an existing subnet (subnet_id): that
# network is someone else's, so the runner's group holds none of it and deleting the group
# leaves it alone.
resource "azurerm_virtual_network" "this" {
  count = var.subnet_id == null ? 1 : 0

  name                = "cml-infra-${var.name}"
  location            = azurerm_resource_group.this.location
  resource_group_name = azurerm_resource_group.this.name
  address_space       = [var.address_space]
  tags                = local.tags
}

resource "azurerm_subnet" "this" {
  count = var.subnet_id == null ? 1 : 0

  name                 = "runner"
  resource_group_name  = azurerm_resource_group.this.name
  virtual_network_name = azurerm_virtual_network.this[0].name
  address_prefixes     = [var.address_space]

  # Azure's implicit outbound access is retired for new networks; egress goes through the
  # NIC's own public IP instead, so nothing depends on the platform default.
  default_outbound_access_enabled = false
}

# The only rule denies all inbound traffic. It sits above Azure's built-in AllowVnetInBound and
# AllowAzureLoadBalancerInBound rules (priority 65000+), so not even the VNet or a load
# balancer probe reaches the VM. Security groups are stateful: replies to the VM's own outbound
# connections still come back. The rules are inline so Terraform owns the whole set and removes
# any rule added outside it on the next apply.
resource "azurerm_network_security_group" "this" {
  name                = "cml-infra-${var.name}"
  location            = azurerm_resource_group.this.location
  resource_group_name = azurerm_resource_group.this.name
  tags                = local.tags

  security_rule {
    name                       = "deny-all-inbound"
    description                = "cml-infra runners take no inbound connections."
    priority                   = 100
    direction                  = "Inbound"
    access                     = "Deny"
    protocol                   = "*"
    source_port_range          = "*"
    destination_port_range     = "*"
    source_address_prefix      = "*"
    destination_address_prefix = "*"
  }
}

# Associated with both the subnet and the NIC: the deny holds even if one association is
# removed by hand. A given subnet keeps its own security group (its owner's); the NIC's
# association alone denies all inbound traffic to the runner then.
resource "azurerm_subnet_network_security_group_association" "this" {
  count = var.subnet_id == null ? 1 : 0

  subnet_id                 = azurerm_subnet.this[0].id
  network_security_group_id = azurerm_network_security_group.this.id
}

# A Standard static public IP gives the VM outbound internet access (GitHub, package mirrors):
# new VNets no longer get Azure's default outbound access, and a NAT gateway would cost more
# and add resources for a single VM. Standard public IPs are closed to inbound traffic unless a
# security group allows it, and the group above denies everything.
resource "azurerm_public_ip" "this" {
  count = var.public_ip ? 1 : 0

  name                = "cml-infra-${var.name}"
  location            = azurerm_resource_group.this.location
  resource_group_name = azurerm_resource_group.this.name
  allocation_method   = "Static"
  sku                 = "Standard"
  tags                = local.tags
}

resource "azurerm_network_interface" "this" {
  #checkov:skip=CKV_AZURE_119:The public IP is for egress only (new VNets have no default outbound access); the security group on the NIC and the subnet denies all inbound traffic.
  name                = "cml-infra-${var.name}"
  location            = azurerm_resource_group.this.location
  resource_group_name = azurerm_resource_group.this.name
  tags                = local.tags

  ip_configuration {
    name                          = "primary"
    subnet_id                     = local.subnet_id
    private_ip_address_allocation = "Dynamic"
    # None: egress goes through the given subnet's NAT gateway.
    public_ip_address_id = var.public_ip ? azurerm_public_ip.this[0].id : null
  }
}

resource "azurerm_network_interface_security_group_association" "this" {
  network_interface_id      = azurerm_network_interface.this.id
  network_security_group_id = azurerm_network_security_group.this.id
}

# Azure requires a credential for the admin account and password login is disabled, so the VM
# gets a freshly generated key. It can never be used: no inbound port is open (see the security
# group above). The private key exists only in Terraform state and is not output.
resource "tls_private_key" "admin" {
  algorithm = "RSA"
  rsa_bits  = 4096
}

resource "azurerm_linux_virtual_machine" "this" {
  name                = var.name
  location            = azurerm_resource_group.this.location
  resource_group_name = azurerm_resource_group.this.name
  size                = var.vm_size
  tags                = local.tags

  # The NIC's security group must be in place before the VM boots and starts fetching work.
  network_interface_ids = [azurerm_network_interface.this.id]
  depends_on = [
    azurerm_network_interface_security_group_association.this,
    azurerm_subnet_network_security_group_association.this,
  ]

  priority = var.spot ? "Spot" : "Regular"
  # Delete, not Deallocate: a deallocated Spot VM keeps its disk and would bill for storage
  # while nothing runs. Azure takes max_bid_price only for Spot.
  eviction_policy = var.spot ? "Delete" : null
  max_bid_price   = var.spot ? var.max_bid_price : null

  admin_username                  = var.admin_username
  disable_password_authentication = true
  admin_ssh_key {
    username   = var.admin_username
    public_key = tls_private_key.admin.public_key_openssh
  }

  # cloud-init runs it on first boot; it may be gzip inside the base64.
  custom_data = local.custom_data_base64

  # The VM agent reports provisioning; extensions stay off because nothing needs one (the
  # GPU image already has its driver and the serial log is read through boot diagnostics), and
  # with them off the Run Command and extension paths cannot be used to run code on the runner.
  provision_vm_agent         = true
  allow_extension_operations = false

  # The agent deletes the runner's resource group with the system-assigned identity's token
  # from the instance metadata service (see azurerm_role_assignment.self_delete): no secret is
  # stored on the VM. A user-assigned identity given for the job's data sits beside it; IMDS
  # hands out the system-assigned one's token unless asked for another by its id.
  identity {
    type         = var.user_assigned_identity_id == null ? "SystemAssigned" : "SystemAssigned, UserAssigned"
    identity_ids = var.user_assigned_identity_id == null ? null : [var.user_assigned_identity_id]
  }

  # Managed disks are always encrypted at rest with platform-managed keys (Azure Storage
  # Service Encryption); that is the encryption available without extra subscription setup.
  # encryption_at_host_enabled would also encrypt the temp disk and caches, but it fails unless
  # the subscription has registered the Microsoft.Compute/EncryptionAtHost feature, and this
  # module must apply on a plain subscription. Trusted Launch (secure boot, vTPM) is left off
  # too: it needs a Gen2 image and a size that supports it, which an arbitrary vm_size or
  # source_image_id may not be, and secure boot refuses unsigned kernel modules such as a
  # DKMS-built NVIDIA driver in a custom image.
  os_disk {
    caching              = "ReadWrite"
    storage_account_type = "StandardSSD_LRS"
    disk_size_gb         = var.os_disk_size_gb
  }

  source_image_id = var.source_image_id
  dynamic "source_image_reference" {
    for_each = var.source_image_id == null ? [local.marketplace_image] : []
    content {
      publisher = source_image_reference.value.publisher
      offer     = source_image_reference.value.offer
      sku       = source_image_reference.value.sku
      version   = source_image_reference.value.version
    }
  }

  # No storage account: Azure keeps the serial log in managed storage, readable with
  # `az vm boot-diagnostics get-boot-log`.
  boot_diagnostics {}

  lifecycle {
    precondition {
      # The module's own subnet has no outbound access but the public IP.
      condition     = var.public_ip || var.subnet_id != null
      error_message = "Without a public IP (public_ip = false) the runner reaches GitHub only through a NAT: set subnet_id to a subnet with a NAT gateway."
    }

    precondition {
      # Azure caps custom data at 87380 base64 characters (64 KiB decoded). base64decode()
      # cannot check it because gzip content is not UTF-8, so the alphabet is checked instead.
      condition = (
        length(local.custom_data_base64) >= 4 &&
        length(local.custom_data_base64) <= 87380 &&
        length(local.custom_data_base64) % 4 == 0 &&
        can(regex("^[A-Za-z0-9+/]+={0,2}$", local.custom_data_base64))
      )
      error_message = "The custom_data_base64 must be standard base64 (A-Z, a-z, 0-9, '+', '/', '=' padding) of 4 to 87380 characters; gzip the script before encoding if it is larger."
    }
  }
}

# The subscription's custom role that may delete a runner's group and what it holds, and do
# nothing else (local.self_delete_actions), made once, not per runner: a role definition is
# subscription-wide, and one per launch would outlive its group. Read at plan, so a
# subscription without it, or with a broader one under its name, fails before anything is made.
data "azurerm_role_definition" "self_delete" {
  name  = var.self_delete_role_name
  scope = "/subscriptions/${data.azurerm_client_config.current.subscription_id}"

  lifecycle {
    postcondition {
      # ARM matches actions without regard to case.
      condition = (
        contains([for action in flatten(self.permissions[*].actions) : lower(action)], "microsoft.resources/subscriptions/resourcegroups/delete") &&
        alltrue([for action in flatten(self.permissions[*].actions) : contains([for allowed in local.self_delete_actions : lower(allowed)], lower(action))]) &&
        length(flatten(self.permissions[*].data_actions)) == 0
      )
      error_message = "The role \"${var.self_delete_role_name}\" may hold only these actions, resource group delete among them, and no data actions: ${join(", ", local.self_delete_actions)}. Anything more (a write) would let job code that is root on the VM change the runner's tags or create resources. See the module's README for the one-time az role definition create."
    }
  }
}

data "azurerm_client_config" "current" {}

# The self-delete role on the runner's own resource group and nothing else: enough to delete the
# group (and so the VM, its disk, NIC, IP and network), which is how the VM terminates itself;
# not enough to write a tag or create a resource. A plain OS shutdown would only stop the VM,
# and a stopped Azure VM keeps billing until deallocated.
resource "azurerm_role_assignment" "self_delete" {
  scope              = azurerm_resource_group.this.id
  role_definition_id = data.azurerm_role_definition.self_delete.role_definition_resource_id
  principal_id       = azurerm_linux_virtual_machine.this.identity[0].principal_id
  description        = "cml-infra runner ${var.name} (launch ${var.launch_id}): lets the VM delete its own resource group when idle or at its TTL."

  # The identity was created seconds ago; the principal type lets Azure assign the role
  # before the new service principal has replicated through Entra ID.
  principal_type                   = "ServicePrincipal"
  skip_service_principal_aad_check = true
}
