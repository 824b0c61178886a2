"""cml_infra.clouds.vm: what AWS, GCP and Azure share, held against their Terraform modules.

The golden module_vars checks cover every cloud for CPU and GPU, spot and on-demand; the keys are
parsed from terraform/<cloud>/variables.tf, so a renamed variable fails here and not at plan.
"""

from __future__ import annotations

import base64
import gzip
import json
import random
import re

import pytest

from cml_infra import clouds, packaged, render
from cml_infra.clouds.base import Boot, ErrorClass, RenderContext
from cml_infra.clouds.vm import VmCloud, encode_user_data
from cml_infra.errors import UsageError
from cml_infra.placement import attempts
from cml_infra.state import StateDir
from tests.unit.clouds.specs import CREATED, EXPIRES, resolve, spec_on

VM_CLOUDS = ("aws", "gcp", "azure")
EXPIRES_AT = 1893459600
SCRIPT = "#!/usr/bin/env bash\necho booted\n"
SCRIPT_B64 = base64.b64encode(SCRIPT.encode()).decode()
LAUNCH_ID = "0123456789abcdef"


def _get(cloud_name, tmp_path):
    """The cloud; the local one keeps its instances in a state dir under tmp_path."""
    return clouds.get(cloud_name, StateDir(tmp_path / "state"))


def _module_vars(cloud_name, tmp_path, script=SCRIPT, **changes):
    """The variables of the first placement `up` would try."""
    cloud = _get(cloud_name, tmp_path)
    spec = spec_on(cloud_name, **changes)
    placement = attempts(spec, cloud)[0].placement
    context = RenderContext(script, CREATED, EXPIRES, LAUNCH_ID)
    return cloud.module_vars(spec, placement, context)


def _declared(module):
    """variable name → whether it has a default, from the module's variables.tf."""
    text = (packaged.module_dir(module) / "variables.tf").read_text(encoding="utf-8")
    blocks = re.findall(r'^variable "(\w+)" \{\n(.*?)^\}', text, flags=re.DOTALL | re.MULTILINE)
    assert blocks, f"no variables parsed from terraform/{module}/variables.tf"
    return {
        name: bool(re.search(r"^\s*default\s*=", body, flags=re.MULTILINE)) for name, body in blocks
    }


def _sensitive(module):
    text = (packaged.module_dir(module) / "variables.tf").read_text(encoding="utf-8")
    blocks = re.findall(r'^variable "(\w+)" \{\n(.*?)^\}', text, flags=re.DOTALL | re.MULTILINE)
    return {
        name
        for name, body in blocks
        if re.search(r"^\s*sensitive\s*=\s*true", body, flags=re.MULTILINE)
    }


VARIANTS = {
    "cpu-on-demand": {},
    "cpu-spot": {"spot": True},
    "gpu-on-demand": {"gpu": "t4", "gpu_count": 1},
    "gpu-spot": {"gpu": "t4", "gpu_count": 1, "spot": True},
}


def _golden(cpu_on_demand: dict, gpu: dict) -> dict:
    """A cloud's module_vars per variant: every key on CPU on-demand, then what each one changes."""
    return {
        "cpu-on-demand": cpu_on_demand,
        "cpu-spot": {"spot": True},
        "gpu-on-demand": gpu,
        "gpu-spot": {**gpu, "spot": True},
    }


# The launch's id, deadline and start (CREATED: the cml-infra-created tag's Unix seconds).
STAMPS = {"launch_id": LAUNCH_ID, "expires_at": EXPIRES_AT, "created_at": 1893456000}

