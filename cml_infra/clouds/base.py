"""The Cloud protocol: the same small shape for every cloud (see STYLE conventions, "Clouds").

A cloud resolves a spec into placements, turns a placement into its module's variables, says
what a Terraform error means for failover, and lists and terminates what carries our tags when
the state that made it is gone. Nothing outside `clouds/` asks a cloud its name to decide what
to do: it asks the cloud.
"""

from __future__ import annotations

import enum
import secrets
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from cml_infra.errors import UsageError

if TYPE_CHECKING:
    from cml_infra.placement import Placement
    from cml_infra.spec import Network, RunnerSpec
    from cml_infra.state import StateDir


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


# Instance states (as ManagedInstance.state) in which nothing on it can take work: a stopped
# VM, or a local instance whose process group or agent is gone.
DEAD_STATES = frozenset({"stopped", "terminated", "agent-dead"})


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
    # The `cml-infra-id` tag: which launch made it ("" on an instance older than launch ids).
    # Names are chosen by people and collide; teardown acts on this, never on the name.
    launch_id: str = ""

    @property
    def dead(self) -> bool:
        return self.state in DEAD_STATES


@dataclass(frozen=True)
class Leftover:
    """A resource a module made beside its instance (a security group, a service account, a
    firewall rule, a resource group), found through the cloud's API by our tags, labels or
    naming convention: what is left of a runner whose instance ended itself."""

    # The module's Terraform resource type (`aws_security_group`): what the report shows.
    kind: str
    # What `delete_leftovers` takes back.
    id: str
    cloud: str
    region: str
    name: str
    launch_id: str
    created_at: datetime | None

    @property
    def label(self) -> str:
        return f"{self.kind} {self.id}"


# platform.machine()'s names for the CPUs that runners are built for.
_ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "arm64", "arm64": "arm64"}


def machine_arch() -> str:
    """This machine's CPU as Boot.arch names it (an unknown one by its own name)."""
    import platform

    machine = platform.machine()
    return _ARCHES.get(machine.lower(), machine)


@dataclass(frozen=True)
class Boot:
    """What the startup script and the agent need from a cloud."""

    # The agent's way to end the instance: an argv, or a built-in hook of the agent
    # (`@name`, see agent/hooks.py) that calls the cloud API with the VM's own identity.
    self_destroy: tuple[str, ...]
    # The agent's hook that polls the cloud's spot interruption notice (agent/hooks.py).
    preemption_probe: str | None = None
    python: str = "python3"
    home: str = "/var/lib/cml-infra"
    # Arm a timer at boot that ends the instance at the TTL even if the agent is gone.
    ttl_timer: bool = False
    # How often the agent looks at the world, in seconds.
    poll_seconds: int = 5
    # The runner and its jobs run as this unprivileged user (None: as whoever boots).
    runner_user: str | None = "cml-runner"
    # The instance reads the launcher's files (a local runner archive): the local cloud only.
    reads_launcher_files: bool = False
    # The instance's CPU, `x86_64` or `arm64` (a VM's from its catalog; by default this
    # machine's, where the local cloud runs): which build of the runner it installs.
    arch: str = field(default_factory=machine_arch)
    # Where the agent's hooks find the metadata service and the cloud API, when not at the
    # cloud's own addresses (agent/hooks.py DEFAULT_ENDPOINTS): the local cloud's spot rehearsal.
    endpoints: Mapping[str, str] = field(default_factory=dict)


def new_launch_id() -> str:
    """A fresh launch id: 16 lowercase hex digits, valid as a tag and a GCP label value
    everywhere, and as the module variable `launch_id` (`^[a-z0-9]{8,32}$`)."""
    return secrets.token_hex(8)


@dataclass(frozen=True)
class RenderContext:
    """Launcher-side facts a module needs besides the spec and placement."""

    startup_script: str
    created_at: datetime
    expires_at: datetime
    # This launch's identity, on every resource the module creates (the `cml-infra-id` tag);
    # one `up` keeps the same id across its failover attempts.
    launch_id: str = field(default_factory=new_launch_id)


