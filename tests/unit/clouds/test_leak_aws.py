"""Nothing left by an AWS runner that ended itself: the security groups (and their egress rules)
its module made beside the instance, found by tag and deleted by `cleanup` with no state at all.

Against moto, in process. EC2 refuses to delete a security group that a network interface
still uses (an instance that is not terminated yet); moto does not, so `in_use_refused` adds
that refusal where a test needs it.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest
from typer.testing import CliRunner

from cml_infra import clouds
from cml_infra.cli import app
from cml_infra.clouds import aws
from cml_infra.clouds import tags as keys
from cml_infra.clouds.base import Leftover
from cml_infra.errors import CmlInfraError
from tests.fakes import ec2

REGION = "us-east-1"
HOUR = 3600
ALL_IPV4 = [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}]
ALL_IPV6 = [{"IpProtocol": "-1", "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}]


def _tag_list(tags):
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def ours(name: str, launch_id: str, *, age: float = 2 * HOUR, expires_in: float = 22 * HOUR):
    """The tags terraform/aws puts on every resource of a launch that began `age` seconds ago."""
    now = time.time()
    return {
        "Name": name,
        keys.MANAGED: "true",
        keys.NAME: name,
        keys.EXPIRES: str(int(now + expires_in)),
        keys.LAUNCH_ID: launch_id,
        keys.CREATED: str(int(now - age)),
    }


def security_group(name: str, tags: dict[str, str] | None, *, region: str = REGION) -> str:
    """A security group as the module makes it: AWS's default egress rule replaced by its two
    (all IPv4, all IPv6), each tagged like the group."""
    client = ec2.client(region)
    extra = {}
    if tags is not None:
        extra["TagSpecifications"] = [{"ResourceType": "security-group", "Tags": _tag_list(tags)}]
    group_id = client.create_security_group(
        GroupName=f"cml-infra-{name}-{time.monotonic_ns()}", Description="runner", **extra
    )["GroupId"]
    client.revoke_security_group_egress(GroupId=group_id, IpPermissions=ALL_IPV4)
    rule_tags = {}
    if tags is not None:
        rule_tags["TagSpecifications"] = [
            {"ResourceType": "security-group-rule", "Tags": _tag_list(tags)}
        ]
    for permissions in (ALL_IPV4, ALL_IPV6):
        client.authorize_security_group_egress(
            GroupId=group_id, IpPermissions=permissions, **rule_tags
        )
    return group_id


def instance_in(group_id: str, tags: dict[str, str] | None, *, region: str = REGION) -> str:
    """An instance in the group, its instance and volume tagged like the module's."""
    extra = {}
    if tags is not None:
        extra["TagSpecifications"] = [
            {"ResourceType": kind, "Tags": _tag_list(tags)} for kind in ("instance", "volume")
        ]
    reply = ec2.client(region).run_instances(
        ImageId=ec2.AMI, InstanceType="t3.micro", MinCount=1, MaxCount=1,
        SecurityGroupIds=[group_id], **extra,
    )  # fmt: skip
    return reply["Instances"][0]["InstanceId"]


@dataclass(frozen=True)
class Runner:
    launch_id: str
    group_id: str
    instance_id: str | None


def runner(n: int, **age) -> Runner:
    """What `up` makes for runner `n`: its group, then its instance in it."""
    launch_id = f"launch{n:04d}abcd"
    tags = ours(f"gpu-{n}", launch_id, **age)
    group_id = security_group(f"gpu-{n}", tags)
    return Runner(launch_id, group_id, instance_in(group_id, tags))


def groups_left(group_ids) -> set[str]:
    """Which of these groups still exist."""
    found = ec2.client(REGION).describe_security_groups(
        Filters=[{"Name": "group-id", "Values": sorted(group_ids)}]
    )["SecurityGroups"]
    return {group["GroupId"] for group in found}


def rules_left(group_ids) -> list[str]:
    found = ec2.client(REGION).describe_security_group_rules(
        Filters=[{"Name": "group-id", "Values": sorted(group_ids)}]
    )["SecurityGroupRules"]
    return [rule["SecurityGroupRuleId"] for rule in found]


