"""cml_infra.clouds.azure against Azure Resource Manager at the HTTP level: the real
ResourceManagementClient (pipeline, paging, LRO polling, error mapping) talks to
tests/fakes/azure.py's FakeArm transport, given to the cloud, in-process; no socket is opened.

An instance is a managed resource group that holds a VM; one without is a leftover."""

from __future__ import annotations

import socket
from datetime import datetime, timezone

import pytest
from azure.core.rest import HttpRequest

from cml_infra.clouds import azure
from cml_infra.clouds.azure import AzureCloud
from cml_infra.errors import CmlInfraError
from tests.fakes.azure import ARM_SCOPE, FakeArm, FakeCredential

SUB = "sub-1"
EXPIRES = 1893456000  # 2030-01-01T00:00:00Z
MANAGED = {"cml-infra-managed": "true"}
ARM = f"https://management.azure.com/subscriptions/{SUB}"


@pytest.fixture(autouse=True)
def no_sockets(monkeypatch):
    """Whatever the SDK does, a connection attempt fails the test."""

    def refuse(self, *args, **kwargs):
        raise AssertionError(f"network connection attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


@pytest.fixture
def credential(monkeypatch):
    fake = FakeCredential()
    monkeypatch.setattr(azure, "_credential", lambda: fake)
    monkeypatch.setenv("ARM_SUBSCRIPTION_ID", SUB)
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)
    return fake


@pytest.fixture
def arm(credential):
    fake = FakeArm(SUB)
    fake.add_group(
        "cml-infra-a",
        "eastus",
        {**MANAGED, "cml-infra-name": "runner-a", "cml-infra-expires": str(EXPIRES)},
    )
    fake.add_group("cml-infra-b", "westeurope", {**MANAGED, "cml-infra-name": "runner-b"})
    fake.add_vm("cml-infra-a", "runner-a")
    # ARM's ids do not always keep the case a group was made with.
    fake.add_vm("CML-INFRA-B", "runner-b")
    fake.add_group("unrelated", "eastus")
    fake.add_vm("unrelated", "their-vm")
    fake.add_group("opted-out", "eastus", {"cml-infra-managed": "false", "team": "ml"})
    yield fake
    assert fake.violations == []


@pytest.fixture
def cloud(arm):
    return AzureCloud(transport=arm)


def test_the_client_comes_from_the_installed_sdk(credential):
    from azure.mgmt.resource.resources import ResourceManagementClient

    assert isinstance(azure._resources(), ResourceManagementClient)


def test_list_managed_returns_exactly_the_tagged_groups(cloud, arm):
    found = sorted(cloud.list_managed(None), key=lambda instance: instance.id)
    assert [i.id for i in found] == ["cml-infra-a", "cml-infra-b"]
    a, b = found
    assert (a.name, a.cloud, a.region, a.state) == ("runner-a", "azure", "eastus", "succeeded")
    assert a.expires_at == datetime.fromtimestamp(EXPIRES, timezone.utc)
    assert a.tags["cml-infra-managed"] == "true"
    assert (b.name, b.region, b.expires_at) == ("runner-b", "westeurope", None)
    # Listing deletes nothing; the filters went to ARM as the code wrote them: two calls.
    assert set(arm.groups) == {"cml-infra-a", "cml-infra-b", "unrelated", "opted-out"}
    groups, vms = arm.requests_for("GET")
    assert groups.startswith(f"{ARM}/resourcegroups?api-version=")
    assert (
        "$filter=tagName%20eq%20%27cml-infra-managed%27%20and%20tagValue%20eq%20%27true%27"
        in groups
    )
    assert vms.startswith(f"{ARM}/resources?api-version=")
    assert "$filter=resourceType%20eq%20%27Microsoft.Compute%2FvirtualMachines%27" in vms


