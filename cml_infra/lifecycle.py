"""up / down / status / logs / render: the orchestration behind every command.

`up` either returns a running instance or leaves nothing behind: any failure, Ctrl-C or SIGTERM
after the first file is written rolls back what was created, and a rollback that cannot finish
leaves a `failed` record for `down` or `cleanup` to finish.
"""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

from cml_infra import clouds, config, cost, render, ui
from cml_infra.clouds.base import (
    Cloud,
    ErrorClass,
    Feature,
    ManagedInstance,
    Placement,
    RenderContext,
)
from cml_infra.errors import CmlInfraError, Interrupted, UsageError
from cml_infra.forge.github import GitHubForge, Registration, Scope
from cml_infra.spec import RunnerSpec, validate_name
from cml_infra.terraform import Engine, TerraformError
from cml_infra.workspace import LIVE_STATES, RunnerRecord, StateDir, utcnow

# `down` waits this long for another command (an `up` still finishing, the agent's own `down`).
LOCK_WAIT_SECONDS = 900.0
# The agent's state → the state `status` shows for a running record.
_AGENT_STATES = {"busy": "running", "idle": "idle", "destroying": "destroying"}


class SignalGuard:
    """SIGINT/SIGTERM during `up`: stop Terraform once, then roll back; never a second Ctrl-C."""

    def __init__(self) -> None:
        self.engine: Engine | None = None
        self.received: str | None = None
        self.rolling_back = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> SignalGuard:
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def check(self) -> None:
        if self.received:
            raise Interrupted(self.received)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if self.rolling_back or self.received:
            ui.warn(f"{name}: already stopping; waiting for the rollback to finish")
            return
        self.received = name
        if self.engine is not None and self.engine.interrupt():
            ui.warn(f"{name}: stopping terraform, then destroying what it created")
            return
        raise Interrupted(name)


@dataclass(frozen=True)
class Prepared:
    """Everything rendering needs, computed before anything is written: any bad input (an
    unknown GPU, a startup script too large for the cloud) fails here with nothing created."""

    cloud: Cloud
    placement: Placement
    context: RenderContext
    variables: dict[str, Any]


def prepare(
    spec: RunnerSpec,
    state: StateDir,
    registration: Registration | None = None,
    created: datetime | None = None,
) -> Prepared:
    cloud = clouds.get(spec.cloud, state.root)
    placement = cloud.resolve(spec)
    created = created or utcnow()
    expires = created + timedelta(seconds=spec.ttl)
    if spec.runner_mode and registration is None:
        from cml_infra.runner import PLACEHOLDER

        registration = PLACEHOLDER
    script = render.startup_script(cloud, spec, expires.timestamp(), registration)
    context = RenderContext(state.root, script, created, expires)
    return Prepared(cloud, placement, context, cloud.module_vars(spec, placement, context))


