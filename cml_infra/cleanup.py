"""`cml-infra cleanup`: the scheduled reaper, independent of the agent and of any local state.

It finds what is ours by tags (cloud APIs), by runner labels (the forge) and by records (the
state dir, when there is one), runs each small named rule over that, and destroys, deregisters
or forgets what a rule matched. A cron job has no state dir: no rule ever reads "not in my state
dir" as "abandoned", except `untracked`, which is opt-in for set-ups whose state sees every launch.
"""

from __future__ import annotations

import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, ClassVar, Literal

from cml_infra import clouds, ui
from cml_infra.clouds.base import ManagedInstance
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.forge.github import GitHubForge
from cml_infra.spec import AUTO_LABEL_PREFIX, CLOUD_LABEL, SINCE_LABEL
from cml_infra.workspace import LIVE_STATES, RunnerRecord, StateDir, utcnow

Kind = Literal["instance", "registration", "state"]
FORGE_TAG = "cml-infra-forge"
SCOPE_TAG = "cml-infra-scope"


@dataclass(frozen=True)
class Settings:
    clouds: tuple[str, ...]
    regions: tuple[str, ...] | None
    max_age: timedelta | None
    idle: timedelta
    orphan_grace: timedelta
    dry_run: bool
    rules: tuple[str, ...] | None


@dataclass
class World:
    """Everything the rules look at, gathered once before any rule runs."""

    now: datetime
    settings: Settings
    instances: list[ManagedInstance]
    listed_clouds: set[str]
    records: list[RunnerRecord]
    forge: GitHubForge | None = None
    runners: list[dict[str, Any]] = field(default_factory=list)
    _last_jobs: dict[str, datetime | None] | None = None

    def last_jobs(self) -> dict[str, datetime | None]:
        if self._last_jobs is None:
            self._last_jobs = self.forge.last_jobs() if self.forge else {}
        return self._last_jobs

    def online_labels(self) -> set[str]:
        return {
            label["name"]
            for runner in self.runners
            if runner.get("status") == "online"
            for label in runner.get("labels", [])
        }


@dataclass
class Item:
    """One thing a rule may match: an instance, a runner registration or a state record."""

    kind: Kind
    cloud: str
    region: str
    id: str
    name: str
    hourly_price: float | None = None
    instance: ManagedInstance | None = None
    runner: dict[str, Any] | None = None
    record: RunnerRecord | None = None


class Rule(ABC):
    name: ClassVar[str]
    help: ClassVar[str]
    kind: ClassVar[Kind]
    needs_forge: ClassVar[bool] = False
    default: ClassVar[bool] = True

    @abstractmethod
    def match(self, item: Item, world: World) -> str | None:
        """Why `item` must go, or None."""


RULES: dict[str, type[Rule]] = {}


def register(cls: type[Rule]) -> type[Rule]:
    RULES[cls.name] = cls
    return cls


def _our_runner(instance: ManagedInstance, world: World) -> bool:
    """A runner instance registered in the scope this cleanup was given."""
    return (
        world.forge is not None
        and instance.tags.get(FORGE_TAG) == "github"
        and instance.tags.get(SCOPE_TAG) == world.forge.scope.tag
    )


def _age(instance: ManagedInstance, now: datetime) -> timedelta | None:
    return None if instance.created_at is None else now - instance.created_at


@register
class Expired(Rule):
    name = "expired"
    help = "past its cml-infra-expires tag, or older than --max-age"
    kind = "instance"

    def match(self, item: Item, world: World) -> str | None:
        instance = item.instance
        assert instance is not None
        if instance.expires_at is not None and instance.expires_at <= world.now:
            return f"expired at {instance.expires_at:%Y-%m-%d %H:%M:%S} UTC"
        age = _age(instance, world.now)
        max_age = world.settings.max_age
        if max_age is not None and age is not None and age > max_age:
            return f"{_hours(age)} old, over --max-age {_hours(max_age)}"
        return None


@register
class Orphan(Rule):
    name = "orphan"
    help = "a runner instance older than --orphan-grace that no online registration labels"
    kind = "instance"
    needs_forge = True

    def match(self, item: Item, world: World) -> str | None:
        instance = item.instance
        assert instance is not None
        if not _our_runner(instance, world):
            return None
        age = _age(instance, world.now)
        if age is None or age <= world.settings.orphan_grace:
            return None
        label = AUTO_LABEL_PREFIX + instance.name
        if label in world.online_labels():
            return None
        return f"no online runner carries {label} after {_hours(age)}"


@register
class Idle(Rule):
    name = "idle"
    help = "a runner instance whose runner is not busy and whose last job ended over --idle ago"
    kind = "instance"
    needs_forge = True

    def match(self, item: Item, world: World) -> str | None:
        instance = item.instance
        assert instance is not None
        # Only a repository lists its jobs; for an organization "never ran a job" is unknowable.
        if (
            not _our_runner(instance, world)
            or world.forge is None
            or world.forge.scope.repo is None
        ):
            return None
        runner = next((r for r in world.runners if r.get("name") == instance.name), None)
        if runner is None or runner.get("busy"):
            return None  # no registration: that is `orphan`'s business
        jobs = world.last_jobs()
        idle = world.settings.idle
        if instance.name in jobs:
            ended = jobs[instance.name]
            if ended is None or world.now - ended <= idle:
                return None
            return f"last job ended {_hours(world.now - ended)} ago"
        age = _age(instance, world.now)
        if age is not None and age > idle:
            return f"never ran a job in {_hours(age)}"
        return None