def test_list_managed_keeps_the_regions_asked(cloud, arm):
    assert [i.id for i in cloud.list_managed(["eastus"])] == ["cml-infra-a"]
    assert [i.id for i in cloud.list_managed(["westeurope", "northeurope"])] == ["cml-infra-b"]
    assert cloud.list_managed([]) == []


def test_list_managed_follows_next_link(cloud, arm):
    arm.page_size = 2
    for n in range(5):
        arm.add_group(f"cml-infra-p{n}", "eastus", MANAGED)
        arm.add_vm(f"cml-infra-p{n}")
    arm.add_group("unrelated-2", "eastus", {"cml-infra-managed": "no"})
    ids = {i.id for i in cloud.list_managed(None)}
    assert ids == {"cml-infra-a", "cml-infra-b"} | {f"cml-infra-p{n}" for n in range(5)}
    pages = arm.requests_for("GET", "/resourcegroups?")
    assert len(pages) == 4  # 7 groups, 2 a page
    assert all("$skiptoken=" in url for url in pages[1:])
    vm_pages = arm.requests_for("GET", "/resources?")
    assert len(vm_pages) == 4  # 8 VMs (one not ours), 2 a page
    assert all("$skiptoken=" in url for url in vm_pages[1:])


def test_terminate_deletes_exactly_that_group_and_waits(cloud, arm):
    cloud.terminate(["cml-infra-a"])
    assert set(arm.groups) == {"cml-infra-b", "unrelated", "opted-out"}
    assert arm.requests_for("DELETE") == [
        f"{ARM}/resourcegroups/cml-infra-a?api-version=2025-04-01"
    ]
    # ARM answered 202 + Location; the poller asked twice (202 then 200), sleeping between.
    assert arm.polls == 2
    assert arm.sleeps == [15]
    assert cloud.list_managed(None)[0].id == "cml-infra-b"


def test_terminate_with_azure_async_operation_polling(cloud, arm):
    arm.lro = "azure-async-operation"
    arm.pending_polls = 3
    cloud.terminate(["cml-infra-a", "cml-infra-b"])
    assert set(arm.groups) == {"unrelated", "opted-out"}
    assert len(arm.requests_for("GET", "/operationstatuses/")) == 8
    assert arm.requests_for("GET", "/operationresults/") == []


def test_terminating_a_missing_group_is_fine(cloud, arm):
    cloud.terminate(["cml-infra-gone", "cml-infra-b"])
    assert set(arm.groups) == {"cml-infra-a", "unrelated", "opted-out"}
    assert len(arm.requests_for("DELETE")) == 2
    cloud.terminate([])
    assert len(arm.requests_for("DELETE")) == 2


# --- leftovers: a managed group without its VM -------------------------------------------------

CREATED = 1893369600  # 2029-12-31T00:00:00Z
NETWORK = ("virtualNetworks", "networkInterfaces", "publicIPAddresses", "networkSecurityGroups")


def _evicted(arm, group, launch_id="evicted01", location="eastus"):
    """What a Spot eviction (policy Delete) leaves: the runner's group and its network, the VM
    deleted alone."""
    ours = {**MANAGED, "cml-infra-name": "gpu-ci", "cml-infra-id": launch_id,
            "cml-infra-created": str(CREATED)}  # fmt: skip
    arm.add_group(group, location, ours)
    for kind in NETWORK:
        arm.add_resource(group, f"Microsoft.Network/{kind}", "cml-infra-gpu-ci", ours)
    vm = arm.add_vm(group, "gpu-ci", ours)
    arm.remove_resource(vm["id"])


