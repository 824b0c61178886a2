"""cml_infra.placement: the attempts `up` makes, in order, and what a Placement says of itself."""

from __future__ import annotations

from dataclasses import replace

import pytest

from cml_infra import clouds
from cml_infra.catalog import load
from cml_infra.errors import UsageError
from cml_infra.placement import Attempt, Placement, attempts
from cml_infra.spec import RunnerSpec
from cml_infra.state import StateDir


def _spec(cloud, **changes):
    fields = {"name": "box-1", "cloud": cloud, "idle_timeout": 60, "ttl": 3600}
    fields.update(changes)
    return RunnerSpec(**fields)


def _where(found):
    return [attempt.placement.where for attempt in found]


class RecordingCloud:
    """Resolves any region, with two zones in each, and notes what it was asked."""

    def __init__(self, zones=("a", "b")):
        self.asked = []
        self.zone_names = zones

    def resolve(self, spec, *, region, spot, max_price):
        self.asked.append((region, spot, max_price))
        return Placement(
            cloud="fake",
            region=region or "home",
            instance_type="t",
            hourly_price=0.1 if spot else 0.3,
            spot=spot,
            max_price=max_price,
        )

    def zones(self, region):
        return tuple(f"{region}-{zone}" for zone in self.zone_names)


# --- the order of the attempts -----------------------------------------------------------------


def test_each_region_on_the_asked_market_then_each_region_on_demand():
    cloud = RecordingCloud()
    spec = _spec(
        "fake",
        region="r1",
        fallback_regions=("r2",),
        spot=True,
        max_price=0.2,
        on_demand_fallback=True,
    )
    found = attempts(spec, cloud)
    assert _where(found) == [
        "r1-a (spot)",
        "r1-b (spot)",
        "r2-a (spot)",
        "r2-b (spot)",
        "r1-a (on-demand)",
        "r1-b (on-demand)",
        "r2-a (on-demand)",
        "r2-b (on-demand)",
    ]
    assert [attempt.number for attempt in found] == list(range(8))
    # Each region and market is resolved once, the fallback with no price cap.
    assert cloud.asked == [
        ("r1", True, 0.2),
        ("r2", True, 0.2),
        ("r1", False, None),
        ("r2", False, None),
    ]


def test_without_the_fallback_only_the_asked_market_is_tried():
    spec = _spec("fake", region="r1", fallback_regions=("r2",), spot=True)
    assert _where(attempts(spec, RecordingCloud())) == [
        "r1-a (spot)",
        "r1-b (spot)",
        "r2-a (spot)",
        "r2-b (spot)",
    ]


def test_on_demand_is_tried_once_per_zone():
    assert _where(attempts(_spec("fake", region="r1"), RecordingCloud())) == [
        "r1-a (on-demand)",
        "r1-b (on-demand)",
    ]


def test_no_region_asks_the_cloud_for_its_default():
    cloud = RecordingCloud()
    found = attempts(_spec("fake"), cloud)
    assert cloud.asked == [(None, False, None)]
    assert {attempt.placement.region for attempt in found} == {"home"}


def test_a_region_without_zones_is_one_attempt():
    found = attempts(_spec("fake", region="r1"), RecordingCloud(zones=()))
    assert [(a.number, a.placement.zone, a.placement.where) for a in found] == [
        (0, None, "r1 (on-demand)")
    ]


def test_every_attempt_is_resolved_before_any_is_made():
    spec = _spec("gcp", region="us-central1", fallback_regions=("mars-central1",))
    with pytest.raises(UsageError) as caught:
        attempts(spec, clouds.get("gcp"))
    assert caught.value.source == "--region"
    assert "'mars-central1'" in str(caught.value)


# --- the zones of each cloud -------------------------------------------------------------------


def test_gcp_tries_each_of_the_catalogs_zones():
    spec = _spec("gcp", region="us-east1", fallback_regions=("us-west1",))
    zones = [attempt.placement.zone for attempt in attempts(spec, clouds.get("gcp"))]
    assert zones == [*load("gcp").regions["us-east1"], *load("gcp").regions["us-west1"]]
    assert zones == ["us-east1-b", "us-east1-c", "us-east1-d", "us-west1-a", "us-west1-b"]


def test_aws_lets_ec2_pick_the_zone_first_then_names_the_catalogs():
    found = attempts(_spec("aws", region="us-east-2"), clouds.get("aws"))
    assert [attempt.placement.zone for attempt in found] == [
        None,
        *load("aws").regions["us-east-2"],
    ]
    assert _where(found)[:2] == ["us-east-2 (on-demand)", "us-east-2a (on-demand)"]


