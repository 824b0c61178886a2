"""The Cloud protocol: the same small shape for every cloud (see STYLE conventions, "Clouds")."""

from __future__ import annotations

import enum
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, ClassVar

from cml_infra.spec import RunnerSpec


class Feature(enum.Enum):
    SPOT = "spot instances"
    GPU = "GPUs"
    LOGS = "reading the instance log from the launcher"


class ErrorClass(enum.Enum):
    """What a Terraform diagnostic means for the launcher: drives failover and the exit code."""

    CAPACITY = "capacity"
    QUOTA = "quota"
    AUTH = "auth"
    INVALID = "invalid"
    OTHER = "other"


@dataclass(frozen=True)
class Placement:
    """Where and on what a spec runs, as the cloud resolved it."""

    cloud: str
    region: str
    instance_type: str
    hourly_price: float | None
    zone: str | None = None
    spot: bool = False
    gpu: str | None = None
    gpu_count: int = 0
    accelerator: str | None = None
    image: str | None = None

    @property
    def market(self) -> str:
        return "spot" if self.spot else "on-demand"


@dataclass(frozen=True)
class ManagedInstance:
    """An instance that carries our tags, as the cloud (not our state dir) reports it."""

    id: str
    name: str
    cloud: str
    region: str
    state: str
    created_at: datetime | None
    expires_at: datetime | None
    tags: Mapping[str, str] = field(default_factory=dict)
    idle_seconds: float | None = None
    hourly_price: float | None = None
    instance_type: str | None = None


@dataclass(frozen=True)
class Boot:
    """How the startup script runs the agent on this cloud's instances."""

    self_destroy: tuple[str, ...]
    python: str = "python3"
    home: str = "/var/lib/cml-infra"
    # Arm a timer at boot that ends the instance at the TTL even if the agent is gone.
    ttl_timer: bool = False


@dataclass(frozen=True)
class RenderContext:
    """Launcher-side facts a module needs besides the spec: where state lives, the boot script."""

    state_dir: Path
    startup_script: str
    created_at: datetime
    expires_at: datetime

    def tags(self, spec: RunnerSpec) -> dict[str, str]:
        return {
            **spec.resource_tags,
            "cml-infra-managed": "true",
            "cml-infra-name": spec.name,
            "cml-infra-expires": str(int(self.expires_at.timestamp())),
        }


class Cloud(ABC):
    """One subclass per cloud; SDKs are imported inside methods so `--help` stays instant."""

    name: ClassVar[str]
    module: ClassVar[str]
    UNSUPPORTED: ClassVar[dict[Feature, str]] = {}

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir

    @abstractmethod
    def resolve(self, spec: RunnerSpec) -> Placement:
        """Native placement; an unknown region, size or GPU raises UsageError listing choices."""

    @abstractmethod
    def boot(self, spec: RunnerSpec) -> Boot:
        """How the startup script runs the agent and how the agent ends the instance."""

    @abstractmethod
    def module_vars(
        self, spec: RunnerSpec, placement: Placement, context: RenderContext
    ) -> dict[str, Any]:
        """The only input the module gets (`terraform.tfvars.json`)."""

    def sensitive_vars(self) -> frozenset[str]:
        """Variables Terraform must treat as sensitive (kept out of its output)."""
        return frozenset({"startup_script"})

    def classify(self, summary: str, detail: str) -> ErrorClass:
        return ErrorClass.OTHER

    def zones(self, region: str) -> tuple[str | None, ...]:
        """Zones `up` may try in `region`, first choice first (None: the cloud's own pick);
        () where there is nothing to choose."""
        return ()

    @abstractmethod
    def list_managed(self, regions: Iterable[str] | None) -> list[ManagedInstance]:
        """Every instance tagged `cml-infra-managed = "true"` in `regions` (None: in all)."""

    @abstractmethod
    def terminate(self, ids: Iterable[str]) -> None:
        """Destroy instances by id; an id that is already gone is not an error."""

    def check(self) -> tuple[bool, str]:
        """Whether credentials and project/subscription are usable, and a sentence saying so."""
        return True, "no credentials needed"

    def instance_log(self, name: str) -> Path | None:
        """A readable log of the instance, where the cloud offers one to the launcher."""
        return None