GOLDEN = {
    "aws": _golden(
        {
            "name": "box-1",
            "instance_type": "m7i.xlarge",
            "spot": False,
            "max_price": None,
            "availability_zone": None,
            "gpu": False,
            "image_id": None,
            "iam_instance_profile": None,
            "user_data_base64": SCRIPT_B64,
            **STAMPS,
            "tags": {},
        },
        gpu={"instance_type": "g4dn.xlarge", "gpu": True},
    ),
    "gcp": _golden(
        {
            "name": "box-1",
            "zone": "us-central1-a",
            "machine_type": "e2-standard-4",
            "gpu": False,
            "accelerator_type": None,
            "accelerator_count": 0,
            "spot": False,
            "image": None,
            "service_account_email": None,
            "startup_script": SCRIPT,
            "max_run_duration_seconds": 3600,
            **STAMPS,
            "labels": {},
        },
        gpu={
            "machine_type": "n1-standard-4",
            "gpu": True,
            "accelerator_type": "nvidia-tesla-t4",
            "accelerator_count": 1,
        },
    ),
    "azure": _golden(
        {
            "name": "box-1",
            "location": "eastus",
            "vm_size": "Standard_D4s_v5",
            "spot": False,
            "max_bid_price": -1,
            "gpu": False,
            "source_image_id": None,
            "user_assigned_identity_id": None,
            "custom_data_base64": SCRIPT_B64,
            **STAMPS,
            "tags": {},
        },
        gpu={"vm_size": "Standard_NC4as_T4_v3", "gpu": True},
    ),
}


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("cloud", VM_CLOUDS)
def test_module_vars_golden(tmp_path, cloud, variant):
    expected = {**GOLDEN[cloud]["cpu-on-demand"], **GOLDEN[cloud][variant]}
    variables = _module_vars(cloud, tmp_path, **VARIANTS[variant])
    assert variables == expected
    assert json.loads(json.dumps(variables)) == variables, "tfvars must be plain JSON"


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("cloud", VM_CLOUDS)
def test_module_vars_match_the_module_variables(tmp_path, cloud, variant):
    """Every key is a declared variable; every variable without a default is given."""
    declared = _declared(_get(cloud, tmp_path).module)
    variables = _module_vars(cloud, tmp_path, **VARIANTS[variant])
    assert set(variables) <= set(declared), sorted(set(variables) - set(declared))
    required = {name for name, has_default in declared.items() if not has_default}
    assert required <= set(variables), sorted(required - set(variables))


@pytest.mark.parametrize("cloud", [*VM_CLOUDS, "local"])
def test_variables_parser_sees_every_block(tmp_path, cloud):
    module = _get(cloud, tmp_path).module
    text = (packaged.module_dir(module) / "variables.tf").read_text(encoding="utf-8")
    assert len(_declared(module)) == text.count('\nvariable "') + text.startswith('variable "')


def test_module_vars_spot_price_caps(tmp_path):
    assert _module_vars("aws", tmp_path, spot=True, max_price=0.5)["max_price"] == 0.5
    assert _module_vars("azure", tmp_path, spot=True, max_price=0.3)["max_bid_price"] == 0.3


@pytest.mark.parametrize(("cloud", "key"), [("aws", "tags"), ("gcp", "labels"), ("azure", "tags")])
def test_module_vars_pass_the_user_tags(tmp_path, cloud, key):
    variables = _module_vars(cloud, tmp_path, tags={"team": "ml", "cost": "42"})
    # The module adds the cml-infra-* tags itself, after these, so they always win.
    assert variables[key] == {"team": "ml", "cost": "42"}


@pytest.mark.parametrize(
    ("cloud", "sensitive"),
    [("aws", "user_data_base64"), ("gcp", "startup_script"), ("azure", "custom_data_base64")],
)
def test_the_startup_script_variable_is_sensitive(tmp_path, cloud, sensitive):
    cloud_obj = _get(cloud, tmp_path)
    assert cloud_obj.sensitive_vars() == frozenset({sensitive})
    assert sensitive in _module_vars(cloud, tmp_path)
    assert sensitive in _sensitive(cloud_obj.module)


@pytest.mark.parametrize(
    ("cloud", "self_destroy"),
    [
        ("aws", ("shutdown", "-h", "now")),
        ("gcp", ("@gcp-delete-instance",)),
        ("azure", ("@azure-delete-resource-group",)),
    ],
)
def test_boot(tmp_path, cloud, self_destroy):
    boot = _get(cloud, tmp_path).boot(spec_on(cloud))
    assert boot == Boot(self_destroy=self_destroy, ttl_timer=True)
    assert (boot.python, boot.home) == ("python3", "/var/lib/cml-infra")
    assert (boot.runner_user, boot.poll_seconds) == ("cml-runner", 5)


