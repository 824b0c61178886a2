variable "name" {
  description = "Runner name: the Name tag, the cml-infra-name tag and the security group name prefix."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,37}[a-z0-9]$", var.name))
    error_message = "The name must be 2 to 39 lowercase letters, digits and '-', starting with a letter and not ending with '-'."
  }
}

variable "launch_id" {
  description = "This launch's unique id (cml-infra mints one per `up`): the cml-infra-id tag on every resource. Teardown and cleanup match it, never the name, which another launch may share."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z0-9]{8,32}$", var.launch_id))
    error_message = "The launch_id must be 8 to 32 lowercase letters and digits."
  }
}

variable "instance_type" {
  description = "EC2 instance type, e.g. \"g4dn.xlarge\". x86_64 only when the image is looked up (image_id = null)."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]*\\.[a-z0-9-]+$", var.instance_type))
    error_message = "The instance_type must look like FAMILY.SIZE in lowercase, e.g. \"g4dn.xlarge\" or \"m7i.large\"."
  }
}

variable "spot" {
  description = "true: a one-time spot instance that terminates on interruption; false: on-demand."
  type        = bool
  default     = false
  nullable    = false
}

variable "max_price" {
  description = "Spot only: the highest price in USD per hour. null: up to the on-demand price. Ignored when spot = false."
  type        = number
  default     = null

  validation {
    condition     = var.max_price == null ? true : var.max_price > 0
    error_message = "The max_price must be null (up to the on-demand price) or a number of USD per hour greater than 0."
  }
}

variable "gpu" {
  description = "true: boot the AWS Deep Learning Base AMI with the NVIDIA driver installed; false: Canonical's Ubuntu 24.04. Unused when image_id is set."
  type        = bool
  default     = false
  nullable    = false
}

variable "image_id" {
  description = "An AMI id (\"ami-...\") that overrides the lookup chosen by gpu. null: look it up."
  type        = string
  default     = null

  validation {
    condition     = var.image_id == null ? true : can(regex("^ami-([0-9a-f]{8}|[0-9a-f]{17})$", var.image_id))
    error_message = "The image_id must be null or an AMI id: \"ami-\" followed by 8 or 17 lowercase hex digits."
  }
}

variable "iam_instance_profile" {
  description = "Name of an IAM instance profile for the job's data (DVC pulls, artifact uploads); its role's credentials are open to job code through IMDS. null: the VM holds no AWS credentials at all (it ends itself by shutting down)."
  type        = string
  default     = null

  validation {
    condition     = var.iam_instance_profile == null ? true : can(regex("^[\\w+=,.@-]{1,128}$", var.iam_instance_profile))
    error_message = "The iam_instance_profile must be null or an instance profile name: 1 to 128 letters, digits and +=,.@_- (the name, not the ARN)."
  }
}

variable "user_data_base64" {
  description = "The startup script as base64 (optionally gzip inside; cloud-init unpacks it). At most 16 KiB before encoding, the EC2 limit."
  type        = string
  sensitive   = true
  nullable    = false

  # base64decode() is not used to check it: it rejects gzip (non-UTF-8) content.
  validation {
    condition = (
      length(var.user_data_base64) > 0 &&
      length(var.user_data_base64) <= 21848 &&
      length(var.user_data_base64) % 4 == 0 &&
      can(regex("^[A-Za-z0-9+/]+={0,2}$", var.user_data_base64))
    )
    error_message = "The user_data_base64 must be non-empty padded standard base64 (A-Z, a-z, 0-9, '+', '/', '=') of at most 21848 characters (16 KiB decoded)."
  }
}

variable "expires_at" {
  description = "Hard TTL deadline in unix seconds. Only recorded in the cml-infra-expires tag (for cleanup); the VM arms its own shutdown timer."
  type        = number
  nullable    = false

  validation {
    condition     = var.expires_at == floor(var.expires_at) && var.expires_at >= 1000000000 && var.expires_at < 100000000000
    error_message = "The expires_at must be a whole number of unix seconds between 1000000000 and 99999999999 (not milliseconds)."
  }
}

