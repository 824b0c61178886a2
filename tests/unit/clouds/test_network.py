"""Bring your own network: which cloud takes which network flag, each cloud's own format checks,
the module variables they set, and the AWS default-VPC check that `up` makes (against moto)."""

from __future__ import annotations

import re

import pytest
from typer.testing import CliRunner

from cml_infra import clouds, packaged
from cml_infra.cli import app
from cml_infra.clouds.vm import VmCloud
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.spec import Network
from tests.unit.clouds.specs import module_vars, resolve, spec_on

SUBNET = "subnet-0123456789abcdef0"
AZURE_SUBNET = (
    "/subscriptions/0000/resourceGroups/net/providers/Microsoft.Network/virtualNetworks/ci/"
    "subnets/runners"
)
# A value of each Network field, as the flags would give it; the subnet id each cloud's own.
VALUES = {
    "subnet_id": SUBNET,
    "security_group_ids": ("sg-0123456789abcdef0",),
    "project": "my-proj-123",
    "network": "ci-net",
    "subnetwork": "ci-sub",
    "disk_size_gb": 200,
    "public_ip": False,
}
# Each VM cloud's flags all given, and the module variables they must set.
GIVEN = {
    "aws": (
        {"subnet_id": SUBNET, "security_group_ids": ("sg-0123456789abcdef0", "sg-01234567"),
         "disk_size_gb": 200, "public_ip": False},
        {"subnet_id": SUBNET, "security_group_ids": ["sg-0123456789abcdef0", "sg-01234567"],
         "root_volume_size_gb": 200, "associate_public_ip_address": False},
    ),
    "gcp": (
        {"project": "my-proj-123", "network": "ci-net", "subnetwork": "ci-sub",
         "disk_size_gb": 200, "public_ip": False},
        {"project": "my-proj-123", "network": "ci-net", "subnetwork": "ci-sub",
         "boot_disk_size_gb": 200, "assign_external_ip": False},
    ),
    "azure": (
        {"subnet_id": AZURE_SUBNET, "disk_size_gb": 200, "public_ip": False},
        {"subnet_id": AZURE_SUBNET, "os_disk_size_gb": 200, "public_ip": False},
    ),
}  # fmt: skip
VM_CLOUDS = tuple(GIVEN)
# Every (cloud, Network field) where the cloud does not take the field's flag.
NOT_TAKEN = [
    (cloud, name)
    for cloud, cls in clouds.classes().items()
    for name in Network.FLAGS
    if name not in cls.NETWORK_FLAGS
]
_VARIABLE = re.compile(r'^variable\s+"([A-Za-z0-9_-]+)"', re.MULTILINE)


def _spec(cloud: str, **network):
    return spec_on(cloud, network=Network(**network))


def _refused(cloud: str, flag: str, **network) -> UsageError:
    with pytest.raises(UsageError) as caught:
        resolve(clouds.get(cloud), _spec(cloud, **network))
    assert caught.value.source == flag, caught.value
    assert caught.value.exit_code == 2
    return caught.value


# --- which cloud takes which flag -------------------------------------------------------------


def test_every_network_field_is_taken_by_some_cloud_and_local_takes_none():
    taken = set().union(*(cls.NETWORK_FLAGS for cls in clouds.classes().values()))
    assert taken == set(Network.FLAGS)
    assert not clouds.classes()["local"].NETWORK_FLAGS


@pytest.mark.parametrize("cloud", VM_CLOUDS)
def test_each_flag_a_vm_cloud_takes_sets_a_variable_its_module_declares(cloud):
    cls = clouds.classes()[cloud]
    assert issubclass(cls, VmCloud)
    assert set(cls.NETWORK_VARS) == cls.NETWORK_FLAGS
    text = "".join(p.read_text() for p in packaged.module_dir(cls.module).glob("*.tf"))
    declared = set(_VARIABLE.findall(text))
    assert set(cls.NETWORK_VARS.values()) <= declared


@pytest.mark.parametrize(("cloud", "name"), NOT_TAKEN)
def test_a_flag_the_cloud_does_not_take_is_refused_naming_who_takes_it(cloud, name):
    error = _refused(cloud, Network.FLAGS[name], **{name: VALUES[name]})
    takers = [c for c, cls in clouds.classes().items() if name in cls.NETWORK_FLAGS]
    assert f"does not apply to {cloud} (only to {', '.join(takers)})" in str(error)