def up(
    spec: RunnerSpec, state: StateDir, terraform: str | None, token: str | None = None
) -> RunnerRecord:
    attempts, plans = _attempts(spec, state)
    cloud, placement = plans[0].cloud, plans[0].placement
    forge = _forge(spec, token)
    engine = Engine.discover(terraform)
    created, expires = plans[0].context.created_at, plans[0].context.expires_at
    with SignalGuard() as guard, state.lock(spec.name, wait=0):
        existing = state.load(spec.name)
        if existing is not None and existing.state != "destroyed":
            raise UsageError(
                "--name",
                f"{spec.name!r} is in use (state {existing.state}); pick another name "
                f"or run `cml-infra down {spec.name}` first",
            )
        record = state.save(
            RunnerRecord(
                name=spec.name,
                cloud=cloud.name,
                state="provisioning",
                created_at=created,
                updated_at=created,
                expires_at=expires,
                idle_timeout=spec.idle_timeout,
                ttl=spec.ttl,
                single=spec.single,
                labels=spec.all_labels,
                command=spec.command,
                engine=engine.argv,
                forge=forge.describe() if forge else None,
                **_where(placement),
            )
        )
        workspace = state.workspace(spec.name)
        applying = False
        registered = False
        try:
            # A reused name starts clean: no workspace, and no log of the runner it replaces.
            state.remove_workspace(spec.name)
            shutil.rmtree(state.log_dir(spec.name), ignore_errors=True)
            registration = None
            if forge is not None:
                labels = spec.runner_labels(expires.timestamp())
                registration = forge.register(spec.name, labels, spec.single)
                registered = True
            number = 0
            while True:
                attempt, plan = attempts[number], plans[number]
                if number:
                    record = state.save(record.model_copy(update=_where(plan.placement)))
                prepared = prepare(attempt, state, registration, created)
                render.write_workspace(
                    workspace, cloud, attempt, plan.placement, prepared.context, prepared.variables
                )
                guard.engine = engine
                with ui.terraform_progress(f"{spec.name}: terraform init") as on_event:
                    engine.init(workspace, state, on_event)
                guard.check()
                applying = True
                where = f" in {_where_text(plan.placement)}" if number else ""
                try:
                    with ui.terraform_progress(
                        f"{spec.name}: creating on {cloud.name}{where}"
                    ) as on_event:
                        engine.apply(workspace, state, on_event)
                    break
                except TerraformError as exc:
                    following = None if guard.received else _next(cloud, exc, plans, number)
                    if following is None:
                        raise
                    failed, number = plan.placement, following
                    _clear_failed_attempt(
                        engine, state, cloud, record, exc, failed, plans[number].placement
                    )
                    applying = False
            guard.check()
            outputs = engine.outputs(workspace, state).get("instance") or {}
            if forge is not None and spec.wait:
                ui.info(f"{spec.name}: waiting for the runner to come online on GitHub")
                forge.wait_online(spec.name, spec.startup_timeout)
        except BaseException as exc:
            failure: BaseException = exc
            if guard.received and not isinstance(exc, Interrupted):
                failure = Interrupted(guard.received)
            guard.rolling_back = True
            _rollback(engine, state, cloud, record, failure, applying)
            if registered and forge is not None:
                _deregister(forge, spec.name)
            if failure is exc:
                raise
            raise failure from None
        return state.save(
            record.model_copy(
                update={"state": "running", "instance_id": outputs.get("id"), "outputs": outputs}
            )
        )


def _attempts(spec: RunnerSpec, state: StateDir) -> tuple[list[RunnerSpec], list[Prepared]]:
    """Every placement `up` may try, in order: per region and market, each of the region's
    zones where the cloud has `up` choose them. All are resolved now, so a region the cloud
    does not have fails before anything is created."""
    attempts, plans = [], []
    for attempt in spec.attempts():
        plan = prepare(attempt, state)
        zones = plan.cloud.zones(plan.placement.region)
        for zoned in [attempt.model_copy(update={"zone": zone}) for zone in zones] or [attempt]:
            attempts.append(zoned)
            plans.append(plan if zoned is attempt else prepare(zoned, state))
    cost.check_budget([plan.placement for plan in plans], spec.ttl, spec.budget)
    return attempts, plans


def _next(cloud: Cloud, error: TerraformError, plans: list[Prepared], number: int) -> int | None:
    """The attempt to make after a failed one, or None to give up.

    Capacity ("not here, not now") moves to the next zone or region. A quota holds for the
    whole region and market, so their other zones are skipped. Any other error would follow
    `up` everywhere, and ends it.
    """
    found = [cloud.classify(d.summary, d.detail) for d in error.diagnostics]
    classes = set(found or [cloud.classify(str(error), "")])
    later = range(number + 1, len(plans))
    if ErrorClass.CAPACITY in classes:
        return later[0] if later else None
    if ErrorClass.QUOTA in classes:
        failed = plans[number].placement
        return next(
            (
                following
                for following in later
                if (plans[following].placement.region, plans[following].placement.spot)
                != (failed.region, failed.spot)
            ),
            None,
        )
    return None


def _clear_failed_attempt(
    engine: Engine,
    state: StateDir,
    cloud: Cloud,
    record: RunnerRecord,
    error: TerraformError,
    failed: Placement,
    following: Placement,
) -> None:
    """Destroy whatever the failed attempt created before the next one starts elsewhere; if
    that fails, up stops and rolls back as for any other failure."""
    ui.warn(
        f"{record.name}: could not create in {_where_text(failed)} ({error}); "
        f"trying {_where_text(following)}"
    )
    problems = _destroy(engine, state, cloud, record)
    if problems:
        raise CmlInfraError(f"{error}; cleaning up before the next attempt failed: {problems}")
    state.remove_workspace(record.name)