@pytest.fixture
def in_use_refused(mocked_aws, monkeypatch):
    """EC2's refusal to delete a group an instance not yet terminated still uses, on every
    client the cloud makes (moto deletes it regardless)."""
    from botocore.exceptions import ClientError

    made = aws._ec2

    def client(region):
        made_client = made(region)

        def refuse(params, **kwargs):
            users = ec2.client(region).describe_instances(
                Filters=[
                    {"Name": "instance.group-id", "Values": [params["GroupId"]]},
                    {"Name": "instance-state-name", "Values": aws._LIVE_STATES},
                ]
            )["Reservations"]
            if users:
                message = f"resource {params['GroupId']} has a dependent object"
                error = {"Code": "DependencyViolation", "Message": message}
                raise ClientError({"Error": error}, "DeleteSecurityGroup")

        made_client.meta.events.register("before-parameter-build.ec2.DeleteSecurityGroup", refuse)
        return made_client

    monkeypatch.setattr(aws, "_ec2", client)


@pytest.fixture
def cloud():
    return clouds.get("aws")


# --- list_leftovers and delete_leftovers -------------------------------------------------------


def test_every_managed_security_group_is_listed_as_a_leftover(cloud, mocked_aws):
    live = runner(1)
    tags = ours("gpu-2", "launch0002abcd", age=HOUR)
    lone = security_group("gpu-2", tags)
    security_group("theirs", {"team": "ml"})
    security_group("untagged", None)
    security_group("far", ours("far", "launch0003abcd"), region="eu-west-1")
    found = {leftover.id: leftover for leftover in cloud.list_leftovers([REGION])}
    assert set(found) == {f"{REGION}/{live.group_id}", f"{REGION}/{lone}"}
    group = found[f"{REGION}/{lone}"]
    assert group == Leftover(
        kind="aws_security_group",
        id=f"{REGION}/{lone}",
        cloud="aws",
        region=REGION,
        name="gpu-2",
        launch_id="launch0002abcd",
        created_at=datetime.fromtimestamp(int(tags[keys.CREATED]), timezone.utc),
    )
    both = cloud.list_leftovers([REGION, "eu-west-1"])
    assert {g.region for g in both} == {REGION, "eu-west-1"}
    assert cloud.list_leftovers([]) == []


def test_a_group_without_our_launch_or_created_tags(cloud, mocked_aws):
    group_id = security_group("legacy", {keys.MANAGED: "true", keys.CREATED: "soon"})
    [found] = cloud.list_leftovers([REGION])
    assert found.id == f"{REGION}/{group_id}"
    assert (found.launch_id, found.created_at) == ("", None)
    assert found.name.startswith("cml-infra-legacy-")  # no name tag: the group's own name


def test_delete_leftovers_deletes_the_groups_and_their_egress_rules(cloud, mocked_aws):
    kept = runner(1)
    gone = [security_group(f"gpu-{n}", ours(f"gpu-{n}", f"launch{n:04d}abcd")) for n in (2, 3)]
    assert len(rules_left(gone)) == 4
    leftovers = [g for g in cloud.list_leftovers([REGION]) if g.launch_id != kept.launch_id]
    cloud.delete_leftovers(leftovers)
    assert groups_left([*gone, kept.group_id]) == {kept.group_id}
    assert rules_left(gone) == []
    # Already gone: fine.
    cloud.delete_leftovers(leftovers)
    cloud.delete_leftovers([])


def test_a_group_still_in_use_is_reported_and_the_others_deleted(cloud, in_use_refused):
    busy = runner(1)
    free = security_group("gpu-2", ours("gpu-2", "launch0002abcd"))
    with pytest.raises(CmlInfraError) as caught:
        cloud.delete_leftovers(cloud.list_leftovers([REGION]))
    assert str(caught.value) == (
        f"aws {REGION}: security group {busy.group_id} is still in use (an instance of it is "
        "shutting down?); the next cleanup deletes it"
    )
    assert groups_left([busy.group_id, free]) == {busy.group_id}
    # Once the instance is terminated the group goes.
    ec2.client(REGION).terminate_instances(InstanceIds=[busy.instance_id])
    cloud.delete_leftovers(cloud.list_leftovers([REGION]))
    assert groups_left([busy.group_id]) == set()


def test_delete_leftovers_refuses_what_aws_does_not_leave(cloud, mocked_aws):
    stranger = Leftover("azurerm_resource_group", "rg", "azure", "eastus", "x", "", None)
    with pytest.raises(CmlInfraError, match="not something aws leaves behind"):
        cloud.delete_leftovers([stranger])