def test_the_refusal_points_to_the_clouds_own_flag_for_the_same_thing():
    assert str(_refused("gcp", "--subnet-id", subnet_id=SUBNET)).endswith(
        "; on gcp, give --subnetwork"
    )
    assert str(_refused("aws", "--subnetwork", subnetwork="ci-sub")).endswith(
        "; on aws, give --subnet-id"
    )


@pytest.mark.parametrize(("cloud", "name"), NOT_TAKEN)
def test_the_cli_refuses_in_one_line_with_exit_2(cloud, name, tmp_path, monkeypatch):
    monkeypatch.setenv("CML_INFRA_HOME", str(tmp_path / "state"))
    flag = Network.FLAGS[name]
    value = VALUES[name]
    args = (
        [flag]
        if name == "public_ip"
        else [flag, str(value[0] if name == "security_group_ids" else value)]
    )
    out = tmp_path / "out"
    result = CliRunner().invoke(
        app, ["render", "--cloud", cloud, "-o", str(out), *args, "--", "true"]
    )
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {flag}: does not apply to {cloud} ")
    assert len(result.output.strip().splitlines()) == 1
    assert not out.exists() and not (tmp_path / "state").exists()


# --- the values reach the module --------------------------------------------------------------


@pytest.mark.parametrize("cloud", VM_CLOUDS)
def test_the_flags_given_set_their_module_variables(cloud):
    given, expected = GIVEN[cloud]
    variables = module_vars(clouds.get(cloud), _spec(cloud, **given))
    assert {k: variables[k] for k in expected} == expected


@pytest.mark.parametrize("cloud", VM_CLOUDS)
def test_no_flag_given_leaves_the_modules_defaults(cloud):
    cls = clouds.classes()[cloud]
    variables = module_vars(clouds.get(cloud), spec_on(cloud))
    assert set(cls.NETWORK_VARS.values()).isdisjoint(variables)


# --- disk sizes -------------------------------------------------------------------------------


@pytest.mark.parametrize("cloud", VM_CLOUDS)
def test_disk_size_within_the_clouds_range(cloud):
    low, high = clouds.classes()[cloud].DISK_SIZE_GB
    for size in (low - 1, high + 1):
        error = _refused(cloud, "--disk-size", disk_size_gb=size)
        assert f"{cloud} takes {low} to {high} GB" in str(error)
    for size in (low, high):
        resolve(clouds.get(cloud), _spec(cloud, disk_size_gb=size))


@pytest.mark.parametrize("cloud", VM_CLOUDS)
def test_disk_size_no_smaller_than_the_modules_gpu_image(cloud):
    needed = clouds.classes()[cloud].IMAGE_DISK_GB[True]
    cloud_ = clouds.get(cloud)
    spec = spec_on(cloud, gpu="t4", gpu_count=1, network=Network(disk_size_gb=needed - 1))
    with pytest.raises(UsageError, match=rf"^--disk-size: {needed - 1} GB is smaller than the"):
        resolve(cloud_, spec)
    resolve(cloud_, spec_on(cloud, gpu="t4", gpu_count=1, network=Network(disk_size_gb=needed)))
    # A CPU type boots the smaller image.
    resolve(cloud_, _spec(cloud, disk_size_gb=needed - 1))


def test_another_images_size_is_left_to_the_cloud():
    spec = spec_on("aws", gpu="t4", gpu_count=1, image="ami-0123456789abcdef0",
                   network=Network(disk_size_gb=20))  # fmt: skip
    assert module_vars(clouds.get("aws"), spec)["root_volume_size_gb"] == 20


# --- AWS --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("network", "flag", "said"),
    [
        ({"subnet_id": "subnet-123"}, "--subnet-id", "is not a subnet id"),
        ({"subnet_id": "subnet-0123456789ABCDEF0"}, "--subnet-id", "is not a subnet id"),
        ({"subnet_id": "sg-0123456789abcdef0"}, "--subnet-id", "is not a subnet id"),
        ({"security_group_ids": ("sg-xyz",)}, "--security-group-id", "is not a security group"),
        ({"security_group_ids": ("subnet-01234567",)}, "--security-group-id", "is not a security"),
        ({"security_group_ids": tuple(f"sg-{i:08x}" for i in range(16))}, "--security-group-id",
         "16 groups: an instance has at most 16"),
        ({"public_ip": False}, "--no-public-ip", "give --subnet-id of a private subnet"),
    ],
)  # fmt: skip
def test_aws_format_errors_are_named(network, flag, said):
    assert said in str(_refused("aws", flag, **network))