@pytest.mark.parametrize(
    ("cloud", "probe"),
    [("aws", "aws-spot-notice"), ("gcp", "gcp-preempted"), ("azure", "azure-preempt-event")],
)
def test_a_spot_instance_polls_its_clouds_interruption_notice(tmp_path, cloud, probe):
    vm = _get(cloud, tmp_path)
    assert vm.boot(spec_on(cloud, spot=True)).preemption_probe == probe
    assert vm.boot(spec_on(cloud)).preemption_probe is None


@pytest.mark.parametrize("cloud", VM_CLOUDS)
def test_startup_script_arms_the_ttl_timer_and_carries_the_self_destroy(tmp_path, cloud):
    cloud_obj = _get(cloud, tmp_path)
    spec = spec_on(cloud)
    script = render.startup_script(cloud_obj.boot(spec), spec, EXPIRES.timestamp())
    assert "systemd-run --unit=cml-infra-ttl" in script
    assert f"ttl_left=$(( {EXPIRES_AT} - $(date +%s) ))" in script
    # The instance's home: CML_INFRA_INSTANCE_DIR if set, else the boot's.
    assert 'home="${CML_INFRA_INSTANCE_DIR:-}"' in script
    assert "\n  home=/var/lib/cml-infra\n" in script
    config = json.loads(
        re.search(r"<<'CML_INFRA_CONFIG_EOF'\n(.*?)\nCML_INFRA_CONFIG_EOF\n", script, re.DOTALL)[1]
    )
    assert config["self_destroy"] == list(cloud_obj.boot(spec).self_destroy)
    assert config["poll_seconds"] == 5


def test_local_startup_script_has_no_ttl_timer(tmp_path):
    cloud = _get("local", tmp_path)
    spec = spec_on("local")
    script = render.startup_script(cloud.boot(spec), spec, EXPIRES.timestamp())
    assert "systemd-run" not in script


UNKNOWN = "Error: something else entirely"  # OTHER on every cloud
CLASSIFY = {
    "aws": {
        ErrorClass.CAPACITY: (
            "InsufficientInstanceCapacity: We currently do not have sufficient",
            "SpotMaxPriceTooLow: Your Spot request price",
            "Unsupported: Your requested instance type (g5.xlarge) is not supported in your "
            "requested Availability Zone (us-east-1e).",
            "InvalidParameterValue: Invalid availability zone: [us-east-1g]",
        ),
        ErrorClass.QUOTA: (
            "VcpuLimitExceeded: You have requested more vCPU capacity",
            "MaxSpotInstanceCountExceeded",
        ),
        ErrorClass.AUTH: (
            "UnauthorizedOperation: You are not authorized",
            "no valid credential sources for Terraform AWS Provider found",
        ),
        ErrorClass.INVALID: ("InvalidAMIID.Malformed: Invalid id",),
    },
    "gcp": {
        ErrorClass.CAPACITY: (
            "The zone does not have enough resources available",
            "ZONE_RESOURCE_POOL_EXHAUSTED",
            "googleapi: Error 400: Invalid value for field 'resource.machineType': Machine type "
            "with name 'g2-standard-4' does not exist in zone 'us-central1-f'., invalid",
        ),
        ErrorClass.QUOTA: (
            "QUOTA_EXCEEDED: Quota 'NVIDIA_T4_GPUS' exceeded",
            "googleapi: Error 403: Quota 'NVIDIA_T4_GPUS' exceeded. Limit: 0.0 in region "
            "us-central1., quotaExceeded",
        ),
        ErrorClass.AUTH: (
            "googleapi: Error 403: Required 'compute.instances.create'",
            "could not find default credentials",
        ),
        ErrorClass.INVALID: ("googleapi: Error 400: Invalid value for field",),
    },
    "azure": {
        ErrorClass.CAPACITY: ("SkuNotAvailable: The requested VM size", "AllocationFailed"),
        ErrorClass.QUOTA: ("QuotaExceeded: Operation could not be completed",),
        ErrorClass.AUTH: ("AuthorizationFailed: The client does not have authorization",),
        ErrorClass.INVALID: ("InvalidParameter: The value of parameter",),
    },
}