def test_listing_leftovers_without_credentials_is_one_error(cloud, no_aws_credentials):
    with pytest.raises(CmlInfraError, match=rf"^aws {REGION}: could not list security groups: "):
        cloud.list_leftovers([REGION])


def test_terminate_still_deletes_its_launchs_group_at_once(cloud, in_use_refused):
    first = runner(1)
    cloud.terminate([f"{REGION}/{first.instance_id}"])
    assert groups_left([first.group_id]) == set()


# --- the leak ledger: 50 runners ended themselves; cleanup, with no state, leaves nothing -------

RUNNERS = 50


@pytest.fixture
def ledger(in_use_refused):
    """50 runners of ours whose instances then ended themselves, beside what cleanup must not
    touch: a group without our tag, groups another tool tagged, an untagged instance, a runner
    of ours younger than the grace (its `up` has made its group, not yet its instance), and a
    runner of ours whose instance still runs."""
    ended = [runner(n) for n in range(RUNNERS)]
    plain = security_group("someone-elses", None)
    other_tool = security_group("other-tool", {"managed-by": "other-tool", "Name": "cml-infra-x"})
    # Our key, but not our value: another tool's (or a person's) "false".
    opted_out = security_group("opted-out", {**ours("gpu-x", "launch9998abcd"),
                                             keys.MANAGED: "false"})  # fmt: skip
    untagged_instance = instance_in(plain, None)
    young = security_group("gpu-young", ours("gpu-young", "launch9999abcd", age=60))
    running = runner(1000)
    # As each VM does to itself: `shutdown`, which terminates the instance and nothing else.
    ec2.client(REGION).terminate_instances(InstanceIds=[r.instance_id for r in ended])
    return {
        "ended": ended,
        "decoy_groups": [plain, other_tool, opted_out, young, running.group_id],
        "decoy_instances": [untagged_instance, running.instance_id],
    }


def test_cleanup_without_state_leaves_nothing_of_runners_that_ended_themselves(
    ledger, tmp_path, monkeypatch
):
    monkeypatch.setenv("CML_INFRA_HOME", str(tmp_path / "empty-state"))
    monkeypatch.delenv("CI", raising=False)
    ended = ledger["ended"]
    ended_groups = [r.group_id for r in ended]
    assert groups_left(ended_groups) == set(ended_groups)
    assert len(rules_left(ended_groups)) == 2 * RUNNERS

    args = ["cleanup", "--cloud", "aws", "--region", REGION, "--orphan-grace", "10m"]
    result = CliRunner().invoke(app, [*args, "--json", "--yes"])

    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert len(rows) == RUNNERS
    assert {(row["kind"], row["rule"], row["action"], row["result"]) for row in rows} == {
        ("aws_security_group", "leftover", "reap", "deleted (cloud API)")
    }
    assert {row["launch"] for row in rows} == {r.launch_id for r in ended}
    assert {row["id"] for row in rows} == {f"{REGION}/{g}" for g in ended_groups}
    # Nothing of ours is left for those launches: no group by their ids, no egress rule.
    by_launch = ec2.client(REGION).describe_security_groups(
        Filters=[
            {"Name": f"tag:{keys.MANAGED}", "Values": ["true"]},
            {"Name": f"tag:{keys.LAUNCH_ID}", "Values": [r.launch_id for r in ended]},
        ]
    )["SecurityGroups"]
    assert by_launch == []
    assert rules_left(ended_groups) == []
    # Every decoy is untouched.
    assert groups_left(ledger["decoy_groups"]) == set(ledger["decoy_groups"])
    decoys = [f"{REGION}/{i}" for i in ledger["decoy_instances"]]
    assert set(ec2.states(decoys).values()) == {"running"}
    assert len(rules_left(ledger["decoy_groups"])) == 2 * len(ledger["decoy_groups"])
    assert not (tmp_path / "empty-state" / "runners").exists()

    again = CliRunner().invoke(app, [*args, "--json", "--yes"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout) == []


def test_a_dry_run_reaps_nothing(ledger, tmp_path, monkeypatch):
    monkeypatch.setenv("CML_INFRA_HOME", str(tmp_path / "empty-state"))
    args = ["cleanup", "--cloud", "aws", "--region", REGION, "--dry-run", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(json.loads(result.stdout)) == RUNNERS
    ended_groups = [r.group_id for r in ledger["ended"]]
    assert groups_left(ended_groups) == set(ended_groups)
