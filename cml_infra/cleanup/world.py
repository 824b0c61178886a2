"""The world a cleanup run looks at, gathered once before any rule runs, and its typed items."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Union

from cml_infra import clouds
from cml_infra.clouds.base import Leftover, ManagedInstance
from cml_infra.forge.base import Forge, RunnerInfo
from cml_infra.record import RunnerRecord
from cml_infra.spec import AUTO_LABEL_PREFIX
from cml_infra.state import LIVE_STATES, StateDir, utcnow


@dataclass(frozen=True)
class Settings:
    clouds: tuple[str, ...]
    regions: tuple[str, ...] | None
    max_age: timedelta | None
    idle: timedelta
    orphan_grace: timedelta
    dry_run: bool
    rules: tuple[str, ...] | None
    # Above this many destructive matches nothing is destroyed (0: no limit).
    max_destroy: int = 50


# Each item says what the report shows of it: kind, cloud (or forge), region (or scope), id,
# name, launch id and what it costs per hour.


@dataclass(frozen=True)
class InstanceItem:
    """An instance that carries our tag, as its cloud reports it."""

    instance: ManagedInstance
    kind = "instance"

    @property
    def where(self) -> tuple[str, str]:
        return self.instance.cloud, self.instance.region

    @property
    def id(self) -> str:
        return self.instance.id

    @property
    def name(self) -> str:
        return self.instance.name

    @property
    def launch(self) -> str:
        return self.instance.launch_id

    @property
    def hourly_price(self) -> float | None:
        return self.instance.hourly_price


@dataclass(frozen=True)
class RegistrationItem:
    """A runner registration on a forge (`where` is the forge and its scope)."""

    runner: RunnerInfo
    where: tuple[str, str]
    kind = "registration"
    hourly_price = None
    launch = ""

    @property
    def id(self) -> str:
        return str(self.runner.id)

    @property
    def name(self) -> str:
        return self.runner.name


@dataclass(frozen=True)
class RecordItem:
    """A record of this state dir that is not destroyed yet."""

    record: RunnerRecord
    kind = "state"

    @property
    def where(self) -> tuple[str, str]:
        return self.record.cloud, self.record.region

    @property
    def id(self) -> str:
        return self.record.instance_id or self.record.name

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def launch(self) -> str:
        return self.record.launch_id

    @property
    def hourly_price(self) -> float | None:
        return self.record.hourly_price


@dataclass(frozen=True)
class LeftoverItem:
    """What a module made beside an instance (a security group, a resource group), as its cloud
    reports it; its kind is the module's resource type."""

    leftover: Leftover
    hourly_price = None

    @property
    def kind(self) -> str:
        return self.leftover.kind

    @property
    def where(self) -> tuple[str, str]:
        return self.leftover.cloud, self.leftover.region

    @property
    def id(self) -> str:
        return self.leftover.id

    @property
    def name(self) -> str:
        return self.leftover.name

    @property
    def launch(self) -> str:
        return self.leftover.launch_id


Item = Union[InstanceItem, RegistrationItem, RecordItem, LeftoverItem]  # noqa: UP007 - a runtime alias on 3.10


def made_by(record: RunnerRecord, instance: ManagedInstance) -> bool:
    """Whether `instance` is the one `record`'s launch made: the same cloud and launch id (a
    name is not an identity: another launch may share it). A record and an instance both older
    than launch ids have only the instance the record's Terraform outputs name, or failing
    that, the name."""
    if record.cloud != instance.cloud:
        return False
    if record.launch_id or instance.launch_id:
        return record.launch_id == instance.launch_id
    recorded = clouds.get(record.cloud).listed_id(record.outputs)
    return instance.id == recorded if recorded else instance.name == record.name