variable "created_at" {
  description = "When the launch began, in unix seconds: the cml-infra-created tag on every resource, the age cleanup judges a resource by once its instance is gone (a security group does not say when it was made)."
  type        = number
  nullable    = false

  validation {
    condition     = var.created_at == floor(var.created_at) && var.created_at >= 1000000000 && var.created_at < 100000000000
    error_message = "The created_at must be a whole number of unix seconds between 1000000000 and 99999999999 (not milliseconds)."
  }
}

variable "tags" {
  description = "Extra tags for every resource. The keys Name, cml-infra-managed, cml-infra-name, cml-infra-expires, cml-infra-id and cml-infra-created are set by the module."
  type        = map(string)
  default     = {}
  nullable    = false

  validation {
    # EC2 allows 50 tags per resource; the module adds 6.
    condition     = length(var.tags) <= 44
    error_message = "At most 44 tags are allowed (EC2's limit is 50 and the module adds 6)."
  }

  validation {
    condition = alltrue([
      for k, v in var.tags :
      length(k) >= 1 && length(k) <= 128 && length(v) <= 256 && !startswith(lower(k), "aws:")
    ])
    error_message = "Each tag key must be 1 to 128 characters and not start with \"aws:\"; each value at most 256 characters."
  }
}

variable "root_volume_size_gb" {
  description = "Root disk size in GiB (encrypted gp3). The GPU image needs at least the size of its snapshot (about 75 GiB)."
  type        = number
  default     = 100
  nullable    = false

  validation {
    condition     = var.root_volume_size_gb == floor(var.root_volume_size_gb) && var.root_volume_size_gb >= 8 && var.root_volume_size_gb <= 16384
    error_message = "The root_volume_size_gb must be a whole number from 8 to 16384."
  }
}

variable "availability_zone" {
  description = "Availability zone to launch in (\"us-east-1b\"), in the region's default VPC. null: AWS picks one. Ignored when subnet_id is set, since a subnet has its own zone."
  type        = string
  default     = null

  validation {
    condition     = var.availability_zone == null ? true : can(regex("^[a-z]{2}(-[a-z]+)+-[0-9][a-z]$", var.availability_zone))
    error_message = "The availability_zone must be null (AWS picks) or a zone name such as \"us-east-1b\"."
  }
}

variable "subnet_id" {
  description = "Subnet to launch in (\"subnet-...\"). null: the region's default VPC, where AWS picks the subnet and availability zone."
  type        = string
  default     = null

  validation {
    condition     = var.subnet_id == null ? true : can(regex("^subnet-([0-9a-f]{8}|[0-9a-f]{17})$", var.subnet_id))
    error_message = "The subnet_id must be null (default VPC) or a subnet id: \"subnet-\" followed by 8 or 17 lowercase hex digits."
  }
}

variable "security_group_ids" {
  description = "Existing security groups (\"sg-...\") the instance joins besides its own, which allows no inbound traffic; in the VPC of subnet_id (or the default VPC). At most 15, and 4 under the default quota of 5 groups per network interface."
  type        = list(string)
  default     = []
  nullable    = false

  validation {
    condition     = alltrue([for id in var.security_group_ids : can(regex("^sg-([0-9a-f]{8}|[0-9a-f]{17})$", id))])
    error_message = "Each of security_group_ids must be a security group id: \"sg-\" followed by 8 or 17 lowercase hex digits."
  }

  validation {
    condition     = length(var.security_group_ids) <= 15 && length(distinct(var.security_group_ids)) == length(var.security_group_ids)
    error_message = "The security_group_ids must be at most 15 distinct ids: an instance has at most 16 groups, one of them the module's own."
  }
}

variable "associate_public_ip_address" {
  description = "Whether the instance gets a public IPv4 address, used only for egress (nothing comes in). null: as the subnet maps one on launch (default subnets do). false: egress must go through a NAT gateway on subnet_id's route (required then: default subnets have none)."
  type        = bool
  default     = null
}