def test_aws_a_subnet_fixes_the_region():
    spec = spec_on("aws", region="us-east-1", fallback_regions=("us-west-2",),
                   network=Network(subnet_id=SUBNET))  # fmt: skip
    with pytest.raises(UsageError, match=r"^--subnet-id: .* alone as --region"):
        resolve(clouds.get("aws"), spec)


@pytest.mark.parametrize(
    ("cloud", "subnet"), [("aws", SUBNET), ("azure", AZURE_SUBNET)]
)  # fmt: skip
def test_a_subnet_is_refused_with_region_any(cloud, subnet):
    # `any` walks every region; a subnet lives in one.
    spec = spec_on(cloud, region=None, any_region=True, network=Network(subnet_id=subnet))
    with pytest.raises(UsageError, match=r"^--subnet-id: .*without fallback regions or `any`"):
        resolve(clouds.get(cloud), spec)


def test_aws_in_a_subnet_up_tries_no_other_zone():
    from cml_infra.placement import attempts

    cloud = clouds.get("aws")
    spec = spec_on("aws", region="us-east-1", network=Network(subnet_id=SUBNET))
    assert [a.placement.zone for a in attempts(spec, cloud)] == [None]
    assert len(attempts(spec_on("aws", region="us-east-1"), clouds.get("aws"))) > 1


def test_aws_without_a_public_ip_in_a_subnet_of_ones_own():
    spec = _spec("aws", subnet_id=SUBNET, public_ip=False)
    assert module_vars(clouds.get("aws"), spec)["associate_public_ip_address"] is False


# --- GCP --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "network",
    [
        {"project": "my-proj-123"},
        {"project": "example.com:my-proj-123"},
        {"network": "default"},
        {"network": "projects/my-proj-123/global/networks/ci"},
        {"network": "https://www.googleapis.com/compute/v1/projects/my-proj-123/global/networks/ci"},
        {"subnetwork": "ci-sub"},
        {"subnetwork": "projects/my-proj-123/regions/us-central1/subnetworks/ci-sub"},
        {"project": "my-proj-123", "network": "projects/my-proj-123/global/networks/ci",
         "subnetwork": "https://www.googleapis.com/compute/v1/projects/my-proj-123/regions/"
                       "us-central1/subnetworks/ci-sub"},
    ],
)  # fmt: skip
def test_gcp_takes_names_paths_and_self_links(network):
    variables = module_vars(clouds.get("gcp"), spec_on("gcp", region="us-central1",
                                                       network=Network(**network)))  # fmt: skip
    assert {k: variables[k] for k in network} == network


@pytest.mark.parametrize(
    ("network", "flag", "said"),
    [
        ({"project": "Bad_Project"}, "--project", "is not a project id"),
        ({"project": "short"}, "--project", "is not a project id"),
        ({"project": "ends-with-dash-"}, "--project", "is not a project id"),
        ({"network": "Default"}, "--network", "is not a name"),
        ({"network": "global/networks/ci"}, "--network", "is not a name"),
        ({"network": "projects/my-proj-123/regions/us-central1/subnetworks/s"}, "--network",
         "is not a name"),
        ({"subnetwork": "regions/us-central1/subnetworks/s"}, "--subnetwork", "is not a name"),
        ({"subnetwork": "projects/my-proj-123/global/networks/ci"}, "--subnetwork",
         "is not a name"),
        ({"subnetwork": "projects/my-proj-123/regions/europe-west4/subnetworks/s"},
         "--subnetwork", "is in region europe-west4, not us-central1: give --region"),
        ({"project": "my-proj-123", "network": "projects/other-proj-1/global/networks/ci"},
         "--network", "is in project other-proj-1, and --project names my-proj-123"),
        ({"network": "projects/my-proj-123/global/networks/ci",
          "subnetwork": "projects/other-proj-1/regions/us-central1/subnetworks/s"},
         "--subnetwork", "is in project other-proj-1, and --network names my-proj-123"),
    ],
)  # fmt: skip
def test_gcp_format_errors_are_named(network, flag, said):
    with pytest.raises(UsageError) as caught:
        resolve(clouds.get("gcp"), spec_on("gcp", region="us-central1", network=Network(**network)))
    assert caught.value.source == flag
    assert said in str(caught.value)