@pytest.mark.parametrize(
    ("cloud", "text", "error_class"),
    [
        (cloud, text, error_class)
        for cloud, by_class in CLASSIFY.items()
        for error_class, texts in [*by_class.items(), (ErrorClass.OTHER, (UNKNOWN,))]
        for text in texts
    ],
)
def test_classify(tmp_path, cloud, text, error_class):
    cloud_obj = _get(cloud, tmp_path)
    assert cloud_obj.classify("Error creating instance", text) is error_class
    assert cloud_obj.classify(text, "") is error_class


def test_classify_does_not_use_another_clouds_codes(tmp_path):
    assert _get("gcp", tmp_path).classify("", "InsufficientInstanceCapacity") is (ErrorClass.OTHER)
    assert _get("aws", tmp_path).classify("", "QUOTA_EXCEEDED") is ErrorClass.OTHER


def test_local_classify_is_other(tmp_path):
    assert _get("local", tmp_path).classify("", "QuotaExceeded") is ErrorClass.OTHER


@pytest.mark.parametrize(
    ("cloud", "instance_type", "price", "gpu"),
    [
        ("aws", "g5.2xlarge", None, "unknown"),
        ("aws", "p5.48xlarge", 55.04, "h100"),
        ("aws", "c7i.large", None, None),
        ("aws", "m7i.large", 0.1008, None),
        ("gcp", "a2-highgpu-1g", 3.6731, "a100"),
        ("gcp", "g2-standard-8", None, "unknown"),
        ("gcp", "n2-standard-8", None, None),
        ("azure", "Standard_NC6s_v3", 3.06, "v100"),
        ("azure", "Standard_NV36ads_A10_v5", None, "unknown"),
        ("azure", "Standard_F4s_v2", None, None),
    ],
)
def test_native_type_passes_as_is(tmp_path, cloud, instance_type, price, gpu):
    placement = resolve(_get(cloud, tmp_path), spec_on(cloud, instance_type=instance_type))
    assert placement.instance_type == instance_type
    assert placement.hourly_price == price
    assert placement.gpu == gpu
    variables = _module_vars(cloud, tmp_path, instance_type=instance_type)
    assert variables["gpu"] is (gpu is not None)


def test_aws_native_gpu_type_boots_the_gpu_image(tmp_path):
    variables = _module_vars("aws", tmp_path, instance_type="g5.2xlarge")
    assert variables["instance_type"] == "g5.2xlarge"
    assert variables["gpu"] is True


@pytest.mark.parametrize(
    ("cloud", "instance_type", "gpu"),
    [("aws", "g5.2xlarge", "a10g"), ("azure", "Standard_NC6s_v3", "v100")],
)
def test_type_with_gpu_is_refused_where_types_come_with_their_gpus(
    tmp_path, cloud, instance_type, gpu
):
    with pytest.raises(UsageError) as caught:
        resolve(
            _get(cloud, tmp_path), spec_on(cloud, instance_type=instance_type, gpu=gpu, gpu_count=1)
        )
    assert caught.value.source == "--type"
    assert f"give --type {instance_type} or --gpu {gpu}:1, not both" in str(caught.value)


@pytest.mark.parametrize(
    ("cloud", "flag", "changes"),
    [
        ("aws", "--region", {"region": "mars-1"}),
        ("aws", "--gpu", {"gpu": "a100", "gpu_count": 1}),
        ("aws", "--image", {"image": "ubuntu"}),
        ("azure", "--image", {"image": "ubuntu"}),
        ("gcp", "--max-price", {"spot": True, "max_price": 0.5}),
        ("gcp", "--tag", {"tags": {"Team": "ml"}}),
    ],
)
def test_bad_input_fails_in_resolve_before_anything_is_rendered(tmp_path, cloud, flag, changes):
    with pytest.raises(UsageError) as caught:
        resolve(_get(cloud, tmp_path), spec_on(cloud, **changes))
    assert caught.value.source == flag
    assert list(tmp_path.iterdir()) == []


def test_vm_clouds_share_the_base(tmp_path):
    for cloud in VM_CLOUDS:
        assert isinstance(_get(cloud, tmp_path), VmCloud)


@pytest.mark.parametrize(("size", "compressed"), [(16384, False), (16385, True)])
def test_encode_user_data_compresses_only_over_the_limit(size, compressed):
    script = "#" * (size - 1) + "\n"
    encoded, was_compressed = encode_user_data(
        script, cloud="aws", limit=16384, base64_counts=False
    )
    assert was_compressed is compressed
    payload = base64.b64decode(encoded, validate=True)
    assert (gzip.decompress(payload) if compressed else payload).decode() == script


