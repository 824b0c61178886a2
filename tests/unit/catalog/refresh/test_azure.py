"""The Azure refresher over fakes of its two APIs: Resource SKUs through azure-core's ARM pipeline
(tests/fakes/azure.py's FakeArm, checked against the ResourceSkus_List description) and the
Retail Prices API on loopback (FakeRetailPrices, checked against the schema written from
Microsoft's page), with paging, throttling and restrictions."""

from __future__ import annotations

from datetime import date, datetime, timezone

import pytest

from cml_infra.catalog import load
from cml_infra.catalog.offerings import Figure, Offering, Offerings
from cml_infra.catalog.refresh import REFRESHERS
from cml_infra.catalog.refresh.azure import PRICES_SOURCE, SKUS_SOURCE, AzureRefresher
from cml_infra.errors import UsageError
from tests.fakes.azure import FakeArm, FakeCredential, FakeRetailPrices

SUB = "sub-1"
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=timezone.utc)
T4 = "Standard_NC4as_T4_v3"
D2 = "Standard_D2s_v5"


@pytest.fixture
def env(monkeypatch):
    monkeypatch.setenv("ARM_SUBSCRIPTION_ID", SUB)
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)


@pytest.fixture
def arm():
    fake = FakeArm(SUB, page_size=2)
    fake.add_sku(
        T4,
        {"eastus": ["1", "2", "3"], "westeurope": [], "westus3": ["1"]},
        restricted=["westus3"],
        restricted_zones={"eastus": ["2"]},
    )
    fake.add_sku(D2, {"eastus": ["1", "2", "3"]})
    # Neither is ours: another resource type, and a size the catalog does not name.
    fake.add_sku("Premium_LRS", {"eastus": ["1"]}, resource_type="disks")
    fake.add_sku("Standard_B1s", {"eastus": ["1", "2", "3"], "brazilsouth": []})
    yield fake
    assert fake.violations == []


@pytest.fixture
def prices(monkeypatch):
    with FakeRetailPrices(page_size=2) as fake:
        monkeypatch.setenv("CML_INFRA_AZURE_PRICES_ENDPOINT", fake.url)
        fake.add_price(T4, "eastus", 0.6, effective="2024-01-01T00:00:00Z")
        fake.add_price(T4, "eastus", 0.526, effective="2025-06-01T00:00:00Z")
        fake.add_price(T4, "eastus", 0.0789, spot=True)
        fake.add_price(T4, "eastus", 0.9, windows=True)
        fake.add_price(T4, "eastus", 0.105, low_priority=True)
        # Announced, not yet in effect on NOW.
        fake.add_price(T4, "eastus", 0.4, effective="2027-01-01T00:00:00Z")
        fake.add_price(T4, "westeurope", 0.58)
        fake.add_price(T4, "westeurope", 0.0812, spot=True)
        fake.add_price(T4, "westus3", 0.55)
        fake.add_price(D2, "eastus", 0.096)
        fake.add_price(D2, "eastus", 0.0115, spot=True)
        fake.add_price(D2, "eastus", 8.0, unit="1/Month")
        yield fake
        assert fake.violations == []


def _refresh(arm, regions=None, credential=None):
    warnings: list[str] = []
    refresher = AzureRefresher(
        transport=arm, credential=credential or FakeCredential(), now=lambda: NOW
    )
    found = refresher.fetch(load("azure"), regions, warnings.append)
    return found, warnings


def _fig(usd):
    return Figure(usd=usd, source=PRICES_SOURCE, as_of=date(2026, 3, 2))


def test_registered():
    assert REFRESHERS.find("azure", "--cloud") is AzureRefresher


