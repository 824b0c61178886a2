"""cml_infra.clouds.azure against Azure Resource Manager at the HTTP level: the real
ResourceManagementClient (pipeline, paging, LRO polling, error mapping) talks to
tests/fakes/azure.py's FakeArm transport, given to the cloud, in-process; no socket is opened."""

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
    fake.add_group("unrelated", "eastus")
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
    # Listing deletes nothing; the filter went to ARM as the code wrote it.
    assert set(arm.groups) == {"cml-infra-a", "cml-infra-b", "unrelated", "opted-out"}
    [url] = arm.requests_for("GET")
    assert url.startswith(f"{ARM}/resourcegroups?api-version=")
    assert (
        "$filter=tagName%20eq%20%27cml-infra-managed%27%20and%20tagValue%20eq%20%27true%27" in url
    )


def test_list_managed_keeps_the_regions_asked(cloud, arm):
    assert [i.id for i in cloud.list_managed(["eastus"])] == ["cml-infra-a"]
    assert [i.id for i in cloud.list_managed(["westeurope", "northeurope"])] == ["cml-infra-b"]
    assert cloud.list_managed([]) == []


def test_list_managed_follows_next_link(cloud, arm):
    arm.page_size = 2
    for n in range(5):
        arm.add_group(f"cml-infra-p{n}", "eastus", MANAGED)
    arm.add_group("unrelated-2", "eastus", {"cml-infra-managed": "no"})
    ids = {i.id for i in cloud.list_managed(None)}
    assert ids == {"cml-infra-a", "cml-infra-b"} | {f"cml-infra-p{n}" for n in range(5)}
    pages = arm.requests_for("GET", "/resourcegroups?")
    assert len(pages) == 4  # 7 groups, 2 a page
    assert all("$skiptoken=" in url for url in pages[1:])


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
    record = make_record("gpu-ci", cloud="azure", region="eastus", launch_id="ours0001")
    assert teardown.destroy(None, StateDir(tmp_path / "state"), cloud, record) == ""
    assert "cml-infra-gpu-ci-9f8e7d6c" in arm.groups
    assert "cml-infra-gpu-ci-0a1b2c3d" not in arm.groups
    assert arm.requests_for("DELETE") == [
        f"{ARM}/resourcegroups/cml-infra-gpu-ci-0a1b2c3d?api-version=2025-04-01"
    ]
