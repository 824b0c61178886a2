"""The GCP Refresher over the loopback fake (tests/fakes/gcp.py), whose requests and responses
are checked against the Discovery documents of Compute v1 and Cloud Billing v1.

The SKUs are TEST FIXTURES (tests/data/gcp-cloudbilling-skus.json: Google's description forms,
made-up round prices); the expected prices below are worked out by hand from them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cml_infra import catalog
from cml_infra.catalog.offerings import Index, Offerings
from cml_infra.catalog.refresh import REFRESHERS
from cml_infra.catalog.refresh import gcp as refresh_gcp
from cml_infra.errors import UsageError

GCP = catalog.load("gcp")
SKUS = Path(__file__).resolve().parents[3] / "data" / "gcp-cloudbilling-skus.json"
# Accelerator types built into the GPU series, by the catalog's GPU name (Compute's names).
BUILT_IN = {
    "l4": "nvidia-l4",
    "a100": "nvidia-tesla-a100",
    "a100-80gb": "nvidia-a100-80gb",
    "h100": "nvidia-h100-80gb",
}
# Where the fake sells what: every zone sells e2 and n1; T4s attach in us-central1-a and
# europe-west4-a, V100s in us-central1-b; the GPU series only in us-central1.
US_A, US_B, EU_A, BLOCKED = "us-central1-a", "us-central1-b", "europe-west4-a", "me-central2-a"


def _sells(zone: str, instance_type: str) -> bool:
    series = instance_type.partition("-")[0]
    if series in ("e2", "n1"):
        return True
    if series in ("g2", "a3", "t2a"):
        return zone == US_A
    return zone == US_B  # a2


@pytest.fixture
def fake(fake_compute, monkeypatch):
    """The fake with the catalog's machine types (vCPUs and memory as the catalog has them:
    what a listing says is what the refresher prices), the two attachable GPUs, a zone the
    project cannot use, small pages, and the fixture SKUs."""
    compute = fake_compute
    monkeypatch.setattr(refresh_gcp, "INITIAL_BACKOFF", 0.01)
    compute.zones[:] = [US_A, US_B, EU_A, BLOCKED]
    compute.unreachable_zones.add(BLOCKED)
    for row in GCP.instance_types:
        for zone in (US_A, US_B, EU_A, BLOCKED):
            if _sells(zone, row.instance_type):
                built_in = None
                if row.gpu and not row.accelerator:
                    built_in = {BUILT_IN[row.gpu]: row.gpu_count}
                compute.add_machine_type(
                    zone, row.instance_type, row.vcpus, int(row.memory_gib * 1024), built_in
                )
    for zone in (US_A, EU_A, BLOCKED):
        compute.add_accelerator_type(zone, "nvidia-tesla-t4", 4, "NVIDIA T4")
    compute.add_accelerator_type(US_B, "nvidia-tesla-v100", 8, "NVIDIA V100")
    for sku in json.loads(SKUS.read_text(encoding="utf-8"))["skus"]:
        compute.add_sku(sku)
    compute.max_results = 7
    compute.sku_page_size = 10
    return compute


def _fetch(regions=None):
    warnings: list[str] = []
    found = REFRESHERS.find("gcp", "--cloud")().fetch(GCP, regions, warnings.append)
    return found, warnings


def _figure(found, offer, region, spot=False):
    figures = {o.figure(spot) for o in found.offerings if o.offer == offer and o.region == region}
    assert len(figures) == 1, figures  # one price per region, whatever the zone
    return figures.pop()


def test_fetch_prices_every_row_where_it_is_sold_from_the_skus(fake):
    found, warnings = _fetch()

    assert found.cloud == "gcp"
    assert found.regions == {"europe-west4": [EU_A], "us-central1": [US_A, US_B]}
    as_of = found.generated_at.date()
    figures = [f for o in found.offerings for f in (o.price, o.spot) if f is not None]
    assert figures and {(f.source, f.as_of) for f in figures} == {(refresh_gcp.SOURCE, as_of)}
    assert set(found.sources) == {refresh_gcp.SOURCE}
    # Round-trips through the file format, sources checked.
    assert Offerings.from_json(found.to_json()) == found

    # vCPUs * core + GiB * RAM: the narrow us-central1 E2 core SKU (0.02), not the wider one.
    assert _figure(found, "e2-standard-2", "us-central1").usd == pytest.approx(2 * 0.02 + 8 * 0.003)
    assert _figure(found, "e2-standard-2", "us-central1", spot=True).usd == pytest.approx(
        2 * 0.006 + 8 * 0.0009
    )
    assert _figure(found, "e2-standard-8", "europe-west4").usd == pytest.approx(
        8 * 0.022 + 32 * 0.0033
    )
    # No spot E2 SKU for europe-west4 in the fixture: no spot figure there, and a warning.
    assert _figure(found, "e2-standard-8", "europe-west4", spot=True) is None
    assert any("e2-standard-8" in w and "europe-west4" in w for w in warnings)
    # n1 + attached T4s: machine (N1Standard core and RAM SKUs) + GPU SKU * count.
    assert _figure(found, "n1-standard-8+t4x2", "us-central1").usd == pytest.approx(
        8 * 0.03 + 30 * 0.004 + 2 * 0.35
    )
    assert _figure(found, "n1-standard-4+t4x1", "europe-west4", spot=True).usd == pytest.approx(
        4 * 0.0077 + 15 * 0.0011 + 0.14
    )
    # Built-in GPUs, as the machine type listing names them.
    assert _figure(found, "a2-ultragpu-2g", "us-central1").usd == pytest.approx(
        24 * 0.032 + 340 * 0.0043 + 2 * 3.9
    )
    assert _figure(found, "a3-highgpu-8g", "us-central1", spot=True).usd == pytest.approx(
        208 * 0.013 + 1872 * 0.0018 + 8 * 2.5
    )
    assert _figure(found, "g2-standard-4", "us-central1").usd == pytest.approx(
        4 * 0.024 + 16 * 0.0028 + 0.56
    )


def test_fetch_offers_a_row_only_in_zones_that_sell_it_and_its_gpus(fake):
    found, _ = _fetch()
    index = Index(found)

    assert index.zones("n1-standard-4+t4x1", "us-central1", spot=False) == [US_A]
    assert index.zones("n1-standard-8+v100x1", "us-central1", spot=False) == [US_B]
    assert index.of("n1-standard-8+v100x1", "europe-west4") == []
    assert index.zones("a2-highgpu-1g", "us-central1", spot=True) == [US_B]
    assert sorted(index.zones("e2-standard-4", "us-central1", spot=False)) == [US_A, US_B]
    # T4s attach at most 4 to an instance there: every t4 row of the catalog fits.
    assert index.zones("n1-standard-16+t4x4", "europe-west4", spot=False) == [EU_A]
    assert not [o for o in found.offerings if o.zone == BLOCKED]


def test_fetch_pages_retries_throttling_and_leaves_out_a_region_it_cannot_use(fake):
    fake.fail(429, "Quota exceeded for quota metric 'Read requests'", method=None, count=1)
    fake.fail(
        429, "RESOURCE_EXHAUSTED: too many requests", method="cloudbilling.services.skus.list"
    )

    found, warnings = _fetch(["us-central1", "me-central2", "europe-west1"])

    assert set(found.regions) == {"us-central1"}
    assert {o.region for o in found.offerings} == {"us-central1"}
    assert [w for w in warnings if "me-central2" in w] == [
        f"gcp: region me-central2: project proj cannot list {BLOCKED} "
        f"(Scope 'zones/{BLOCKED}' is unreachable.); left out"
    ]
    assert len([w for w in warnings if "europe-west1" in w]) == 1
    ids = [(r["id"], r["status"]) for r in fake.requests]
    assert ids[0] == ("compute.machineTypes.aggregatedList", 429)
    assert ("cloudbilling.services.skus.list", 429) in ids
    pages = [r for r in fake.requests if r["id"] == "cloudbilling.services.skus.list"]
    assert len([r for r in pages if r["status"] == 200]) == 5  # 47 SKUs, 10 a page
    machine_pages = [r for r in fake.requests if r["id"] == "compute.machineTypes.aggregatedList"]
    assert len([r for r in machine_pages if r["status"] == 200]) > 1
    assert all(r["query"]["filter"][0].startswith("name eq ") for r in machine_pages)


def test_decoy_skus_price_nothing():
    """Committed-use, sole-tenant, virtual-workstation and other-unit SKUs are not matched."""
    decoys = json.loads(SKUS.read_text(encoding="utf-8"))["skus"][-4:]  # the fixture's last
    assert all(
        "Commit" in s["description"] or s["serviceRegions"] == ["us-central1"] for s in decoys
    )
    prices = refresh_gcp._Prices(decoys)
    for part, label in (
        ("Core", "E2 Instance"),
        ("Core", "N1 Predefined Instance"),
        ("GPU", "Nvidia Tesla T4"),
        ("Ram", "E2 Instance"),
    ):
        assert prices.rate(part, label, False, "us-central1") is None


def test_a_listing_error_is_one_line(fake):
    fake.fail(403, "Required 'compute.machineTypes.list' permission for 'projects/proj'")
    with pytest.raises(Exception) as caught:
        _fetch()
    assert "could not list machine and accelerator types" in str(caught.value)
    assert "compute.machineTypes.list" in str(caught.value)


def test_no_credentials_is_a_usage_error(monkeypatch, tmp_path):
    monkeypatch.delenv("CML_INFRA_GCP_API_ENDPOINT", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    with pytest.raises(UsageError) as caught:
        _fetch()
    assert caught.value.exit_code == 2
    assert "GOOGLE_APPLICATION_CREDENTIALS" in str(caught.value)
    assert str(caught.value).startswith("gcp credentials: ")
