locals {
  tags = merge(
    { Name = var.name },
    var.tags,
    {
      "cml-infra-managed" = "true"
      "cml-infra-name"    = var.name
      "cml-infra-expires" = tostring(var.expires_at)
      # The launch's identity: names collide, so teardown and cleanup match this, not the name.
      "cml-infra-id" = var.launch_id
      # A security group does not say when it was made: cleanup judges a leftover's age by this.
      "cml-infra-created" = tostring(var.created_at)
    },
  )

  # Both lookups pin the publisher's account, so an AMI of the same name from anyone else is never used.
  ami_lookup = var.gpu ? {
    owners = ["amazon"]
    name   = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
    } : {
    owners = ["099720109477"] # Canonical
    name   = "ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-amd64-server-*"
  }

  ami_id = var.image_id != null ? var.image_id : data.aws_ami.this[0].id
  # null where the region has no default VPC: the security group's precondition says so.
  vpc_id = var.subnet_id == null ? one(data.aws_vpcs.default[0].ids) : data.aws_subnet.this[0].vpc_id

  # The looked-up image's root snapshot, in GiB: the root volume cannot be smaller. 0 for an
  # image_id, whose size AWS itself checks.
  image_root_size_gb = var.image_id != null ? 0 : try(tonumber(one([
    for mapping in data.aws_ami.this[0].block_device_mappings :
    mapping.ebs.volume_size if mapping.device_name == data.aws_ami.this[0].root_device_name
  ])), 0)

  # Previous-generation families reject ebs_optimized = true (t2) or charge extra for it; every
  # current family is EBS-optimized anyway, so true only states what AWS does for them.
  ebs_optimized = !contains(["t1", "t2", "m1", "m2", "m3", "c1", "c3", "cc2", "cg1", "cr1", "g2", "hi1", "hs1", "i2", "r3"], split(".", var.instance_type)[0])
}

data "aws_region" "current" {}

# A list, not `data "aws_vpc"`: a region without a default VPC (organisations often delete
# them) then reads as empty, and the precondition below says what to do instead of the
# provider's "no matching VPC found".
data "aws_vpcs" "default" {
  count = var.subnet_id == null ? 1 : 0

  filter {
    name   = "is-default"
    values = ["true"]
  }
}

data "aws_subnet" "this" {
  count = var.subnet_id == null ? 0 : 1
  id    = var.subnet_id
}

data "aws_ami" "this" {
  count       = var.image_id == null ? 1 : 0
  owners      = local.ami_lookup.owners
  most_recent = true

  filter {
    name   = "name"
    values = [local.ami_lookup.name]
  }

  filter {
    name   = "architecture"
    values = ["x86_64"]
  }

  filter {
    name   = "state"
    values = ["available"]
  }

  filter {
    name   = "virtualization-type"
    values = ["hvm"]
  }
}

# The runner is reached by nobody: it polls out (GitHub, package mirrors), so the group has no
# ingress rule at all and a security group denies everything it does not allow.
resource "aws_security_group" "this" {
  name_prefix = "cml-infra-${var.name}-"
  description = "cml-infra runner ${var.name} (launch ${var.launch_id}): no inbound, all outbound"
  vpc_id      = local.vpc_id
  tags        = local.tags

  # A replacement group must exist before the instance can be moved off the old one.
  lifecycle {
    create_before_destroy = true

    precondition {
      condition     = local.vpc_id != null
      error_message = "The region ${data.aws_region.current.region} has no default VPC: set subnet_id (cml-infra up --subnet-id) to a subnet whose route reaches the internet."
    }
  }
}

resource "aws_vpc_security_group_egress_rule" "ipv4" {
  #checkov:skip=CKV_AWS_382:The runner needs arbitrary outbound traffic (git over https/ssh, pip/apt/npm mirrors, NTP, DNS, the job's own downloads); nothing comes in.
  security_group_id = aws_security_group.this.id
  description       = "All outbound IPv4"
  ip_protocol       = "-1"
  cidr_ipv4         = "0.0.0.0/0"
  tags              = local.tags
}

