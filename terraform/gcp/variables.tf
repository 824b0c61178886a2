variable "name" {
  description = "Runner name: the instance name, and the root of every other resource name, label and network tag of this module."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,37}[a-z0-9]$", var.name))
    error_message = "The name must be 2 to 39 lowercase letters, digits and '-', starting with a letter and not ending with '-'."
  }
}

variable "launch_id" {
  description = "This launch's unique id (cml-infra mints one per `up`): the cml-infra-id label on the instance and its boot disk, in the description of the service account and firewall rule (which take no labels), and hashed into their names so that two launches of one name never collide. Teardown and cleanup match it, never the name."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z0-9]{8,32}$", var.launch_id))
    error_message = "The launch_id must be 8 to 32 lowercase letters and digits (a valid GCP label value)."
  }
}

variable "project" {
  description = "Project to create the runner in. null: the google provider's project."
  type        = string
  default     = null

  validation {
    condition     = var.project == null || can(regex("^([a-z][a-z0-9.-]*:)?[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project))
    error_message = "The project must be null or a project ID: 6 to 30 lowercase letters, digits and '-', starting with a letter (optionally prefixed by 'domain:')."
  }
}

variable "zone" {
  description = "Zone of the instance, for example \"us-central1-a\"."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+-[a-z]$", var.zone))
    error_message = "The zone must look like \"us-central1-a\": region, '-', one lowercase letter."
  }
}

variable "machine_type" {
  description = "Machine type, for example \"n1-standard-8\" (attach GPUs with accelerator_type), or \"g2-standard-8\" / \"a2-highgpu-1g\" (GPUs built in)."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9]*-[a-z0-9-]*[a-z0-9]$", var.machine_type))
    error_message = "The machine_type must be a machine type name such as \"n1-standard-8\", \"g2-standard-8\" or \"a2-highgpu-1g\" (lowercase letters, digits and '-')."
  }
}

variable "gpu" {
  description = "The VM has GPUs, built into its machine type (a2, a3, g2, ...: cml-infra sets this from its catalog's list of GPU families) or attached with accelerator_type: boots the Deep Learning VM image, disables Secure Boot and sets on_host_maintenance = \"TERMINATE\". Machine types with built-in GPUs need it: they cannot live-migrate."
  type        = bool
  default     = false
  nullable    = false
}

variable "accelerator_type" {
  description = "GPU type to attach, for example \"nvidia-tesla-t4\" on n1 machine types. null: none attached (machine types with built-in GPUs need none)."
  type        = string
  default     = null

  validation {
    condition     = var.accelerator_type == null || can(regex("^nvidia-[a-z0-9-]*[a-z0-9]$", var.accelerator_type))
    error_message = "The accelerator_type must be null or an accelerator type name such as \"nvidia-tesla-t4\", \"nvidia-l4\" or \"nvidia-tesla-v100\"."
  }
}

variable "accelerator_count" {
  description = "Number of accelerator_type GPUs to attach; 0 when accelerator_type is null."
  type        = number
  default     = 0
  nullable    = false

  validation {
    condition     = contains([0, 1, 2, 4, 8, 16], var.accelerator_count)
    error_message = "The accelerator_count must be one of 0, 1, 2, 4, 8, 16."
  }
}

variable "spot" {
  description = "Run as a Spot VM (provisioning_model SPOT: cheaper, may be preempted, and is then deleted) instead of on-demand (STANDARD)."
  type        = bool
  default     = false
  nullable    = false
}

variable "image" {
  description = "Boot image override: anything boot_disk.initialize_params.image accepts (self link, \"projects/P/global/images/family/F\", \"P/F\"). null: the Deep Learning VM image (gpu) or Ubuntu 24.04 LTS."
  type        = string
  default     = null

  validation {
    condition     = var.image == null || try(length(trimspace(var.image)) > 0, false)
    error_message = "The image must be null (use the default image) or a non-empty image reference such as \"projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64\"."
  }
}

variable "gpu_image_family" {
  description = "Image family in project deeplearning-platform-release booted when gpu is true and image is null; its images carry CUDA and the NVIDIA driver, which installs at first boot without a reboot."
  type        = string
  default     = "common-cu124-ubuntu-2204-py310"
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,61}[a-z0-9]$", var.gpu_image_family))
    error_message = "The gpu_image_family must be an image family name (lowercase letters, digits and '-', up to 63), such as \"common-cu124-ubuntu-2204\"."
  }
}

variable "service_account_email" {
  description = "Service account (email) the VM runs as for the job's data (DVC pulls, artifact uploads); its token is open to job code through the metadata server. It is also granted the self-delete role on this instance (a VM has one service account). null: the VM runs as an account of its own that may only delete it."
  type        = string
  default     = null

  validation {
    condition     = var.service_account_email == null || can(regex("^[a-z0-9][a-z0-9-]{0,62}@[a-z0-9][a-z0-9.-]*\\.gserviceaccount\\.com$", var.service_account_email))
    error_message = "The service_account_email must be null or a service account's email, such as \"data-reader@my-project.iam.gserviceaccount.com\"."
  }
}

variable "self_delete_role_id" {
  description = "Id of the project's custom role that holds compute.instances.delete and nothing else, granted to the VM's service account on its own instance. It is made once per project (see README); the plan fails if it is missing or holds more."
  type        = string
  default     = "cmlInfraSelfDelete"
  nullable    = false

  validation {
    condition     = can(regex("^[a-zA-Z0-9_.]{3,64}$", var.self_delete_role_id))
    error_message = "The self_delete_role_id must be a custom role id: 3 to 64 letters, digits, '_' and '.'."
  }
}

