"""Offerings: where each catalog row is sold (region, zone) and at what price, each figure with
its source and date.

The hand-kept `data/<cloud>.yaml` says what a generic name means (`t4:1` → `g4dn.xlarge`); this
says where and for how much. It is generated data (`data/<cloud>-offerings.json`, written by
scripts/catalog_offerings.py), and `cml-infra catalog refresh` writes a file of the same shape in
the state dir that overrides it. JSON read with msgspec: the full table of a cloud (every public
region) decodes in milliseconds, and only when a placement is resolved.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime

import msgspec

# The kind of file, for a reader that finds one: bumped when the shape changes incompatibly.
FORMAT = "cml-infra-offerings/1"


class Source(msgspec.Struct, frozen=True, kw_only=True):
    """Where figures came from: `what` says which API or listing, `url` where to see it."""

    what: str
    url: str = ""


class Figure(msgspec.Struct, frozen=True, kw_only=True):
    """A price in USD per hour, the id of its Source (a key of `Offerings.sources`), and the
    day it was observed."""

    usd: float
    source: str
    as_of: date


class Offering(msgspec.Struct, frozen=True, kw_only=True):
    """One catalog row (`offer`: its id in the cloud's yaml) sold in `region`, in `zone` (None:
    the region as a whole, where the listing names no zones), at these prices (None: not sold
    on that market there, or no figure)."""

    offer: str
    region: str
    zone: str | None = None
    price: Figure | None = None
    spot: Figure | None = None

    def figure(self, spot: bool) -> Figure | None:
        return self.spot if spot else self.price


class Offerings(msgspec.Struct, frozen=True, kw_only=True):
    """Every offering of one cloud; `regions` maps each region to its zones (those the cloud
    lists, whether or not every row is sold in each)."""

    format: str = FORMAT
    cloud: str
    generated_at: datetime
    sources: dict[str, Source]
    regions: dict[str, list[str]]
    offerings: list[Offering]

    def to_json(self) -> bytes:
        """Stable bytes: the generator's output is compared with the committed file."""
        return msgspec.json.format(msgspec.json.encode(self), indent=1) + b"\n"

    @classmethod
    def from_json(cls, data: bytes | str) -> Offerings:
        """The file's content; msgspec.ValidationError / DecodeError (ValueErrors) say what is
        wrong with it."""
        found = msgspec.json.decode(data, type=cls)
        if found.format != FORMAT:
            raise ValueError(f"format {found.format!r}, expected {FORMAT!r}")
        unknown = sorted(
            {f.source for o in found.offerings for f in (o.price, o.spot) if f} - set(found.sources)
        )
        if unknown:
            raise ValueError(f"figures name sources the file does not list: {', '.join(unknown)}")
        return found


class Index:
    """Lookups over one Offerings: by row, by row and region. Built once per process."""

    def __init__(self, offerings: Offerings, refreshed: frozenset[str] = frozenset()) -> None:
        self.offerings = offerings
        # The ids of the sources a user catalog (`catalog refresh`) brought: the rest shipped.
        self.refreshed = refreshed
        self._by_offer: dict[str, list[Offering]] = {}
        for offering in offerings.offerings:
            self._by_offer.setdefault(offering.offer, []).append(offering)

    def of(self, offer: str, region: str | None = None) -> list[Offering]:
        """Where `offer` is sold (in `region` only, when given)."""
        found = self._by_offer.get(offer, [])
        return found if region is None else [o for o in found if o.region == region]

    def cheapest(self, offer: str, region: str, spot: bool) -> Figure | None:
        """The lowest figure of `offer` on that market in `region`, over its zones."""
        figures = [f for o in self.of(offer, region) if (f := o.figure(spot)) is not None]
        return min(figures, key=lambda figure: figure.usd, default=None)

    def zones(self, offer: str, region: str, spot: bool) -> list[str]:
        """The zones of `region` that sell `offer` on that market, cheapest first (a figure
        for the region as a whole names no zone)."""
        sold = [(f.usd, o.zone) for o in self.of(offer, region) if (f := o.figure(spot)) and o.zone]
        return [zone for _, zone in sorted(sold)]

    def regions_selling(self, offer: str, spot: bool) -> list[str]:
        """The regions with a figure for `offer` on that market, cheapest first."""
        best: dict[str, float] = {}
        for offering in self.of(offer):
            figure = offering.figure(spot)
            if figure is not None:
                best[offering.region] = min(best.get(offering.region, figure.usd), figure.usd)
        return sorted(best, key=lambda region: (best[region], region))

    def origin(self, figure: Figure) -> str:
        """`refreshed` when the figure came from the user catalog, else `packaged`."""
        return "refreshed" if figure.source in self.refreshed else "packaged"

    def as_of(self, offers: Iterable[str] | None = None) -> date | None:
        """The oldest date of a figure (of `offers`, else of all)."""
        wanted = None if offers is None else set(offers)
        dates = [
            f.as_of
            for o in self.offerings.offerings
            if wanted is None or o.offer in wanted
            for f in (o.price, o.spot)
            if f is not None
        ]
        return min(dates, default=None)