def test_a_group_whose_vm_was_evicted_is_a_leftover_not_an_instance(cloud, arm):
    _evicted(arm, "cml-infra-gpu-ci-0a1b2c3d")
    assert {i.id for i in cloud.list_managed(None)} == {"cml-infra-a", "cml-infra-b"}
    [leftover] = cloud.list_leftovers(None)
    assert leftover.kind == "azurerm_resource_group"
    assert (leftover.id, leftover.cloud, leftover.region) == (
        "cml-infra-gpu-ci-0a1b2c3d",
        "azure",
        "eastus",
    )
    assert (leftover.name, leftover.launch_id) == ("gpu-ci", "evicted01")
    assert leftover.created_at == datetime.fromtimestamp(CREATED, timezone.utc)
    assert leftover.label == "azurerm_resource_group cml-infra-gpu-ci-0a1b2c3d"


def test_leftovers_keep_the_regions_asked(cloud, arm):
    _evicted(arm, "cml-infra-east", "east0001")
    _evicted(arm, "cml-infra-west", "west0001", location="westeurope")
    assert [g.id for g in cloud.list_leftovers(["westeurope"])] == ["cml-infra-west"]
    assert cloud.list_leftovers(["northeurope"]) == []
    assert cloud.list_leftovers([]) == []


def test_a_group_already_being_deleted_is_no_leftover(cloud, arm):
    _evicted(arm, "cml-infra-going")
    arm.groups["cml-infra-going"]["properties"]["provisioningState"] = "Deleting"
    assert cloud.list_leftovers(None) == []


def test_a_group_without_our_created_tag_has_no_known_age(cloud, arm):
    arm.add_group("cml-infra-old", "eastus", {**MANAGED, "cml-infra-created": "yesterday"})
    [leftover] = cloud.list_leftovers(None)
    assert (leftover.name, leftover.launch_id, leftover.created_at) == ("cml-infra-old", "", None)


def test_the_age_of_an_instance_is_its_created_tag(cloud, arm):
    arm.groups["cml-infra-a"]["tags"]["cml-infra-created"] = str(CREATED)
    by_id = {i.id: i for i in cloud.list_managed(None)}
    assert by_id["cml-infra-a"].created_at == datetime.fromtimestamp(CREATED, timezone.utc)
    assert by_id["cml-infra-b"].created_at is None


def test_without_a_managed_group_the_vms_are_not_listed(credential):
    arm = FakeArm(SUB)
    arm.add_group("unrelated", "eastus")
    arm.add_vm("unrelated")
    cloud = AzureCloud(transport=arm)
    assert cloud.list_managed(None) == []
    assert cloud.list_leftovers(None) == []
    assert arm.requests_for("GET", "/resources?") == []
    assert arm.violations == []


def test_delete_leftovers_deletes_the_group_with_everything_in_it(cloud, arm):
    _evicted(arm, "cml-infra-gpu-ci-0a1b2c3d")
    assert len(arm.in_group("cml-infra-gpu-ci-0a1b2c3d")) == 4
    cloud.delete_leftovers(cloud.list_leftovers(None))
    assert "cml-infra-gpu-ci-0a1b2c3d" not in arm.groups
    assert arm.in_group("cml-infra-gpu-ci-0a1b2c3d") == []
    assert set(arm.groups) == {"cml-infra-a", "cml-infra-b", "unrelated", "opted-out"}
    assert len(arm.in_group("unrelated")) == 1
    assert arm.requests_for("DELETE") == [
        f"{ARM}/resourcegroups/cml-infra-gpu-ci-0a1b2c3d?api-version=2025-04-01"
    ]


def test_delete_leftovers_of_a_group_already_gone_is_fine(cloud, arm):
    _evicted(arm, "cml-infra-gpu-ci-0a1b2c3d")
    found = cloud.list_leftovers(None)
    cloud.delete_leftovers(found)
    cloud.delete_leftovers(found)
    cloud.delete_leftovers([])
    assert len(arm.requests_for("DELETE")) == 2


def test_delete_leftovers_refuses_what_azure_does_not_leave(cloud, arm):
    from cml_infra.clouds.base import Leftover

    stranger = Leftover("aws_security_group", "us-east-1/sg-1", "aws", "us-east-1", "x", "", None)
    with pytest.raises(CmlInfraError, match="not something azure leaves behind"):
        cloud.delete_leftovers([stranger])
    assert arm.requests_for("DELETE") == []


