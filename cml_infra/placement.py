"""Placement and Attempt: where and on what a runner goes, as its cloud resolved the spec.

`up` tries a list of attempts in order (regions, markets, zones), or, with `--optimize price`,
cheapest first; each is resolved once, before anything is created, so a region or type the
cloud does not have fails with nothing made.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from cml_infra.errors import UsageError
from cml_infra.spec import OPTIMIZE_PRICE, REGION_ANY, format_duration

if TYPE_CHECKING:
    from cml_infra.catalog.offerings import Index
    from cml_infra.clouds.base import Cloud
    from cml_infra.spec import RunnerSpec


@dataclass(frozen=True)
class Placement:
    """Where and on what a spec runs, as the cloud resolved it."""

    cloud: str
    region: str
    instance_type: str
    hourly_price: float | None
    zone: str | None = None
    spot: bool = False
    # Spot price cap in USD per hour; None: up to the on-demand price.
    max_price: float | None = None
    gpu: str | None = None
    gpu_count: int = 0
    accelerator: str | None = None
    image: str | None = None

    @property
    def market(self) -> str:
        return "spot" if self.spot else "on-demand"

    @property
    def where(self) -> str:
        """`us-east1-b (spot)`: for messages about an attempt."""
        return f"{self.zone or self.region} ({self.market})"

    def record_fields(self) -> dict[str, Any]:
        """The record's fields that say where and on what an attempt runs."""
        return {
            "region": self.region,
            "instance_type": self.instance_type,
            "gpu": f"{self.gpu}:{self.gpu_count}" if self.gpu else None,
            "spot": self.spot,
            "hourly_price": self.hourly_price,
        }


@dataclass(frozen=True)
class Attempt:
    """One placement `up` may try, with its position in the list."""

    number: int
    placement: Placement

    def same_region_and_market(self, other: Attempt) -> bool:
        mine, theirs = self.placement, other.placement
        return (mine.region, mine.spot) == (theirs.region, theirs.spot)


# `--optimize price` tries at most this many placements per market, cheapest first. A full
# region answers in seconds, so 8 cover the cheapest few regions with their zones; a hung one
# costs a whole --attempt-timeout, and 8 of those (40 minutes at the default 5m) is about the
# most a job should wait for a runner. `--region any` would otherwise walk 30 regions.
MAX_PRICED_PER_MARKET = 8
# `render` and `up` show the first few placements of a price-ordered walk.
SHOWN = 3


def attempts(spec: RunnerSpec, cloud: Cloud, index: Index | None = None) -> list[Attempt]:
    """Every placement `up` may try, in order.

    `--optimize order`: each region on the asked-for market, then, with the on-demand fallback,
    each region on demand; within a region, each of the zones the cloud lets `up` choose.

    `--optimize price` (`index`: the cloud's offerings; None where the cloud has no catalog,
    the local cloud): the same placements, those the offerings say do not sell the row left
    out, cheapest first within each market (placements with no figure last, in the given
    order). The spot market still comes before the on-demand fallback, whatever the prices:
    the fallback is for when spot has no capacity, not a cheaper alternative. With --budget,
    placements that could cost more over --ttl are left out (none left is a UsageError naming
    the cheapest), and each market keeps its MAX_PRICED_PER_MARKET cheapest.
    """
    markets = [(spec.spot, spec.max_price)]
    if spec.on_demand_fallback:
        markets.append((False, None))
    price = spec.optimize == OPTIMIZE_PRICE
    found: list[Placement] = []
    considered: list[Placement] = []
    for spot, max_price in markets:
        placements: list[Placement] = []
        for region in _regions(spec, cloud, index, spot):
            placement = cloud.resolve(spec, region=region, spot=spot, max_price=max_price)
            zones = cloud.zones(placement.region)
            if price and index is not None:
                placements += _priced_zones(cloud, index, placement, zones)
            else:
                placements += [replace(placement, zone=zone) for zone in zones] or [placement]
        if price:
            placements = sorted(placements, key=_price_key)  # stable: ties keep the given order
            considered += placements
            placements = _within_budget(_under_cap(placements), spec)[:MAX_PRICED_PER_MARKET]
        found += placements
    if spec.any_region and not considered:
        raise UsageError(
            "--region",
            f"{REGION_ANY}: the {cloud.name} catalog knows no region that sells {_what(spec)}"
            f"{' spot' if spec.spot else ''}; list regions instead",
        )
    if price and not found:
        raise _nothing_fits(considered, spec)
    return [Attempt(number, placement) for number, placement in enumerate(found)]


def _regions(
    spec: RunnerSpec, cloud: Cloud, index: Index | None, spot: bool
) -> tuple[str | None, ...]:
    """The regions asked for; with `--region any`, every region whose offerings sell the row on
    that market (a cloud without offerings, the local one, has only its default region)."""
    if not spec.any_region:
        return spec.regions
    if index is None:
        return (None,)
    offer = offer_id(cloud, cloud.resolve(spec, region=None, spot=spot, max_price=None))
    return tuple(sorted(index.regions_selling(offer, spot))) if offer else ()


