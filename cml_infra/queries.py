"""What the read-only commands show: status, logs, catalog rows, doctor.

Nothing here changes a runner. Imports are kept inside the functions that need them, so that
`status` on an empty state dir stays as quick as `--help`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cml_infra.errors import CmlInfraError
from cml_infra.state import LIVE_STATES, StateDir, utcnow

if TYPE_CHECKING:
    from cml_infra.clouds.base import Cloud, ManagedInstance
    from cml_infra.record import RunnerRecord

# The agent's state → the state `status` shows for a running record.
_AGENT_STATES = {
    "busy": "running",
    "idle": "idle",
    "destroying": "destroying",
    "stopped": "stopped",
    "terminated": "stopped",
    "agent-dead": "agent-dead",
}
# Recorded states whose instance may end itself (idle, TTL, preemption) while no command
# changes the record: `status` shows such a record `ended` once its cloud no longer lists it.
_SELF_ENDING = frozenset({"running", "idle"})


@dataclass(frozen=True)
class _Listing:
    instances: dict[tuple[str, str, str], ManagedInstance]
    # The clouds whose listing worked: only there does a missing instance mean it ended.
    clouds: dict[str, Cloud]


def status(
    state: StateDir,
    include_destroyed: bool,
    only: str | None = None,
    warn: Callable[[str], None] = lambda message: None,
    now: datetime | None = None,
) -> list[dict[str, Any]]:
    """One row per runner; an unreadable record is one warning and no row. A runner whose
    instance ended itself shows `ended`, and its cost stops there (see `_reconcile`)."""
    now = now or utcnow()
    scan = state.scan()
    for broken in scan.broken:
        if only in (None, broken.name):
            warn(f"{broken}; `cml-infra down {broken.name}` still ends its instance")
    records = [
        r
        for r in scan.records
        if (include_destroyed or r.state != "destroyed") and only in (None, state.key(r))
    ]
    listing = _live_instances(state, [r for r in records if r.state in LIVE_STATES], warn)
    reports = _agent_reports(state, [r for r in records if r.reports], warn)
    rows = []
    for record in records:
        instance = listing.instances.get(_key(record))
        cloud = listing.clouds.get(record.cloud)
        shown, ended = _reconcile(state, record, instance, cloud, now)
        rows.append(_status_row(shown, instance, ended, now, reports.get(state.key(record))))
    return rows


def _agent_reports(
    state: StateDir, records: list[RunnerRecord], warn: Callable[[str], None]
) -> dict[str, dict[str, Any]]:
    """The last status each runner's agent reported to its channel, by key (read in parallel:
    in a backend each is a request)."""
    if not records:
        return {}
    from concurrent.futures import ThreadPoolExecutor

    from cml_infra.task.attach import task_status

    def read(record: RunnerRecord) -> dict[str, Any] | None:
        try:
            return task_status(state, record)
        except CmlInfraError as exc:
            warn(f"{record.name}: its agent's status could not be read: {exc}")
            return None

    with ThreadPoolExecutor(max_workers=min(16, len(records))) as pool:
        found = list(pool.map(read, records))
    return {state.key(r): report for r, report in zip(records, found, strict=True) if report}


def _key(runner: RunnerRecord | ManagedInstance) -> tuple[str, str, str]:
    """What ties a record to its instance: the launch id (another launch may share the name);
    for a record or instance older than launch ids, the name."""
    if runner.launch_id:
        return runner.cloud, "launch", runner.launch_id
    return runner.cloud, "name", runner.name


def _live_instances(
    state: StateDir, records: list[RunnerRecord], warn: Callable[[str], None]
) -> _Listing:
    listing = _Listing({}, {})
    if not records:
        return listing
    from cml_infra import clouds

    for cloud_name in sorted({r.cloud for r in records}):
        cloud = clouds.get(cloud_name, state)
        regions = sorted({r.region for r in records if r.cloud == cloud_name})
        try:
            listing.instances.update({_key(i): i for i in cloud.list_managed(regions)})
        except CmlInfraError as exc:
            warn(f"showing recorded states only for {cloud_name}: {exc}")
            continue
        listing.clouds[cloud_name] = cloud
    return listing


def _reconcile(
    state: StateDir,
    record: RunnerRecord,
    instance: ManagedInstance | None,
    cloud: Cloud | None,
    now: datetime,
) -> tuple[RunnerRecord, bool]:
    """The record as `status` shows it, and whether its instance ended itself: recorded
    running or idle, and no longer listed by its cloud (`cloud`, None when the listing failed:
    then only an end already recorded counts).

    The end is the cloud's time where it says one, else the moment a `status` first saw the
    instance gone; it is written into the record's `ended_at` (and only there: the state stays
    for `down` and cleanup's stale-state rule to act on), so that later calls, `cost.accrued`
    and other commands agree. An instance listed again was missed by a listing that lagged: the
    mark was wrong and is taken back."""
    if record.state not in _SELF_ENDING:
        return record, False
    if instance is not None:
        if record.ended_at is None:
            return record, False
        return _save_ended_at(state, record, None) or record.replace(ended_at=None), False
    if record.ended_at is not None:
        return record, True
    if cloud is None or now - record.updated_at < cloud.LISTING_LAG:
        return record, False
    said = cloud.ended_at(record.outputs)
    # Unwritten (another command holds the runner), a first sighting is no end time: unknown.
    return _save_ended_at(state, record, said or now) or record.replace(ended_at=said), True


def _save_ended_at(
    state: StateDir, record: RunnerRecord, ended_at: datetime | None
) -> RunnerRecord | None:
    """`status`'s one write: the record's `ended_at` set once (its first time stands) or taken
    back, nothing else. Nothing is written (None) while another command holds the runner, its
    record being that command's to write, nor once the record on disk is no longer the one
    judged: another launch of the name, or moved on by `down`."""
    key = state.key(record)
    try:
        with state.lock(key, wait=0, claim=False):
            current = state.load(key)
            if (
                current is None
                or (current.launch_id, current.created_at) != (record.launch_id, record.created_at)
                or current.state not in _SELF_ENDING
            ):
                return None
            if (current.ended_at is None) == (ended_at is None):
                return current
            return state.save(current.replace(ended_at=ended_at))
    except CmlInfraError:  # held, or a state dir this user may only read
        return None


def _status_row(
    record: RunnerRecord,
    instance: ManagedInstance | None,
    ended: bool,
    now: datetime,
    report: dict[str, Any] | None = None,
) -> dict[str, Any]:
    from cml_infra import cost

    state: str = record.state
    idle_seconds = None
    report = report or {}
    if ended:
        # Its agent said why, where it could: the cloud reclaimed the spot instance.
        state = "preempted" if report.get("preempted") else "ended"
    elif state in _SELF_ENDING and instance is not None:
        if instance.state in _AGENT_STATES:  # the local cloud lists its agent's own state
            state = _AGENT_STATES[instance.state]
            idle_seconds = 0.0 if state == "running" else instance.idle_seconds
        elif _fresh(report, now):
            # A VM's listing knows nothing of its agent; the agent's own report does.
            state = _AGENT_STATES.get(str(report.get("state")), state)
            idle_seconds = _idle_now(report, now) if state == "idle" else 0.0
        # Else a VM whose agent sends no report: how long it has idled is not known here.
    code = report.get("exit_code")
    return {
        "name": record.name,
        "cloud": record.cloud,
        "region": record.region,
        "state": state,
        "created_at": record.created_at.isoformat(),
        "expires_at": record.expires_at.isoformat(),
        "ended_at": None if record.ended_at is None else record.ended_at.isoformat(),
        "idle_seconds": None if idle_seconds is None else round(idle_seconds, 1),
        "labels": list(record.labels),
        "instance_type": record.instance_type,
        "hourly_price": record.hourly_price,
        "cost_usd": cost.accrued(record, now),
        "instance_id": record.instance_id,
        "launch_id": record.launch_id,
        "end_reason": record.end_reason,
        "error": record.error,
        # Task mode: how its task stands, as its agent last reported.
        "task": report.get("task"),
        "exit_code": code if isinstance(code, int) and not isinstance(code, bool) else None,
        "preempted": report.get("preempted"),
        # What of its --out paths the agent sent back (before a preemption too).
        "outputs": (report.get("outputs") or {}).get("uploaded"),
    }


def _fresh(report: dict[str, Any], now: datetime) -> bool:
    """Whether an agent's report is recent enough to say what the instance does now."""
    from cml_infra.task.channel import REPORT_SECONDS

    updated = report.get("updated_at")
    if not isinstance(updated, (int, float)):
        return False
    return now.timestamp() - updated <= 3 * REPORT_SECONDS + 60