def test_azure_places_in_the_region():
    spec = _spec("azure", region="eastus", fallback_regions=("westeurope",), spot=True)
    assert _where(attempts(spec, clouds.get("azure"))) == ["eastus (spot)", "westeurope (spot)"]


def test_local_has_one_attempt_and_no_zone(tmp_path):
    local = clouds.get("local", StateDir(tmp_path))
    [attempt] = attempts(_spec("local"), local)
    assert (attempt.number, attempt.placement.zone, attempt.placement.region) == (0, None, "local")


def test_the_spot_attempts_of_a_vm_cloud_are_priced_on_their_market():
    spec = _spec("aws", gpu="t4", gpu_count=1, spot=True, max_price=0.3, on_demand_fallback=True)
    found = attempts(spec, clouds.get("aws"))
    offer = load("aws").offer(load("aws").gpus["t4"][1])
    spot = {(a.placement.hourly_price, a.placement.max_price) for a in found if a.placement.spot}
    on_demand = {
        (a.placement.hourly_price, a.placement.max_price) for a in found if not a.placement.spot
    }
    assert spot == {(offer.spot_price, 0.3)}
    assert on_demand == {(offer.price, None)}


# --- Placement and Attempt ---------------------------------------------------------------------

PLACED = Placement(cloud="gcp", region="us-east1", instance_type="n1-standard-4", hourly_price=0.5)


def test_the_market_is_spot_or_on_demand():
    assert PLACED.market == "on-demand"
    assert replace(PLACED, spot=True).market == "spot"


def test_where_names_the_zone_or_else_the_region_and_the_market():
    assert PLACED.where == "us-east1 (on-demand)"
    zoned = replace(PLACED, zone="us-east1-b", spot=True)
    assert zoned.where == "us-east1-b (spot)"


def test_record_fields_say_where_and_on_what():
    assert PLACED.record_fields() == {
        "region": "us-east1",
        "instance_type": "n1-standard-4",
        "gpu": None,
        "spot": False,
        "hourly_price": 0.5,
    }
    with_gpu = replace(PLACED, gpu="t4", gpu_count=2, spot=True, zone="us-east1-b")
    assert with_gpu.record_fields() == {
        "region": "us-east1",
        "instance_type": "n1-standard-4",
        "gpu": "t4:2",
        "spot": True,
        "hourly_price": 0.5,
    }


def test_an_attempt_shares_region_and_market_across_zones_only():
    spec = _spec(
        "gcp", region="us-east1", fallback_regions=("us-west1",), spot=True, on_demand_fallback=True
    )
    first, second, *rest = attempts(spec, clouds.get("gcp"))
    assert first.same_region_and_market(second)
    other_region = next(a for a in rest if a.placement.region == "us-west1")
    on_demand = next(a for a in rest if not a.placement.spot)
    assert not first.same_region_and_market(other_region)
    assert not first.same_region_and_market(on_demand)
    assert isinstance(first, Attempt)


# --optimize price over offerings built here (the packaged data's numbers are not used).
def _t4_index(spot, on_demand=None):
    from cml_infra.catalog.offerings import Index
    from tests.unit.lifecycle.test_optimize import t4_offerings

    return Index(t4_offerings(spot, on_demand))


PRICED = {"us-east-1a": 0.20, "us-east-1b": 0.50, "us-west-2a": 0.10, "eu-west-1a": 0.30}


def _priced(**changes):
    fields = {"gpu": "t4", "gpu_count": 1, "spot": True, "any_region": True, "optimize": "price"}
    return _spec("aws", **{**fields, **changes})


def test_price_orders_every_zone_sold_cheapest_first():
    found = attempts(_priced(), clouds.get("aws"), _t4_index(PRICED))
    assert [(a.placement.where, a.placement.hourly_price) for a in found] == [
        ("us-west-2 (spot)", 0.10),
        ("us-west-2a (spot)", 0.10),
        ("us-east-1 (spot)", 0.20),
        ("us-east-1a (spot)", 0.20),
        ("eu-west-1 (spot)", 0.30),
        ("eu-west-1a (spot)", 0.30),
        ("us-east-1b (spot)", 0.50),
    ]
    assert [a.number for a in found] == list(range(7))