@dataclass
class World:
    """Everything the rules look at."""

    now: datetime
    settings: Settings
    instances: list[ManagedInstance]
    listed_clouds: set[str]
    records: list[RunnerRecord]
    forge: Forge | None = None
    runners: list[RunnerInfo] = field(default_factory=list)
    state: StateDir | None = None
    # What the modules made beside instances, in the searched clouds and regions.
    leftovers: list[Leftover] = field(default_factory=list)
    _last_jobs: dict[str, datetime | None] | None = None
    _launches: set[tuple[str, str, str]] | None = None

    def listed_launch(self, cloud: str, launch_id: str, name: str) -> bool:
        """Whether an instance of this launch (by its id; one older than launch ids: by its
        name) is listed: one lookup, where a scan per leftover took seconds for thousands."""
        if self._launches is None:
            self._launches = {(i.cloud, "launch", i.launch_id) for i in self.instances}
            self._launches |= {(i.cloud, "name", i.name) for i in self.instances}
        key = (cloud, "launch", launch_id) if launch_id else (cloud, "name", name)
        return key in self._launches

    def last_jobs(self) -> dict[str, datetime | None]:
        if self._last_jobs is None:
            self._last_jobs = self.forge.last_jobs() if self.forge else {}
        return self._last_jobs

    def online_labels(self) -> set[str]:
        return {label for runner in self.runners if runner.online for label in runner.labels}

    def our_runner(self, instance: ManagedInstance) -> bool:
        """A runner instance registered in the scope this cleanup was given."""
        return self.forge is not None and self.forge.owns(instance.tags)

    def searched(self, cloud: str, region: str) -> bool:
        """Whether this run looked where an instance of `cloud` in `region` would be."""
        if cloud not in self.listed_clouds:
            return False
        regions = clouds.get(cloud).searched_regions(self.settings.regions)
        return regions is None or region in set(regions)

    def busy(self, name: str, launch_id: str = "") -> bool:
        """Whether a live command works on the runner: it holds the runner's lock (in a
        backend: a hold, from any machine), or a Terraform of it still runs in its workspace on
        this machine (its `up` was killed, its Terraform was not)."""
        if not self.known(name, launch_id):
            return False
        assert self.state is not None
        key = self.state.key_of(name, launch_id)
        return self.state.held(key) or _processes_in(self.state.workspace(key))

    def known(self, name: str, launch_id: str = "") -> bool:
        """Whether the ledger has a folder of this runner (a record, a workspace, a lock)."""
        return self.state is not None and self.state.knows(self.state.key_of(name, launch_id))

    def label_of(self, name: str) -> str:
        return AUTO_LABEL_PREFIX + name


def _processes_in(folder: Path) -> bool:
    """A process whose working folder is `folder` or below (Linux /proc; elsewhere: none)."""
    if not folder.is_dir():
        return False
    prefix = str(folder)
    try:
        entries = list(Path("/proc").iterdir())
    except OSError:
        return False
    for entry in entries:
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if cwd == prefix or cwd.startswith(prefix + "/"):
            return True
    return False


def gather(settings: Settings, state: StateDir, forge: Forge | None) -> World:
    records = state.records()
    instances: list[ManagedInstance] = []
    leftovers: list[Leftover] = []
    listed = set()
    for cloud_name in settings.clouds:
        cloud = clouds.get(cloud_name, state)
        regions = cloud.searched_regions(settings.regions)
        # Before the instances: an instance made in between (its `up` made its security group
        # first) still spares what its launch made beside it.
        leftovers += cloud.list_leftovers(regions)
        instances += cloud.list_managed(regions)
        listed.add(cloud.name)
    world = World(
        utcnow(), settings, instances, listed, records, forge, state=state, leftovers=leftovers
    )
    if forge is not None:
        world.runners = forge.runners()
    return world


def items(world: World) -> list[Item]:
    found: list[Item] = [InstanceItem(i) for i in world.instances]
    if world.forge is not None:
        scope = (world.forge.name, world.forge.target.slug)
        found += [RegistrationItem(r, scope) for r in world.runners]
    found += [RecordItem(r) for r in world.records if r.state in LIVE_STATES]
    found += [LeftoverItem(leftover) for leftover in world.leftovers]
    return found
