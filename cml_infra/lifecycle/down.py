"""`down`: destroy runners by name; one that is already gone is not an error, and one whose
record cannot be read is still found and ended."""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Iterable

from cml_infra import clouds, forge, ui
from cml_infra.clouds import tags
from cml_infra.clouds.base import ManagedInstance
from cml_infra.errors import CmlInfraError, UsageError
from cml_infra.lifecycle import teardown
from cml_infra.record import RunnerRecord
from cml_infra.spec import ForgeTarget, validate_name
from cml_infra.state import LIVE_STATES, BrokenRecord, StateDir, utcnow
from cml_infra.terraform import Engine

# `down` waits this long for another command (an `up` still finishing, the agent's own `down`).
LOCK_WAIT_SECONDS = 900.0
# The rendered root module names its cloud in its header (templates/root.tf.j2).
_CLOUD_LINE = re.compile(r"^# Runner \S+ on cloud (\S+?):", re.MULTILINE)


def down(
    names: Iterable[str],
    state: StateDir,
    terraform: str | None,
    reason: str | None,
    token: forge.Secret = None,
) -> list[RunnerRecord]:
    keys = resolve(list(names), state, "nothing to destroy")
    # An engine that does not exist is bad input: found before any record changes.
    explicit = Engine.discover(terraform, state.engine_home()) if terraform else None
    ended, failures = [], []
    for key in keys:
        try:
            ended.append(_down_one(key, state, explicit, reason, token))
        except CmlInfraError as exc:
            failures.append(str(exc))
    if failures:
        raise CmlInfraError("; ".join(failures))
    return ended


def _down_one(
    name: str, state: StateDir, explicit: Engine | None, reason: str | None, token: forge.Secret
) -> RunnerRecord:
    with state.lock(name, wait=LOCK_WAIT_SECONDS):
        try:
            record = state.load(name)
        except BrokenRecord as exc:
            ui.warn(str(exc))
            record = _stand_in(name, state, exc)
        if record is None:
            raise unknown_names([name], state, "nothing to destroy")
        if record.state == "destroyed":
            ui.info(f"{record.name} is already gone")
            return record
        engine = explicit or Engine.from_argv(record.engine, state.engine_home())
        cloud = clouds.get(record.cloud, state, flag=f"{name}: cloud")
        record = state.save(record.replace(state="destroying"))
        problems = teardown.destroy(engine, state, cloud, record)
        if problems:
            state.save(record.replace(state="failed", error=problems))
            raise CmlInfraError(f"{name}: destroy failed: {problems}")
        state.remove_workspace(name)
        _drop_workdir(state, record)
        if record.forge:
            _down_registration(record, token)
        ui.info(f"{record.name} destroyed" + (f" ({reason})" if reason else ""))
        return state.save(record.replace(state="destroyed", end_reason=reason, error=None))


def _drop_workdir(state: StateDir, record: RunnerRecord) -> None:
    """The task's packed folder goes with the instance that read it (up to 100 MiB a runner);
    its status, log and outputs stay for `logs`, `status` and `pull`."""
    if record.reports is None or record.workdir is None:
        return
    from cml_infra.task.channel import WORKDIR, channel_of

    channel = channel_of(state, state.key(record), on_this_machine=record.reports == "folder")
    if channel is None:
        return
    try:
        channel.delete(WORKDIR)
    except (CmlInfraError, OSError) as exc:
        ui.warn(f"{record.name}: its packed working folder stays in {channel.where}: {exc}")


def _stand_in(name: str, state: StateDir, broken: BrokenRecord) -> RunnerRecord:
    """A record for a runner whose own cannot be read, from what else the state dir knows (its
    workspace names the cloud and, in its variables, the launch id; a local sandbox is the
    local cloud's), so that its instance is still found and ended. The unreadable file is kept
    beside it for a person to read.

    The launch id is what the sweep after `terraform destroy` matches; with none, nothing is
    swept by name (another launch may carry it). On the local cloud the sandbox under this
    state dir is the instance's id, which no other launch can hold while it exists."""
    state.fetch_workspace(name)
    cloud = _cloud_of_workspace(state, name)
    # In a backend the key is the launch id.
    launch_id = name if state.remote else _launch_id_of_workspace(state, name)
    instance_id = None
    if cloud is None:
        cloud, instance = _on_this_machine(state, name)
        if instance is not None:
            launch_id = launch_id or instance.launch_id
            instance_id = instance.id
    kept = state.set_aside(name)
    now = utcnow()
    error = f"{broken}; kept as {kept}" if kept else str(broken)
    if cloud is None:
        ui.warn(
            f"{name}: neither a workspace nor a local instance says where it ran; "
            "`cml-infra cleanup` finds what is left of it by its tags"
        )
    elif not launch_id and instance_id is None:
        ui.warn(
            f"{name}: no launch id in its workspace, so nothing of it is swept by name (another "
            "launch may use it); `cml-infra cleanup` finds what is left of it by its tags"
        )
    return RunnerRecord(
        name=name,
        # With no cloud known, the sweep on this machine's cloud is all `down` can do.
        cloud=cloud or next(n for n, c in clouds.classes().items() if c.ON_THIS_MACHINE),
        region="",
        state="failed",
        created_at=now,
        updated_at=now,
        expires_at=now,
        idle_timeout=0,
        ttl=0,
        error=error,
        launch_id=launch_id,
        instance_id=instance_id,
    )