def test_price_with_a_budget_leaves_out_what_does_not_fit():
    # 10 hours: 0.30/h costs $3, 0.50/h $5; a $3 budget keeps up to eu-west-1.
    found = attempts(_priced(ttl=36000, budget=3.0), clouds.get("aws"), _t4_index(PRICED))
    assert {a.placement.hourly_price for a in found} == {0.10, 0.20, 0.30}


def test_price_with_a_budget_nothing_fits_names_the_cheapest():
    with pytest.raises(UsageError, match=r"--budget: the cheapest placement, g4dn.xlarge in "
                       r"us-west-2 \(spot\) at \$0.1000/h, could cost \$1.00 over --ttl 10h, "
                       r"more than \$0.50"):  # fmt: skip
        attempts(_priced(ttl=36000, budget=0.5), clouds.get("aws"), _t4_index(PRICED))


def test_price_leaves_out_spot_placements_over_max_price():
    found = attempts(_priced(max_price=0.25), clouds.get("aws"), _t4_index(PRICED))
    assert {a.placement.hourly_price for a in found} == {0.10, 0.20}


def test_price_with_every_spot_placement_over_max_price_is_refused():
    with pytest.raises(UsageError, match=r"^--max-price: every spot placement of t4:1 costs "
                       r"more than \$0.0500/h .*us-west-2 \(spot\) at \$0.1000/h"):  # fmt: skip
        attempts(_priced(max_price=0.05), clouds.get("aws"), _t4_index(PRICED))


def test_price_on_a_cloud_that_takes_no_zone_makes_one_placement_per_region():
    # Azure's Resource SKUs name zones, but its module takes none: zones are no attempts.
    from datetime import datetime, timezone

    from cml_infra.catalog.offerings import Figure, Index, Offering, Offerings, Source

    def sold(region: str, zone: str, usd: float) -> Offering:
        figure = Figure(usd=usd, source="test", as_of=datetime(2025, 11, 30).date())
        return Offering(offer="Standard_NC4as_T4_v3", region=region, zone=zone, spot=figure)

    index = Index(Offerings(
        cloud="azure", generated_at=datetime(2025, 11, 30, tzinfo=timezone.utc),
        sources={"test": Source(what="figures made up for this test")},
        regions={"eastus": ["1", "2"], "westus2": ["1"]},
        offerings=[sold("eastus", "1", 0.3), sold("eastus", "2", 0.2), sold("westus2", "1", 0.1)],
    ))  # fmt: skip
    spec = _spec("azure", gpu="t4", gpu_count=1, spot=True, any_region=True, optimize="price")
    found = attempts(spec, clouds.get("azure"), index)
    assert [(a.placement.region, a.placement.zone, a.placement.hourly_price) for a in found] == [
        ("westus2", None, 0.1),
        ("eastus", None, 0.2),
    ]


def test_price_caps_each_market_at_its_cheapest_few():
    from cml_infra.placement import MAX_PRICED_PER_MARKET

    many = {f"{region}{zone}": 0.1 + i / 100 for i, (region, zone) in enumerate(
        (r, z) for r in ("us-east-1", "us-east-2", "us-west-2", "eu-west-1") for z in "abc"
    )}  # fmt: skip
    index = _t4_index(many)
    found = attempts(_priced(), clouds.get("aws"), index)
    assert len(found) == MAX_PRICED_PER_MARKET
    assert found[0].placement.where == "us-east-1 (spot)"
    # With the on-demand fallback, on-demand gets its own share, after every spot placement
    # (dearer or not: it is what `up` falls back to when spot has no capacity).
    index = _t4_index(many, {zone: price / 10 for zone, price in many.items()})
    both = attempts(_priced(on_demand_fallback=True), clouds.get("aws"), index)
    assert len(both) == 2 * MAX_PRICED_PER_MARKET
    assert [a.placement.spot for a in both] == [True] * 8 + [False] * 8


def test_any_region_where_nothing_sells_the_row_is_refused():
    with pytest.raises(UsageError, match="--region: any: the aws catalog knows no region"):
        attempts(_priced(), clouds.get("aws"), _t4_index({}))


def test_price_over_a_list_keeps_its_regions_and_orders_them():
    spec = _priced(any_region=False, region="us-east-1", fallback_regions=("us-west-2",))
    found = attempts(spec, clouds.get("aws"), _t4_index(PRICED))
    assert [a.placement.region for a in found] == ["us-west-2"] * 2 + ["us-east-1"] * 3