def test_gcp_without_an_external_ip_on_the_default_network():
    """Cloud NAT may serve the default network: nothing to refuse offline."""
    assert module_vars(clouds.get("gcp"), _spec("gcp", public_ip=False))["assign_external_ip"] is (
        False
    )


@pytest.fixture
def compute(monkeypatch):
    """The fake Compute API (tests/fakes/gcp.py) of a project whose id --project takes."""
    from tests.fakes.gcp import FakeCompute

    with FakeCompute("proj-123456") as fake:
        monkeypatch.setenv("CML_INFRA_GCP_API_ENDPOINT", fake.url)
        monkeypatch.delenv("CML_INFRA_PROJECT", raising=False)
        yield fake
        assert fake.violations == []


def test_gcp_the_project_the_runner_goes_to_is_the_one_its_api_calls_ask(compute, monkeypatch):
    """--project decides where the runner goes and so where `up` looks for it (the name check,
    the rollback's sweep), whatever the credentials' project; CML_INFRA_PROJECT, which --project
    reads, does the same for `down`, `status` and `cleanup`."""
    compute.add_instance("us-central1-a", "cml-a", {"cml-infra-managed": "true",
                                                   "cml-infra-name": "box-a"})  # fmt: skip
    monkeypatch.setenv("GOOGLE_CLOUD_PROJECT", "elsewhere-1")
    with pytest.raises(CmlInfraError, match="Permission denied on resource project elsewhere-1"):
        clouds.get("gcp").list_managed(None)
    cloud = clouds.get("gcp")
    resolve(cloud, _spec("gcp", project=compute.project))
    assert [i.name for i in cloud.list_managed(None)] == ["box-a"]
    monkeypatch.setenv("CML_INFRA_PROJECT", compute.project)
    assert [i.name for i in clouds.get("gcp").list_managed(None)] == ["box-a"]


# --- Azure ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("network", "flag", "said"),
    [
        ({"subnet_id": SUBNET}, "--subnet-id", "is not a subnet's resource id"),
        ({"subnet_id": AZURE_SUBNET.rpartition("/subnets/")[0]}, "--subnet-id",
         "is not a subnet's resource id"),
        ({"subnet_id": AZURE_SUBNET + "/extra"}, "--subnet-id", "is not a subnet's resource id"),
        ({"public_ip": False}, "--no-public-ip", "give --subnet-id of a subnet with a NAT gateway"),
    ],
)  # fmt: skip
def test_azure_format_errors_are_named(network, flag, said):
    assert said in str(_refused("azure", flag, **network))


def test_azure_a_virtual_network_fixes_the_region():
    spec = spec_on("azure", region="eastus", fallback_regions=("westus2",),
                   network=Network(subnet_id=AZURE_SUBNET))  # fmt: skip
    with pytest.raises(UsageError, match=r"^--subnet-id: a virtual network is in one region"):
        resolve(clouds.get("azure"), spec)


# --- AWS at `up`: the default VPC, the subnet and the groups, asked of EC2 (moto) ----------------


def _without_default_vpc(region: str) -> None:
    """Delete the region's default VPC as an organisation would (subnets and gateway first)."""
    from tests.fakes import ec2

    client = ec2.client(region)
    [vpc] = client.describe_vpcs(Filters=[{"Name": "is-default", "Values": ["true"]}])["Vpcs"]
    in_vpc = [{"Name": "vpc-id", "Values": [vpc["VpcId"]]}]
    for subnet in client.describe_subnets(Filters=in_vpc)["Subnets"]:
        client.delete_subnet(SubnetId=subnet["SubnetId"])
    attached = [{"Name": "attachment.vpc-id", "Values": [vpc["VpcId"]]}]
    for gateway in client.describe_internet_gateways(Filters=attached)["InternetGateways"]:
        gateway_id = gateway["InternetGatewayId"]
        client.detach_internet_gateway(InternetGatewayId=gateway_id, VpcId=vpc["VpcId"])
        client.delete_internet_gateway(InternetGatewayId=gateway_id)
    client.delete_vpc(VpcId=vpc["VpcId"])


