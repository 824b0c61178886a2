"""AWS: EC2 instances from `terraform/aws/`; spot through instance_market_options.

The VM ends itself with a plain shutdown (the module sets instance-initiated shutdown to
terminate), so it needs no AWS credentials at all.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from cml_infra.clouds import register, tags
from cml_infra.clouds.base import ErrorClass, Feature, Leftover, ManagedInstance, RenderContext
from cml_infra.clouds.vm import VmCloud, encode_user_data
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.placement import Placement
from cml_infra.spec import Network, RunnerSpec

if TYPE_CHECKING:
    from cml_infra.catalog import Offer
    from cml_infra.state import StateDir

USER_DATA_LIMIT = 16 * 1024
MANAGED_FILTER = {"Name": f"tag:{tags.MANAGED}", "Values": ["true"]}
# Every state but `terminated`: a `shutting-down` instance still holds its security group (its
# network interface goes only at `terminated`), so its launch's group is no leftover yet.
_LIVE_STATES = ["pending", "running", "shutting-down", "stopping", "stopped"]
SECURITY_GROUP = "aws_security_group"
# IAM's rule for instance profile names (the module takes the name, not the ARN).
_INSTANCE_PROFILE = re.compile(r"[A-Za-z0-9+=,.@_-]{1,128}")
_SUBNET = re.compile(r"subnet-(?:[0-9a-f]{8}|[0-9a-f]{17})")
_SECURITY_GROUP_ID = re.compile(r"sg-(?:[0-9a-f]{8}|[0-9a-f]{17})")
# Security groups a network interface may have: AWS's highest quota (the default is 5), of
# which the module's own group takes one.
MAX_SECURITY_GROUPS = 16


@register("aws", aliases=("ec2",))
class AwsCloud(VmCloud):
    module = "aws"
    ZONE_REQUIRED = False
    PREEMPTION_PROBE = "aws-spot-notice"
    UNSUPPORTED: ClassVar[dict[Feature, str]] = {
        Feature.LOGS: "launched without --backend, its log has no way back (no inbound ports, no "
        "SSH); the agent logs to /var/lib/cml-infra/instance.log on "
        "the instance, and the boot to its console: "
        "aws ec2 get-console-output --instance-id ID",
    }
    ERROR_PATTERNS: ClassVar[tuple[tuple[str, ErrorClass], ...]] = (
        ("InsufficientInstanceCapacity", ErrorClass.CAPACITY),
        ("InsufficientCapacity", ErrorClass.CAPACITY),
        # A zone the type is not offered in, or one this account does not have: the next may.
        ("is not supported in your requested Availability Zone", ErrorClass.CAPACITY),
        ("Invalid availability zone", ErrorClass.CAPACITY),
        ("SpotMaxPriceTooLow", ErrorClass.CAPACITY),
        ("MaxSpotInstanceCountExceeded", ErrorClass.QUOTA),
        ("VcpuLimitExceeded", ErrorClass.QUOTA),
        ("InstanceLimitExceeded", ErrorClass.QUOTA),
        ("UnauthorizedOperation", ErrorClass.AUTH),
        ("AuthFailure", ErrorClass.AUTH),
        ("no valid credential sources", ErrorClass.AUTH),
        ("InvalidParameter", ErrorClass.INVALID),
        ("InvalidAMIID", ErrorClass.INVALID),
    )
    # Network field → the module variable it sets (only when given: the module's default else).
    NETWORK_VARS: ClassVar[Mapping[str, str]] = {
        "subnet_id": "subnet_id",
        "security_group_ids": "security_group_ids",
        "disk_size_gb": "root_volume_size_gb",
        # Given only as False: unset, the instance gets one where its subnet maps one on launch.
        "public_ip": "associate_public_ip_address",
    }
    NETWORK_FLAGS: ClassVar[frozenset[str]] = frozenset(NETWORK_VARS)
    NETWORK_INSTEAD: ClassVar[Mapping[str, str]] = {"subnetwork": "--subnet-id"}
    # gp3's range; the GPU image's root snapshot is 75 GiB, Ubuntu's 8.
    DISK_SIZE_GB: ClassVar[tuple[int, int]] = (8, 16384)
    IMAGE_DISK_GB: ClassVar[Mapping[bool, int]] = {False: 8, True: 75}
    REAPED: ClassVar[Mapping[str, str]] = {
        "aws_instance": "with the instance: its own shutdown terminates it (and its root volume, "
        "delete_on_termination), as terminate does",
        SECURITY_GROUP: "leftover: list_leftovers finds it by its tags, and cleanup deletes it "
        "once no instance of its launch is listed (terminate deletes it at once)",
        "aws_vpc_security_group_egress_rule": "with its security group",
    }

    def validate(
        self, spec: RunnerSpec, offer: Offer, *, spot: bool, max_price: float | None
    ) -> None:
        if spec.instance_type is not None and not re.fullmatch(
            r"[a-z][a-z0-9-]*\.[a-z0-9-]+", spec.instance_type
        ):
            raise UsageError("--type", f"{spec.instance_type!r} is not an EC2 type (g5.2xlarge)")
        if spec.image is not None and not re.fullmatch(r"ami-[0-9a-f]{8,17}", spec.image):
            raise UsageError("--image", f"{spec.image!r} is not an AMI id (ami-0123456789abcdef0)")
        profile = spec.data_identity_for(self.name, "--instance-profile")
        if profile is not None and not _INSTANCE_PROFILE.fullmatch(profile):
            raise UsageError(
                "--instance-profile",
                f"{profile!r} is not an instance profile name (up to 128 of letters, digits and "
                "+=,.@_-; the name, not the ARN)",
            )

    def __init__(self, state: StateDir | None = None) -> None:
        super().__init__(state)
        # The subnet of the spec last resolved: it fixes the zone, so `zones` offers no others.
        self.subnet_id: str | None = None

    def resolve(
        self, spec: RunnerSpec, *, region: str | None, spot: bool, max_price: float | None
    ) -> Placement:
        placement = super().resolve(spec, region=region, spot=spot, max_price=max_price)
        self.subnet_id = spec.network.subnet_id
        return placement

    def zones(self, region: str) -> tuple[str | None, ...]:
        # In a subnet the instance goes to the subnet's zone whatever availability_zone says:
        # another "zone" would be the same attempt again.
        return (None,) if self.subnet_id else super().zones(region)

    def check_network(self, spec: RunnerSpec, network: Network, *, region: str) -> None:
        subnet = network.subnet_id
        if subnet is not None and not _SUBNET.fullmatch(subnet):
            raise UsageError(
                "--subnet-id",
                f"{subnet!r} is not a subnet id ('subnet-' and 8 or 17 hex digits: "
                "subnet-0123456789abcdef0)",
            )
        if subnet is not None and not spec.one_region:
            raise UsageError(
                "--subnet-id",
                f"{subnet} is in one region: give that region alone as --region, without "
                "fallback regions or `any`",
            )
        for group in network.security_group_ids:
            if not _SECURITY_GROUP_ID.fullmatch(group):
                raise UsageError(
                    "--security-group-id",
                    f"{group!r} is not a security group id ('sg-' and 8 or 17 hex digits: "
                    "sg-0123456789abcdef0)",
                )
        if len(network.security_group_ids) > MAX_SECURITY_GROUPS - 1:
            raise UsageError(
                "--security-group-id",
                f"{len(network.security_group_ids)} groups: an instance has at most "
                f"{MAX_SECURITY_GROUPS} (and 5 unless the quota was raised), one of them its own",
            )
        if not network.public_ip and subnet is None:
            raise UsageError(
                "--no-public-ip",
                "the default VPC's subnets reach the internet only through public IPs: give "
                "--subnet-id of a private subnet whose route goes through a NAT gateway",
            )

    def preflight(self, spec: RunnerSpec, regions: Iterable[str]) -> None:
        """Each region has the network the module will look up: without --subnet-id, a
        default VPC (organisations often delete them), else the subnet, and the security
        groups in the same VPC. Terraform would fail on each too, but only once `up` has
        claimed the name and registered the runner, and less plainly."""
        for region in regions:
            _check_network(_ec2(region), region, spec.network)

    def self_destroy(self) -> tuple[str, ...]:
        return ("shutdown", "-h", "now")

    def module_vars(
        self, spec: RunnerSpec, placement: Placement, context: RenderContext
    ) -> dict[str, Any]:
        user_data, _ = encode_user_data(
            context.startup_script,
            cloud=self.name,
            limit=USER_DATA_LIMIT,
            base64_counts=False,
            team_script=spec.startup_script,
        )
        return {
            "name": spec.name,
            "instance_type": placement.instance_type,
            "spot": placement.spot,
            "max_price": placement.max_price,
            "availability_zone": placement.zone,
            "gpu": placement.gpu is not None,
            "image_id": spec.image,
            # None: the VM holds no AWS credentials at all; it ends itself with a shutdown.
            "iam_instance_profile": spec.instance_profile,
            "user_data_base64": user_data,
            "launch_id": context.launch_id,
            "expires_at": int(context.expires_at.timestamp()),
            "created_at": int(context.created_at.timestamp()),
            "tags": tags.resource_tags(spec),
            **self.network_vars(spec),
        }

    def sensitive_vars(self) -> frozenset[str]:
        return frozenset({"user_data_base64"})

    def list_managed(self, regions: Iterable[str] | None) -> list[ManagedInstance]:
        return _each_region(regions, _list_region)

    def list_leftovers(self, regions: Iterable[str] | None) -> list[Leftover]:
        """Every security group tagged as ours, whether or not an instance still uses it:
        cleanup's `leftover` rule decides by its launch id which ones outlived their instance
        (an instance that ended itself: its shutdown terminates the instance, not its group)."""
        return _each_region(regions, _list_groups)

    def delete_leftovers(self, leftovers: Iterable[Leftover]) -> None:
        """Delete the security groups (their egress rules go with them). A group still in use
        (the network interface of an instance that is shutting down) is left for the next run
        and reported; the others are deleted all the same."""
        by_region: dict[str, list[str]] = {}
        for leftover in leftovers:
            if leftover.kind != SECURITY_GROUP:
                raise CmlInfraError(f"aws: {leftover.label}: not something aws leaves behind")
            region, _, group_id = leftover.id.partition("/")
            by_region.setdefault(region, []).append(group_id)
        problems = []
        for region, group_ids in by_region.items():
            problems += _delete_groups(_ec2(region), region, group_ids)
        if problems:
            raise CmlInfraError("; ".join(problems))

    def terminate(self, ids: Iterable[str]) -> None:
        by_region: dict[str, list[str]] = {}
        for full_id in ids:
            region, _, instance_id = full_id.partition("/")
            by_region.setdefault(region, []).append(instance_id)
        for region, instance_ids in by_region.items():
            client = _ec2(region)
            # Read before terminating: a terminated instance no longer lists its groups.
            groups = _groups_of(client, region, instance_ids)
            # Batches of 100 keep each call under EC2's request size limits.
            for start in range(0, len(instance_ids), 100):
                _terminate_batch(client, region, instance_ids[start : start + 100])
                _wait_terminated(client, region, instance_ids[start : start + 100])
            _delete_security_groups(client, region, groups)

    def listed_id(self, outputs: Mapping[str, Any]) -> str | None:
        if outputs.get("id") and outputs.get("region"):
            return f"{outputs['region']}/{outputs['id']}"
        return None

    def check(self) -> tuple[bool, str]:
        import boto3
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            identity = boto3.client("sts").get_caller_identity()
        except (BotoCoreError, ClientError) as exc:
            return False, (
                f"no usable credentials ({exc}); set AWS_PROFILE, or AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY, or use OIDC (aws-actions/configure-aws-credentials)"
            )
        return True, f"account {identity['Account']} as {identity['Arn']}"

    def ended_at(self, outputs: Mapping[str, Any]) -> datetime | None:
        # EC2 still describes a terminated instance for about an hour, with its end in
        # StateTransitionReason: "User initiated (2030-01-01 12:00:00 GMT)".
        from botocore.exceptions import BotoCoreError, ClientError

        full_id = self.listed_id(outputs)
        if full_id is None:
            return None
        region, _, instance_id = full_id.partition("/")
        try:
            answer = _ec2(region).describe_instances(InstanceIds=[instance_id])
        except (BotoCoreError, ClientError):  # long gone, or no credentials: not known
            return None
        for reservation in answer["Reservations"]:
            for raw in reservation["Instances"]:
                found = re.search(
                    r"\((\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) (?:GMT|UTC)\)",
                    raw.get("StateTransitionReason") or "",
                )
                if raw["State"]["Name"] in ("shutting-down", "terminated") and found:
                    return datetime.fromisoformat(f"{found[1]}+00:00")
        return None


_T = TypeVar("_T")


def _each_region(
    regions: Iterable[str] | None, list_region: Callable[[Any, str], list[_T]]
) -> list[_T]:
    """What `list_region(client, region)` finds in each region (None: every enabled one), the
    regions asked in parallel."""
    regions = enabled_regions() if regions is None else list(regions)
    # Clients are made here, one after the other: made inside the threads, each would load
    # its own copy of the EC2 service model (about 35 MiB apiece); calls are thread-safe.
    clients = {region: _ec2(region) for region in regions}
    with ThreadPoolExecutor(max_workers=max(1, min(8, len(regions)))) as pool:
        found = pool.map(lambda region: list_region(clients[region], region), regions)
    return [item for batch in found for item in batch]


def _check_network(client: Any, region: str, network: Network) -> None:
    """A UsageError when `region` lacks the VPC, subnet or security groups `network` needs;
    nothing when it has them, or when EC2 cannot be asked (no credentials, a role without
    ec2:Describe*): Terraform then fails with the cause."""
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        if network.subnet_id is None:
            default = {"Name": "is-default", "Values": ["true"]}
            vpcs = client.describe_vpcs(Filters=[default])["Vpcs"]
            if not vpcs:
                raise UsageError(
                    "--subnet-id",
                    f"aws region {region} has no default VPC; give --subnet-id (a subnet of "
                    f"{region} whose route reaches the internet)",
                )
            vpc_id = vpcs[0]["VpcId"]
        else:
            subnets = _described(
                lambda: client.describe_subnets(SubnetIds=[network.subnet_id])["Subnets"],
                "InvalidSubnetID.NotFound",
                UsageError(
                    "--subnet-id",
                    f"{network.subnet_id} is not a subnet of aws region {region}; give its "
                    "region as --region",
                ),
            )
            vpc_id = subnets[0]["VpcId"]
        if network.security_group_ids:
            group_ids = list(network.security_group_ids)
            groups = _described(
                lambda: client.describe_security_groups(GroupIds=group_ids)["SecurityGroups"],
                "InvalidGroup.NotFound",
                UsageError(
                    "--security-group-id",
                    f"{', '.join(network.security_group_ids)}: not all are security groups of "
                    f"aws region {region}",
                ),
            )
            elsewhere = sorted(g["GroupId"] for g in groups if g.get("VpcId") != vpc_id)
            if elsewhere:
                raise UsageError(
                    "--security-group-id",
                    f"{', '.join(elsewhere)} not in {vpc_id}, the VPC the instance runs in "
                    f"({network.subnet_id or 'the default VPC'}); an instance joins only "
                    "groups of its own VPC",
                )
    except (BotoCoreError, ClientError):
        return


def _described(call: Callable[[], list[Any]], not_found: str, error: UsageError) -> list[Any]:
    """What an EC2 Describe call found by id; `error` when it says an id is not there."""
    from botocore.exceptions import ClientError

    try:
        return call()
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") == not_found:
            raise error from None
        raise


def _list_groups(client: Any, region: str) -> list[Leftover]:
    from botocore.exceptions import BotoCoreError, ClientError

    pages = client.get_paginator("describe_security_groups").paginate(Filters=[MANAGED_FILTER])
    found: list[Leftover] = []
    try:
        for page in pages:
            found.extend(_leftover(region, raw) for raw in page["SecurityGroups"])
    except (BotoCoreError, ClientError) as exc:
        raise CmlInfraError(f"aws {region}: could not list security groups: {exc}") from None
    return found


def _leftover(region: str, raw: dict[str, Any]) -> Leftover:
    found = {tag["Key"]: tag["Value"] for tag in raw.get("Tags", [])}
    return Leftover(
        kind=SECURITY_GROUP,
        id=f"{region}/{raw['GroupId']}",
        cloud=AwsCloud.name,
        region=region,
        name=found.get(tags.NAME, raw.get("GroupName", raw["GroupId"])),
        launch_id=found.get(tags.LAUNCH_ID, ""),
        # EC2 does not say when a group was made: only our tag does.
        created_at=tags.unix_time(found.get(tags.CREATED, "")),
    )


def _delete_groups(client: Any, region: str, group_ids: Iterable[str]) -> list[str]:
    """Delete each group; what could not be deleted, one sentence each (a group already gone
    is deleted)."""
    from botocore.exceptions import BotoCoreError, ClientError

    problems = []
    for group_id in sorted(group_ids):
        try:
            client.delete_security_group(GroupId=group_id)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code == "InvalidGroup.NotFound":
                continue
            if code == "DependencyViolation":
                problems.append(
                    f"aws {region}: security group {group_id} is still in use (an instance "
                    "of it is shutting down?); the next cleanup deletes it"
                )
            else:
                problems.append(f"aws {region}: security group {group_id}: {exc}")
        except BotoCoreError as exc:  # no credentials, no endpoint: the rest would fail alike
            raise CmlInfraError(f"aws {region}: security group {group_id}: {exc}") from None
    return problems


def _list_region(client: Any, region: str) -> list[ManagedInstance]:
    from botocore.exceptions import BotoCoreError, ClientError

    live = {"Name": "instance-state-name", "Values": _LIVE_STATES}
    pages = client.get_paginator("describe_instances").paginate(Filters=[MANAGED_FILTER, live])
    found: list[ManagedInstance] = []
    try:
        for page in pages:
            for reservation in page["Reservations"]:
                found.extend(_managed(region, raw) for raw in reservation["Instances"])
    except (BotoCoreError, ClientError) as exc:
        raise CmlInfraError(f"aws {region}: could not list instances: {exc}") from None
    return found


def enabled_regions() -> list[str]:
    """The regions this account has enabled (opt-in regions only once opted in)."""
    from botocore.exceptions import BotoCoreError, ClientError

    home = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
    try:
        answer = _ec2(home).describe_regions(AllRegions=False)
    except (BotoCoreError, ClientError) as exc:
        raise CmlInfraError(f"aws: could not list regions: {exc}") from None
    return sorted(region["RegionName"] for region in answer["Regions"])


@dataclass(frozen=True)
class _Groups:
    """What of the module's security groups goes with some instances: every managed group
    tagged with one of their launch ids (the module tags its group with it), and, for an
    instance older than launch ids, the managed groups it is attached to that carry no launch
    id. Never a group found by name: another launch may use the same name."""

    launch_ids: frozenset[str]
    attached: frozenset[str]


def _groups_of(client: Any, region: str, instance_ids: list[str]) -> _Groups:
    from botocore.exceptions import BotoCoreError, ClientError

    launch_ids: set[str] = set()
    attached: set[str] = set()
    for instance_id in instance_ids:
        try:
            answer = client.describe_instances(InstanceIds=[instance_id])
        except ClientError:  # an unknown id: nothing of it to clean
            continue
        except BotoCoreError as exc:  # no credentials, no endpoint
            raise CmlInfraError(f"aws {region}: terminate failed: {exc}") from None
        for reservation in answer["Reservations"]:
            for raw in reservation["Instances"]:
                found = {t["Key"]: t["Value"] for t in raw.get("Tags", [])}
                if not tags.is_managed(found):
                    continue
                if found.get(tags.LAUNCH_ID):
                    launch_ids.add(found[tags.LAUNCH_ID])
                else:
                    attached.update(g["GroupId"] for g in raw.get("SecurityGroups", []))
    return _Groups(frozenset(launch_ids), frozenset(attached))


def _wait_terminated(client: Any, region: str, instance_ids: list[str]) -> None:
    """Until EC2 says terminated: only then is the security group free to delete."""
    from botocore.exceptions import WaiterError

    try:
        client.get_waiter("instance_terminated").wait(
            InstanceIds=instance_ids, WaiterConfig={"Delay": 5, "MaxAttempts": 120}
        )
    except WaiterError as exc:
        if "InvalidInstanceID.NotFound" not in str(exc):
            raise CmlInfraError(f"aws {region}: instances not terminated: {exc}") from None


def _delete_security_groups(client: Any, region: str, groups: _Groups) -> None:
    """The module's security group outlives an instance terminated outside Terraform."""
    from botocore.exceptions import BotoCoreError, ClientError

    found: dict[str, dict[str, Any]] = {}
    try:
        if groups.launch_ids:
            by_launch = client.describe_security_groups(
                Filters=[
                    MANAGED_FILTER,
                    {"Name": f"tag:{tags.LAUNCH_ID}", "Values": sorted(groups.launch_ids)},
                ]
            )["SecurityGroups"]
            found.update({group["GroupId"]: group for group in by_launch})
        if groups.attached:
            legacy = client.describe_security_groups(
                Filters=[MANAGED_FILTER, {"Name": "group-id", "Values": sorted(groups.attached)}]
            )["SecurityGroups"]
            found.update(
                {
                    group["GroupId"]: group
                    for group in legacy
                    if not any(t["Key"] == tags.LAUNCH_ID for t in group.get("Tags", []))
                }
            )
    except (BotoCoreError, ClientError) as exc:
        raise CmlInfraError(f"aws {region}: could not list security groups: {exc}") from None
    problems = _delete_groups(client, region, found)
    if problems:
        raise CmlInfraError("; ".join(problems))


