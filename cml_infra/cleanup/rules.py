"""Cleanup rules: small registered filters, each one question about one kind of item.

A rule says which item type it looks at, which action a match gets (actions.py), whether it
needs a forge, and `match(item, world)`: the reason the item must go, or None.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, ClassVar, Generic, TypeVar

from cml_infra.cleanup.world import (
    InstanceItem,
    Item,
    LeftoverItem,
    RecordItem,
    RegistrationItem,
    World,
    made_by,
)
from cml_infra.errors import UsageError
from cml_infra.registry import Registry

I = TypeVar("I", InstanceItem, RegistrationItem, RecordItem, LeftoverItem)  # noqa: E741


class Rule(ABC, Generic[I]):
    name: ClassVar[str]
    help: ClassVar[str]
    item: ClassVar[type[Any]]
    action: ClassVar[str]
    needs_forge: ClassVar[bool] = False
    default: ClassVar[bool] = True

    def applies_to(self, item: Item) -> bool:
        return isinstance(item, self.item)

    @abstractmethod
    def match(self, item: I, world: World) -> str | None:
        """Why `item` must go, or None."""


RULES: Registry[type[Rule[Any]]] = Registry("rule")
rule = RULES.register


def _age(created_at: datetime | None, now: datetime) -> timedelta | None:
    return None if created_at is None else now - created_at


def _in_grace(age: timedelta | None, world: World) -> bool:
    """Too young to judge (or of unknown age): spared by the rules that give --orphan-grace."""
    return age is None or age <= world.settings.orphan_grace


def hours(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


@rule("expired")
class Expired(Rule[InstanceItem]):
    help = "past its cml-infra-expires tag, or older than --max-age"
    item = InstanceItem
    action = "destroy"

    def match(self, item: InstanceItem, world: World) -> str | None:
        instance = item.instance
        if instance.expires_at is not None and instance.expires_at <= world.now:
            return f"expired at {instance.expires_at:%Y-%m-%d %H:%M:%S} UTC"
        age = _age(instance.created_at, world.now)
        max_age = world.settings.max_age
        if max_age is not None and age is not None and age > max_age:
            return f"{hours(age)} old, over --max-age {hours(max_age)}"
        return None


@rule("dead")
class Dead(Rule[InstanceItem]):
    help = (
        "an instance that can take no work: stopped, or (local) its agent is gone; spared while "
        "a command on this machine works on it, or, if none could, for --orphan-grace"
    )
    item = InstanceItem
    action = "destroy"

    def match(self, item: InstanceItem, world: World) -> str | None:
        instance = item.instance
        if not instance.dead or world.busy(instance.name, instance.launch_id):
            return None
        known = world.known(instance.name, instance.launch_id)
        if not known and _in_grace(_age(instance.created_at, world.now), world):
            return None
        return f"it is {instance.state}: nothing on it runs or ends it"


@rule("orphan")
class Orphan(Rule[InstanceItem]):
    help = "a runner instance older than --orphan-grace that no online registration labels"
    item = InstanceItem
    action = "destroy"
    needs_forge = True

    def match(self, item: InstanceItem, world: World) -> str | None:
        instance = item.instance
        if not world.our_runner(instance):
            return None
        age = _age(instance.created_at, world.now)
        if age is None or _in_grace(age, world):
            return None
        label = world.label_of(instance.name)
        if label in world.online_labels():
            return None
        return f"no online runner carries {label} after {hours(age)}"


@rule("idle")
class Idle(Rule[InstanceItem]):
    help = "a runner instance whose runner is not busy and whose last job ended over --idle ago"
    item = InstanceItem
    action = "destroy"
    needs_forge = True

    def match(self, item: InstanceItem, world: World) -> str | None:
        instance = item.instance
        # Only a repository lists its jobs; for an organization "never ran a job" is unknowable.
        if not world.our_runner(instance) or world.forge is None or not world.forge.target.repo:
            return None
        runner = next((r for r in world.runners if r.name == instance.name), None)
        if runner is None or runner.busy:
            return None  # no registration: that is `orphan`'s business
        jobs = world.last_jobs()
        idle = world.settings.idle
        if instance.name in jobs:
            ended = jobs[instance.name]
            if ended is None or world.now - ended <= idle:
                return None
            return f"last job ended {hours(world.now - ended)} ago"
        age = _age(instance.created_at, world.now)
        if age is not None and age > idle:
            return f"never ran a job in {hours(age)}"
        return None


# Records a command leaves mid-way when it dies; with no live command on them, they are stale.
_UNFINISHED = frozenset({"provisioning", "destroying", "failed"})


@rule("stale-state")
class StaleState(Rule[RecordItem]):
    help = (
        "a record whose instance is gone, or that a command left unfinished (provisioning, "
        "destroying, failed) and no live command works on: remove leftovers and the record"
    )
    item = RecordItem
    action = "forget"

    def match(self, item: RecordItem, world: World) -> str | None:
        record = item.record
        if not world.searched(record.cloud, record.region):
            return None
        if world.busy(record.name, record.launch_id):
            return None
        if record.state in _UNFINISHED:
            return f"left {record.state} by a command that is no longer running"
        if any(made_by(record, i) for i in world.instances):
            return None
        return f"recorded as {record.state}, but no instance of it exists"


@rule("stale-registration")
class StaleRegistration(Rule[RegistrationItem]):
    help = (
        "an offline runner registration with a cml-infra-* label and no live instance, "
        "registered over --orphan-grace ago"
    )
    item = RegistrationItem
    action = "deregister"
    needs_forge = True

    def match(self, item: RegistrationItem, world: World) -> str | None:
        runner = item.runner
        ours = runner.ours
        if runner.online or not ours:
            return None
        # `up` registers a single-job runner before its instance exists: while that instance
        # is being made, no instance carries the name yet.
        since = runner.registered_at
        if since is not None and world.now - since <= world.settings.orphan_grace:
            return None
        if any(i.name in ours for i in world.instances):
            return None
        # Its instance may live on a cloud this run did not search.
        if any(cloud not in world.listed_clouds for cloud in runner.clouds):
            return None
        if any(
            r.name in ours and r.state != "destroyed" and r.cloud not in world.listed_clouds
            for r in world.records
        ):
            return None
        return "offline, and no instance carries its name"


@rule("leftover")
class LeftBehind(Rule[LeftoverItem]):
    help = (
        "what a module made beside an instance (an AWS security group, an Azure resource group "
        "whose VM is gone), once no instance of its launch is left, older than --orphan-grace "
        "and worked on by no command"
    )
    item = LeftoverItem
    action = "reap"

    def match(self, item: LeftoverItem, world: World) -> str | None:
        found = item.leftover
        if not world.searched(found.cloud, found.region):
            return None
        # A leftover of no region (a GCP service account) may be of a launch whose instance
        # lives in a region this run did not list: judged only when every region was.
        if world.settings.regions is not None and found.region not in world.settings.regions:
            return None
        # By launch id: another launch may share the name. One older than launch ids has only
        # its name, and any instance of that name keeps it.
        if world.listed_launch(found.cloud, found.launch_id, found.name):
            return None
        # An `up` makes these before its instance: young ones, and those of unknown age, wait.
        age = _age(found.created_at, world.now)
        if age is None or _in_grace(age, world) or world.busy(found.name, found.launch_id):
            return None
        launch = f"launch {found.launch_id}" if found.launch_id else f"runner {found.name}"
        return f"no instance of {launch} is left, {hours(age)} after it began"


@rule("untracked")
class Untracked(Rule[InstanceItem]):
    help = "opt-in: an instance that no state record knows (only where state sees every launch)"
    item = InstanceItem
    action = "destroy"
    default = False

    def match(self, item: InstanceItem, world: World) -> str | None:
        live = (r for r in world.records if r.state != "destroyed")
        if any(made_by(record, item.instance) for record in live):
            return None
        return "no state record knows it"


def choose(names: Iterable[str] | None, forge: bool) -> list[Rule[Any]]:
    if names:
        chosen = []
        for name in names:
            found = RULES.find(name, "--rule")
            if found.needs_forge and not forge:
                raise UsageError("--rule", f"{name} needs a forge: add --repo or --org")
            chosen.append(found())
        return chosen
    return [cls() for cls in RULES.values() if cls.default and (forge or not cls.needs_forge)]


def match_all(rules: list[Rule[Any]], candidates: list[Item], world: World) -> list[Match]:
    """The first matching rule for each item: one item is acted on once. A record whose
    instance is matched already goes with that instance (its destroy closes the record)."""
    matched: list[Match] = []
    for item in candidates:
        if isinstance(item, RecordItem) and any(
            isinstance(m.item, InstanceItem) and made_by(item.record, m.item.instance)
            for m in matched
        ):
            continue
        for found in rules:
            if not found.applies_to(item):
                continue
            reason = found.match(item, world)
            if reason:
                matched.append(Match(item, found, reason))
                break
    return matched


@dataclass(frozen=True)
class Match:
    """An item, the rule that matched it, and why."""

    item: Item
    rule: Rule[Any]
    reason: str
