"""Instance catalogs: one dated data file per cloud (`data/<cloud>.yaml`), one loader, one lookup.

Each file maps the generic sizes (s, m, l, xl) and GPU names with counts (`t4:2`) to rows of its
`instance_types` table; a native type that is not in the table passes through unpriced. Where
each row is sold and at what price is the offerings' (`data/<cloud>-offerings.json`, overlaid by
the user catalog `catalog refresh` writes): `offerings_of()` reads them, lazily.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta, timezone
from functools import cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, model_validator

from cml_infra.errors import UsageError

# The generic names a user types are the spec's; a catalog maps them to its own types.
from cml_infra.spec import GPU_NAMES, SIZES, choices
from cml_infra.state import CATALOG_STATE_DIR

if TYPE_CHECKING:
    # msgspec loads with the offerings, when a placement is resolved.
    from cml_infra.catalog.offerings import Index, Offerings


class Offer(BaseModel):
    """One row: a native type (and, on GCP n1, an attached accelerator) with its prices."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str
    instance_type: str
    vcpus: int
    memory_gib: float
    gpu: str | None = None
    gpu_count: int = 0
    accelerator: str | None = None
    price: float | None
    spot_price: float | None = None

    def hourly(self, spot: bool) -> float | None:
        return self.spot_price if spot else self.price