variable "startup_script" {
  description = "Script the VM runs at boot (metadata \"startup-script\"); it starts the runner agent."
  type        = string
  sensitive   = true
  nullable    = false

  validation {
    condition     = length(var.startup_script) > 0 && length(var.startup_script) <= 262144
    error_message = "The startup_script must be non-empty and at most 262144 characters (the 256 KB limit of one metadata value)."
  }
}

variable "max_run_duration_seconds" {
  description = "Hard TTL: Compute Engine deletes the VM this many seconds after it starts running, whatever runs on it (scheduling.max_run_duration)."
  type        = number
  nullable    = false

  validation {
    condition     = floor(var.max_run_duration_seconds) == var.max_run_duration_seconds && var.max_run_duration_seconds >= 30 && var.max_run_duration_seconds <= 10368000
    error_message = "The max_run_duration_seconds must be a whole number from 30 to 10368000 (120 days), the range Compute Engine accepts."
  }
}

variable "expires_at" {
  description = "When the runner expires, in Unix seconds; recorded in the cml-infra-expires label so cleanup can find overdue runners."
  type        = number
  nullable    = false

  validation {
    condition     = floor(var.expires_at) == var.expires_at && var.expires_at > 0
    error_message = "The expires_at must be a positive whole number of Unix seconds."
  }
}

variable "created_at" {
  description = "When the launch started, in Unix seconds: the cml-infra-created label on the instance and its boot disk, and `created <secs>` in the description of the service account and firewall rule. GCP does not say when a service account was made, so cleanup reads their age from it."
  type        = number
  nullable    = false

  validation {
    condition     = floor(var.created_at) == var.created_at && var.created_at > 0
    error_message = "The created_at must be a positive whole number of Unix seconds."
  }
}

variable "labels" {
  description = "Extra labels (the user's tags) on the instance and its boot disk. Values are made label-safe (lowercased, other characters than a-z 0-9 _ - become _, cut to 63). The cml-infra-managed, cml-infra-name, cml-infra-expires, cml-infra-created and cml-infra-id labels are always set and win over keys of the same name."
  type        = map(string)
  default     = {}
  nullable    = false

  validation {
    condition     = alltrue([for k in keys(var.labels) : can(regex("^[a-z][a-z0-9_-]{0,62}$", k))])
    error_message = "Each label key must be 1 to 63 of lowercase letters, digits, '_' and '-', starting with a lowercase letter (GCP label keys allow nothing else)."
  }

  validation {
    condition     = length(var.labels) <= 59
    error_message = "At most 59 labels: Compute Engine allows 64 and this module sets 5."
  }
}

variable "network" {
  description = "VPC network (name or self link) of the instance. The deny-ingress firewall rule is created in it, in project, so it must belong to project."
  type        = string
  default     = "default"
  nullable    = false

  validation {
    condition     = length(trimspace(var.network)) > 0
    error_message = "The network must be a network name such as \"default\" or a network self link."
  }
}

variable "subnetwork" {
  description = "Subnetwork (name or self link) of the instance, in network. null: the network's subnetwork in the zone's region (auto-mode networks such as \"default\")."
  type        = string
  default     = null

  validation {
    condition     = var.subnetwork == null || try(length(trimspace(var.subnetwork)) > 0, false)
    error_message = "The subnetwork must be null or a subnetwork name or self link."
  }
}

variable "assign_external_ip" {
  description = "Give the VM an ephemeral external IP for egress (GitHub, package mirrors); ingress stays denied. false: only for a subnetwork with Cloud NAT, or the VM cannot reach GitHub."
  type        = bool
  default     = true
  nullable    = false
}

variable "boot_disk_size_gb" {
  description = "Boot disk size in GB; at least the image's own size (about 50 GB for Deep Learning VM images)."
  type        = number
  default     = 100
  nullable    = false

  validation {
    condition     = floor(var.boot_disk_size_gb) == var.boot_disk_size_gb && var.boot_disk_size_gb >= 10 && var.boot_disk_size_gb <= 65536
    error_message = "The boot_disk_size_gb must be a whole number from 10 to 65536."
  }
}

variable "boot_disk_type" {
  description = "Boot disk type. pd-balanced suits n1, g2, a2 and a3-highgpu; some newer series (for example a3-ultra, a4) accept only hyperdisk-balanced."
  type        = string
  default     = "pd-balanced"
  nullable    = false

  validation {
    condition     = contains(["pd-standard", "pd-balanced", "pd-ssd", "hyperdisk-balanced"], var.boot_disk_type)
    error_message = "The boot_disk_type must be one of \"pd-standard\", \"pd-balanced\", \"pd-ssd\", \"hyperdisk-balanced\"."
  }
}

variable "boot_disk_kms_key_self_link" {
  description = "Cloud KMS key (self link) to encrypt the boot disk with (CMEK). null: Google-managed encryption, which Compute Engine always applies."
  type        = string
  default     = null

  validation {
    condition     = var.boot_disk_kms_key_self_link == null || can(regex("^projects/[^/]+/locations/[^/]+/keyRings/[^/]+/cryptoKeys/[^/]+(/cryptoKeyVersions/[0-9]+)?$", var.boot_disk_kms_key_self_link))
    error_message = "The boot_disk_kms_key_self_link must be null or \"projects/P/locations/L/keyRings/R/cryptoKeys/K\"."
  }
}
