output "id" {
  description = "Instance ID in Terraform form: projects/PROJECT/zones/ZONE/instances/NAME."
  value       = google_compute_instance.runner.id
}

output "instance_id" {
  description = "Numeric instance ID assigned by Compute Engine (unique even across re-used names)."
  value       = google_compute_instance.runner.instance_id
}

output "name" {
  description = "Instance name."
  value       = google_compute_instance.runner.name
}

output "project" {
  description = "Project the runner was created in."
  value       = google_compute_instance.runner.project
}

output "zone" {
  description = "Zone of the instance."
  value       = google_compute_instance.runner.zone
}

output "machine_type" {
  description = "Machine type of the instance."
  value       = google_compute_instance.runner.machine_type
}

output "provisioning_model" {
  description = "\"SPOT\" or \"STANDARD\" (on-demand)."
  value       = google_compute_instance.runner.scheduling[0].provisioning_model
}

output "service_account_email" {
  description = "Email of the VM's service account: its own (which may only delete this instance), or the one given for the job's data."
  value       = local.service_account_email
}

output "self_delete_role" {
  description = "The custom role (projects/PROJECT/roles/ID) granted to the VM's service account on this instance: compute.instances.delete only."
  value       = data.google_project_iam_custom_role.self_delete.name
}

output "internal_ip" {
  description = "Internal IPv4 address of the instance."
  value       = google_compute_instance.runner.network_interface[0].network_ip
}

output "external_ip" {
  description = "Ephemeral external IPv4 address, used for egress only (all ingress is denied)."
  value       = try(google_compute_instance.runner.network_interface[0].access_config[0].nat_ip, null)
}

output "self_link" {
  description = "Self link (URI) of the instance."
  value       = google_compute_instance.runner.self_link
}

output "image" {
  description = "Boot image the instance was created from (resolved self link, or the image override as given)."
  value       = local.image
}

output "network_tag" {
  description = "Network tag the deny-ingress firewall rule targets."
  value       = local.network_tag
}

output "firewall_name" {
  description = "Name of the firewall rule that denies all ingress to the instance."
  value       = google_compute_firewall.deny_ingress.name
}

output "labels" {
  description = "Labels set on the instance and its boot disk (the user's labels, made label-safe, plus the cml-infra-* labels)."
  value       = local.labels
}
