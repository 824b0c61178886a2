"""EC2 instances in moto for the unit tests: launch some, read their states.

Used inside the `mocked_aws` fixture (tests/unit/conftest.py), which clears the client cache
when the mock ends: a client made under moto must never outlive it.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from typing import Any

# Any well-formed id: moto runs instances from AMIs it does not know.
AMI = "ami-0123456789abcdef0"


@functools.cache
def client(region: str) -> Any:
    """One EC2 client per region and test: making a client takes a good 0.1 s."""
    import boto3

    return boto3.client("ec2", region_name=region)


def launch(
    region: str,
    tags: Mapping[str, str] | None = None,
    count: int = 1,
    instance_type: str = "t3.micro",
) -> list[str]:
    """Run `count` instances; their ids as cml-infra writes them, `region/i-...`."""
    extra = {}
    if tags is not None:
        extra["TagSpecifications"] = [
            {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
        ]
    reply = client(region).run_instances(
        ImageId=AMI, InstanceType=instance_type, MinCount=count, MaxCount=count, **extra
    )
    return [f"{region}/{instance['InstanceId']}" for instance in reply["Instances"]]


def states(full_ids: Iterable[str]) -> dict[str, str]:
    """`region/i-...` → its state name (running, shutting-down, terminated, ...)."""
    found = {}
    for full_id in full_ids:
        region, _, instance_id = full_id.partition("/")
        reply = client(region).describe_instances(InstanceIds=[instance_id])
        found[full_id] = reply["Reservations"][0]["Instances"][0]["State"]["Name"]
    return found