def _where(placement: Placement) -> dict[str, Any]:
    """The record's fields that say where and on what an attempt runs."""
    return {
        "region": placement.region,
        "instance_type": placement.instance_type,
        "gpu": f"{placement.gpu}:{placement.gpu_count}" if placement.gpu else None,
        "spot": placement.spot,
        "hourly_price": placement.hourly_price,
    }


def _where_text(placement: Placement) -> str:
    return f"{placement.zone or placement.region} ({placement.market})"


def reusable(spec: RunnerSpec, state: StateDir, token: str | None) -> dict[str, Any] | None:
    """An online idle runner of the scope that has every asked-for label (`up --reuse-idle`
    then creates nothing). Input is checked first, as `up` would, so that bad input is an
    error whether or not a runner is free."""
    _attempts(spec, state)
    forge = _forge(spec, token)
    return None if forge is None else forge.idle_runner(spec.labels)


def _forge(spec: RunnerSpec, token: str | None) -> GitHubForge | None:
    if not spec.runner_mode:
        return None
    scope = Scope.parse(spec.repo, spec.org)
    return GitHubForge(scope, token or "", spec.github_url, spec.runner_group)


def _deregister(forge: GitHubForge, name: str) -> None:
    """Remove a runner registration; a failure here is reported, and `cleanup` finds it later."""
    try:
        if forge.delete(name):
            ui.info(f"{name}: runner registration removed from {forge.scope.slug}")
    except CmlInfraError as exc:
        ui.warn(f"{name}: could not remove the runner registration ({exc})")


def _rollback(
    engine: Engine,
    state: StateDir,
    cloud: Cloud,
    record: RunnerRecord,
    failure: BaseException,
    applying: bool,
) -> None:
    reason = str(failure) or type(failure).__name__
    problems = ""
    # Before apply starts nothing exists in the cloud (a failed init, say, of a provider that
    # cannot be downloaded), and asking the cloud would need credentials the user may not have.
    if applying:
        ui.warn(f"{record.name}: {reason}; destroying what was created")
        problems = _destroy(engine, state, cloud, record)
    if problems:
        state.save(
            record.model_copy(
                update={"state": "failed", "error": f"{reason}; rollback failed: {problems}"}
            )
        )
        ui.error(
            f"{record.name}: rollback failed ({problems}); it is recorded as failed: "
            f"run `cml-infra down {record.name}` to finish"
        )
        return
    state.remove_workspace(record.name)
    state.save(record.model_copy(update={"state": "destroyed", "error": f"up failed: {reason}"}))
    ui.info(f"{record.name}: rolled back; nothing is left running")


def _destroy(engine: Engine, state: StateDir, cloud: Cloud, record: RunnerRecord) -> str:
    """Terraform destroy where a workspace exists, then the cloud API for anything it missed.

    The second step matters when apply was cut short: a half-created resource may be tainted,
    and Terraform runs no destroy-time step for tainted resources.
    """
    problems = []
    workspace = state.workspace(record.name)
    if (workspace / "main.tf").is_file():
        try:
            with ui.terraform_progress(f"{record.name}: destroying on {cloud.name}") as on_event:
                if not (workspace / ".terraform").is_dir():
                    engine.init(workspace, state, on_event)
                engine.destroy(workspace, state, on_event)
        except CmlInfraError as exc:
            problems.append(str(exc))
    try:
        leftovers = [i.id for i in cloud.list_managed([record.region]) if i.name == record.name]
        if leftovers:
            cloud.terminate(leftovers)
    except CmlInfraError as exc:
        problems.append(str(exc))
    return "; ".join(problems)


def down(
    names: Iterable[str],
    state: StateDir,
    terraform: str | None,
    reason: str | None,
    token: str | None = None,
) -> list[RunnerRecord]:
    names = list(names)
    for name in names:
        validate_name(name, "NAME")
    unknown = [name for name in names if state.load(name) is None]
    if unknown:
        raise _unknown(unknown, state, "nothing to destroy")
    ended = []
    failures = []
    for name in names:
        try:
            ended.append(_down_one(name, state, terraform, reason, token))
        except CmlInfraError as exc:
            failures.append(str(exc))
    if failures:
        raise CmlInfraError("; ".join(failures))
    return ended