def _idle_now(report: dict[str, Any], now: datetime) -> float | None:
    """The idle seconds an agent reported, counted on to now."""
    idle, updated = report.get("idle_seconds"), report.get("updated_at")
    if not isinstance(idle, (int, float)) or not isinstance(updated, (int, float)):
        return None
    return max(0.0, float(idle) + max(0.0, now.timestamp() - updated))


def logs(name: str, state: StateDir, follow: bool) -> Iterator[str]:
    """The instance log as it grows; with `follow`, until the instance is gone."""
    from cml_infra import clouds
    from cml_infra.clouds.base import Feature
    from cml_infra.lifecycle.down import resolve

    key = resolve([name], state, "no log to show")[0]
    record = state.load(key)
    if record is None:
        raise CmlInfraError(f"{name}: its record went while it was read")
    if record.reports is not None:
        # The agent reports to a channel (the bucket, for a VM): read from there.
        from cml_infra.task import attach

        yield from (attach.follow(state, record) if follow else attach.read_all(state, record))
        return
    from cml_infra.task.attach import read_from, record_gone

    cloud = clouds.get(record.cloud, state)
    path = cloud.instance_log(name)
    if path is None:
        if Feature.LOGS in cloud.UNSUPPORTED:
            raise CmlInfraError(f"{name}: {cloud.UNSUPPORTED[Feature.LOGS]}")
        raise CmlInfraError(f"{name}: the instance has written no log yet")
    offset = 0
    while True:
        # Checked before the read, so that the last read sees everything the instance wrote.
        ended = follow and record_gone(state, record)
        # When the sandbox goes, the log continues in the copy kept beside the record.
        path = cloud.instance_log(name) or path
        chunk, offset = read_from(path, offset)
        if chunk:
            yield chunk.decode("utf-8", errors="replace")
        if not follow or ended:
            return
        time.sleep(0.5)


