variable "name" {
  description = "Instance name; also the sandbox folder name under instances_root."
  type        = string
  nullable    = false

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{0,37}[a-z0-9]$", var.name))
    error_message = "The name must be 2 to 39 lowercase letters, digits and '-', starting with a letter and not ending with '-'."
  }
}

variable "instances_root" {
  description = "Absolute path of the folder that holds every local instance's sandbox."
  type        = string
  nullable    = false

  validation {
    condition     = startswith(var.instances_root, "/")
    error_message = "The instances_root must be an absolute path."
  }
}

variable "startup_script" {
  description = "The script the instance boots, run with bash inside the sandbox (like user-data on a VM)."
  type        = string
  sensitive   = true
  nullable    = false
}

variable "created_at" {
  description = "Creation time (RFC 3339) recorded on the instance; passed in so re-applies stay stable."
  type        = string
  nullable    = false
}

variable "tags" {
  description = "Tags recorded on the instance, as a cloud would carry them; cleanup finds instances by them."
  type        = map(string)
  default     = {}
  nullable    = false
}

variable "log_archive_dir" {
  description = "Folder the instance log is copied to on destroy, so it can be read after the instance is gone. Empty: not kept."
  type        = string
  default     = ""
  nullable    = false
}

variable "ready_timeout_seconds" {
  description = "How long create waits for the agent to report before it calls the boot failed and cleans up."
  type        = number
  default     = 60
  nullable    = false

  validation {
    condition     = var.ready_timeout_seconds >= 1 && var.ready_timeout_seconds <= 3600
    error_message = "The ready_timeout_seconds must be between 1 and 3600."
  }
}

variable "stop_grace_seconds" {
  description = "On destroy, how long the instance's processes get after SIGTERM before SIGKILL."
  type        = number
  default     = 10
  nullable    = false

  validation {
    condition     = var.stop_grace_seconds >= 0 && var.stop_grace_seconds <= 600
    error_message = "The stop_grace_seconds must be between 0 and 600."
  }
}
