variable "name" {
  description = "Runner name. Names the VM and its NIC, IP, network and security group; the resource group is cml-infra-<name>-<first 8 hex digits of sha1(launch_id)>."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,37}[a-z0-9]$", var.name))
    error_message = "The name must be 2 to 39 lowercase letters, digits and '-', starting with a letter and not ending with '-'."
  }
}

variable "launch_id" {
  description = "This launch's unique id (cml-infra mints one per `up`): the cml-infra-id tag on every taggable resource, the resource group included, and hashed into the resource group's name so that two launches of one name never collide. Teardown and cleanup match it, never the name."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z0-9]{8,32}$", var.launch_id))
    error_message = "The launch_id must be 8 to 32 lowercase letters and digits."
  }
}

variable "location" {
  description = "Azure region short name, as `az account list-locations` prints it (for example \"eastus\")."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,39}$", var.location))
    error_message = "The location must be an Azure region short name: lowercase letters and digits, no spaces (for example \"eastus\", \"westeurope\")."
  }
}

variable "vm_size" {
  description = "Azure VM size (for example \"Standard_NC4as_T4_v3\")."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^(Standard|Basic)_[A-Za-z0-9_-]+$", var.vm_size))
    error_message = "The vm_size must be an Azure VM size name such as \"Standard_NC4as_T4_v3\" or \"Standard_D4s_v5\" (Standard_ or Basic_ followed by letters, digits, '_' and '-')."
  }
}

variable "spot" {
  description = "true: a Spot VM (priority Spot, deleted with its disk on eviction). false: a Regular (on-demand) VM."
  type        = bool
  default     = false
  nullable    = false
}

variable "max_bid_price" {
  description = "Spot only: the most to pay, in USD per hour. -1 pays up to the on-demand price and never evicts for price. Ignored when spot is false."
  type        = number
  default     = -1
  nullable    = false

  validation {
    condition     = var.max_bid_price == -1 || var.max_bid_price > 0
    error_message = "The max_bid_price must be -1 (up to the on-demand price) or a price in USD per hour greater than 0."
  }
}

variable "gpu" {
  description = "true: boot Azure's Ubuntu HPC image (microsoft-dsvm/ubuntu-hpc/2204), which ships NVIDIA drivers and CUDA. false: boot Canonical Ubuntu 24.04 LTS. Ignored when source_image_id is set."
  type        = bool
  default     = false
  nullable    = false
}

variable "source_image_id" {
  description = "Resource id of an image (managed image, or a Compute Gallery image or image version) to boot instead of the marketplace image. null: use the marketplace image chosen by gpu."
  type        = string
  default     = null

  validation {
    condition     = var.source_image_id == null || can(regex("(?i)^/(subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\\.Compute/(images|galleries)/|communityGalleries/|sharedGalleries/)[^/]", var.source_image_id))
    error_message = "The source_image_id must be null or an image resource id: /subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.Compute/images/<name>, .../Microsoft.Compute/galleries/<gallery>/images/<image>[/versions/<version>], /communityGalleries/... or /sharedGalleries/...."
  }
}

variable "user_assigned_identity_id" {
  description = "Resource id of a user-assigned managed identity for the job's data (DVC pulls, artifact uploads), added beside the system-assigned identity, which alone holds the self-delete role. Its tokens are open to job code through the instance metadata service. null: none."
  type        = string
  default     = null

  validation {
    condition     = var.user_assigned_identity_id == null || can(regex("(?i)^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\\.ManagedIdentity/userAssignedIdentities/[^/]+$", var.user_assigned_identity_id))
    error_message = "The user_assigned_identity_id must be null or /subscriptions/<id>/resourceGroups/<rg>/providers/Microsoft.ManagedIdentity/userAssignedIdentities/<name>."
  }
}

variable "self_delete_role_name" {
  description = "Name of the subscription's custom role that may delete a runner's resource group and what it holds, and nothing else, assigned to the VM's system-assigned identity on its own group. It is made once per subscription (see README); the plan fails if it is missing or holds more."
  type        = string
  default     = "cml-infra runner self-delete"
  nullable    = false

  validation {
    condition     = length(trimspace(var.self_delete_role_name)) > 0
    error_message = "The self_delete_role_name must name a role definition."
  }
}

variable "custom_data_base64" {
  description = "The startup script, base64-encoded (it may be gzip-compressed before encoding); cloud-init runs it on first boot."
  type        = string
  sensitive   = true
  nullable    = false

  # Checked by a precondition on the VM, not a validation block: Terraform prints the value of
  # a variable that fails validation, even a sensitive one, unless the caller's value is
  # already marked sensitive, and the script may carry a runner registration token.
}

variable "expires_at" {
  description = "Hard time-to-live as unix seconds; recorded in the cml-infra-expires tag for cleanup. The VM arms its own timer from the startup script."
  type        = number
  nullable    = false

  validation {
    condition     = var.expires_at > 0 && floor(var.expires_at) == var.expires_at
    error_message = "The expires_at must be a whole number of unix seconds greater than 0."
  }
}

