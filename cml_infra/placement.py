"""Placement and Attempt: where and on what a runner goes, as its cloud resolved the spec.

`up` tries a list of attempts in order (regions, markets, zones); each is resolved once, before
anything is created, so a region or type the cloud does not have fails with nothing made.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
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


def attempts(spec: RunnerSpec, cloud: Cloud) -> list[Attempt]:
    """Every placement `up` may try, in order: each region on the asked-for market, then, with
    the on-demand fallback, each region on demand; within a region, each of the zones the cloud
    lets `up` choose."""
    markets = [(spec.spot, spec.max_price)]
    if spec.on_demand_fallback:
        markets.append((False, None))
    found: list[Placement] = []
    for spot, max_price in markets:
        for region in spec.regions:
            placement = cloud.resolve(spec, region=region, spot=spot, max_price=max_price)
            zones = cloud.zones(placement.region)
            found += [replace(placement, zone=zone) for zone in zones] or [placement]
    return [Attempt(number, placement) for number, placement in enumerate(found)]
