output "id" {
  description = "EC2 instance id (\"i-...\")."
  value       = aws_instance.this.id
}

output "name" {
  description = "Runner name (the Name and cml-infra-name tags)."
  value       = var.name
}

output "instance_type" {
  description = "EC2 instance type."
  value       = aws_instance.this.instance_type
}

output "availability_zone" {
  description = "Availability zone the instance was placed in."
  value       = aws_instance.this.availability_zone
}

output "ami_id" {
  description = "AMI the instance booted (the image_id override or the looked-up image)."
  value       = aws_instance.this.ami
}

output "ami_name" {
  description = "Name of the looked-up AMI; null when image_id was given."
  value       = var.image_id == null ? data.aws_ami.this[0].name : null
}

output "spot" {
  description = "Whether the instance is a spot instance."
  value       = var.spot
}

output "spot_instance_request_id" {
  description = "Id of the one-time spot request; empty for on-demand instances."
  value       = aws_instance.this.spot_instance_request_id
}

output "private_ip" {
  description = "Private IPv4 address."
  value       = aws_instance.this.private_ip
}

output "public_ip" {
  description = "Public IPv4 address, if the subnet assigns one (default VPC subnets do); used only for outbound traffic."
  value       = aws_instance.this.public_ip
}

output "subnet_id" {
  description = "Subnet the instance runs in."
  value       = aws_instance.this.subnet_id
}

output "vpc_id" {
  description = "VPC of the instance and its security group."
  value       = aws_security_group.this.vpc_id
}

output "security_group_id" {
  description = "Id of the runner's egress-only security group."
  value       = aws_security_group.this.id
}

output "arn" {
  description = "ARN of the instance."
  value       = aws_instance.this.arn
}

output "region" {
  description = "AWS region the instance runs in."
  value       = data.aws_region.current.region
}

output "tags" {
  description = "Tags applied to every resource (cleanup finds runners by cml-infra-managed = \"true\")."
  value       = local.tags
}

output "iam_instance_profile" {
  description = "The instance profile the VM runs with, for the job's data; null when it holds no AWS credentials."
  value       = aws_instance.this.iam_instance_profile
}