@pytest.mark.parametrize(("size", "compressed"), [(49152, False), (49153, True)])
def test_encode_user_data_counting_base64(size, compressed):
    # 49152 bytes are 65536 base64 characters: the most Azure takes without gzip.
    script = "#" * size
    encoded, was_compressed = encode_user_data(
        script, cloud="azure", limit=65536, base64_counts=True
    )
    assert was_compressed is compressed
    assert len(encoded) <= 65536


def test_encode_user_data_too_large_even_compressed():
    script = base64.b64encode(bytes(range(256)) * 8).decode()  # compresses well
    encode_user_data(script, cloud="aws", limit=1024, base64_counts=False)
    noise = base64.b64encode(_noise(3000)).decode()
    with pytest.raises(UsageError) as caught:
        encode_user_data(noise, cloud="aws", limit=1024, base64_counts=False)
    assert caught.value.source == "startup script"
    assert str(caught.value).startswith(f"startup script: {len(noise):,} bytes, ")
    assert str(caught.value).endswith("aws allows 1,024 bytes of user data")


def _noise(size):
    """Bytes gzip cannot shrink, the same every run."""
    return random.Random(42).randbytes(size)


def test_zones_to_try_come_from_the_catalog(tmp_path):
    gcp = _get("gcp", tmp_path)
    assert gcp.zones("us-central1") == (
        "us-central1-a", "us-central1-b", "us-central1-c", "us-central1-f",
    )  # fmt: skip
    # AWS picks a zone itself unless told: its own pick first (None), then the catalog's.
    assert _get("aws", tmp_path).zones("us-east-2") == (
        None, "us-east-2a", "us-east-2b", "us-east-2c",
    )  # fmt: skip
    # Azure VMs here are regional: nothing to walk.
    assert _get("azure", tmp_path).zones("eastus") == ()
    assert _get("local", tmp_path).zones("local") == ()


def test_resolve_leaves_the_zone_to_the_attempts(tmp_path):
    gcp = _get("gcp", tmp_path)
    spec = spec_on("gcp", region="us-central1")
    assert resolve(gcp, spec).zone is None
    tried = [attempt.placement.zone for attempt in attempts(spec, gcp)]
    assert tried == list(gcp.zones("us-central1"))
    assert tried[0] == "us-central1-a"


@pytest.mark.parametrize("cloud", VM_CLOUDS)
def test_module_vars_pass_the_launch_id_to_a_required_validated_variable(tmp_path, cloud):
    assert _module_vars(cloud, tmp_path)["launch_id"] == LAUNCH_ID
    module = _get(cloud, tmp_path).module
    assert _declared(module)["launch_id"] is False, "no default: every launch gives its own"
    text = (packaged.module_dir(module) / "variables.tf").read_text(encoding="utf-8")
    body = re.search(r'^variable "launch_id" \{\n(.*?)^\}', text, flags=re.DOTALL | re.MULTILINE)
    assert body is not None
    assert 'regex("^[a-z0-9]{8,32}$", var.launch_id)' in body.group(1)
    assert re.search(r"^\s*type\s*=\s*string$", body.group(1), flags=re.MULTILINE)


@pytest.mark.parametrize(
    ("cloud", "outputs", "listed"),
    [
        ("aws", {"id": "i-0abc", "region": "us-east-1"}, "us-east-1/i-0abc"),
        ("aws", {"id": "i-0abc"}, None),
        ("gcp", {"id": "projects/p/zones/z/instances/box-1", "zone": "us-central1-a",
                 "name": "box-1"}, "us-central1-a/box-1"),
        ("azure", {"id": "/subscriptions/s/providers/vm/box-1",
                   "resource_group_name": "cml-infra-box-1-0a1b2c3d"}, "cml-infra-box-1-0a1b2c3d"),
        ("local", {"id": "box-1", "name": "box-1"}, "box-1"),
        ("local", {}, None),
    ],
)  # fmt: skip
def test_listed_id_is_the_id_list_managed_reports_for_the_modules_outputs(
    tmp_path, cloud, outputs, listed
):
    assert _get(cloud, tmp_path).listed_id(outputs) == listed