class Catalog(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    cloud: str
    as_of: date
    source: str
    default_region: str
    regions: dict[str, list[str]]
    # Type name prefixes of the families whose types come with GPUs built in: a native --type
    # of one of them is a GPU machine (the module gets it as a boolean, never as a list).
    gpu_type_prefixes: list[str]
    # Patterns (regular expressions, matched in full) of the type names whose CPUs are 64-bit
    # Arm: the instance then installs the linux-arm64 build of the runner. Every other type is
    # x86_64.
    arm64_types: list[str] = []
    sizes: dict[str, str]
    gpus: dict[str, dict[int, str]]
    instance_types: list[Offer]

    @model_validator(mode="after")
    def _consistent(self) -> Catalog:
        ids = [offer.id for offer in self.instance_types]
        if len(ids) != len(set(ids)):
            raise ValueError("instance_types: duplicate id")
        by_id = {offer.id: offer for offer in self.instance_types}
        unnamed = [
            row.id
            for row in self.instance_types
            if row.gpu is not None
            and row.accelerator is None
            and not self.has_builtin_gpu(row.instance_type)
        ]
        if unnamed:
            raise ValueError(f"{', '.join(unnamed)}: GPU types no gpu_type_prefixes entry names")
        for pattern in self.arm64_types:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(
                    f"arm64_types: {pattern!r} is not a regular expression ({exc})"
                ) from None
        if self.default_region not in self.regions:
            raise ValueError(f"default_region {self.default_region!r} is not in regions")
        if sorted(self.sizes) != sorted(SIZES):
            raise ValueError(f"sizes must be exactly {', '.join(SIZES)}")
        for size, ref in self.sizes.items():
            if ref not in by_id or by_id[ref].gpu is not None:
                raise ValueError(f"size {size}: {ref!r} is not a CPU row of instance_types")
        for name, counts in self.gpus.items():
            if name not in GPU_NAMES:
                raise ValueError(f"gpus: unknown GPU name {name!r}; known: {', '.join(GPU_NAMES)}")
            for count, ref in counts.items():
                offer = by_id.get(ref)
                if offer is None or (offer.gpu, offer.gpu_count) != (name, count):
                    raise ValueError(f"gpus {name}:{count}: {ref!r} is not a row with that GPU")
        return self

    def has_builtin_gpu(self, instance_type: str) -> bool:
        return instance_type.startswith(tuple(self.gpu_type_prefixes))

    def arch(self, instance_type: str) -> str:
        """`arm64` or `x86_64`: the CPU of a type, by its name."""
        arm = any(re.fullmatch(pattern, instance_type) for pattern in self.arm64_types)
        return "arm64" if arm else "x86_64"

    def offer(self, offer_id: str) -> Offer:
        return next(offer for offer in self.instance_types if offer.id == offer_id)

    def region(self, region: str | None) -> str:
        if region is None:
            return self.default_region
        if region not in self.regions:
            raise UsageError(
                "--region",
                f"unknown region {region!r} for {self.cloud}; " + choices(region, self.regions),
            )
        return region

    def for_gpu(self, name: str, count: int) -> Offer:
        if name not in self.gpus:
            offered = ", ".join(sorted(self.gpus))
            raise UsageError("--gpu", f"{self.cloud} does not offer {name!r}; it offers: {offered}")
        counts = self.gpus[name]
        if count not in counts:
            offered = ", ".join(f"{name}:{c}" for c in sorted(counts))
            raise UsageError(
                "--gpu", f"{self.cloud} does not offer {name}:{count}; it offers: {offered}"
            )
        return self.offer(counts[count])

    def for_size(self, size: str) -> Offer:
        if size not in self.sizes:
            raise UsageError("--size", f"unknown size {size!r}; valid: {', '.join(SIZES)}")
        return self.offer(self.sizes[size])

    def for_type(self, instance_type: str) -> Offer | None:
        """The catalog row of a native type with nothing attached, if the table has one."""
        for offer in self.instance_types:
            if offer.instance_type == instance_type and offer.accelerator is None:
                return offer
        return None


def path(cloud: str) -> Any:
    """The packaged data file of `cloud` (it may not exist: not every cloud has a catalog)."""
    return resources.files(__package__).joinpath("data").joinpath(f"{cloud}.yaml")


@cache
def load(cloud: str) -> Catalog:
    import yaml

    text = path(cloud).read_text(encoding="utf-8")
    # libyaml's loader where PyYAML was built with it: a third of the pure-Python one's time,
    # which every placement resolution pays once.
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return Catalog.model_validate(yaml.load(text, Loader=loader))


# Prices older than this are flagged: spot prices move hourly, list prices every few months.
STALE_AFTER = timedelta(days=7)


def offerings_path(cloud: str) -> Any:
    """The packaged offerings of `cloud` (scripts/catalog_offerings.py writes it)."""
    return resources.files(__package__).joinpath("data").joinpath(f"{cloud}-offerings.json")


def user_offerings_path(cloud: str, state_dir: Path) -> Path:
    """The user catalog `catalog refresh` writes; it overrides the packaged one."""
    return state_dir / "catalog" / f"{cloud}-offerings.json"


@cache
def _packaged(cloud: str) -> Offerings:
    from cml_infra.catalog.offerings import Offerings

    file = offerings_path(cloud)
    if not file.is_file():
        # A cloud with no generated data yet: its yaml prices are all there is.
        epoch = datetime(1970, 1, 1, tzinfo=timezone.utc)
        return Offerings(cloud=cloud, generated_at=epoch, sources={}, regions={}, offerings=[])
    return Offerings.from_json(file.read_bytes())


def _user(cloud: str, state_dir: Path | None) -> Offerings | None:
    """The user catalog, when there is a usable one: a corrupt file is one warning line and the
    packaged data is used; a stale one is used and flagged."""
    if state_dir is None:
        return None
    file = user_offerings_path(cloud, state_dir)
    # ui is imported only when there is a file: it brings the CLI's imports, which resolving a
    # placement otherwise has no need of.
    try:
        data = file.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        from cml_infra import ui

        ui.warn(f"{file}: unreadable ({exc.strerror}); using the packaged {cloud} catalog")
        return None
    from cml_infra import ui
    from cml_infra.catalog.offerings import Offerings

    try:
        found = Offerings.from_json(data)
        if found.cloud != cloud:
            raise ValueError(f"it is the {found.cloud!r} catalog")
    except ValueError as exc:  # msgspec's DecodeError and ValidationError are ValueErrors
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        ui.warn(f"{file}: not a usable offerings file ({reason}); using the packaged {cloud} "
                "catalog; run `cml-infra catalog refresh` to rewrite it")  # fmt: skip
        return None
    age = datetime.now(timezone.utc) - found.generated_at
    if age > STALE_AFTER:
        ui.warn(f"{file}: refreshed {age.days} days ago (over {STALE_AFTER.days}): its prices "
                "may be stale; run `cml-infra catalog refresh`")  # fmt: skip
    return found


def overlay(packaged: Offerings, user: Offerings) -> Offerings:
    """The packaged offerings with the user's figures winning per (offer, region, zone)."""
    import msgspec

    from cml_infra.catalog.offerings import Offerings

    merged = {(o.offer, o.region, o.zone): o for o in packaged.offerings}
    for mine in user.offerings:
        key = (mine.offer, mine.region, mine.zone)
        shipped = merged.get(key)
        # Figure by figure: a refresh that saw only spot keeps the shipped on-demand price.
        merged[key] = (
            mine
            if shipped is None
            else msgspec.structs.replace(
                mine, price=mine.price or shipped.price, spot=mine.spot or shipped.spot
            )
        )
    regions = {region: list(zones) for region, zones in packaged.regions.items()}
    for region, zones in user.regions.items():
        regions[region] = sorted(set(regions.get(region, [])) | set(zones))
    return Offerings(
        cloud=packaged.cloud,
        generated_at=max(packaged.generated_at, user.generated_at),
        sources={**packaged.sources, **user.sources},
        regions=dict(sorted(regions.items())),
        offerings=[merged[key] for key in sorted(merged, key=lambda k: (k[0], k[1], k[2] or ""))],
    )


_INDEXES: dict[tuple[str, Path | None], Index] = {}


def offerings_of(cloud: str, state_dir: Path | None = None) -> Index:
    """Where each row of `cloud` is sold and for how much: the packaged file, overlaid by the
    user catalog in `state_dir` when there is one. Read once per process (a few ms). (Not
    named `offerings`: that is the submodule, which replaces a same-named function here once
    imported.)"""
    from cml_infra.catalog.offerings import Index

    key = (cloud, state_dir)
    if key not in _INDEXES:
        user = _user(cloud, state_dir)
        packaged = _packaged(cloud)
        if user is None:
            _INDEXES[key] = Index(packaged)
        else:
            _INDEXES[key] = Index(overlay(packaged, user), frozenset(user.sources))
    return _INDEXES[key]


def current_offerings(cloud: str) -> Index:
    """The offerings placements are priced with: over the packaged ones, the user catalog of
    the state dir the command set (state.CATALOG_STATE_DIR; none set: the packaged only)."""
    return offerings_of(cloud, CATALOG_STATE_DIR.get())


def known_regions(catalog: Catalog, index: Index) -> list[str]:
    """The regions `catalog`'s cloud accepts: the yaml's and every one the offerings list."""
    return sorted(set(catalog.regions) | set(index.offerings.regions))


def resolve_region(catalog: Catalog, index: Index, region: str | None, *, insist: bool) -> str:
    """`region`, checked against the known regions; one the data does not know is accepted only
    when the user insists (a native --type) and then with a warning, never silently."""
    if region is None:
        return catalog.default_region
    known = known_regions(catalog, index)
    if region in known:
        return region
    if insist:
        from cml_infra import ui  # only to warn: it brings the CLI's imports

        ui.warn(f"--region {region}: not in the {catalog.cloud} catalog; used as given because "
                "--type names the instance type (the cloud has the last word)")  # fmt: skip
        return region
    raise UsageError(
        "--region", f"unknown region {region!r} for {catalog.cloud}; " + choices(region, known)
    )


def hourly(
    offer: Offer, index: Index, region: str, spot: bool, catalog: Catalog | None = None
) -> float | None:
    """The row's price in `region` on that market: the offerings' cheapest figure (over the
    region's zones), else the yaml's price for the regions the yaml lists. A region only the
    offerings know, with no figure for the row, has no price: the yaml's is its default
    region's, and passing it off as another region's would mislead `--budget` and the bill."""
    figure = index.cheapest(offer.id, region, spot)
    if figure is not None:
        return figure.usd
    if catalog is not None and region not in catalog.regions:
        return None
    return offer.hourly(spot)