def _on_this_machine(state: StateDir, name: str) -> tuple[str | None, ManagedInstance | None]:
    """The cloud on this machine (local) that has an instance of this name in this state dir,
    and that instance, if one has."""
    for cloud_name, cls in clouds.classes().items():
        if not cls.ON_THIS_MACHINE:
            continue
        for instance in clouds.get(cloud_name, state).list_managed(None):
            if name in (instance.name, instance.launch_id):
                return cloud_name, instance
    return None, None


def _launch_id_of_workspace(state: StateDir, name: str) -> str:
    """The launch id the workspace was rendered with: the module variable `launch_id`, or the
    `cml-infra-id` tag of the tags the local module takes whole; "" when neither is there."""
    try:
        variables = json.loads(
            (state.workspace(name) / "terraform.tfvars.json").read_text(encoding="utf-8")
        )
    except (OSError, ValueError):
        return ""
    if not isinstance(variables, dict):
        return ""
    found = variables.get("launch_id")
    if not found:
        for key in ("tags", "labels"):
            marks = variables.get(key)
            if isinstance(marks, dict) and marks.get(tags.LAUNCH_ID):
                found = marks[tags.LAUNCH_ID]
                break
    return found if isinstance(found, str) and tags.LAUNCH_ID_FORMAT.fullmatch(found) else ""


def _cloud_of_workspace(state: StateDir, name: str) -> str | None:
    try:
        text = (state.workspace(name) / "main.tf").read_text(encoding="utf-8")
    except OSError:
        return None
    match = _CLOUD_LINE.search(text)
    return match.group(1) if match else None


def _down_registration(record: RunnerRecord, token: forge.Secret) -> None:
    if not token:
        # The agent's own `down` has no token, by design; an ephemeral runner is gone already,
        # and a multi-job one is removed by `cleanup`.
        ui.info(f"{record.name}: no forge token here; its runner registration is left to cleanup")
        return
    try:
        client = forge.for_target(target_of_record(record.forge or {}), token)
    except CmlInfraError as exc:  # a record of an older cml-infra: e.g. a plain-http API URL
        # The instance is gone already; its record must still say so.
        ui.warn(f"{record.name}: its runner registration is left to cleanup ({exc})")
        return
    teardown.deregister(client, record.name)


def target_of_record(saved: dict[str, object]) -> ForgeTarget:
    """The forge target a record keeps (records of cml-infra 0.1 kept a `scope` path)."""
    fields = {key: value for key, value in saved.items() if value is not None}
    scope = str(fields.pop("scope", ""))
    if scope:
        kind, _, slug = scope.partition("/")
        fields["repo" if kind == "repos" else "org"] = slug
    if "runner_group" in fields:
        fields["group"] = fields.pop("runner_group")
    known = {f.name for f in dataclasses.fields(ForgeTarget)}
    return ForgeTarget(**{key: str(value) for key, value in fields.items() if key in known})


def all_live(state: StateDir) -> list[str]:
    """Every runner not yet destroyed, unreadable records included (`down --all`): their
    keys."""
    scan = state.scan()
    live = [state.key(record) for record in scan.records if record.state in LIVE_STATES]
    return sorted([*live, *(broken.name for broken in scan.broken)])


def resolve(names: list[str], state: StateDir, consequence: str) -> list[str]:
    """The keys of the runners that NAME arguments mean. In a state dir a name is the key; in
    a backend an argument is a launch id, or a name that one live runner has (two live runners
    of one name are told apart by their launch ids, never guessed between)."""
    for name in names:
        if not (state.remote and tags.LAUNCH_ID_FORMAT.fullmatch(name)):
            validate_name(name, "NAME")
    if not state.remote:
        unknown = [name for name in names if not state.knows(name)]
        if unknown:
            raise unknown_names(unknown, state, consequence)
        return names
    # A launch id is a key as it is (cleanup passes keys, and lists the ledger once).
    keys = [name for name in names if tags.LAUNCH_ID_FORMAT.fullmatch(name) and state.knows(name)]
    if len(keys) == len(names):
        return keys
    scan = state.scan()
    keys, unknown = [], []
    for name in names:
        if any(state.key(r) == name for r in scan.records) or any(
            b.name == name for b in scan.broken
        ):
            keys.append(name)
            continue
        same = [r for r in scan.records if r.name == name]
        live = [r for r in same if r.state != "destroyed"] or same[-1:]
        if not live:
            unknown.append(name)
        elif len(live) > 1:
            ids = ", ".join(sorted(f"{state.key(r)} ({r.state})" for r in live))
            raise UsageError(
                "NAME", f"{len(live)} live runners are named {name!r}: {ids}; give its launch id"
            )
        else:
            keys.append(state.key(live[0]))
    if unknown:
        raise unknown_names(unknown, state, consequence, scan.records)
    return keys


def unknown_names(
    names: list[str],
    state: StateDir,
    consequence: str,
    records: list[RunnerRecord] | None = None,
) -> UsageError:
    if state.remote:
        listed = sorted({r.name for r in records or state.scan().records})
    else:
        listed = state.names()
    known = ", ".join(listed) or "none"
    missing = ", ".join(repr(name) for name in names)
    return UsageError(
        "NAME", f"no runner named {missing} in {state.describe()} ({consequence}); known: {known}"
    )