resource "aws_vpc_security_group_egress_rule" "ipv6" {
  #checkov:skip=CKV_AWS_382:The runner needs arbitrary outbound traffic (git over https/ssh, pip/apt/npm mirrors, NTP, DNS, the job's own downloads); nothing comes in.
  security_group_id = aws_security_group.this.id
  description       = "All outbound IPv6 (used only in subnets with IPv6)"
  ip_protocol       = "-1"
  cidr_ipv6         = "::/0"
  tags              = local.tags
}

resource "aws_instance" "this" {
  #checkov:skip=CKV2_AWS_41:By design the VM gets no instance profile unless the caller names one for the job's data (iam_instance_profile): it needs no cloud credentials to end itself, it shuts down (instance_initiated_shutdown_behavior = terminate).
  #checkov:skip=CKV_AWS_135:ebs_optimized is computed from the instance type (true for every current family, false only for previous-generation ones that reject it or charge for it), which checkov cannot evaluate.
  #checkov:skip=CKV_AWS_126:Detailed (1-minute) monitoring is billed per instance and nothing reads it for short-lived runners; idleness is decided on the VM.
  ami           = local.ami_id
  instance_type = var.instance_type
  subnet_id     = var.subnet_id
  # A subnet fixes the zone; without one, the default VPC's subnet in this zone is used.
  availability_zone = var.subnet_id == null ? var.availability_zone : null
  # No key pair and no ingress: the only way in is the startup script. The groups given join
  # the module's own (they may allow what the network needs, such as a proxy's egress).
  vpc_security_group_ids = concat([aws_security_group.this.id], var.security_group_ids)
  ebs_optimized          = local.ebs_optimized
  # null: what the subnet maps on launch (default subnets: a public IPv4 address, for egress).
  associate_public_ip_address = var.associate_public_ip_address

  # The VM needs no credentials to end itself: a plain `shutdown` (its idle/TTL timer) does.
  instance_initiated_shutdown_behavior = "terminate"

  # None by default. One given is for the job's data only (`cml-infra up --instance-profile`);
  # whatever its role allows, job code can do, since it reaches IMDS for its credentials.
  iam_instance_profile = var.iam_instance_profile

  user_data_base64            = var.user_data_base64
  user_data_replace_on_change = true

  dynamic "instance_market_options" {
    for_each = var.spot ? [1] : []
    content {
      market_type = "spot"
      spot_options {
        # one-time + terminate: an interrupted runner is gone, never restarted with stale state.
        spot_instance_type             = "one-time"
        instance_interruption_behavior = "terminate"
        max_price                      = var.max_price == null ? null : tostring(var.max_price)
      }
    }
  }

  metadata_options {
    http_endpoint = "enabled"
    http_tokens   = "required"
    # Containers on the host (one extra network hop) must still reach IMDSv2.
    http_put_response_hop_limit = 2
  }

  root_block_device {
    volume_type           = "gp3"
    volume_size           = var.root_volume_size_gb
    encrypted             = true
    delete_on_termination = true
  }

  tags        = local.tags
  volume_tags = local.tags

  lifecycle {
    # A newer AMI published between applies must not replace a runner in the middle of a job;
    # a runner lives for one job, and the next one gets the then-newest image.
    ignore_changes = [ami]

    precondition {
      condition     = var.root_volume_size_gb >= local.image_root_size_gb
      error_message = "The root_volume_size_gb (${var.root_volume_size_gb}) is smaller than the image's root snapshot (${local.image_root_size_gb} GiB)."
    }

    precondition {
      # Default subnets route to an internet gateway, which only a public address can use.
      condition     = var.associate_public_ip_address != false || var.subnet_id != null
      error_message = "Without a public IP (associate_public_ip_address = false) the runner reaches GitHub only through a NAT: set subnet_id to a private subnet whose route goes through a NAT gateway."
    }
  }
}
