"""cml_infra.clouds.aws: user data, images, and the EC2 calls (against moto, never AWS)."""

from __future__ import annotations

import base64
import gzip
import random
from datetime import datetime, timezone

import pytest

from cml_infra import clouds, render
from cml_infra.clouds.aws import USER_DATA_LIMIT, AwsCloud
from cml_infra.clouds.base import RenderContext
from cml_infra.errors import CmlInfraError, UsageError
from tests.fakes import ec2
from tests.unit.clouds.specs import CREATED, EXPIRES, module_vars, resolve, spec_on


def _spec(**changes):
    return spec_on("aws", **changes)


@pytest.fixture
def cloud():
    return clouds.get("aws")


def _user_data(cloud, spec):
    """The startup script as rendered for `spec`, and the module's user_data_base64 for it."""
    script = render.startup_script(cloud.boot(spec), spec, EXPIRES.timestamp())
    variables = module_vars(cloud, spec, script)
    return script, base64.b64decode(variables["user_data_base64"], validate=True)


def test_get_aws(cloud):
    assert isinstance(cloud, AwsCloud)
    assert cloud.module == "aws"


def test_user_data_is_the_startup_script(cloud):
    script, payload = _user_data(cloud, _spec(command=("echo", "hi")))
    if payload[:2] == b"\x1f\x8b":  # the agent alone can be over 16 KiB: then it is gzipped
        assert len(script.encode()) > USER_DATA_LIMIT
        payload = gzip.decompress(payload)
    assert payload.decode("utf-8") == script


def test_a_small_script_is_sent_as_is():
    from cml_infra.clouds.vm import encode_user_data

    encoded, compressed = encode_user_data(
        "#!/bin/sh\necho hi\n", cloud="aws", limit=USER_DATA_LIMIT, base64_counts=False
    )
    assert not compressed
    assert base64.b64decode(encoded) == b"#!/bin/sh\necho hi\n"


def test_user_data_over_16_kib_is_gzipped(cloud):
    script, payload = _user_data(cloud, _spec(command=("echo", "x" * USER_DATA_LIMIT)))
    assert len(script.encode()) > USER_DATA_LIMIT
    assert payload[:2] == b"\x1f\x8b", "gzip magic: cloud-init unpacks it"
    assert len(payload) <= USER_DATA_LIMIT
    assert gzip.decompress(payload).decode("utf-8") == script


def test_user_data_too_large_even_compressed(cloud):
    noise = base64.b64encode(random.Random(7).randbytes(24 * 1024)).decode()
    spec = _spec(command=("echo", noise))
    script = render.startup_script(cloud.boot(spec), spec, EXPIRES.timestamp())
    assert len(gzip.compress(script.encode())) > USER_DATA_LIMIT
    with pytest.raises(UsageError) as caught:
        module_vars(cloud, spec, script)
    assert caught.value.source == "startup script"
    assert "aws allows 16,384 bytes of user data" in str(caught.value)


@pytest.mark.parametrize(
    "image", ["ubuntu", "ami-123", "ami-0123456789ABCDEF0", "ami-0123456789abcdef0 ", "i-12345678"]
)
def test_image_must_be_an_ami_id(cloud, image):
    with pytest.raises(UsageError) as caught:
        resolve(cloud, _spec(image=image))
    assert caught.value.source == "--image"
    assert "is not an AMI id" in str(caught.value)


@pytest.mark.parametrize("image", ["ami-12345678", "ami-0123456789abcdef0"])
def test_image_ami_id(cloud, image):
    spec = _spec(image=image)
    placement = resolve(cloud, spec)
    assert placement.image == image
    context = RenderContext("#!/bin/sh\n", CREATED, EXPIRES)
    assert cloud.module_vars(spec, placement, context)["image_id"] == image


def test_max_price_passes_through(cloud):
    spec = _spec(spot=True, max_price=0.25, gpu="t4", gpu_count=1)
    placement = resolve(cloud, spec)
    assert placement.hourly_price == 0.22
    context = RenderContext("#!/bin/sh\n", CREATED, EXPIRES)
    variables = cloud.module_vars(spec, placement, context)
    assert (variables["spot"], variables["max_price"]) == (True, 0.25)


def test_the_on_demand_fallback_of_a_spot_spec_has_no_price_cap(cloud):
    spec = _spec(spot=True, max_price=0.25, on_demand_fallback=True, gpu="t4", gpu_count=1)
    placement = cloud.resolve(spec, region=None, spot=False, max_price=None)
    context = RenderContext("#!/bin/sh\n", CREATED, EXPIRES)
    variables = cloud.module_vars(spec, placement, context)
    assert (variables["spot"], variables["max_price"]) == (False, None)


# --- EC2 through moto -------------------------------------------------------------------------


def _ours(name, expires):
    return {
        "cml-infra-managed": "true",
        "cml-infra-name": name,
        "cml-infra-expires": str(expires),
        "team": "ml",
    }


