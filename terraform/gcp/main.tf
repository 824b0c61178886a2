locals {
  # Label values may hold only lowercase letters, digits, '_' and '-' (63 at most); tag values
  # from the command line are free text, so they are mapped rather than refused.
  user_labels = { for k, v in var.labels : k => substr(replace(lower(v), "/[^a-z0-9_-]/", "_"), 0, 63) }

  labels = merge(local.user_labels, {
    "cml-infra-managed" = "true"
    "cml-infra-name"    = var.name
    "cml-infra-expires" = tostring(var.expires_at)
    "cml-infra-created" = tostring(var.created_at)
    # The launch's identity: names collide, so teardown and cleanup match this, not the name.
    "cml-infra-id" = var.launch_id
  })

  # Service accounts and firewall rules take no labels: their descriptions end in this mark
  # instead, in a fixed form that cleanup parses (cml_infra/clouds/gcp.py, `_MARK`) to find
  # what an instance that deleted itself left behind, and how old it is. The longest
  # description (a 39-character name, a 32-character launch id, 10-digit times) is the service
  # account's: 207 of the 256 characters GCP allows it.
  mark = "(managed by cml-infra, launch ${var.launch_id}, created ${var.created_at}, expires ${var.expires_at})."

  # Service accounts and firewall rules take no labels and their names are project-wide, so
  # the names this module chooses carry a hash of the launch id: two launches of the same
  # runner name (in two zones, or one after the other) never collide, nor delete each other's.
  launch_hash = substr(sha1(var.launch_id), 0, 8)

  # The deny-ingress rule selects the instance by this network tag, so the rule can exist
  # before the instance does. 10 + 39 + 1 + 8 = 58 of the 63 characters a tag may have.
  network_tag = "cml-infra-${var.name}-${local.launch_hash}"

  # Service account IDs are 6-30 characters: a name prefix keeps them readable in IAM
  # listings, the launch hash keeps two launches apart. 4 + 19 + 1 + 6 = 30 at most; trailing
  # dashes of the cut are dropped so the separator stays readable.
  service_account_id = "cml-${replace(substr(var.name, 0, 19), "/-+$/", "")}-${substr(local.launch_hash, 0, 6)}"

  # The VM runs as one service account: its own, which may do nothing but delete it, or the
  # one given for the job's data, which is then granted that too (a VM has one account).
  service_account_email = var.service_account_email != null ? var.service_account_email : google_service_account.runner[0].email

  image = coalesce(
    var.image,
    try(data.google_compute_image.gpu[0].self_link, null),
    try(data.google_compute_image.cpu[0].self_link, null),
  )
  image_disk_size_gb = try(data.google_compute_image.gpu[0].disk_size_gb, data.google_compute_image.cpu[0].disk_size_gb, 0)
}

# Public images are looked up by family inside the publisher's own project: the project is the
# owner filter, so a look-alike image in another project can never be picked.
data "google_compute_image" "gpu" {
  count = var.image == null && var.gpu ? 1 : 0

  project = "deeplearning-platform-release"
  family  = var.gpu_image_family
}

data "google_compute_image" "cpu" {
  count = var.image == null && !var.gpu ? 1 : 0

  project = "ubuntu-os-cloud"
  family  = "ubuntu-2404-lts-amd64"
}

# The VM's own identity, one per runner, so that what it may do can be granted on its own
# instance only (see google_compute_instance_iam_member.self_delete). None is made when the VM
# runs as a service account given for the job's data.
resource "google_service_account" "runner" {
  count = var.service_account_email == null ? 1 : 0

  project      = var.project
  account_id   = local.service_account_id
  display_name = "cml-infra runner ${var.name}"
  description  = "Identity of cml-infra runner VM ${var.name}; may delete only that instance ${local.mark}"
}

# GCP firewalls have an implied deny-ingress, but the default network adds default-allow-ssh,
# -rdp and -icmp from 0.0.0.0/0 at priority 65534. This rule, at the highest priority (0) and
# with deny winning ties, makes them never apply to the runner, nor any allow rule someone adds
# later. Firewalls are stateful, so replies to the VM's own outbound connections still come in.
resource "google_compute_firewall" "deny_ingress" {
  project     = var.project
  name        = "${local.network_tag}-deny" # 58 + 5 = 63 characters at most, GCP's limit
  network     = var.network
  description = "cml-infra runner ${var.name}: no inbound traffic at all ${local.mark}"
  direction   = "INGRESS"
  priority    = 0

  source_ranges = ["0.0.0.0/0"]
  target_tags   = [local.network_tag]

  deny {
    protocol = "all"
  }
}

