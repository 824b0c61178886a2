"""Instance catalogs: one dated data file per cloud (`data/<cloud>.yaml`), one loader, one lookup.

Each file maps the generic sizes (s, m, l, xl) and GPU names with counts (`t4:2`) to rows of its
`instance_types` table; a native type that is not in the table passes through unpriced.
"""

from __future__ import annotations

import re
from datetime import date
from functools import cache
from importlib import resources
from typing import Any

from pydantic import BaseModel, ConfigDict, model_validator

from cml_infra.errors import UsageError

# The generic names a user types are the spec's; a catalog maps them to its own types.
from cml_infra.spec import GPU_NAMES, SIZES, choices


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
    return Catalog.model_validate(yaml.safe_load(text))