def test_fetch_offerings_with_paging_throttling_and_restrictions(env, arm, prices):
    arm.fail(429, "TooManyRequests", path="/skus", times=1, retry_after=7)
    prices.throttle(1, retry_after=1)

    found, warnings = _refresh(arm)

    t4 = [(_fig(0.526), _fig(0.0789), zone) for zone in ("1", "3")]
    assert found.offerings == [
        *(
            Offering(offer=D2, region="eastus", zone=z, price=_fig(0.096), spot=_fig(0.0115))
            for z in ("1", "2", "3")
        ),
        *(Offering(offer=T4, region="eastus", zone=z, price=p, spot=s) for p, s, z in t4),
        Offering(offer=T4, region="westeurope", zone=None, price=_fig(0.58), spot=_fig(0.0812)),
    ]
    # Every zone any usable size lists, the restricted one of the T4 size included (D2 has it).
    assert found.regions == {"eastus": ["1", "2", "3"], "westeurope": []}
    assert set(found.sources) == {SKUS_SOURCE, PRICES_SOURCE}
    assert found.generated_at == NOW
    assert warnings == [
        f"azure: eastus: not available to this subscription, left out: {T4} in zone(s) 2 "
        "(NotAvailableForSubscription)",
        f"azure: westus3: not available to this subscription, left out: {T4} "
        "(NotAvailableForSubscription)",
    ]
    # Round trip through the file format, which checks every figure's source is listed.
    assert Offerings.from_json(found.to_json()) == found

    # ARM: paged (2 SKUs a page), the 429 retried after its Retry-After through the transport.
    listed = arm.requests_for("GET", "/providers/Microsoft.Compute/skus")
    assert len(listed) == 1 + 4  # the throttled request, then 7 entries 2 a page
    assert sum("%24skiptoken=" in url for url in listed) == 3
    assert 7 in arm.sleeps
    # Prices: the throttled request retried no sooner than its Retry-After, pages followed.
    statuses = [status for _, status, _ in prices.requests]
    assert statuses[0] == 429 and statuses[1] == 200
    assert prices.requests[1][0] - prices.requests[0][0] >= 1.0
    assert any("%24skip=" in path or "$skip=" in path for _, _, path in prices.requests)


def test_regions_limit_the_refresh_and_an_unknown_one_warns(env, arm, prices):
    found, warnings = _refresh(arm, regions=["westeurope", "nowhere"])

    assert [(o.offer, o.region) for o in found.offerings] == [(T4, "westeurope")]
    assert found.regions == {"westeurope": []}
    assert warnings == ["azure: nowhere: Resource SKUs lists none of the catalog's sizes there"]


def test_every_zone_restricted_leaves_the_region_usable_without_a_zone(env, prices):
    arm = FakeArm(SUB)
    arm.add_sku(T4, {"eastus": ["1", "2"]}, restricted_zones={"eastus": ["1", "2"]})

    found, warnings = _refresh(arm)

    assert [(o.region, o.zone) for o in found.offerings] == [("eastus", None)]
    assert len(warnings) == 1 and "zone(s) 1, 2" in warnings[0]
    assert arm.violations == []


def test_no_credentials_is_a_usage_error_before_any_request(env, arm, prices):
    class NoCredential:
        def get_token(self, *scopes, **kwargs):
            from azure.identity import CredentialUnavailableError

            raise CredentialUnavailableError("EnvironmentCredential: not configured")

    with pytest.raises(UsageError) as caught:
        _refresh(arm, credential=NoCredential())

    assert caught.value.exit_code == 2
    assert "az login" in str(caught.value) and "\n" not in str(caught.value)
    assert arm.requests == [] and prices.requests == []


def test_no_subscription_is_a_usage_error(monkeypatch, arm):
    monkeypatch.delenv("ARM_SUBSCRIPTION_ID", raising=False)
    monkeypatch.delenv("AZURE_SUBSCRIPTION_ID", raising=False)

    with pytest.raises(UsageError, match="ARM_SUBSCRIPTION_ID") as caught:
        _refresh(arm)

    assert caught.value.exit_code == 2
    assert arm.requests == []


def test_the_fakes_refuse_what_the_descriptions_do_not_allow(env, prices):
    """The checks above could not fail if the fakes accepted anything."""
    arm = FakeArm(SUB)
    arm.add_sku(T4, {"eastus": ["1"]})[0]["zone"] = "1"  # not a ResourceSku field
    prices.items[0]["price"] = 1.0  # not a Retail Prices field

    _refresh(arm)

    assert any("'zone' was unexpected" in v for v in arm.violations)
    assert any("'price' was unexpected" in v for v in prices.violations)
    prices.violations.clear()