class Cloud(ABC):
    """One subclass per cloud; SDKs are imported inside methods so `--help` stays instant."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    # The module folder under terraform/ and the provider template under templates/providers/.
    module: ClassVar[str]
    UNSUPPORTED: ClassVar[dict[Feature, str]] = {}
    # Diagnostic text → class, first match wins; each cloud lists its own error codes.
    ERROR_PATTERNS: ClassVar[tuple[tuple[str, ErrorClass], ...]] = ()
    # Priced by a catalog (catalog/data/<name>.yaml).
    HAS_CATALOG: ClassVar[bool] = False
    # Its instances run on this machine (cleanup searches it by default).
    ON_THIS_MACHINE: ClassVar[bool] = False
    # How long a listing may miss an instance made moments ago (EC2's DescribeInstances is
    # eventually consistent): `status` does not call a runner recorded more recently ended for
    # being missing, so that `up --json` never reports the runner it just made as ended.
    LISTING_LAG: ClassVar[timedelta] = timedelta(minutes=1)
    # The `Network` fields (spec.Network.FLAGS: subnet, security groups, disk size, ...) that
    # this cloud's module takes; `network_of` refuses any other that is given.
    NETWORK_FLAGS: ClassVar[frozenset[str]] = frozenset()
    # A flag this cloud does not take → its own flag for the same thing, named in the refusal.
    NETWORK_INSTEAD: ClassVar[Mapping[str, str]] = {}

    def __init__(self, state: StateDir | None = None) -> None:
        # Only a cloud whose instances live on this machine (local) needs the state dir.
        self.state = state

    @abstractmethod
    def resolve(
        self, spec: RunnerSpec, *, region: str | None, spot: bool, max_price: float | None
    ) -> Placement:
        """Native placement in `region` (None: the default) on that market; an unknown region,
        size or GPU raises UsageError listing the choices."""

    def zones(self, region: str) -> tuple[str | None, ...]:
        """Zones `up` may try in `region`, first choice first (None: the cloud's own pick);
        () where there is nothing to choose."""
        return ()

    def network_of(self, spec: RunnerSpec) -> Network:
        """The spec's network flags, once none is given that this cloud does not take: such a
        flag would be silently dropped, and the runner land where its author did not mean.
        Called by `resolve`, before anything is created."""
        from cml_infra.clouds import classes

        for name, flag in spec.network.given().items():
            if name in self.NETWORK_FLAGS:
                continue
            takers = ", ".join(c for c, cls in classes().items() if name in cls.NETWORK_FLAGS)
            instead = self.NETWORK_INSTEAD.get(name)
            hint = f"; on {self.name}, give {instead}" if instead else ""
            raise UsageError(flag, f"does not apply to {self.name} (only to {takers}){hint}")
        return spec.network

    def preflight(self, spec: RunnerSpec, regions: Iterable[str]) -> None:
        """Checks of the input that need the cloud's API (an AWS region's default VPC): run by
        `up` before anything is created, never by `render`, which needs no credentials. Where
        the cloud cannot be asked, it says nothing: Terraform then fails with the cause."""
        return None

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
        text = f"{summary} {detail}"
        for pattern, error_class in self.ERROR_PATTERNS:
            if pattern in text:
                return error_class
        return ErrorClass.OTHER

    def searched_regions(self, regions: Iterable[str] | None) -> Iterable[str] | None:
        """The regions `cleanup --region` narrows a search to (a cloud with a single region
        searches it whatever the list says)."""
        return regions

    @abstractmethod
    def list_managed(self, regions: Iterable[str] | None) -> list[ManagedInstance]:
        """Every instance tagged `cml-infra-managed = "true"` in `regions` (None: in all)."""

    @abstractmethod
    def terminate(self, ids: Iterable[str]) -> None:
        """Destroy instances by id; an id that is already gone is not an error. What else a
        module made beside an instance goes by the instance's launch id, never its name."""

    # How the SDK path removes each resource type the module creates (`resource "TYPE"` in
    # terraform/<module>/*.tf), when no Terraform state is left: "with the instance" (the cloud
    # deletes it with it), "leftover" (list_leftovers finds it once the instance is gone), or
    # another sentence. A unit test fails when a module gains a type this does not name.
    REAPED: ClassVar[Mapping[str, str]] = {}

    def list_leftovers(self, regions: Iterable[str] | None) -> list[Leftover]:
        """What the module made beside instances, carrying our marks, in `regions` (None: all);
        each with its launch id, so that cleanup reaps it only once no instance of that launch
        is listed."""
        return []

    def delete_leftovers(self, leftovers: Iterable[Leftover]) -> None:
        """Delete what `list_leftovers` found; one that is already gone is not an error."""
        for leftover in leftovers:
            # A cloud that lists none has none of its own to delete.
            raise ValueError(f"{self.name} lists no leftovers; {leftover.label} is not its own")

    def listed_id(self, outputs: Mapping[str, Any]) -> str | None:
        """The id `list_managed` and `terminate` use for the instance that a module's outputs
        (a record's `outputs`) describe; None when they do not say."""
        found = outputs.get("id")
        return str(found) if found else None

    def ended_at(self, outputs: Mapping[str, Any]) -> datetime | None:
        """When the instance that `outputs` describes ended, where the cloud still says so once
        `list_managed` no longer lists it; None where it does not (then `status` takes the
        moment it first saw the instance gone)."""
        return None

    def check(self) -> tuple[bool, str]:
        """Whether credentials and project/subscription are usable, and a sentence saying so."""
        return True, "no credentials needed"

    def instance_log(self, name: str) -> Path | None:
        """A readable log of the instance, where the cloud offers one to the launcher."""
        return None