resource "google_compute_instance" "runner" {
  #checkov:skip=CKV_GCP_40:The ephemeral external IP is for egress only (GitHub, package mirrors) where the subnetwork has no Cloud NAT; all ingress to it is denied by google_compute_firewall.deny_ingress, and assign_external_ip = false turns it off.
  project      = var.project
  zone         = var.zone
  name         = var.name
  machine_type = var.machine_type
  description  = "cml-infra runner ${var.name} (launch ${var.launch_id})"
  labels       = local.labels
  tags         = [local.network_tag]

  boot_disk {
    auto_delete       = true
    kms_key_self_link = var.boot_disk_kms_key_self_link

    initialize_params {
      image  = local.image
      size   = var.boot_disk_size_gb
      type   = var.boot_disk_type
      labels = local.labels
    }
  }

  network_interface {
    network    = var.network
    subnetwork = var.subnetwork
    # IPv4 only: with no IPv6 address there is no way in that the IPv4 deny rule misses.
    stack_type = "IPV4_ONLY"

    # An ephemeral external IP gives the VM outbound internet (GitHub, package mirrors) without
    # a Cloud NAT the project may not have. It opens nothing inbound: deny_ingress drops every
    # connection to it, and the address is released with the VM. Off only for subnetworks that
    # reach the internet through Cloud NAT (or where an org policy forbids external IPs).
    dynamic "access_config" {
      for_each = var.assign_external_ip ? [true] : []
      content {}
    }
  }

  dynamic "guest_accelerator" {
    for_each = var.accelerator_type == null ? [] : [var.accelerator_type]
    content {
      type  = guest_accelerator.value
      count = var.accelerator_count
    }
  }

  scheduling {
    provisioning_model = var.spot ? "SPOT" : "STANDARD"
    preemptible        = var.spot
    # Not even on-demand VMs restart after a host error or GPU host maintenance: a restart
    # runs the startup script again (re-registering a runner whose job is already lost) and
    # starts the max_run_duration clock over. A VM that stays stopped costs only its disk
    # until cleanup deletes it.
    automatic_restart = false
    # VMs with GPUs cannot live-migrate, and Spot VMs must be set to terminate.
    on_host_maintenance = var.gpu || var.spot ? "TERMINATE" : "MIGRATE"
    # The hard TTL: Compute Engine itself deletes the VM at the deadline (and on preemption),
    # whether or not the agent or the launcher is still alive.
    instance_termination_action = "DELETE"

    max_run_duration {
      seconds = var.max_run_duration_seconds
    }
  }

  shielded_instance_config {
    # NVIDIA's kernel modules on Deep Learning VM images are built on the VM and not signed by
    # a key in the UEFI db, so Secure Boot would refuse to load them and the GPUs would be
    # unusable. vTPM and integrity monitoring (measured boot) still apply to GPU VMs.
    enable_secure_boot          = !var.gpu
    enable_vtpm                 = true
    enable_integrity_monitoring = true
  }

  service_account {
    email = local.service_account_email
    # The scope only caps what the token may reach; the service account's IAM (this instance
    # only, unless one was given for the job's data) is what limits it. cloud-platform is the
    # scope Google recommends with IAM.
    scopes = ["cloud-platform"]
  }

  metadata = {
    # Nobody logs in: no project-wide keys, no serial console, and OS Login (IAM-checked) in
    # place of instance keys, which this module never sets.
    "block-project-ssh-keys" = "TRUE"
    "serial-port-enable"     = "FALSE"
    "enable-oslogin"         = "TRUE"
    "startup-script"         = var.startup_script
    # Deep Learning VM images install their bundled NVIDIA driver at first boot only when
    # asked (else they wait for an interactive login); the install needs no reboot. Other
    # images ignore the key.
    "install-nvidia-driver" = var.gpu ? "True" : "False"
  }

  # The deny rule must exist before the VM boots, so the default network's allow rules never
  # apply to it, not even for a minute.
  depends_on = [google_compute_firewall.deny_ingress]

  lifecycle {
    precondition {
      condition     = (var.accelerator_type == null) == (var.accelerator_count == 0)
      error_message = "Set accelerator_type and accelerator_count (1, 2, 4, 8 or 16) together, or neither (accelerator_type = null, accelerator_count = 0)."
    }

    precondition {
      condition     = var.accelerator_type == null || var.gpu
      error_message = "An attached GPU (accelerator_type) needs gpu = true: the Deep Learning VM image and on_host_maintenance = \"TERMINATE\"."
    }

    precondition {
      condition     = var.boot_disk_size_gb >= local.image_disk_size_gb
      error_message = "The boot_disk_size_gb (${var.boot_disk_size_gb}) is smaller than the image (${local.image_disk_size_gb} GB)."
    }
  }
}

# The project's role that holds compute.instances.delete and nothing else, made once per
# project, not per runner (see README: "What the VM gets"). Read at plan, so a project without
# it, or with a broader one under its id, fails before anything is created.
data "google_project_iam_custom_role" "self_delete" {
  project = var.project
  role_id = var.self_delete_role_id

  lifecycle {
    postcondition {
      condition     = !self.deleted && self.permissions == toset(["compute.instances.delete"])
      error_message = "The custom role ${var.self_delete_role_id} must exist (not deleted) and hold exactly one permission, compute.instances.delete: anything more would let job code that is root on the VM change it (its scheduling, max_run_duration, labels). Create it once per project: gcloud iam roles create ${var.self_delete_role_id} --project=PROJECT --title='cml-infra runner self-delete' --permissions=compute.instances.delete --stage=GA"
    }
  }
}

# The on-VM agent deletes its own instance when idle, with the token the metadata server gives
# it for the VM's service account. The grant is on this instance only (resource-level IAM), and
# its role can delete and nothing else: the VM can neither touch another instance nor change
# its own (scheduling, labels, metadata).
resource "google_compute_instance_iam_member" "self_delete" {
  project       = google_compute_instance.runner.project
  zone          = google_compute_instance.runner.zone
  instance_name = google_compute_instance.runner.name
  role          = data.google_project_iam_custom_role.self_delete.name
  member        = "serviceAccount:${local.service_account_email}"
}