@pytest.fixture
def fleet(mocked_aws):
    """Ours in two regions, next to instances that are not ours or not in a scanned region."""
    expires = 1893456000
    return {
        "ours": {
            "east-a": ec2.launch("us-east-1", _ours("east-a", expires))[0],
            "east-b": ec2.launch("us-east-1", _ours("east-b", expires + 60))[0],
            "west-a": ec2.launch("eu-west-1", _ours("west-a", expires))[0],
        },
        "others": [
            *ec2.launch("us-east-1"),
            *ec2.launch("us-east-1", {"Name": "someone-elses"}),
            *ec2.launch("us-east-1", {"cml-infra-managed": "false", "cml-infra-name": "not-ours"}),
            *ec2.launch("eu-west-1", {"cml-infra-managed": "False", "cml-infra-name": "not-ours"}),
            *ec2.launch("eu-west-1", count=2),
        ],
        "unscanned": ec2.launch("us-west-2", _ours("far-away", expires)),
        "expires": expires,
    }


def test_list_managed_finds_exactly_ours(cloud, fleet):
    found = cloud.list_managed(["us-east-1", "eu-west-1"])
    by_name = {instance.name: instance for instance in found}
    assert len(found) == 3
    assert set(by_name) == {"east-a", "east-b", "west-a"}
    for name, full_id in fleet["ours"].items():
        instance = by_name[name]
        assert instance.id == full_id
        assert instance.cloud == "aws"
        assert instance.region == full_id.partition("/")[0]
        assert instance.state == "running"
        assert instance.tags["team"] == "ml"
        assert isinstance(instance.created_at, datetime)
    assert by_name["east-a"].expires_at == datetime.fromtimestamp(fleet["expires"], timezone.utc)
    assert by_name["east-b"].expires_at == datetime.fromtimestamp(
        fleet["expires"] + 60, timezone.utc
    )


def test_list_managed_only_in_the_regions_asked(cloud, fleet):
    assert [i.name for i in cloud.list_managed(["eu-west-1"])] == ["west-a"]
    assert cloud.list_managed([]) == []
    assert cloud.list_managed(["ap-northeast-1"]) == []


def test_list_managed_without_a_name_or_expiry_tag(cloud, mocked_aws):
    [full_id] = ec2.launch("us-east-1", {"cml-infra-managed": "true", "cml-infra-expires": "soon"})
    [instance] = cloud.list_managed(["us-east-1"])
    assert instance.name == full_id.partition("/")[2]
    assert instance.expires_at is None


def test_terminate_ends_exactly_those(cloud, fleet):
    ours = fleet["ours"]
    targets = [ours["east-a"], ours["west-a"]]
    cloud.terminate(targets)
    states = ec2.states([*ours.values(), *fleet["others"], *fleet["unscanned"]])
    assert {states[full_id] for full_id in targets} <= {"shutting-down", "terminated"}
    survivors = [full_id for full_id in states if full_id not in targets]
    assert {states[full_id] for full_id in survivors} == {"running"}
    assert [i.name for i in cloud.list_managed(["us-east-1", "eu-west-1"])] == ["east-b"]


def test_terminate_an_already_terminated_instance_is_fine(cloud, fleet):
    target = fleet["ours"]["east-b"]
    cloud.terminate([target])
    cloud.terminate([target])
    cloud.terminate([])
    assert ec2.states([target])[target] == "terminated"
    assert ec2.states([fleet["ours"]["east-a"]])[fleet["ours"]["east-a"]] == "running"


def test_terminate_an_id_that_never_existed_is_fine(cloud, mocked_aws):
    cloud.terminate(["us-east-1/i-0123456789abcdef0"])


def test_terminate_live_and_unknown_ids_together_ends_the_live_ones(cloud, fleet):
    # EC2 refuses a whole TerminateInstances call when one of its ids is unknown.
    ours = fleet["ours"]
    cloud.terminate([ours["east-a"], "us-east-1/i-0123456789abcdef0", ours["east-b"]])
    states = ec2.states(ours.values())
    assert states[ours["east-a"]] in {"shutting-down", "terminated"}
    assert states[ours["east-b"]] in {"shutting-down", "terminated"}
    assert states[ours["west-a"]] == "running"


def test_check_with_credentials(cloud, mocked_aws):
    ready, sentence = cloud.check()
    assert ready is True
    assert sentence.startswith("account 123456789012 as arn:aws:")


def test_check_without_credentials(cloud, no_aws_credentials):
    ready, sentence = cloud.check()
    assert ready is False
    assert sentence.startswith("no usable credentials (")
    assert "AWS_PROFILE" in sentence
    assert "AWS_ACCESS_KEY_ID" in sentence


def test_list_managed_without_credentials_is_one_error(cloud, no_aws_credentials):
    with pytest.raises(CmlInfraError) as caught:
        cloud.list_managed(["us-east-1"])
    assert not isinstance(caught.value, UsageError)
    assert str(caught.value).startswith("aws us-east-1: could not list instances: ")


def test_terminate_without_credentials_is_one_error(cloud, no_aws_credentials):
    with pytest.raises(CmlInfraError, match=r"^aws us-east-1: terminate failed: "):
        cloud.terminate(["us-east-1/i-0123456789abcdef0"])
