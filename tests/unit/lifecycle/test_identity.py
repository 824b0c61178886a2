"""A name is not an identity: teardown acts on the launch id, `up` refuses a name in use.

Two teams may both call a runner `gpu-ci` (or `gpu-${{ github.run_id }}`, which collides across
repositories and re-runs). Each `up` mints a launch id, tags everything with it
(`cml-infra-id`), and `down`, a rollback, a failover's clean-up and cleanup's SDK path act only
on what carries it: the other team's instance and security group of the same name survive.

AWS is a moto server on loopback (boto3 reaches it through AWS_ENDPOINT_URL, as the bench
does), so every call the clouds' own code makes goes over HTTP. Terraform's AWS provider
cannot run here, so the engine is scripted: its apply makes in moto what the module makes (a
security group, an instance and its volume, tagged from the workspace's variables as the
module tags them), then fails or returns the module's outputs; its destroy removes nothing, as
when Terraform lost track of a half-made apply, so what goes, goes by the sweep.
"""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from cml_infra import clouds
from cml_infra.cli import app
from cml_infra.errors import UsageError
from cml_infra.lifecycle import down, up
from cml_infra.spec import RunnerSpec
from cml_infra.terraform import Diagnostic, TerraformError
from tests.unit.lifecycle.conftest import EngineDouble, local_spec

REGION = "us-east-1"
NAME = "gpu-ci"
THEIRS = "a11ce0000000beef"  # the other team's launch id
AMI = "ami-0123456789abcdef0"
NO_CAPACITY = Diagnostic(
    "error",
    "creating EC2 Instance: operation error EC2: RunInstances",
    "api error InsufficientInstanceCapacity: We currently do not have sufficient g4dn.xlarge "
    "capacity in the Availability Zone you requested.",
)