def _down_one(
    name: str, state: StateDir, terraform: str | None, reason: str | None, token: str | None
) -> RunnerRecord:
    with state.lock(name, wait=LOCK_WAIT_SECONDS):
        record = state.load(name)
        if record is None:
            raise _unknown([name], state, "nothing to destroy")
        if record.state == "destroyed":
            ui.info(f"{name} is already gone")
            return record
        record = state.save(record.model_copy(update={"state": "destroying"}))
        cloud = clouds.get(record.cloud, state.root, flag=f"{name}: cloud")
        engine = Engine.discover(terraform) if terraform else Engine.from_argv(record.engine)
        problems = _destroy(engine, state, cloud, record)
        if problems:
            state.save(record.model_copy(update={"state": "failed", "error": problems}))
            raise CmlInfraError(f"{name}: destroy failed: {problems}")
        state.remove_workspace(name)
        if record.forge:
            _down_registration(record, token)
        ui.info(f"{name} destroyed" + (f" ({reason})" if reason else ""))
        return state.save(
            record.model_copy(update={"state": "destroyed", "end_reason": reason, "error": None})
        )


def _down_registration(record: RunnerRecord, token: str | None) -> None:
    forge_info = record.forge or {}
    if not token:
        # The agent's own `down` has no token, by design; an ephemeral runner is gone already,
        # and a multi-job one is removed by `cleanup`.
        ui.info(f"{record.name}: no GitHub token here; its runner registration is left to cleanup")
        return
    scope_path = str(forge_info.get("scope", ""))
    kind, _, slug = scope_path.partition("/")
    scope = Scope(repo=slug) if kind == "repos" else Scope(org=slug)
    forge = GitHubForge(
        scope, token, str(forge_info.get("api_url")), forge_info.get("runner_group")
    )
    _deregister(forge, record.name)


def all_live(state: StateDir) -> list[str]:
    return [record.name for record in state.records() if record.state in LIVE_STATES]


def status(
    state: StateDir, include_destroyed: bool, only: str | None = None
) -> list[dict[str, Any]]:
    records = [
        r
        for r in state.records()
        if (include_destroyed or r.state != "destroyed") and only in (None, r.name)
    ]
    live: dict[tuple[str, str], ManagedInstance] = {}
    for cloud_name in sorted({r.cloud for r in records if r.state in LIVE_STATES}):
        cloud = clouds.get(cloud_name, state.root)
        regions = sorted({r.region for r in records if r.cloud == cloud_name})
        try:
            live.update({(cloud_name, i.name): i for i in cloud.list_managed(regions)})
        except CmlInfraError as exc:
            ui.warn(f"showing recorded states only for {cloud_name}: {exc}")
    return [_status_row(record, live.get((record.cloud, record.name))) for record in records]


def _status_row(record: RunnerRecord, instance: ManagedInstance | None) -> dict[str, Any]:
    state: str = record.state
    idle_seconds = None
    if state in ("running", "idle") and instance is not None:
        state = _AGENT_STATES.get(instance.state, state)
        idle_seconds = 0.0 if state == "running" else instance.idle_seconds
    return {
        "name": record.name,
        "cloud": record.cloud,
        "region": record.region,
        "state": state,
        "created_at": record.created_at.isoformat(),
        "expires_at": record.expires_at.isoformat(),
        "idle_seconds": None if idle_seconds is None else round(idle_seconds, 1),
        "labels": list(record.labels),
        "instance_type": record.instance_type,
        "hourly_price": record.hourly_price,
        "cost_usd": cost.accrued(record),
        "instance_id": record.instance_id,
        "end_reason": record.end_reason,
        "error": record.error,
    }