def catalog_clouds(cloud: str | None) -> list[str]:
    """The clouds `catalog --cloud` names (aliases allowed); every cloud with a catalog if None."""
    from cml_infra import clouds
    from cml_infra.errors import UsageError

    priced = [name for name, cls in clouds.classes().items() if cls.HAS_CATALOG]
    if cloud is None:
        return priced
    name = clouds.canonical(cloud)
    if name not in priced:
        raise UsageError("--cloud", f"no catalog for {cloud!r}; valid: {', '.join(priced)}")
    return [name]


def catalog_rows(
    cloud_names: list[str], region: str | None = None, state_dir: Path | None = None
) -> list[dict[str, Any]]:
    """Every catalog row with the GPU name:count or size that selects it, priced in `region`
    (None: each cloud's default; `all`: every region that sells it), with where each price
    comes from (`packaged`, `refreshed`, or the yaml's fallback) and its age in days."""
    from datetime import date

    from cml_infra.catalog import STALE_AFTER, hourly, known_regions, load, offerings_of

    rows = []
    today = date.today()
    for cloud_name in cloud_names:
        catalog = load(cloud_name)
        index = offerings_of(cloud_name, state_dir)
        sizes = {ref: size for size, ref in catalog.sizes.items()}
        for offer in catalog.instance_types:
            if region == "all":
                sold = {o.region for o in index.of(offer.id)}
                regions = sorted(sold | {catalog.default_region})
            elif region is None:
                regions = [catalog.default_region]
            else:
                if region not in known_regions(catalog, index):
                    continue  # another cloud's region
                regions = [region]
            for where in regions:
                price, spot = (
                    index.cheapest(offer.id, where, False),
                    index.cheapest(offer.id, where, True),
                )
                figure = price or spot
                as_of = figure.as_of if figure else catalog.as_of
                age = (today - as_of).days
                rows.append(
                    {
                        "cloud": cloud_name,
                        "gpu": f"{offer.gpu}:{offer.gpu_count}" if offer.gpu else None,
                        "size": sizes.get(offer.id),
                        "instance_type": offer.instance_type,
                        "accelerator": offer.accelerator,
                        "vcpus": offer.vcpus,
                        "memory_gib": offer.memory_gib,
                        "region": where,
                        # What `up` would price with: no figure in a region the yaml does
                        # not list is no price, never the default region's.
                        "price": hourly(offer, index, where, False, catalog),
                        "spot_price": hourly(offer, index, where, True, catalog),
                        "source": (
                            index.origin(figure)
                            if figure
                            else "catalog yaml"
                            if where in catalog.regions
                            else "none"
                        ),
                        "source_id": figure.source if figure else None,
                        "as_of": as_of.isoformat(),
                        "age_days": age,
                        "stale": age > STALE_AFTER.days,
                        "source_what": (
                            index.offerings.sources[figure.source].what
                            if figure
                            else catalog.source
                        ),
                    }
                )
    return rows


def doctor(
    cloud_names: list[str] | None, default_cloud: str, terraform: str | None, state: StateDir
) -> list[tuple[str, bool | None, str]]:
    """(subject, ready, sentence) for the config file, the Terraform engine and the clouds:
    the ones asked about, or else the default cloud, with the others as information only
    (ready None): a cloud nobody uses does not make the set-up NOT READY."""
    from cml_infra import clouds, config
    from cml_infra.errors import UsageError
    from cml_infra.terraform import Engine

    results: list[tuple[str, bool | None, str]] = [("config", True, config.describe())]
    try:
        engine = Engine.discover(terraform, state.engine_home())
        results.append(("terraform", True, engine.label))
    except UsageError as exc:
        results.append(("terraform", False, str(exc)))
    if state.remote:
        try:
            state.check()
            results.append(("backend", True, f"{state.describe()}: can be listed"))
        except CmlInfraError as exc:
            results.append(("backend", False, str(exc)))
    asked = [clouds.canonical(name) for name in cloud_names or []]
    default = clouds.canonical(default_cloud)
    for name in asked or clouds.names():
        ready, detail = clouds.get(name).check()
        required = name in asked or name == default
        results.append((name, ready if required else (True if ready else None), detail))
    return results