# --- the moto server --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moto_endpoint():
    """One ThreadedMotoServer on 127.0.0.1 for the module; each test resets it."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def aws(moto_endpoint, aws_credentials, monkeypatch):
    """boto3 pointed at the server, with nothing of the machine's AWS or proxy set-up."""
    import urllib.request

    import boto3

    for key in list(os.environ):
        if key.lower().endswith("_proxy"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    # boto3's default session keeps the credentials it found first: none of it outlives a test.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    request = urllib.request.Request(f"{moto_endpoint}/moto-api/reset", method="POST")
    with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(request) as answer:
        assert answer.status == 200
    return moto_endpoint


def ec2() -> Any:
    import boto3

    assert os.environ["AWS_ENDPOINT_URL"].startswith("http://127.0.0.1:")
    return boto3.client("ec2", region_name=REGION)


def _tag_list(tags: dict[str, str]) -> list[dict[str, str]]:
    return [{"Key": key, "Value": value} for key, value in tags.items()]


def make_runner(tags: dict[str, str]) -> tuple[str, str]:
    """A security group and an instance (with its volume) attached to it, as the AWS module
    makes them, all carrying `tags`: (instance id, group id)."""
    client = ec2()
    group = client.create_security_group(
        GroupName=f"cml-infra-{tags['cml-infra-name']}-{time.monotonic_ns()}",
        Description="cml-infra runner: no inbound, all outbound",
        TagSpecifications=[{"ResourceType": "security-group", "Tags": _tag_list(tags)}],
    )["GroupId"]
    reply = client.run_instances(
        ImageId=AMI,
        InstanceType="t3.micro",
        MinCount=1,
        MaxCount=1,
        SecurityGroupIds=[group],
        TagSpecifications=[
            {"ResourceType": "instance", "Tags": _tag_list(tags)},
            {"ResourceType": "volume", "Tags": _tag_list(tags)},
        ],
    )
    return reply["Instances"][0]["InstanceId"], group


def theirs(expires_in: int = 3600) -> tuple[str, str]:
    """Another team's live runner of the same name: managed, named gpu-ci, its own launch id."""
    return make_runner(
        {
            "Name": NAME,
            "cml-infra-managed": "true",
            "cml-infra-name": NAME,
            "cml-infra-expires": str(int(time.time()) + expires_in),
            "cml-infra-id": THEIRS,
        }
    )


def instance_state(instance_id: str) -> str:
    reply = ec2().describe_instances(InstanceIds=[instance_id])
    return reply["Reservations"][0]["Instances"][0]["State"]["Name"]


def group_ids() -> set[str]:
    return {g["GroupId"] for g in ec2().describe_security_groups()["SecurityGroups"]}


def live_instances_of(launch_id: str) -> list[str]:
    reply = ec2().describe_instances(
        Filters=[
            {"Name": "tag:cml-infra-id", "Values": [launch_id]},
            {"Name": "instance-state-name", "Values": ["pending", "running", "stopped"]},
        ]
    )
    return [i["InstanceId"] for r in reply["Reservations"] for i in r["Instances"]]


# --- the scripted engine ----------------------------------------------------------------------


class MotoEngine(EngineDouble):
    """Terraform with the AWS module, played in moto (see the module docstring)."""

    label = "terraform (moto)"

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.calls: list[str] = []
        self.made: list[tuple[str, str]] = []
        self.launch_ids: set[str] = set()
        # Runs at the first init: what happens in the cloud after `up` has looked.
        self.meanwhile: Callable[[], Any] | None = None

    def init(self, workspace: Path, on_event) -> None:
        self.calls.append("init")
        (workspace / ".terraform").mkdir(exist_ok=True)
        if self.meanwhile is not None:
            self.meanwhile()
            self.meanwhile = None

    def apply(self, workspace: Path, on_event) -> dict:
        self.calls.append("apply")
        variables = json.loads((workspace / "terraform.tfvars.json").read_text())
        region = re.search(r'region\s*=\s*"([a-z0-9-]+)"', (workspace / "main.tf").read_text())
        assert region is not None and region.group(1) == REGION
        # The module's tags (terraform/aws/main.tf, locals.tags). Before launch ids the
        # workspace had none, and neither did what it made.
        launch_id = variables.get("launch_id", "")
        self.launch_ids.add(launch_id)
        tags = {
            "Name": variables["name"],
            **variables["tags"],
            "cml-infra-managed": "true",
            "cml-infra-name": variables["name"],
            "cml-infra-expires": str(variables["expires_at"]),
            "cml-infra-id": launch_id,
        }
        instance_id, group_id = make_runner(tags)
        self.made.append((instance_id, group_id))
        if self.fail:
            raise TerraformError("apply", [NO_CAPACITY], "")
        return {
            "instance": {
                "id": instance_id,
                "region": REGION,
                "name": variables["name"],
                "security_group_id": group_id,
            }
        }

    def destroy(self, workspace: Path, on_event) -> None:
        self.calls.append("destroy")


def _engine(monkeypatch, fail: bool) -> MotoEngine:
    engine = MotoEngine(fail)
    for module in (up, down):
        monkeypatch.setattr(module.Engine, "discover", classmethod(lambda cls, e, h: engine))
        monkeypatch.setattr(module.Engine, "from_argv", classmethod(lambda cls, a, h: engine))
    return engine


def aws_spec(**changes) -> RunnerSpec:
    fields = {
        "name": NAME,
        "cloud": "aws",
        "region": REGION,
        "size": "s",
        "idle_timeout": 300,
        "ttl": 3600,
        "command": ("python", "train.py"),
    }
    fields.update(changes)
    return RunnerSpec(**fields)


def assert_theirs_untouched(their_instance: str, their_group: str) -> None:
    assert instance_state(their_instance) == "running"
    assert their_group in group_ids()
    assert live_instances_of(THEIRS) == [their_instance]


def assert_ours_gone(engine: MotoEngine) -> None:
    assert engine.made, "the engine made nothing"
    for instance_id, group_id in engine.made:
        assert instance_state(instance_id) == "terminated"
        assert group_id not in group_ids()


# --- teardown spares another launch of the same name -----------------------------------------


def test_a_failed_up_destroys_its_own_launch_and_not_another_of_the_same_name(
    aws, monkeypatch, state
):
    """Every attempt (AWS's pick, then each zone) makes an instance and a group and fails for
    capacity; each failover clears it, and the rollback clears the last. The other team's
    `gpu-ci`, launched while ours was starting, is not touched by any of them."""
    engine = _engine(monkeypatch, fail=True)
    found: dict[str, tuple[str, str]] = {}
    engine.meanwhile = lambda: found.setdefault("theirs", theirs())
    with pytest.raises(TerraformError, match="InsufficientInstanceCapacity"):
        up.up(aws_spec(), state, None)
    assert engine.calls.count("apply") > 1, "the failover's clean-up ran too"
    assert_theirs_untouched(*found["theirs"])
    assert_ours_gone(engine)
    record = state.load(NAME)
    assert record.state == "destroyed"
    assert engine.launch_ids == {record.launch_id}, "one launch id for every attempt"


def test_down_destroys_its_own_launch_and_not_another_of_the_same_name(aws, monkeypatch, state):
    engine = _engine(monkeypatch, fail=False)
    assert up.up(aws_spec(), state, None).state == "running"
    their_instance, their_group = theirs()
    [ended] = down.down([NAME], state, None, "done")
    assert ended.state == "destroyed"
    assert_theirs_untouched(their_instance, their_group)
    assert_ours_gone(engine)
    assert engine.launch_ids == {ended.launch_id}


def test_cleanup_reaps_our_expired_runner_and_not_another_of_the_same_name(
    aws, tmp_path, monkeypatch
):
    """A cron cleanup with no state dir: ours is expired and goes through the cloud API, its
    security group with it (by its launch id); theirs, of the same name, is not expired."""
    ours = "0123456789abcdef"
    our_instance, our_group = make_runner(
        {
            "cml-infra-managed": "true",
            "cml-infra-name": NAME,
            "cml-infra-expires": str(int(time.time()) - 60),
            "cml-infra-id": ours,
        }
    )
    their_instance, their_group = theirs()
    monkeypatch.setenv("CML_INFRA_HOME", str(tmp_path / "cron-state"))
    result = CliRunner().invoke(
        app, ["cleanup", "--cloud", "aws", "--region", REGION, "--yes", "--json"]
    )
    assert result.exit_code == 0, result.output
    assert_theirs_untouched(their_instance, their_group)
    assert instance_state(our_instance) == "terminated"
    assert our_group not in group_ids()
    [row] = json.loads(result.stdout)
    assert (row["id"], row["name"]) == (f"{REGION}/{our_instance}", NAME)
    assert (row["rule"], row["result"]) == ("expired", "destroyed (cloud API)")
    assert row["launch"] == ours


def assert_terminate_takes_only_its_own_group(tags: dict[str, str]) -> None:
    """The cloud API's own clean-up, asked for the one instance made with `tags`, beside another
    launch's of the same name: ours and its group go; theirs, and their group, stay."""
    our_instance, our_group = make_runner(tags)
    their_instance, their_group = theirs()
    clouds.get("aws").terminate([f"{REGION}/{our_instance}"])
    assert instance_state(our_instance) == "terminated"
    assert our_group not in group_ids()
    assert_theirs_untouched(their_instance, their_group)


def test_terminate_deletes_the_group_of_the_instances_launch_only(aws):
    """Its launch's group goes; another launch's group of the same name, attached to a live
    instance, stays."""
    assert_terminate_takes_only_its_own_group(
        {"cml-infra-managed": "true", "cml-infra-name": NAME, "cml-infra-id": "feed0000"}
    )


def test_terminate_of_an_instance_older_than_launch_ids_deletes_only_its_own_group(aws):
    """No launch id to go by: the managed group attached to it goes, by its id; the other
    launch's group of the same name stays."""
    assert_terminate_takes_only_its_own_group({"cml-infra-managed": "true", "cml-infra-name": NAME})


# --- `up` refuses a name a live instance of another launch has ----------------------------------


def test_up_refuses_a_name_another_launch_uses_on_aws(aws, monkeypatch, tmp_path):
    their_instance, their_group = theirs()
    engine = _engine(monkeypatch, fail=False)
    root = tmp_path / "state"
    monkeypatch.setenv("CML_INFRA_HOME", str(root))
    result = CliRunner().invoke(
        app, ["up", "--cloud", "aws", "--region", REGION, "--size", "s", "--name", NAME],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: --name: 'gpu-ci' is in use on aws by a live instance")
    assert f"{REGION}/{their_instance}" in result.output and THEIRS in result.output
    assert engine.calls == [] and engine.made == []
    assert not root.exists(), "nothing created, not even the state dir"
    assert_theirs_untouched(their_instance, their_group)


def test_up_refuses_a_name_another_launch_uses_on_the_local_cloud(engine, state):
    """A sandbox under the state dir whose instance.json carries another launch id (no record
    of it here: another `up` is writing it, or its record is lost)."""
    sandbox = state.root / "local" / "instances" / "box-1"
    sandbox.mkdir(parents=True)
    tags = {"cml-infra-managed": "true", "cml-infra-name": "box-1", "cml-infra-id": THEIRS}
    (sandbox / "instance.json").write_text(json.dumps({"id": "box-1", "tags": tags}))
    with pytest.raises(UsageError, match=r"^--name: 'box-1' is in use on local by a live") as e:
        up.up(local_spec(), state, None)
    assert e.value.exit_code == 2
    assert f"launch {THEIRS}" in str(e.value)
    assert engine.calls == []
    assert state.load("box-1") is None and not state.workspace("box-1").exists()
    assert json.loads((sandbox / "instance.json").read_text())["tags"] == tags


def test_up_on_a_free_name_goes_on_and_its_instance_carries_its_launch_id(engine, state):
    record = up.up(local_spec(), state, None)
    assert re.fullmatch(r"[0-9a-f]{16}", record.launch_id)
    [instance] = clouds.get("local", state).list_managed(None)
    assert (instance.name, instance.launch_id) == ("box-1", record.launch_id)


def test_up_goes_on_when_the_cloud_cannot_be_listed(monkeypatch, state, engine, capsys):
    """No credentials, no network: a warning, and Terraform is left to fail the same way."""
    from cml_infra.clouds.local import LocalCloud
    from cml_infra.errors import CmlInfraError

    def cannot(self, regions):
        raise CmlInfraError("local: could not list instances: no way")

    monkeypatch.setattr(LocalCloud, "list_managed", cannot)
    assert up.up(local_spec(), state, None).state == "running"
    assert "could not check whether a live local instance already uses this name" in (
        capsys.readouterr().err
    )


def test_aws_up_without_credentials_warns_and_leaves_the_failure_to_terraform(
    monkeypatch, state, no_aws_credentials, capsys
):
    """Listing without credentials fails in botocore; `up` says so in one warning and goes on
    to Terraform (here scripted to fail as it would), with no traceback."""
    import boto3

    # Credentials an earlier test's default session found are not these; and were any request
    # sent after all, it would meet a closed loopback port, never AWS.
    monkeypatch.setattr(boto3, "DEFAULT_SESSION", None)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")

    class NoCredentials(MotoEngine):
        def apply(self, workspace, on_event):
            self.calls.append("apply")
            raise TerraformError("apply", [Diagnostic("error", "No valid credential sources")], "")

    engine = NoCredentials(fail=True)
    monkeypatch.setattr(up.Engine, "discover", classmethod(lambda cls, e, h: engine))
    with pytest.raises(TerraformError, match="No valid credential sources"):
        up.up(aws_spec(), state, None)
    err = capsys.readouterr().err
    assert "could not check whether a live aws instance already uses this name" in err
    assert "Traceback" not in err
    assert engine.calls[:2] == ["init", "apply"]


# --- GCP: the 409 of a second VM of one name ----------------------------------------------------


def test_gcp_a_409_for_a_taken_name_rolls_back_without_deleting_the_first_vm(monkeypatch, state):
    """Another team's `gpu-ci` appears in the zone while ours starts: GCP answers our create
    with a 409, and the rollback (which used to sweep by name) leaves their VM alone."""
    from tests.fakes.gcp import FakeCompute

    already = Diagnostic(
        "error",
        "Error creating instance",
        "googleapi: Error 409: The resource 'projects/proj/zones/us-central1-a/instances/gpu-ci' "
        "already exists, alreadyExists",
    )
    labels = {"cml-infra-managed": "true", "cml-infra-name": NAME, "cml-infra-id": THEIRS}

    class Conflict(MotoEngine):
        def apply(self, workspace, on_event):
            self.calls.append("apply")
            self.launch_ids.add(json.loads((workspace / "terraform.tfvars.json").read_text())
                                .get("launch_id", ""))  # fmt: skip
            raise TerraformError("apply", [already], "")

    with FakeCompute("proj") as fake:
        monkeypatch.setenv("CML_INFRA_GCP_API_ENDPOINT", fake.url)
        monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "proj")
        engine = Conflict(fail=True)
        engine.meanwhile = lambda: fake.add_instance("us-central1-a", NAME, labels)
        monkeypatch.setattr(up.Engine, "discover", classmethod(lambda cls, e, h: engine))
        spec = aws_spec(cloud="gcp", region="us-central1", size="s")
        with pytest.raises(TerraformError, match="alreadyExists"):
            up.up(spec, state, None)
        assert engine.calls.count("apply") == 1, "a 409 is not a reason to try elsewhere"
        [survivor] = fake.instances()
        assert (survivor["name"], survivor["status"]) == (NAME, "RUNNING")
        assert survivor["labels"]["cml-infra-id"] == THEIRS
        assert fake.violations == []
        record = state.load(NAME)
        assert record.state == "destroyed" and engine.launch_ids == {record.launch_id}


# --- `down` of an unreadable record -------------------------------------------------------------


def test_down_of_an_unreadable_record_takes_the_launch_id_from_its_workspace(
    aws, monkeypatch, state
):
    engine = _engine(monkeypatch, fail=False)
    up.up(aws_spec(), state, None)
    state.record_path(NAME).write_text("{")  # cut short
    their_instance, their_group = theirs()
    [ended] = down.down([NAME], state, None, None)
    assert_theirs_untouched(their_instance, their_group)
    assert_ours_gone(engine)
    assert engine.launch_ids == {ended.launch_id}


def test_down_of_an_unreadable_record_without_a_launch_id_sweeps_nothing_by_name(
    aws, monkeypatch, state, capsys
):
    """A workspace rendered before launch ids: its Terraform destroy is all there is; the
    instances named like it are left to cleanup, which tells them apart by their tags."""
    engine = _engine(monkeypatch, fail=False)
    up.up(aws_spec(), state, None)
    variables_path = state.workspace(NAME) / "terraform.tfvars.json"
    variables = json.loads(variables_path.read_text())
    variables.pop("launch_id", None)
    variables_path.write_text(json.dumps(variables))
    state.record_path(NAME).write_text("{")
    their_instance, their_group = theirs()
    [ended] = down.down([NAME], state, None, None)
    assert_theirs_untouched(their_instance, their_group)
    assert ended.state == "destroyed" and ended.launch_id == ""
    assert "nothing of it is swept by name" in capsys.readouterr().err
    [(our_instance, _)] = engine.made
    assert instance_state(our_instance) == "running", "left to cleanup, not swept by name"


# --- records older than launch ids --------------------------------------------------------------


def test_a_record_older_than_launch_ids_sweeps_only_the_instance_it_names(
    aws, state, make_record, capsys
):
    """Its Terraform outputs name its instance (region and id): that one goes, by id; another
    of the same name stays, and so does the record's own workspace-less remainder."""
    from cml_infra.lifecycle import teardown

    old = {"cml-infra-managed": "true", "cml-infra-name": NAME}
    old_instance, old_group = make_runner(old)
    their_instance, their_group = theirs()
    record = make_record(
        NAME,
        cloud="aws",
        region=REGION,
        instance_id=old_instance,
        outputs={"id": old_instance, "region": REGION, "name": NAME},
    )
    assert teardown.destroy(MotoEngine(fail=False), state, clouds.get("aws"), record) == ""
    assert instance_state(old_instance) == "terminated"
    assert old_group not in group_ids()
    assert_theirs_untouched(their_instance, their_group)
    assert "predates launch ids; only the instance it names" in capsys.readouterr().err


def test_a_record_older_than_launch_ids_naming_no_instance_sweeps_nothing(
    aws, state, make_record, capsys
):
    from cml_infra.lifecycle import teardown

    their_instance, their_group = theirs()
    record = make_record(NAME, cloud="aws", region=REGION, state="failed")
    assert teardown.destroy(MotoEngine(fail=False), state, clouds.get("aws"), record) == ""
    assert_theirs_untouched(their_instance, their_group)
    assert "nothing is swept by name" in capsys.readouterr().err