def logs(name: str, state: StateDir, follow: bool) -> Iterator[str]:
    """The instance log as it grows; with `follow`, until the instance is gone."""
    record = state.load(validate_name(name, "NAME"))
    if record is None:
        raise _unknown([name], state, "no log to show")
    cloud = clouds.get(record.cloud, state.root)
    path = cloud.instance_log(name)
    if path is None:
        if Feature.LOGS in cloud.UNSUPPORTED:
            raise CmlInfraError(f"{name}: {cloud.UNSUPPORTED[Feature.LOGS]}")
        raise CmlInfraError(f"{name}: the instance has written no log yet")
    offset = 0
    while True:
        # Checked before the read, so that the last read sees everything the instance wrote.
        ended = follow and _ended(state, name)
        # When the sandbox goes, the log continues in the copy kept beside the record.
        path = cloud.instance_log(name) or path
        chunk, offset = _read_from(path, offset)
        if chunk:
            yield chunk
        if not follow or ended:
            return
        time.sleep(0.5)


def _ended(state: StateDir, name: str) -> bool:
    record = state.load(name)
    return record is None or record.state in ("destroyed", "failed")


def _read_from(path: Path, offset: int) -> tuple[str, int]:
    try:
        with path.open("rb") as handle:
            handle.seek(offset)
            data = handle.read()
    except FileNotFoundError:
        return "", offset
    return data.decode("utf-8", errors="replace"), offset + len(data)


def render_only(spec: RunnerSpec, state: StateDir, out: Path) -> Path:
    """Write the workspace of `up`'s first attempt; its fallbacks are checked, not written."""
    first, *fallbacks = spec.attempts()
    prepared = prepare(first, state)
    for attempt in fallbacks:
        prepare(attempt, state)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError("--output", f"{out} exists and is not an empty folder")
    render.write_workspace(
        out, prepared.cloud, first, prepared.placement, prepared.context, prepared.variables
    )
    return out


def _unknown(names: list[str], state: StateDir, consequence: str) -> UsageError:
    known = ", ".join(r.name for r in state.records()) or "none"
    missing = ", ".join(repr(name) for name in names)
    return UsageError(
        "NAME", f"no runner named {missing} in {state.root} ({consequence}); known: {known}"
    )


def catalog_clouds(cloud: str | None) -> list[str]:
    """The clouds `catalog --cloud` names (aliases allowed); every cloud with a catalog if None."""
    from cml_infra.catalog import CLOUDS_WITH_CATALOG

    if cloud is None:
        return list(CLOUDS_WITH_CATALOG)
    name = clouds.get(cloud, Path(".")).name
    if name not in CLOUDS_WITH_CATALOG:
        valid = ", ".join(CLOUDS_WITH_CATALOG)
        raise UsageError("--cloud", f"no catalog for {cloud!r}; valid: {valid}")
    return [name]


def catalog_rows(cloud_names: list[str]) -> list[dict[str, Any]]:
    """Every catalog row with the GPU name:count or size that selects it."""
    from cml_infra.catalog import load

    rows = []
    for cloud_name in cloud_names:
        catalog = load(cloud_name)
        sizes = {ref: size for size, ref in catalog.sizes.items()}
        for offer in catalog.instance_types:
            rows.append(
                {
                    "cloud": cloud_name,
                    "gpu": f"{offer.gpu}:{offer.gpu_count}" if offer.gpu else None,
                    "size": sizes.get(offer.id),
                    "instance_type": offer.instance_type,
                    "accelerator": offer.accelerator,
                    "vcpus": offer.vcpus,
                    "memory_gib": offer.memory_gib,
                    "price": offer.price,
                    "spot_price": offer.spot_price,
                    "region": catalog.default_region,
                    "as_of": catalog.as_of.isoformat(),
                    "source": catalog.source,
                }
            )
    return rows


def doctor(cloud_names: list[str] | None, terraform: str | None) -> list[tuple[str, bool, str]]:
    """(subject, ready, sentence) for the config file, the Terraform engine and each cloud
    asked about."""
    results: list[tuple[str, bool, str]] = [("config", True, config.describe())]
    try:
        engine = Engine.discover(terraform)
        results.append(("terraform", True, engine.label))
    except UsageError as exc:
        results.append(("terraform", False, str(exc)))
    for cloud_name in cloud_names or clouds.names():
        cloud = clouds.get(cloud_name, Path("."))
        ready, detail = cloud.check()
        results.append((cloud.name, ready, detail))
    return results