@register
class StaleState(Rule):
    name = "stale-state"
    help = "a state record or workspace whose instance is gone: remove leftovers and the record"
    kind = "state"

    def match(self, item: Item, world: World) -> str | None:
        record = item.record
        assert record is not None
        if record.cloud not in world.listed_clouds or record.state == "provisioning":
            return None
        regions = world.settings.regions
        if regions is not None and record.cloud != "local" and record.region not in regions:
            return None
        alive = {(i.cloud, i.name) for i in world.instances}
        if (record.cloud, record.name) in alive:
            return None
        return f"recorded as {record.state}, but no instance of it exists"


@register
class StaleRegistration(Rule):
    name = "stale-registration"
    help = (
        "an offline runner registration with a cml-infra-* label and no live instance, "
        "registered over --orphan-grace ago"
    )
    kind = "registration"
    needs_forge = True

    def match(self, item: Item, world: World) -> str | None:
        runner = item.runner
        assert runner is not None
        if runner.get("status") != "offline":
            return None
        labels = [label["name"] for label in runner.get("labels", [])]
        ours = [
            label[len(AUTO_LABEL_PREFIX) :]
            for label in labels
            if label.startswith(AUTO_LABEL_PREFIX)
            and not label.startswith((CLOUD_LABEL, SINCE_LABEL))
        ]
        if not ours:
            return None
        # `up` registers a single-job runner before its instance exists: while that instance
        # is being made, no instance carries the name yet.
        since = _registered_at(labels)
        if since is not None and world.now - since <= world.settings.orphan_grace:
            return None
        if any(i.name in ours for i in world.instances):
            return None
        # Its instance may live on a cloud this run did not search.
        on = [label[len(CLOUD_LABEL) :] for label in labels if label.startswith(CLOUD_LABEL)]
        if any(cloud not in world.listed_clouds for cloud in on):
            return None
        if any(
            r.name in ours and r.state in LIVE_STATES and r.cloud not in world.listed_clouds
            for r in world.records
        ):
            return None
        return "offline, and no instance carries its name"


def _registered_at(labels: list[str]) -> datetime | None:
    for label in labels:
        seconds = label[len(SINCE_LABEL) :]
        if label.startswith(SINCE_LABEL) and seconds.isdigit():
            return datetime.fromtimestamp(int(seconds), timezone.utc)
    return None


@register
class Untracked(Rule):
    name = "untracked"
    help = "opt-in: an instance that no state record knows (only where state sees every launch)"
    kind = "instance"
    default = False

    def match(self, item: Item, world: World) -> str | None:
        known = {(r.cloud, r.name) for r in world.records if r.state in LIVE_STATES}
        instance = item.instance
        assert instance is not None
        if (instance.cloud, instance.name) in known:
            return None
        return "no state record knows it"


def settings(
    cloud: str | None,
    regions: Iterable[str],
    max_age: str | None,
    idle: str,
    orphan_grace: str,
    dry_run: bool,
    rules: Iterable[str],
    state: StateDir,
) -> Settings:
    from cml_infra.spec import parse_duration

    if cloud:
        names = [
            clouds.get(part.strip(), state.root).name for part in cloud.split(",") if part.strip()
        ]
    else:
        names = ["local", *sorted({r.cloud for r in state.records()} - {"local"})]
    return Settings(
        clouds=tuple(dict.fromkeys(names)),
        regions=tuple(regions) or None,
        max_age=timedelta(seconds=parse_duration(max_age, "--max-age")) if max_age else None,
        idle=timedelta(seconds=parse_duration(idle, "--idle")),
        orphan_grace=timedelta(seconds=parse_duration(orphan_grace, "--orphan-grace")),
        dry_run=dry_run,
        rules=tuple(rules) or None,
    )


def forge(
    repo: str | None, org: str | None, token: str | None, github_url: str | None
) -> GitHubForge | None:
    if not repo and not org:
        return None
    from cml_infra.forge.github import PUBLIC_API, Scope

    return GitHubForge(Scope.parse(repo, org), token or "", github_url or PUBLIC_API)


def choose_rules(names: Iterable[str] | None, forge: bool) -> list[Rule]:
    if names:
        chosen = []
        for name in names:
            if name not in RULES:
                raise UsageError("--rule", f"unknown rule {name!r}; valid: {', '.join(RULES)}")
            if RULES[name].needs_forge and not forge:
                raise UsageError("--rule", f"{name} needs a forge: add --repo or --org")
            chosen.append(RULES[name]())
        return chosen
    return [cls() for cls in RULES.values() if cls.default and (forge or not cls.needs_forge)]