def test_a_vm_listing_that_fails_is_one_error(cloud, arm):
    arm.fail(403, "AuthorizationFailed", method="GET", path="/resources$")
    with pytest.raises(
        CmlInfraError, match=r"could not list virtual machines.*AuthorizationFailed"
    ):
        cloud.list_managed(None)
    with pytest.raises(CmlInfraError, match=r"could not list virtual machines"):
        cloud.list_leftovers(None)


@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_authorization_failed_becomes_cml_infra_error(cloud, arm, method):
    arm.fail(403, "AuthorizationFailed", method=method)
    if method == "GET":
        with pytest.raises(
            CmlInfraError, match=r"could not list resource groups.*AuthorizationFailed"
        ):
            cloud.list_managed(None)
    else:
        with pytest.raises(CmlInfraError, match=r"delete failed.*AuthorizationFailed"):
            cloud.terminate(["cml-infra-a"])
        assert "cml-infra-a" in arm.groups
    # 403 is not retried.
    assert len(arm.requests) == 1


def test_check_with_a_credential_and_subscription(cloud, credential):
    assert cloud.check() == (True, f"subscription {SUB}")
    assert credential.scopes == [(ARM_SCOPE,)]


def test_the_client_get_and_check_existence(arm):
    from azure.core.exceptions import ResourceNotFoundError

    groups = azure._resources(arm).resource_groups
    group = groups.get("UNRELATED")
    assert (group.name, group.location) == ("unrelated", "eastus")
    assert groups.check_existence("opted-out") is True
    assert groups.check_existence("nope") is False
    with pytest.raises(ResourceNotFoundError, match="ResourceGroupNotFound"):
        groups.get("nope")


# --- the fake itself ----------------------------------------------------------------------------


def _send(fake, method, url, token="fake-token"):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return fake.send(HttpRequest(method, url, headers=headers))


def test_fake_deletes_the_way_arm_does():
    fake = FakeArm(SUB)
    fake.add_group("rg", "eastus", MANAGED)
    gone = _send(fake, "DELETE", f"{ARM}/resourcegroups/nope?api-version=2025-04-01")
    assert gone.status_code == 404
    assert gone.json()["error"]["code"] == "ResourceGroupNotFound"
    accepted = _send(fake, "DELETE", f"{ARM}/resourcegroups/rg?api-version=2025-04-01")
    assert accepted.status_code == 202
    assert accepted.headers["Retry-After"] == "15"
    location = accepted.headers["Location"]
    assert location.startswith(f"{ARM}/operationresults/")
    assert "api-version=2025-04-01" in location
    deleting = _send(fake, "GET", f"{ARM}/resourcegroups/rg?api-version=2025-04-01")
    assert deleting.json()["properties"]["provisioningState"] == "Deleting"
    assert _send(fake, "GET", location).status_code == 202
    assert _send(fake, "GET", location).status_code == 200
    assert _send(fake, "GET", f"{ARM}/resourcegroups/rg?api-version=2025-04-01").status_code == 404
    assert fake.violations == []


def test_fake_records_what_arm_would_reject():
    fake = FakeArm(SUB)
    assert (
        _send(fake, "GET", f"{ARM}/resourcegroups?api-version=2025-04-01", None).status_code == 401
    )
    assert _send(fake, "GET", f"{ARM}/resourcegroups").status_code == 400
    bad_filter = f"{ARM}/resourcegroups?api-version=2025-04-01&$filter=location%20eq%20%27x%27"
    assert _send(fake, "GET", bad_filter).json()["error"]["code"] == "InvalidFilterInQueryString"
    assert (
        _send(
            fake,
            "GET",
            "https://management.azure.com/subscriptions/other/resourcegroups"
            "?api-version=2025-04-01",
        ).status_code
        == 404
    )
    assert len(fake.violations) == 4