def _priced_zones(
    cloud: Cloud, index: Index, placement: Placement, zones: tuple[str | None, ...]
) -> list[Placement]:
    """The placements of one resolved region, each zone at its own figure. Where the offerings
    name zones for the row on that market, those are the zones (the row is not sold in the
    others); else the cloud's. `None` (the cloud picks the zone) stays, at the region's price."""
    offer = offer_id(cloud, placement)
    if offer is None:
        return [replace(placement, zone=zone) for zone in zones] or [placement]
    figures = {
        o.zone: f.usd
        for o in index.of(offer, placement.region)
        if o.zone is not None and (f := o.figure(placement.spot)) is not None
    }
    # The figures the walk is ordered by, the index's, over the placement's own where it has
    # one for the region (`None`, the cloud's pick, is at the region's best).
    cheapest = index.cheapest(offer, placement.region, placement.spot)
    region_price = cheapest.usd if cheapest else placement.hourly_price
    # A cloud that takes no zone (Azure's module: Azure places the VM) keeps one placement.
    if figures and zones:
        sold = index.zones(offer, placement.region, placement.spot)
        zones = (*(zone for zone in zones if zone is None), *sold)
    return [
        replace(
            placement,
            zone=zone,
            hourly_price=figures.get(zone, region_price) if zone else region_price,
        )
        for zone in zones or (None,)
    ]


def offer_id(cloud: Cloud, placement: Placement) -> str | None:
    """The catalog row (its id, the offerings' key) a placement resolved to; None where the
    cloud has no catalog or the type is not one of its rows (a native --type)."""
    if not cloud.HAS_CATALOG:
        return None
    from cml_infra.clouds.vm import VmCloud

    if not isinstance(cloud, VmCloud):
        return None
    for row in cloud.catalog.instance_types:
        if (row.instance_type, row.accelerator, row.gpu_count) == (
            placement.instance_type,
            placement.accelerator,
            placement.gpu_count,
        ):
            return row.id
    return None


def _price_key(placement: Placement) -> tuple[bool, float]:
    price = placement.hourly_price
    return (price is None, price or 0.0)


def _within_budget(placements: list[Placement], spec: RunnerSpec) -> list[Placement]:
    """Those whose price over the ttl fits --budget (all, without one); an unpriced one cannot
    be shown to fit, so it is left out."""
    if spec.budget is None:
        return placements
    return [
        p
        for p in placements
        if p.hourly_price is not None and p.hourly_price * spec.ttl / 3600 <= spec.budget
    ]


def _under_cap(placements: list[Placement]) -> list[Placement]:
    """Those a spot request capped at --max-price can get: a placement whose catalog spot price
    is above its cap would only fail there (an unpriced one is tried)."""
    return [
        p
        for p in placements
        if p.max_price is None or p.hourly_price is None or p.hourly_price <= p.max_price
    ]


def _nothing_fits(considered: list[Placement], spec: RunnerSpec) -> UsageError:
    if spec.max_price is not None and not _under_cap(considered):
        cheapest = min(considered, key=_price_key)
        return UsageError(
            "--max-price",
            f"every spot placement of {_what(spec)} costs more than ${spec.max_price:.4f}/h in "
            f"the catalog (the cheapest: {cheapest.where} at ${cheapest.hourly_price or 0:.4f}/h)"
            "; raise --max-price or drop it",
        )
    priced = [p for p in considered if p.hourly_price is not None]
    if not priced:
        return UsageError(
            "--budget",
            f"no catalog price for any placement of {_what(spec)}, so none can be shown to fit "
            "the budget; drop --budget or pick a catalog type (`cml-infra catalog`)",
        )
    cheapest = min(priced, key=_price_key)
    hourly = cheapest.hourly_price or 0.0
    return UsageError(
        "--budget",
        f"the cheapest placement, {cheapest.instance_type} in {cheapest.where} at "
        f"${hourly:.4f}/h, could cost ${hourly * spec.ttl / 3600:.2f} over --ttl "
        f"{format_duration(spec.ttl)}, more than ${spec.budget:.2f}; lower --ttl or raise "
        "--budget",
    )


def _what(spec: RunnerSpec) -> str:
    if spec.gpu:
        return f"{spec.gpu}:{spec.gpu_count}"
    return spec.instance_type or f"size {spec.size or 'm'}"


def describe(spec: RunnerSpec, attempts: Sequence[Attempt], shown: int = SHOWN) -> str:
    """`--optimize price: us-east-2b (spot) $0.1600/h, us-east-1 (spot) $0.1800/h, ... (8
    placements)`: how the walk was ordered, for `render` and `up`."""
    head = [
        f"{a.placement.where}"
        + (f" ${a.placement.hourly_price:.4f}/h" if a.placement.hourly_price is not None else "")
        for a in attempts[:shown]
    ]
    more = ", ..." if len(attempts) > shown else ""
    count = f"{len(attempts)} placement{'s' if len(attempts) != 1 else ''}"
    return f"--optimize {spec.optimize}: {', '.join(head)}{more} ({count})"
