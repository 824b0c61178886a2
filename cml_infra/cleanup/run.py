"""One cleanup run: plan (gather, match), the --max-destroy guard, act, report a row per match."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import timedelta
from typing import Any

from cml_infra import clouds, forge, ui
from cml_infra.cleanup import actions, rules, world
from cml_infra.cleanup.rules import Match
from cml_infra.cleanup.world import Settings, World
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.forge.base import Forge
from cml_infra.spec import ForgeTarget, parse_duration
from cml_infra.state import StateDir

DEFAULT_MAX_DESTROY = 50


@dataclass(frozen=True)
class Row:
    kind: str
    cloud: str
    region: str
    id: str
    name: str
    # The launch id (`cml-infra-id`) of the instance or record; "" for a registration, or one
    # older than launch ids.
    launch: str
    rule: str
    reason: str
    action: str
    result: str
    hourly_price: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def failed(self) -> bool:
        return self.result.startswith(("failed", "not done"))


@dataclass
class Plan:
    world: World
    matched: list[Match]

    def rows(self, result: str) -> list[Row]:
        return [row(match, result) for match in self.matched]

    @property
    def destructive(self) -> list[Match]:
        return [m for m in self.matched if actions.ACTIONS[m.rule.action].destructive]

    @property
    def runners(self) -> int:
        """How many runners the destructive matches belong to, what --max-destroy counts: a
        runner's instance and what its module made beside it (a security group, a service
        account and a firewall rule) are one runner, told by its launch id."""
        return len(
            {
                (m.item.where[0], m.item.launch or f"{m.item.kind}/{m.item.id}")
                for m in self.destructive
            }
        )


def settings(
    cloud: str | None,
    regions: Iterable[str],
    max_age: str | None,
    idle: str,
    orphan_grace: str,
    dry_run: bool,
    names: Iterable[str],
    state: StateDir,
    max_destroy: int = DEFAULT_MAX_DESTROY,
) -> Settings:
    if cloud:
        chosen = [clouds.canonical(part.strip()) for part in cloud.split(",") if part.strip()]
        if not chosen:
            raise UsageError("--cloud", f"{cloud!r} names no cloud; valid: {clouds.names()}")
    else:
        here = [name for name, cls in clouds.classes().items() if cls.ON_THIS_MACHINE]
        chosen = [*here, *sorted({r.cloud for r in state.records()} - set(here))]
    if max_destroy < 0:
        raise UsageError("--max-destroy", "must be 0 (no limit) or more")
    return Settings(
        clouds=tuple(dict.fromkeys(chosen)),
        regions=tuple(regions) or None,
        max_age=timedelta(seconds=parse_duration(max_age, "--max-age")) if max_age else None,
        idle=timedelta(seconds=parse_duration(idle, "--idle")),
        orphan_grace=timedelta(seconds=parse_duration(orphan_grace, "--orphan-grace")),
        dry_run=dry_run,
        rules=tuple(names) or None,
        max_destroy=max_destroy,
    )


def forge_of(
    repo: str | None, org: str | None, token: forge.Secret, github_url: str | None
) -> Forge | None:
    if not repo and not org:
        return None
    if repo and org:
        raise UsageError("--repo", "give --repo OWNER/NAME or --org ORG (one of them)")
    target = ForgeTarget(repo=repo or None, org=org or None, api_url=github_url or None)
    return forge.for_target(target, token)


def plan(settings: Settings, state: StateDir, found_forge: Forge | None) -> Plan:
    """Find everything and match the rules; changes nothing."""
    chosen = rules.choose(settings.rules, found_forge is not None)
    seen = world.gather(settings, state, found_forge)
    candidates = world.items(seen)
    matched = rules.match_all(chosen, candidates, seen)
    for rule in chosen:
        count = sum(1 for m in matched if m.rule is rule)
        total = sum(1 for item in candidates if rule.applies_to(item))
        ui.info(f"cleanup: rule {rule.name} matched {count} of {total}")
    return Plan(seen, matched)


def execute(found: Plan) -> list[Row]:
    """Act on every match; the rows say what came of each."""
    done = []
    for match in found.matched:
        act = actions.ACTIONS[match.rule.action]()
        try:
            result = act.run(match.item, found.world, f"cleanup: {match.rule.name}")
        except CmlInfraError as exc:
            result = f"failed: {exc}"
        done.append(row(match, result))
    return done


def run(
    settings: Settings,
    state: StateDir,
    found_forge: Forge | None,
    confirm: Callable[[Plan], bool],
) -> list[Row]:
    """Plan, then act unless this is a dry run, the plan would destroy more than
    --max-destroy, or `confirm` (shown the plan) says no."""
    found = plan(settings, state, found_forge)
    if settings.dry_run or not found.matched:
        return found.rows("dry run")
    limit = settings.max_destroy
    if limit and found.runners > limit:
        return found.rows(
            f"not done: {found.runners} runners to destroy is over --max-destroy {limit}; "
            "check the plan (--dry-run), then raise the limit or give --max-destroy 0"
        )
    if not confirm(found):
        return found.rows("skipped: not confirmed")
    return execute(found)


def row(match: Match, result: str) -> Row:
    item = match.item
    cloud, region = item.where
    return Row(item.kind, cloud, region, item.id, item.name, item.launch, match.rule.name,
               match.reason, match.rule.action, result, item.hourly_price)  # fmt: skip


def interactive() -> bool:
    return sys.stdin.isatty() and os.environ.get("CI") is None