def _terminate_batch(client: Any, region: str, instance_ids: list[str]) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        client.terminate_instances(InstanceIds=instance_ids)
    except ClientError as exc:
        if "InvalidInstanceID.NotFound" not in str(exc):
            raise CmlInfraError(f"aws {region}: terminate failed: {exc}") from None
        # One unknown id fails the whole call: the others still need terminating.
        if len(instance_ids) > 1:
            for instance_id in instance_ids:
                _terminate_batch(client, region, [instance_id])
    except BotoCoreError as exc:
        raise CmlInfraError(f"aws {region}: terminate failed: {exc}") from None


def _ec2(region: str) -> Any:
    import boto3
    from botocore.config import Config

    # Adaptive retries back off on throttling across a whole scan of many regions.
    config = Config(retries={"mode": "adaptive", "max_attempts": 10})
    return boto3.client("ec2", region_name=region, config=config)


def _managed(region: str, raw: dict[str, Any]) -> ManagedInstance:
    launched = raw.get("LaunchTime")
    return tags.instance(
        {tag["Key"]: tag["Value"] for tag in raw.get("Tags", [])},
        id=f"{region}/{raw['InstanceId']}",
        cloud=AwsCloud.name,
        region=region,
        state=raw["State"]["Name"],
        created_at=launched if isinstance(launched, datetime) else None,
        fallback_name=raw["InstanceId"],
        instance_type=raw.get("InstanceType"),
        hourly_price=_price(raw.get("InstanceType"), raw.get("InstanceLifecycle") == "spot"),
    )


def _price(instance_type: str | None, spot: bool) -> float | None:
    from cml_infra.catalog import load

    offer = load(AwsCloud.name).for_type(instance_type) if instance_type else None
    return offer.hourly(spot) if offer else None