def test_fake_lists_resources_by_type_or_tag_as_arm_does():
    fake = FakeArm(SUB)
    fake.add_group("rg", "eastus", MANAGED)
    fake.add_vm("rg", "vm", {"team": "ml"})
    fake.add_resource("rg", "Microsoft.Network/virtualNetworks", "net", MANAGED)
    base = f"{ARM}/resources?api-version=2025-04-01"
    by_type = _send(fake, "GET", base + "&$filter=resourceType%20eq%20%27microsoft.compute"
                    "%2Fvirtualmachines%27").json()["value"]  # fmt: skip
    assert [(r["name"], r["tags"]) for r in by_type] == [("vm", {"team": "ml"})]
    by_tag = _send(fake, "GET", base + "&$filter=tagName%20eq%20%27cml-infra-managed%27"
                   "%20and%20tagValue%20eq%20%27true%27").json()["value"]  # fmt: skip
    # ARM leaves the tags out when it filters by them.
    assert [r["name"] for r in by_tag] == ["net"] and "tags" not in by_tag[0]
    assert fake.violations == []
    both = (base + "&$filter=resourceType%20eq%20%27Microsoft.Compute%2FvirtualMachines%27"
            "%20and%20tagName%20eq%20%27team%27")  # fmt: skip
    assert _send(fake, "GET", both).json()["error"]["code"] == "InvalidFilterInQueryString"
    assert len(fake.violations) == 1


def test_fake_deletes_a_groups_resources_with_it_and_evicts_a_vm_alone():
    fake = FakeArm(SUB, pending_polls=0)
    fake.add_group("rg", "eastus", MANAGED)
    vm = fake.add_vm("RG", "vm")
    assert (
        vm["id"]
        == f"/subscriptions/{SUB}/resourceGroups/RG/providers/Microsoft.Compute/virtualMachines/vm"
    )
    fake.add_resource("rg", "Microsoft.Network/publicIPAddresses", "ip")
    fake.remove_resource(vm["id"])
    assert [r["name"] for r in fake.in_group("rg")] == ["ip"]
    location = _send(fake, "DELETE", f"{ARM}/resourcegroups/rg?api-version=2025-04-01").headers[
        "Location"
    ]
    assert _send(fake, "GET", location).status_code == 200
    assert fake.groups == {} and fake.resources == {}
    with pytest.raises(ValueError, match="no resource group 'nope'"):
        fake.add_vm("nope")
    assert fake.violations == []


def test_a_rollback_deletes_only_the_group_of_its_own_launch(cloud, arm, tmp_path, make_record):
    """Two launches of `gpu-ci` (their groups' names differ by the launch hash): the sweep of
    ours deletes the group tagged with our launch id, never the other of the same name."""
    from cml_infra.lifecycle import teardown
    from cml_infra.state import StateDir

    for group, launch_id in (("cml-infra-gpu-ci-0a1b2c3d", "ours0001"),
                             ("cml-infra-gpu-ci-9f8e7d6c", "theirs01")):  # fmt: skip
        arm.add_group(
            group, "eastus", {**MANAGED, "cml-infra-name": "gpu-ci", "cml-infra-id": launch_id}
        )
        arm.add_vm(group, "gpu-ci")
    record = make_record("gpu-ci", cloud="azure", region="eastus", launch_id="ours0001")
    assert teardown.destroy(None, StateDir(tmp_path / "state"), cloud, record) == ""
    assert "cml-infra-gpu-ci-9f8e7d6c" in arm.groups
    assert "cml-infra-gpu-ci-0a1b2c3d" not in arm.groups
    assert arm.requests_for("DELETE") == [
        f"{ARM}/resourcegroups/cml-infra-gpu-ci-0a1b2c3d?api-version=2025-04-01"
    ]