variable "created_at" {
  description = "When the launch began, in unix seconds: the cml-infra-created tag on every taggable resource, the age cleanup judges a runner and its leftovers by (a resource group does not say when it was made)."
  type        = number
  nullable    = false

  validation {
    condition     = var.created_at > 0 && floor(var.created_at) == var.created_at
    error_message = "The created_at must be a whole number of unix seconds greater than 0."
  }
}

variable "tags" {
  description = "Extra tags for every taggable resource. The cml-infra-managed, cml-infra-name, cml-infra-expires, cml-infra-id and cml-infra-created tags are always added and win over keys given here."
  type        = map(string)
  default     = {}
  nullable    = false

  validation {
    # Azure allows 50 tags per resource; the module adds 5.
    condition     = length(var.tags) <= 45
    error_message = "The tags map may hold at most 45 entries (Azure allows 50 per resource and the module adds 5)."
  }

  validation {
    condition = alltrue([
      for k, v in var.tags : length(k) >= 1 && length(k) <= 512 && length(v) <= 256 && !can(regex("[<>%&\\\\?/]", k))
    ])
    error_message = "Each tag key must be 1 to 512 characters without any of < > % & \\ ? /, and each value at most 256 characters."
  }
}

variable "os_disk_size_gb" {
  description = "OS disk size in GiB. It cannot be smaller than the image's disk (30 GiB for Ubuntu 24.04; the HPC image is larger)."
  type        = number
  default     = 128
  nullable    = false

  validation {
    condition     = var.os_disk_size_gb >= 30 && var.os_disk_size_gb <= 4095 && floor(var.os_disk_size_gb) == var.os_disk_size_gb
    error_message = "The os_disk_size_gb must be a whole number from 30 to 4095."
  }
}

variable "admin_username" {
  description = "Name of the admin account Azure creates (key-only, see README: no inbound port exists, so nobody can log in with it)."
  type        = string
  default     = "cmlinfra"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z_][a-z0-9_-]{0,31}$", var.admin_username))
    error_message = "The admin_username must be 1 to 32 characters: lowercase letters, digits, '_' and '-', starting with a letter or '_'."
  }

  validation {
    # Names Azure refuses for the admin account of a Linux VM.
    condition = !contains([
      "1", "123", "a", "actuser", "adm", "admin", "admin1", "admin2", "administrator", "aspnet",
      "backup", "console", "david", "guest", "john", "owner", "root", "server", "sql", "support",
      "support_388945a0", "sys", "test", "test1", "test2", "test3", "user", "user1", "user2",
      "user3", "user4", "user5",
    ], var.admin_username)
    error_message = "The admin_username must not be one Azure reserves: 1, 123, a, actuser, adm, admin, admin1, admin2, administrator, aspnet, backup, console, david, guest, john, owner, root, server, sql, support, support_388945a0, sys, test, test1-3, user, user1-5."
  }
}

variable "address_space" {
  description = "IPv4 CIDR of the runner's private virtual network; the one subnet uses all of it. Nothing peers with it, so overlaps with other networks do not matter. Unused with subnet_id."
  type        = string
  default     = "10.42.0.0/24"
  nullable    = false

  validation {
    # Terraform does not short-circuit &&, so the prefix length is read inside try().
    condition = (
      can(regex("^\\d{1,3}(\\.\\d{1,3}){3}/\\d{1,2}$", var.address_space)) &&
      try(cidrsubnet(var.address_space, 0, 0) == var.address_space, false) &&
      try(tonumber(split("/", var.address_space)[1]) >= 8 && tonumber(split("/", var.address_space)[1]) <= 29, false)
    )
    error_message = "The address_space must be an IPv4 network CIDR (no host bits set) with a prefix length from /8 to /29 (Azure's smallest subnet is /29), for example \"10.42.0.0/24\"."
  }
}

variable "subnet_id" {
  description = "Resource id of an existing subnet to put the runner's NIC in (\"/subscriptions/.../resourceGroups/.../providers/Microsoft.Network/virtualNetworks/.../subnets/...\"), in a virtual network of location; the module then makes no network of its own. null: a private virtual network of the runner's own (address_space)."
  type        = string
  default     = null

  validation {
    condition     = var.subnet_id == null || can(regex("(?i)^/subscriptions/[^/]+/resourceGroups/[^/]+/providers/Microsoft\\.Network/virtualNetworks/[^/]+/subnets/[^/]+$", var.subnet_id))
    error_message = "The subnet_id must be null or a subnet's resource id: /subscriptions/SUB/resourceGroups/RG/providers/Microsoft.Network/virtualNetworks/VNET/subnets/SUBNET."
  }
}

variable "public_ip" {
  description = "Give the NIC a Standard static public IP for egress (GitHub, package mirrors); nothing comes in through it. false: egress goes through subnet_id's NAT gateway (required then: the module's own network has no other way out)."
  type        = bool
  default     = true
  nullable    = false
}
