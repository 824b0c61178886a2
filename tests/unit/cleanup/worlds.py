"""Hand-built cleanup worlds: settings, instances, runner registrations and an in-memory forge.

Nothing here reaches a cloud or GitHub: the rules see World objects built from these.
"""

from __future__ import annotations

import itertools
from datetime import datetime, timedelta, timezone

from cml_infra.cleanup.rules import RULES
from cml_infra.cleanup.world import (
    InstanceItem,
    Item,
    LeftoverItem,
    RecordItem,
    RegistrationItem,
    Settings,
    World,
)
from cml_infra.clouds import tags as keys
from cml_infra.clouds.base import Leftover, ManagedInstance
from cml_infra.forge.base import RunnerInfo
from cml_infra.forge.github import GitHubForge
from cml_infra.record import RunnerRecord
from cml_infra.spec import ForgeTarget, RunnerSpec
from cml_infra.state import StateDir

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)
HOUR = timedelta(hours=1)
MINUTE = timedelta(minutes=1)
RUNNER_IDS = itertools.count(1)
REPO = ForgeTarget(repo="octo/repo")


def make_settings(**changes) -> Settings:
    fields = {
        "clouds": ("local",),
        "regions": None,
        "max_age": None,
        "idle": 30 * MINUTE,
        "orphan_grace": 10 * MINUTE,
        "dry_run": False,
        "rules": None,
    }
    fields.update(changes)
    return Settings(**fields)


def runner_tags(name: str, repo: str = "octo/repo") -> dict[str, str]:
    """The tags `up --repo` puts on a runner instance (clouds.tags.resource_tags)."""
    spec = RunnerSpec(
        name=name, cloud="local", idle_timeout=60, ttl=3600, forge=ForgeTarget(repo=repo)
    )
    return keys.resource_tags(spec)


def instance(
    name: str = "r1",
    *,
    age: timedelta | None = HOUR,
    expires_in: timedelta | None = HOUR,
    runner: bool = False,
    cloud: str = "local",
    region: str = "local",
    state: str = "running",
    tags: dict[str, str] | None = None,
    launch_id: str = "",
) -> ManagedInstance:
    expires = None if expires_in is None else NOW + expires_in
    all_tags = {keys.MANAGED: "true", keys.NAME: name}
    if expires is not None:
        all_tags[keys.EXPIRES] = str(int(expires.timestamp()))
    if runner:
        all_tags.update(runner_tags(name))
    all_tags.update(tags or {})
    return ManagedInstance(
        id=name if cloud == "local" else f"{region}/i-{name}",
        name=name,
        cloud=cloud,
        region=region,
        state=state,
        created_at=None if age is None else NOW - age,
        expires_at=expires,
        tags=all_tags,
        launch_id=launch_id,
    )


def leftover(
    name: str = "r1",
    *,
    launch_id: str = "launch0001",
    age: timedelta | None = HOUR,
    kind: str = "aws_security_group",
    cloud: str = "aws",
    region: str = "us-east-1",
) -> Leftover:
    """What a module made beside an instance of launch `launch_id`, `age` ago."""
    return Leftover(
        kind=kind,
        id=f"{region}/sg-{name}",
        cloud=cloud,
        region=region,
        name=name,
        launch_id=launch_id,
        created_at=None if age is None else NOW - age,
    )


def registration(
    name: str, *, online: bool = True, busy: bool = False, labels: tuple[str, ...] = ()
) -> RunnerInfo:
    """A runner as the forge reports it (GitHub's read-only labels first)."""
    every = ("self-hosted", "Linux", "X64", *labels)
    return RunnerInfo(id=next(RUNNER_IDS), name=name, online=online, busy=busy, labels=every)


def online_runner(name: str, **changes) -> RunnerInfo:
    return registration(name, labels=(f"cml-infra-{name}",), **changes)


# The forge a runner rule needs: the scope the runner instances here were tagged with.
REPO_FORGE = GitHubForge(REPO, "token")


class ListedForge(GitHubForge):
    """A GitHub forge whose registrations live in a list: deregistering removes from it."""

    def __init__(self, runners=(), target: ForgeTarget = REPO, jobs=None) -> None:
        super().__init__(target, "token")
        self.listed = list(runners)
        self.jobs = jobs or {}
        self.deregistered: list[int] = []
        self.job_lookups = 0

    def runners(self) -> list[RunnerInfo]:
        return list(self.listed)

    def deregister_id(self, runner_id: int) -> bool:
        found = [runner for runner in self.listed if runner.id == runner_id]
        self.listed = [runner for runner in self.listed if runner.id != runner_id]
        self.deregistered.append(runner_id)
        return bool(found)

    def last_jobs(self, runs: int = 100) -> dict[str, datetime | None]:
        self.job_lookups += 1
        return dict(self.jobs)


def world(
    *,
    instances=(),
    records=(),
    runners=(),
    leftovers=(),
    jobs=None,
    listed=("local",),
    forge=REPO_FORGE,
    state: StateDir | None = None,
    **settings,
) -> World:
    return World(
        now=NOW,
        settings=make_settings(**settings),
        instances=list(instances),
        listed_clouds=set(listed),
        records=list(records),
        forge=forge,
        runners=list(runners),
        state=state,
        leftovers=list(leftovers),
        _last_jobs=jobs,
    )


def instance_item(found: ManagedInstance) -> InstanceItem:
    return InstanceItem(found)


def leftover_item(found: Leftover) -> LeftoverItem:
    return LeftoverItem(found)


def registration_item(runner: RunnerInfo) -> RegistrationItem:
    return RegistrationItem(runner, ("github", "octo/repo"))


def state_item(record: RunnerRecord) -> RecordItem:
    return RecordItem(record)


def match(rule: str, item: Item, in_world: World) -> str | None:
    found = RULES[rule]()
    assert found.applies_to(item), f"{rule} does not look at a {item.kind}"
    return found.match(item, in_world)