def _own_network(region: str) -> tuple[str, str]:
    """A VPC of one's own with a subnet and a security group: (subnet id, group id)."""
    from tests.fakes import ec2

    client = ec2.client(region)
    vpc_id = client.create_vpc(CidrBlock="10.9.0.0/16")["Vpc"]["VpcId"]
    subnet = client.create_subnet(VpcId=vpc_id, CidrBlock="10.9.1.0/24")["Subnet"]["SubnetId"]
    group = client.create_security_group(GroupName="proxy", Description="egress", VpcId=vpc_id)
    return subnet, group["GroupId"]


def test_aws_a_region_without_a_default_vpc_needs_a_subnet(mocked_aws):
    _without_default_vpc("eu-west-1")
    cloud = clouds.get("aws")
    cloud.preflight(spec_on("aws"), ["us-east-1"])
    with pytest.raises(UsageError) as caught:
        cloud.preflight(spec_on("aws"), ["us-east-1", "eu-west-1"])
    assert caught.value.exit_code == 2
    assert str(caught.value) == (
        "--subnet-id: aws region eu-west-1 has no default VPC; give --subnet-id (a subnet of "
        "eu-west-1 whose route reaches the internet)"
    )
    subnet, group = _own_network("eu-west-1")
    cloud.preflight(_spec("aws", subnet_id=subnet, security_group_ids=(group,)), ["eu-west-1"])


def test_aws_a_subnet_of_another_region_or_none_at_all_is_refused(mocked_aws):
    subnet, _ = _own_network("eu-west-1")
    cloud = clouds.get("aws")
    for missing in (subnet, SUBNET):
        with pytest.raises(UsageError, match=r"^--subnet-id: subnet-\w+ is not a subnet of aws "):
            cloud.preflight(_spec("aws", subnet_id=missing), ["us-east-1"])


def test_aws_security_groups_must_exist_in_the_instances_vpc(mocked_aws):
    from tests.fakes import ec2

    subnet, group = _own_network("us-east-1")
    cloud = clouds.get("aws")
    with pytest.raises(UsageError, match=r"^--security-group-id: sg-0123456789abcdef0: not all"):
        cloud.preflight(_spec("aws", security_group_ids=("sg-0123456789abcdef0",)), ["us-east-1"])
    # The group is in the VPC of one's own; without --subnet-id the instance runs in the
    # default VPC.
    with pytest.raises(UsageError, match=rf"^--security-group-id: {group} not in vpc-\w+, the"):
        cloud.preflight(_spec("aws", security_group_ids=(group,)), ["us-east-1"])
    [default] = ec2.client("us-east-1").describe_security_groups(
        Filters=[{"Name": "group-name", "Values": ["default"]},
                 {"Name": "vpc-id", "Values": [_default_vpc("us-east-1")]}]
    )["SecurityGroups"]  # fmt: skip
    cloud.preflight(_spec("aws", security_group_ids=(default["GroupId"],)), ["us-east-1"])
    cloud.preflight(_spec("aws", subnet_id=subnet, security_group_ids=(group,)), ["us-east-1"])


def _default_vpc(region: str) -> str:
    from tests.fakes import ec2

    default = [{"Name": "is-default", "Values": ["true"]}]
    return ec2.client(region).describe_vpcs(Filters=default)["Vpcs"][0]["VpcId"]


def test_aws_preflight_without_credentials_leaves_it_to_terraform(no_aws_credentials):
    clouds.get("aws").preflight(spec_on("aws"), ["us-east-1"])


def test_up_refuses_before_anything_is_created(mocked_aws, monkeypatch, tmp_path):
    from cml_infra.lifecycle import up

    class NoEngine:
        argv = ("terraform",)
        label = "terraform"

        def __getattr__(self, name):
            raise AssertionError(f"terraform {name} called")

    monkeypatch.setattr(up.Engine, "discover", classmethod(lambda cls, *args: NoEngine()))
    _without_default_vpc("eu-west-1")
    root = tmp_path / "state"
    monkeypatch.setenv("CML_INFRA_HOME", str(root))
    result = CliRunner().invoke(
        app, ["up", "--cloud", "aws", "--region", "eu-west-1", "--size", "s"]
    )
    assert result.exit_code == 2, result.output
    assert result.output.startswith(
        "error: --subnet-id: aws region eu-west-1 has no default VPC; give --subnet-id"
    )
    assert len(result.output.strip().splitlines()) == 1
    assert not root.exists(), "nothing created, not even the state dir"
