"""cml_infra.clouds.azure: custom data, images, spot bids and credentials (with a fake
credential: DefaultAzureCredential would probe the Azure metadata server)."""

from __future__ import annotations

import base64
import gzip
import random
import types
from datetime import datetime, timezone

import pytest

from cml_infra import clouds
from cml_infra.clouds import azure
from cml_infra.clouds.azure import CUSTOM_DATA_LIMIT, AzureCloud
from cml_infra.clouds.base import RenderContext
from cml_infra.errors import UsageError
from tests.unit.clouds.specs import CREATED, EXPIRES, module_vars, resolve, spec_on

IMAGE = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/images"
    "/providers/Microsoft.Compute/images/runner-2404"
)
GALLERY_IMAGE = (
    "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/images"
    "/providers/Microsoft.Compute/galleries/ci/images/runner/versions/1.0.0"
)


def _spec(**changes):
    return spec_on("azure", **changes)


@pytest.fixture
def cloud():
    return clouds.get("azure")


def test_get_azure(cloud):
    assert isinstance(cloud, AzureCloud)
    assert cloud.module == "azure"
    assert cloud.sensitive_vars() == frozenset({"custom_data_base64"})


def test_custom_data_is_the_script(cloud):
    script = "#!/bin/bash\necho hi\n"
    encoded = module_vars(cloud, _spec(), script)["custom_data_base64"]
    assert base64.b64decode(encoded, validate=True).decode() == script


@pytest.mark.parametrize(("size", "compressed"), [(48 * 1024, False), (48 * 1024 + 1, True)])
def test_custom_data_limit_counts_the_base64_text(cloud, size, compressed):
    # 48 KiB of script is exactly 64 KiB of base64: Azure's limit is on the encoded text.
    script = "#!/bin/bash\n" + "#" * (size - 12)
    encoded = module_vars(cloud, _spec(), script)["custom_data_base64"]
    assert len(encoded) <= CUSTOM_DATA_LIMIT
    payload = base64.b64decode(encoded, validate=True)
    assert (payload[:2] == b"\x1f\x8b") is compressed
    assert (gzip.decompress(payload) if compressed else payload).decode() == script


def test_custom_data_too_large_even_compressed(cloud):
    noise = base64.b64encode(random.Random(5).randbytes(60 * 1024)).decode()
    with pytest.raises(UsageError) as caught:
        module_vars(cloud, _spec(), noise)
    assert caught.value.source == "startup script"
    assert "azure allows 65,536 bytes of user data" in str(caught.value)


@pytest.mark.parametrize("image", [IMAGE, GALLERY_IMAGE, IMAGE.lower()])
def test_image_resource_id(cloud, image):
    assert module_vars(cloud, _spec(image=image))["source_image_id"] == image


@pytest.mark.parametrize(
    "image",
    [
        "ubuntu",
        "Canonical:ubuntu-24_04-lts:server:latest",
        "/subscriptions/x/resourceGroups/y/providers/Microsoft.Storage/accounts/z",
        "subscriptions/x/resourceGroups/y/providers/Microsoft.Compute/images/z",
    ],
)
def test_image_must_be_a_resource_id(cloud, image):
    with pytest.raises(UsageError) as caught:
        resolve(cloud, _spec(image=image))
    assert caught.value.source == "--image"
    assert "is not an image resource id" in str(caught.value)


def test_spot_bid(cloud):
    assert module_vars(cloud, _spec(spot=True))["max_bid_price"] == -1
    assert module_vars(cloud, _spec(spot=True, max_price=0.2))["max_bid_price"] == 0.2
    assert module_vars(cloud, _spec())["max_bid_price"] == -1


def test_the_on_demand_fallback_of_a_spot_spec_bids_nothing(cloud):
    spec = _spec(spot=True, max_price=0.2, on_demand_fallback=True)
    placement = cloud.resolve(spec, region=None, spot=False, max_price=None)
    variables = cloud.module_vars(spec, placement, RenderContext("", CREATED, EXPIRES))
    assert (variables["spot"], variables["max_bid_price"]) == (False, -1)


def test_location_is_the_region(cloud):
    assert module_vars(cloud, _spec(region="westeurope"))["location"] == "westeurope"


# --- credentials ------------------------------------------------------------------------------


class FakeCredential:
    def __init__(self, error=None):
        self.error = error
        self.scopes = []

    def get_token(self, *scopes, **kwargs):
        self.scopes.append(scopes)
        if self.error is not None:
            raise self.error
        return ("token", 0)


@pytest.fixture
def no_subscription(monkeypatch):
    monkeypatch.delenv("ARM_SUBSCRIPTION_ID", raising=False)
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)


def _use(monkeypatch, credential):
    monkeypatch.setattr(azure, "_credential", lambda: credential)
    return credential


def test_check_without_a_subscription(cloud, monkeypatch, no_subscription):
    credential = _use(monkeypatch, FakeCredential())
    ready, sentence = cloud.check()
    assert ready is False
    assert "ARM_SUBSCRIPTION_ID" in sentence
    assert not sentence.startswith("azure: ")
    assert credential.scopes == [], "no token asked for without a subscription"


