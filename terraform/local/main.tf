locals {
  sandbox = "${var.instances_root}/${var.name}"
  scripts = abspath("${path.module}/scripts")
}

# The instance: created by starting the startup script in a new session (its own process group)
# inside the sandbox; destroyed by stopping that whole group and removing the sandbox. Only the
# built-in terraform_data resource is used, so init downloads no provider.
resource "terraform_data" "instance" {
  # Destroy-time provisioners may only read `self` (and the module path), so everything else
  # destroy needs is kept here.
  input = {
    name               = var.name
    sandbox            = local.sandbox
    created_at         = var.created_at
    log_archive_dir    = var.log_archive_dir
    stop_grace_seconds = var.stop_grace_seconds
  }

  provisioner "local-exec" {
    # Run directly, with no shell in between: when Terraform is interrupted it kills the
    # process it started, and that must be the script itself.
    interpreter = ["/bin/sh"]
    command     = "${local.scripts}/create.sh"
    environment = {
      SANDBOX        = local.sandbox
      STARTUP_SCRIPT = var.startup_script
      INSTANCE_JSON = jsonencode({
        id         = var.name
        name       = var.name
        created_at = var.created_at
        tags       = var.tags
      })
      READY_TIMEOUT = var.ready_timeout_seconds
    }
  }

  provisioner "local-exec" {
    when        = destroy
    interpreter = ["/bin/sh"]
    # This copy of the module's script, not the one `up` ran from: another machine or state dir
    # destroys from its own copy of the workspace (a backend keeps the state for all of them).
    command = "${abspath(path.module)}/scripts/destroy.sh"
    environment = {
      SANDBOX         = self.output.sandbox
      LOG_ARCHIVE_DIR = self.output.log_archive_dir
      GRACE_SECONDS   = self.output.stop_grace_seconds
    }
  }
}