@dataclass
class Row:
    kind: str
    cloud: str
    region: str
    id: str
    name: str
    rule: str
    reason: str
    action: str
    result: str
    hourly_price: float | None

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Plan:
    world: World
    matched: list[tuple[Item, Rule, str]]

    def rows(self, result: str) -> list[Row]:
        return [_row(item, rule, reason, result) for item, rule, reason in self.matched]


def plan(settings: Settings, state: StateDir, forge: GitHubForge | None) -> Plan:
    """Find everything and match the rules; changes nothing."""
    rules = choose_rules(settings.rules, forge is not None)
    world = gather(settings, state, forge)
    candidates = items(world)
    matched = match_all(rules, candidates, world)
    for rule in rules:
        count = sum(1 for _, r, _ in matched if r is rule)
        total = sum(1 for item in candidates if item.kind == rule.kind)
        ui.info(f"cleanup: rule {rule.name} matched {count} of {total}")
    return Plan(world, matched)


def execute(found: Plan, state: StateDir) -> list[Row]:
    """Act on every match; the rows say what came of each."""
    return [_act(item, rule, reason, found.world, state) for item, rule, reason in found.matched]


def run(
    settings: Settings,
    state: StateDir,
    forge: GitHubForge | None,
    confirm: Callable[[Plan], bool],
) -> list[Row]:
    """Plan, then act unless this is a dry run or `confirm` (shown the plan) says no."""
    found = plan(settings, state, forge)
    if settings.dry_run or not found.matched:
        return found.rows("dry run")
    if not confirm(found):
        return found.rows("skipped: not confirmed")
    return execute(found, state)


def gather(settings: Settings, state: StateDir, forge: GitHubForge | None) -> World:
    records = state.records()
    instances: list[ManagedInstance] = []
    listed = set()
    for cloud_name in settings.clouds:
        cloud = clouds.get(cloud_name, state.root)
        instances += cloud.list_managed(settings.regions if cloud.name != "local" else None)
        listed.add(cloud.name)
    world = World(utcnow(), settings, instances, listed, records, forge)
    if forge is not None:
        world.runners = forge.runners()
    return world


def items(world: World) -> list[Item]:
    found = [
        Item("instance", i.cloud, i.region, i.id, i.name, i.hourly_price, instance=i)
        for i in world.instances
    ]
    found += [
        Item(
            "registration",
            "github",
            world.forge.scope.slug if world.forge else "",
            str(r["id"]),
            str(r["name"]),
            runner=r,
        )
        for r in world.runners
    ]
    found += [
        Item("state", r.cloud, r.region, r.instance_id or r.name, r.name, r.hourly_price, record=r)
        for r in world.records
        if r.state in LIVE_STATES
    ]
    return found


def match_all(
    rules: list[Rule], candidates: list[Item], world: World
) -> list[tuple[Item, Rule, str]]:
    """The first matching rule for each item: one item is acted on once."""
    matched = []
    for item in candidates:
        for rule in rules:
            if rule.kind != item.kind:
                continue
            reason = rule.match(item, world)
            if reason:
                matched.append((item, rule, reason))
                break
    return matched


def _act(item: Item, rule: Rule, reason: str, world: World, state: StateDir) -> Row:
    try:
        if item.kind == "instance":
            action = _destroy_instance(item, rule, state)
            if item.instance is not None and _our_runner(item.instance, world):
                assert world.forge is not None
                try:
                    world.forge.delete(item.name)
                except CmlInfraError as exc:
                    action += f"; deregistration failed: {exc}"
        elif item.kind == "registration":
            assert world.forge is not None
            action = "deregistered" if world.forge.delete_id(int(item.id)) else "already gone"
        else:
            action = _forget(item, state)
    except CmlInfraError as exc:
        return _row(item, rule, reason, f"failed: {exc}")
    return _row(item, rule, reason, action)


def _destroy_instance(item: Item, rule: Rule, state: StateDir) -> str:
    """Through Terraform where this state dir has the runner's workspace, else the cloud API."""
    from cml_infra import lifecycle

    record = state.load(item.name)
    if record is not None and record.cloud == item.cloud and state.workspace(item.name).is_dir():
        lifecycle.down([item.name], state, None, f"cleanup: {rule.name}")
        return "destroyed (terraform)"
    clouds.get(item.cloud, state.root).terminate([item.id])
    return "destroyed (cloud API)"


def _forget(item: Item, state: StateDir) -> str:
    """A record whose instance is gone: destroy what its workspace still holds, then close it."""
    from cml_infra import lifecycle

    lifecycle.down([item.name], state, None, "cleanup: stale state")
    return "leftovers destroyed, record closed"


def _row(item: Item, rule: Rule, reason: str, result: str) -> Row:
    action = {"instance": "destroy", "registration": "deregister", "state": "remove"}[item.kind]
    return Row(item.kind, item.cloud, item.region, item.id, item.name, rule.name, reason, action,
               result, item.hourly_price)  # fmt: skip


def _hours(delta: timedelta) -> str:
    minutes = int(delta.total_seconds() // 60)
    return f"{minutes // 60}h{minutes % 60:02d}m"


def interactive() -> bool:
    return sys.stdin.isatty() and os.environ.get("CI") is None