@pytest.mark.parametrize("variable", ["ARM_SUBSCRIPTION_ID", "AZURE_SUBSCRIPTION_ID"])
def test_check_with_a_subscription(cloud, monkeypatch, no_subscription, variable):
    monkeypatch.setenv(variable, "11111111-2222-3333-4444-555555555555")
    credential = _use(monkeypatch, FakeCredential())
    assert cloud.check() == (True, "subscription 11111111-2222-3333-4444-555555555555")
    assert credential.scopes == [("https://management.azure.com/.default",)]


def test_check_when_the_credential_fails(cloud, monkeypatch, no_subscription):
    monkeypatch.setenv("ARM_SUBSCRIPTION_ID", "sub-1")
    _use(monkeypatch, FakeCredential(RuntimeError("DefaultAzureCredential failed\nlong detail")))
    ready, sentence = cloud.check()
    assert ready is False
    assert sentence.startswith(
        "no usable credentials (RuntimeError: DefaultAzureCredential failed)"
    )
    assert "long detail" not in sentence
    assert "az login" in sentence


def test_the_unit_tests_never_build_a_real_credential():
    # conftest.py replaces _credential for every test; a real one would probe 169.254.169.254.
    with pytest.raises(RuntimeError, match="no Azure credential in the unit tests"):
        azure._credential().get_token("https://management.azure.com/.default")


# --- resource groups, through a fake management client ----------------------------------------


class FakeGroups:
    """The resource groups, and the VMs in them (by resource id), of a fake management client."""

    def __init__(self, groups, missing=(), vms=()):
        self.groups = groups
        self.missing = set(missing)
        self.vms = [types.SimpleNamespace(id=vm_id) for vm_id in vms]
        self.filters = []
        self.deleted = []
        self.waited = []
        # The transport each client was made with (None: the network).
        self.transports = []

    def list(self, filter=None):
        self.filters.append(filter)
        return iter(self.groups)

    def list_resources(self, filter=None):
        self.filters.append(filter)
        return iter(self.vms)

    def begin_delete(self, name):
        from azure.core.exceptions import ResourceNotFoundError

        if name in self.missing:
            raise ResourceNotFoundError(f"Resource group '{name}' could not be found.")
        self.deleted.append(name)
        return types.SimpleNamespace(result=lambda: self.waited.append(name))


def _group(name, location, tags, state="Succeeded"):
    return types.SimpleNamespace(
        name=name,
        location=location,
        tags=tags,
        properties=types.SimpleNamespace(provisioning_state=state),
    )


@pytest.fixture
def groups(monkeypatch):
    fake = FakeGroups(
        [
            _group(
                "cml-infra-east-a",
                "eastus",
                {
                    "cml-infra-managed": "true",
                    "cml-infra-name": "east-a",
                    "cml-infra-expires": "1893456000",
                },
            ),
            _group("cml-infra-west-a", "westeurope", {"cml-infra-managed": "true"}, "Deleting"),
        ],
        missing={"cml-infra-gone"},
        vms=[
            "/subscriptions/s/resourceGroups/cml-infra-east-a/providers/"
            "Microsoft.Compute/virtualMachines/east-a",
            "/subscriptions/s/resourceGroups/CML-INFRA-WEST-A/providers/"
            "Microsoft.Compute/virtualMachines/west-a",
        ],
    )

    def resources(transport=None):
        fake.transports.append(transport)
        return types.SimpleNamespace(
            resource_groups=fake, resources=types.SimpleNamespace(list=fake.list_resources)
        )

    monkeypatch.setattr(azure, "_resources", resources)
    return fake


def test_list_managed_asks_for_our_tag_and_keeps_the_regions_asked(cloud, groups):
    [found] = cloud.list_managed(["eastus", "eastus2"])
    assert groups.filters == [
        "tagName eq 'cml-infra-managed' and tagValue eq 'true'",
        "resourceType eq 'Microsoft.Compute/virtualMachines'",
    ]
    assert found.id == "cml-infra-east-a"
    assert found.name == "east-a"
    assert (found.cloud, found.region, found.state) == ("azure", "eastus", "succeeded")
    assert found.expires_at == datetime.fromtimestamp(1893456000, timezone.utc)
    [other] = cloud.list_managed(["westeurope"])
    assert (other.name, other.state, other.expires_at) == ("cml-infra-west-a", "deleting", None)


def test_terminate_deletes_the_groups_and_skips_gone_ones(cloud, groups):
    cloud.terminate(["cml-infra-east-a", "cml-infra-gone", "cml-infra-west-a"])
    assert groups.deleted == ["cml-infra-east-a", "cml-infra-west-a"]
    assert groups.waited == ["cml-infra-east-a", "cml-infra-west-a"]


def test_the_client_goes_through_the_clouds_own_transport(groups):
    transport = object()
    cloud = AzureCloud(transport=transport)
    cloud.list_managed(None)
    cloud.terminate(["cml-infra-east-a"])
    assert groups.transports == [transport, transport]
    clouds.get("azure").list_managed(None)
    assert groups.transports[-1] is None
